"""Errors a newcomer can act on: path-like model names, no network, an unreachable hub; fast, no junk, said once."""

import json
import socket
import subprocess
import sys
import time

import pytest

from library.backends.hf_loading import load_pretrained
from library.backends.hub_access import looks_like_path
from library.backends.hub_files import ModelNotAvailable, locate_model
from library.taggers.wd import WDTagger
from tests.conftest import ROOT, SCRIPT, WD_TAGS, run_script
from tests.fixtures.hub_server import serve_repos, use_endpoint
from tests.fixtures.images import real_photos
from tests.fixtures.wd_models import make_wd_model

REPO = "SmilingWolf/wd-test-tagger-v3"
UNRESOLVABLE = "http://captionkit-test-hub.invalid"  # .invalid never resolves (RFC 2606)


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # nothing listens there any more: connections are refused


@pytest.fixture(scope="module")
def repos(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    make_wd_model(root / "wd", WD_TAGS, size=64, seed=1)
    (root / "cfg").mkdir()
    (root / "cfg" / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 1}))
    return {REPO: root / "wd", "org/config-only": root / "cfg"}


@pytest.mark.parametrize("name", ["/no/such/captionkit-model", "./models/x", "../x", "~/no-such-captionkit-model",
                                  "C:\\models\\wd", "C:/models/wd"])
def test_path_like_names_are_local_folders(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert looks_like_path(name)
    with pytest.raises(ModelNotAvailable, match="no such folder: "):
        locate_model(name, tmp_path / "wd14_tagger_model")
    with pytest.raises(ModelNotAvailable, match="no such folder: "):
        load_pretrained(lambda *a, **k: pytest.fail("must not be called"), name)
    assert list(tmp_path.iterdir()) == []  # nothing made


def test_hub_ids_and_existing_relative_folders(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert not looks_like_path("SmilingWolf/wd-swinv2-tagger-v3")
    assert not looks_like_path("cella110n/cl_tagger/cl_tagger_1_02")
    (tmp_path / "models" / "wd").mkdir(parents=True)
    assert looks_like_path("models/wd")  # exists on disk: a local folder, as before
    assert locate_model("models/wd", "unused").repo_id is None
    (tmp_path / "file.onnx").write_bytes(b"x")
    with pytest.raises(ModelNotAvailable, match="not a folder: "):
        locate_model("./file.onnx", "unused")


def tag_offline(tmp_path, endpoint: str, offline: str = "0", repo_id: str = REPO):
    data = tmp_path / "data"
    real_photos(data, n=1)
    env = {"HF_ENDPOINT": endpoint, "HF_HUB_OFFLINE": offline, "HF_HUB_DISABLE_TELEMETRY": "1",
           "HF_HOME": str(tmp_path / "hf_home")}
    start = time.monotonic()
    r = run_script(SCRIPT, data, "--repo_id", repo_id, "--no_progress", cwd=tmp_path, env=env)
    return r, time.monotonic() - start


@pytest.mark.parametrize("endpoint, offline, why", [
    (None, "0", "cannot connect to 127.0.0.1:"),
    (UNRESOLVABLE, "0", "cannot resolve host captionkit-test-hub.invalid"),
    (UNRESOLVABLE, "1", "HF_HUB_OFFLINE is set"),
], ids=["refused", "unresolvable", "HF_HUB_OFFLINE"])
def test_tagger_without_hub_fails_fast_with_both_ways_out(tmp_path, endpoint, offline, why):
    r, seconds = tag_offline(tmp_path, endpoint or closed_port_url(), offline)
    assert r.returncode == 1, r.stderr
    assert seconds < 10, f"took {seconds:.1f} s"
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, r.stderr
    message = errors[0]
    assert f"model {REPO} is not available: offline or hub unreachable ({why}" in message
    assert "It needs selected_tags.csv, model.onnx." in message
    assert f"`hf download {REPO} selected_tags.csv model.onnx --local-dir /path/to/folder`" in message
    assert "--repo_id /path/to/folder" in message
    assert "(None)" not in r.stderr and "Retry" not in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "wd14_tagger_model").exists()  # no junk model folder, no .cache/huggingface


def test_missing_local_folder_via_the_script(tmp_path):
    r, seconds = tag_offline(tmp_path, closed_port_url(), repo_id="./models/wd-tagger")
    assert r.returncode == 1 and seconds < 10
    assert f"error: --repo_id ./models/wd-tagger: no such folder: {tmp_path / 'models' / 'wd-tagger'}" in r.stderr
    assert not (tmp_path / "wd14_tagger_model").exists() and not (tmp_path / "models").exists()


def test_repository_not_found_leaves_no_folder(repos, tmp_path):
    model_dir = tmp_path / "wd14_tagger_model"
    with serve_repos(repos) as hub, use_endpoint(hub.url):
        with pytest.raises(ModelNotAvailable, match="was not found"):
            WDTagger.from_repo("nobody/missing", str(model_dir), device="cpu")
        assert not model_dir.exists()
        WDTagger.from_repo(REPO, str(model_dir), device="cpu")  # a real download still works, and leaves no .cache
    names = {p.name for p in (model_dir / "SmilingWolf_wd-test-tagger-v3").iterdir()}
    assert {"model.onnx", "selected_tags.csv"} <= names and ".cache" not in names


def test_transformers_model_unreachable_hub_uses_the_cache_or_fails_fast(repos, tmp_path):
    from transformers import AutoConfig

    cache = tmp_path / "cache"
    with serve_repos(repos) as hub, use_endpoint(hub.url):
        assert load_pretrained(AutoConfig.from_pretrained, "org/config-only", cache_dir=cache).n_layer == 1
    for endpoint in (closed_port_url(), UNRESOLVABLE):
        with use_endpoint(endpoint):
            start = time.monotonic()
            assert load_pretrained(AutoConfig.from_pretrained, "org/config-only", cache_dir=cache).n_layer == 1
            with pytest.raises(ModelNotAvailable) as info:
                load_pretrained(AutoConfig.from_pretrained, "org/not-cached", cache_dir=cache)
            assert time.monotonic() - start < 10
        message = str(info.value)
        assert "model 'org/not-cached' is not available: offline or hub unreachable (" in message
        assert "not in the Hugging Face cache" in message and "(None)" not in message
        assert "`hf download org/not-cached --local-dir /path/to/folder`" in message
        assert "--model_id /path/to/folder" in message


def test_each_hub_warning_is_printed_once():
    code = """
        from library.run.runtime import setup_logging
        setup_logging()
        from library.backends.hub_access import quiet_duplicate_hub_logging
        quiet_duplicate_hub_logging()
        import logging
        logging.getLogger("huggingface_hub.utils._http").warning("'boom' thrown while requesting HEAD x")
    """
    r = subprocess.run([sys.executable, "-c", "\n".join(line[8:] for line in code.splitlines())], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("'boom' thrown") == 1, r.stderr
