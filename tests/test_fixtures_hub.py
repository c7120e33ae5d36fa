"""The local Hub emulator serves the real huggingface_hub client: download, 404s, partial transfer."""

import pytest
from huggingface_hub import constants, hf_hub_download, snapshot_download
from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError

from tests.fixtures.hub_server import serve_repos, use_endpoint

pytestmark = pytest.mark.timeout(20)
REPO = "SmilingWolf/tiny-tagger"


@pytest.fixture
def hub(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    (repo / "sub").mkdir(parents=True)
    (repo / "model.onnx").write_bytes(bytes(range(256)) * 40)
    (repo / "selected_tags.csv").write_text("tag_id,name,category,count\n1,general,9,5\n")
    (repo / "sub" / "tag_mapping.json").write_text('{"0": {"tag": "general", "category": "Rating"}}')
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    with serve_repos({REPO: repo}) as server, use_endpoint(server.url):
        yield server


def _download(tmp_path, filename, repo_id=REPO, **kwargs):
    return hf_hub_download(repo_id, filename, local_dir=tmp_path / "dest", cache_dir=tmp_path / "cache", **kwargs)


def test_download_into_local_dir(hub, tmp_path):
    path = _download(tmp_path, "model.onnx")
    assert open(path, "rb").read() == (hub.repos[REPO] / "model.onnx").read_bytes()
    assert (tmp_path / "dest" / ".cache" / "huggingface" / "download" / "model.onnx.metadata").is_file()
    sub = _download(tmp_path, "tag_mapping.json", subfolder="sub")
    assert sub.endswith("dest/sub/tag_mapping.json")
    assert ("GET", f"/{REPO}/resolve/main/model.onnx") in hub.requests
    hub.requests.clear()
    _download(tmp_path, "model.onnx")  # up to date: HEAD only
    assert hub.requests == [("HEAD", f"/{REPO}/resolve/main/model.onnx")]


def test_missing_file_and_repo(hub, tmp_path):
    with pytest.raises(EntryNotFoundError):
        _download(tmp_path, "nope.onnx")
    with pytest.raises(RepositoryNotFoundError):
        _download(tmp_path, "model.onnx", repo_id="SmilingWolf/missing")


def test_partial_transfer_then_heal(hub, tmp_path):
    hub.fail_after_bytes["model.onnx"] = 1000
    with pytest.raises(OSError, match="Consistency check failed"):
        _download(tmp_path, "model.onnx")
    assert not (tmp_path / "dest" / "model.onnx").exists()
    hub.fail_after_bytes.clear()
    assert open(_download(tmp_path, "model.onnx"), "rb").read() == (hub.repos[REPO] / "model.onnx").read_bytes()


def test_snapshot_download(hub, tmp_path):
    folder = snapshot_download(REPO, local_dir=tmp_path / "snap", cache_dir=tmp_path / "cache")
    assert (tmp_path / "snap" / "sub" / "tag_mapping.json").is_file()
    assert (tmp_path / "snap" / "selected_tags.csv").read_text().startswith("tag_id,name")
    assert folder == str((tmp_path / "snap").resolve())
