"""Model resolution through the real huggingface_hub client against a local hub server on 127.0.0.1."""

import os
import shutil

import pytest

from library.backends.hub_files import ModelNotAvailable, locate_model
from library.taggers.wd import WDTagger
from tests.conftest import CL_TAGS, SCRIPT, WD_TAGS, run_script
from tests.fixtures.hub_server import serve_repos, use_endpoint
from tests.fixtures.images import real_photos
from tests.fixtures.wd_models import make_cl_tagger_model, make_wd_model


@pytest.fixture(scope="module")
def repos(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    make_wd_model(root / "wd", WD_TAGS, size=64, seed=1)
    cl = root / "cl"
    make_cl_tagger_model(cl / "cl_v2", CL_TAGS, size=64, seed=2, onnx_name="model.onnx")  # no model_optimized
    return {"SmilingWolf/wd-test-tagger-v3": root / "wd", "cella/cl_test": cl}


def file_gets(hub):
    return [p for m, p in hub.requests if m == "GET" and "/resolve/" in p]


def test_download_reuse_and_repair_partial_folder(repos, tmp_path):
    model_dir = tmp_path / "wd14_tagger_model"
    with serve_repos(repos) as hub, use_endpoint(hub.url):
        tagger = WDTagger.from_repo("SmilingWolf/wd-test-tagger-v3", str(model_dir), device="cpu")
        folder = model_dir / "SmilingWolf_wd-test-tagger-v3"
        assert tagger.files.model == folder / "model.onnx" and len(tagger.labels) == len(WD_TAGS)
        assert len(file_gets(hub)) == 2
        hub.requests.clear()
        WDTagger.from_repo("SmilingWolf/wd-test-tagger-v3", str(model_dir), device="cpu")
        assert hub.requests == []  # complete folder: no network at all
        (folder / "selected_tags.csv").unlink()  # the folder exists but is incomplete (sd-scripts never repairs)
        WDTagger.from_repo("SmilingWolf/wd-test-tagger-v3", str(model_dir), device="cpu")
        assert [p.rsplit("/", 1)[-1] for p in file_gets(hub)] == ["selected_tags.csv"]
        assert (folder / "selected_tags.csv").read_bytes() == (repos["SmilingWolf/wd-test-tagger-v3"]
                                                               / "selected_tags.csv").read_bytes()


def test_broken_transfer_leaves_no_file_and_the_next_run_repairs_it(repos, tmp_path):
    model_dir = tmp_path / "m"
    with serve_repos(repos) as hub, use_endpoint(hub.url):
        hub.fail_after_bytes["model.onnx"] = 100
        with pytest.raises(ModelNotAvailable):
            WDTagger.from_repo("SmilingWolf/wd-test-tagger-v3", str(model_dir), device="cpu")
        assert not (model_dir / "SmilingWolf_wd-test-tagger-v3" / "model.onnx").exists()
        hub.fail_after_bytes.clear()
        tagger = WDTagger.from_repo("SmilingWolf/wd-test-tagger-v3", str(model_dir), device="cpu")
        assert tagger.image_size == 64


def test_cl_layout_subfolder_falls_back_to_model_onnx(repos, tmp_path):
    with serve_repos(repos) as hub, use_endpoint(hub.url):
        tagger = WDTagger.from_repo("cella/cl_test/cl_v2", str(tmp_path), device="cpu")
    assert tagger.layout == "cl"
    assert tagger.files.model == tmp_path / "cella_cl_test" / "cl_v2" / "model.onnx"


def test_missing_repo_and_offline_give_clear_errors(repos, tmp_path):
    with serve_repos(repos) as hub, use_endpoint(hub.url):
        with pytest.raises(ModelNotAvailable, match="was not found"):
            WDTagger.from_repo("nobody/missing", str(tmp_path), device="cpu")
    with serve_repos(repos) as hub, use_endpoint(hub.url, offline=True):
        with pytest.raises(ModelNotAvailable) as info:
            WDTagger.from_repo("SmilingWolf/wd-test-tagger-v3", str(tmp_path), device="cpu")
    message = str(info.value)
    assert "offline" in message and str(tmp_path / "SmilingWolf_wd-test-tagger-v3") in message
    assert "model.onnx" in message and "selected_tags.csv" in message


def test_local_folder_as_repo_id(repos, tmp_path):
    local = tmp_path / "my model"
    shutil.copytree(repos["SmilingWolf/wd-test-tagger-v3"], local)
    loc = locate_model(str(local), "ignored")
    assert loc.folder == local and loc.repo_id is None
    assert WDTagger.from_repo(str(local), "ignored", device="cpu").image_size == 64
    (local / "model.onnx").unlink()
    with pytest.raises(ModelNotAvailable, match="missing model.onnx"):
        WDTagger.from_repo(str(local), "ignored", device="cpu")


def test_gui_force_download_into_missing_model_folder(repos, tmp_path):
    data = tmp_path / "data"
    real_photos(data, n=1)
    with serve_repos(repos) as hub:
        env = {"HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_TELEMETRY": "1",
               "HF_HOME": str(tmp_path / "hf_home")}
        r = run_script(SCRIPT, "--batch_size", "1.0", "--force_download", "--onnx",
                       "--repo_id", "SmilingWolf/wd-test-tagger-v3", data, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "wd14_tagger_model" / "SmilingWolf_wd-test-tagger-v3" / "model.onnx").is_file()
    assert (data / "astronaut.txt").is_file()


def test_corrupt_model_file_asks_for_force_download(repos, tmp_path):
    folder = tmp_path / "org_bad"
    shutil.copytree(repos["SmilingWolf/wd-test-tagger-v3"], folder)
    (folder / "model.onnx").write_bytes(b"garbage" * 10)
    with pytest.raises(ModelNotAvailable, match="--force_download"):
        WDTagger.from_repo("org/bad", str(tmp_path), device="cpu")
    assert os.path.exists(folder / "selected_tags.csv")
