"""A full disk (a real tmpfs filled to the last byte): clear one-line errors, files left intact, exit 3 when nothing
could be written."""

from __future__ import annotations

import sys

import pytest

from tests.conftest import ROOT, SCRIPT
from tests.fixtures.datasets import make_image, write_sidecar
from tests.fixtures.full_disk import full_disk_available, run_on_full_disk
from tests.fixtures.images import real_photos

pytestmark = [pytest.mark.timeout(240),
              pytest.mark.skipif(not full_disk_available(), reason="needs unshare and mount namespaces (Linux)")]
RESIZE = ROOT / "finetune" / "resize_images.py"
MERGE_TAGS = ROOT / "finetune" / "merge_dd_tags_to_metadata.py"
CONFIG = ROOT / "finetune" / "make_dataset_config.py"
OLD_META = b'{\n  "/old/image.png": {\n    "tags": "kept"\n  }\n}\n'
OLD_TOML = b"# my settings\n[general]\nshuffle_caption = true\n\n[[datasets]]\nresolution = 768\n"


@pytest.fixture()
def disk(tmp_path):
    mount = tmp_path / "full"
    mount.mkdir()
    return mount


def one_line_error(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, stderr[-3000:]
    return errors[0]


def test_tagger_on_a_full_disk_fails_each_image_cleanly_and_exits_3(tmp_path, disk, model_dir):
    data = tmp_path / "data"
    real_photos(data, 3)
    r = run_on_full_disk(disk, [sys.executable, SCRIPT, data, "--repo_id", "org/tiny", "--model_dir", model_dir,
                                "--output_dir", disk, "--max_data_loader_n_workers", "0", "--no_progress"])
    assert r["returncode"] == 3, r["stderr"][-3000:]
    assert "tagged 0, skipped 0, failed 3" in r["stdout"]
    assert r["stdout"].count("No space left on device") == 3
    assert "error: all 3 images failed" in r["stderr"]
    assert r["files"] == {}  # no empty caption, no temp file


def test_resize_says_no_space_left_not_damaged_image(tmp_path, disk):
    data = tmp_path / "data"
    real_photos(data, 2)
    r = run_on_full_disk(disk, [sys.executable, RESIZE, data, disk, "--max_data_loader_n_workers", "0",
                                "--no_progress"])
    assert r["returncode"] == 3, r["stderr"][-3000:]
    assert r["stdout"].count("No space left on device") == 2
    assert "damaged" not in r["stdout"]
    assert r["files"] == {}


def test_merge_on_a_full_disk_is_one_line_and_keeps_the_old_file(tmp_path, disk):
    data = tmp_path / "data"
    for i in range(3):
        write_sidecar(make_image(data / f"{i}.png", 32, 32, seed=i), f"tag{i}, other")
    r = run_on_full_disk(disk, [sys.executable, MERGE_TAGS, data, disk / "meta.json"], {"meta.json": OLD_META})
    assert r["returncode"] == 1
    assert "meta.json: cannot write the metadata file (No space left on device)" in one_line_error(r["stderr"])
    assert r["files"] == {"meta.json": OLD_META}


def test_make_dataset_config_on_a_full_disk_is_one_line_and_keeps_the_config(tmp_path, disk):
    data = tmp_path / "data"
    write_sidecar(make_image(data / "a.png", 32, 32), "cat")
    r = run_on_full_disk(disk, [sys.executable, CONFIG, data, "--out", disk / "dataset.toml"],
                         {"dataset.toml": OLD_TOML})
    assert r["returncode"] == 1
    assert "No space left on device" in one_line_error(r["stderr"])
    assert r["files"]["dataset.toml"] == OLD_TOML
    assert not [name for name in r["files"] if name.endswith(".tmp")]
