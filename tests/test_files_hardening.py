"""Hostile and unlucky files: captions that are not UTF-8 or start with a BOM, very long names, temp files left by
a kill, dangling symlinks and caption symlinks that point out of the dataset."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from library.files.sidecars import (CaptionReadError, TEMP_NAME_MIN, atomic_write_text, read_caption, remove_stale_temps,
                              temp_name, write_captions)
from tests.conftest import ROOT, SCRIPT, run_script
from tests.fixtures.datasets import make_image, write_sidecar
from tests.fixtures.images import real_photos

pytestmark = pytest.mark.timeout(120)
MERGE_TAGS = ROOT / "finetune" / "merge_dd_tags_to_metadata.py"
CONFIG = ROOT / "finetune" / "make_dataset_config.py"
REPORT = ROOT / "finetune" / "dataset_report.py"
TOOLS = ROOT / "finetune" / "caption_tools.py"
LONG_STEM = "l" * 250  # with .png or .txt: 254 bytes, just under the usual 255-byte name limit


def tagger(data, model_dir, *extra, cwd):
    return run_script(SCRIPT, data, "--repo_id", "org/tiny", "--model_dir", model_dir, "--max_data_loader_n_workers",
                      "0", "--no_progress", *extra, cwd=cwd)


# ---------------------------------------------------------------- captions that are not UTF-8, BOMs


def test_read_caption_strips_a_bom_and_names_a_file_that_is_not_utf8(tmp_path):
    (tmp_path / "bom.txt").write_bytes(b"\xef\xbb\xbffirst_tag, second\r\n")
    assert read_caption(tmp_path / "bom.txt") == "first_tag, second"
    (tmp_path / "latin1.txt").write_bytes(b"caf\xe9, tag\n")
    with pytest.raises(CaptionReadError, match=r"latin1\.txt: not UTF-8 text \(byte 0xe9 at offset 3\)"):
        read_caption(tmp_path / "latin1.txt")
    assert isinstance(CaptionReadError("x"), OSError)
    assert read_caption(tmp_path / "missing.txt") is None


def test_append_tags_fails_only_the_image_whose_caption_is_not_utf8(tmp_path, model_dir):
    data = tmp_path / "data"
    photos = real_photos(data, 8)
    bad = photos[3].with_suffix(".txt")
    bad.write_bytes(b"caf\xe9, old_tag\n")
    bom = photos[5].with_suffix(".txt")
    bom.write_bytes(b"\xef\xbb\xbfmy_trigger, kept\n")
    r = tagger(data, model_dir, "--append_tags", "--batch_size", "8", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "tagged 7, skipped 0, failed 1" in r.stdout
    assert f"failed: {photos[3]}" in r.stdout and "not UTF-8" in r.stdout
    assert bad.read_bytes() == b"caf\xe9, old_tag\n"  # left as it was
    merged = bom.read_bytes()
    assert merged.startswith(b"my_trigger, kept, ")  # the BOM is gone, not glued to the first tag
    assert all(p.with_suffix(".txt").is_file() for p in photos)


def test_merge_says_not_utf8_instead_of_no_caption_file(tmp_path):
    data = tmp_path / "data"
    good = make_image(data / "good.png", 32, 32)
    write_sidecar(good, "cat")
    make_image(data / "latin.png", 32, 32, seed=1)
    (data / "latin.txt").write_bytes(b"caf\xe9\n")
    make_image(data / "none.png", 32, 32, seed=2)
    r = run_script(MERGE_TAGS, data, tmp_path / "meta.json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "1 caption files are not UTF-8 text and were left out (save them as UTF-8): latin.txt" in r.stdout
    assert "1 images have no caption file and were left out: none.png" in r.stdout


# ---------------------------------------------------------------- long names


def test_temp_names_are_never_longer_than_the_final_name():
    for name in ("a.txt", "x" * 20 + ".txt", LONG_STEM + ".txt", "é" * 127 + ".t", os.fsdecode(b"\xe9" * 250)):
        for _ in range(20):
            tmp = temp_name(name)
            assert len(os.fsencode(tmp)) <= max(len(os.fsencode(name)), TEMP_NAME_MIN), (name, tmp)
            assert tmp.startswith(".") and tmp.endswith(".tmp")


def test_a_254_byte_name_is_written_atomically(tmp_path):
    target = tmp_path / (LONG_STEM + ".txt")
    atomic_write_text(target, "long\n")
    assert target.read_text() == "long\n"
    assert [p.name for p in tmp_path.iterdir()] == [target.name]
    too_long = tmp_path / (LONG_STEM + ".caption")
    errors = write_captions([(target, "one"), (too_long, "two")])
    assert errors[0] is None and "File name too long" in errors[1]


def test_long_names_are_one_images_failure_and_never_a_traceback(tmp_path, model_dir):
    data = tmp_path / "data"
    photos = real_photos(data, 2)
    long_image = data / (LONG_STEM + ".png")
    photos[0].rename(long_image)
    r = tagger(data, model_dir, cwd=tmp_path)  # .txt: 254 bytes
    assert r.returncode == 0 and "tagged 2, skipped 0, failed 0" in r.stdout, r.stderr[-3000:]
    assert (data / (LONG_STEM + ".txt")).is_file()
    for extra, code in (((), 0), (("--skip_existing",), 3)):  # .caption: 258 bytes, a name no file can have
        r = tagger(data, model_dir, "--caption_extension", ".caption", *extra, cwd=tmp_path)
        assert r.returncode == code, r.stderr[-3000:]  # 3: every image attempted (the one not skipped) failed
        assert "failed 1" in r.stdout and "File name too long" in r.stdout and "Traceback" not in r.stderr
    assert (data / photos[1].with_suffix(".caption").name).is_file()
    for cmd in ((CONFIG, data, "--out", tmp_path / "c.toml"),  # detects the caption extension
                (CONFIG, data, "--out", tmp_path / "d.toml", "--caption_extension", ".caption"),
                (REPORT, data, "--caption_extension", ".caption"), (REPORT, data)):
        r = run_script(*cmd, cwd=tmp_path)
        assert r.returncode == 0 and "Traceback" not in r.stderr, (cmd, r.stderr[-3000:])
    assert not [p for p in data.iterdir() if p.name.endswith(".tmp")]


# ---------------------------------------------------------------- temp files left by a kill


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_the_next_run_removes_stale_temp_files_of_our_naming_only(tmp_path, model_dir):
    data = tmp_path / "data"
    photos = real_photos(data, 2)
    old = time.time() - 7200
    stale = data / f".{photos[0].stem}.txt.{dead_pid():x}-k3x9q2.tmp"  # a SIGKILL between create and rename
    legacy = data / f".{photos[1].stem}.txt.ab_3xyz9.tmp"  # tempfile.mkstemp's naming of earlier versions
    live = data / f".other.txt.{os.getpid():x}-abc123.tmp"  # a write in flight in a live process
    fresh_legacy = data / ".notes.txt.zzzzzzzz.tmp"
    mine = data / "keep.tmp"
    hidden = data / ".settings.tmp"
    for path in (stale, legacy, live, fresh_legacy, mine, hidden):
        path.write_text("partial")
    for path in (stale, legacy, live, mine, hidden):
        os.utime(path, (old, old))
    r = tagger(data, model_dir, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert not stale.exists() and not legacy.exists()
    assert live.exists() and fresh_legacy.exists() and mine.exists() and hidden.exists()
    assert "removed 2 temporary files left by an interrupted run" in r.stderr
    assert remove_stale_temps(data) == []


# ---------------------------------------------------------------- symlinks


def test_a_dangling_image_symlink_is_named(tmp_path, model_dir):
    data = tmp_path / "data"
    real_photos(data, 1)
    os.symlink(tmp_path / "gone.png", data / "dangling.png")
    r = tagger(data, model_dir, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"{data / 'dangling.png'}: skipped, a symbolic link to {tmp_path / 'gone.png'}, which does not exist" \
        in r.stderr


def test_caption_tools_does_not_copy_a_caption_linked_from_outside(tmp_path):
    data = tmp_path / "data"
    inside = make_image(data / "a.png", 32, 32)
    write_sidecar(inside, "cat, dog")
    linked = make_image(data / "b.png", 32, 32, seed=1)
    secret = tmp_path / "outside" / "secret.txt"
    secret.parent.mkdir()
    secret.write_text("private notes\n")
    os.symlink(secret, linked.with_suffix(".txt"))
    shared = make_image(data / "c.png", 32, 32, seed=2)
    write_sidecar(data / "shared.png", "bird")
    os.symlink("shared.txt", shared.with_suffix(".txt"))  # a link inside the dataset is fine
    r = run_script(TOOLS, "prefix", data, "ohwx", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (data / "a.txt").read_text() == "ohwx, cat, dog\n"
    assert os.path.islink(data / "b.txt") and secret.read_text() == "private notes\n"
    assert "b.txt links to" in r.stdout and "outside the dataset" in r.stdout
    assert "private notes" not in "".join(p.read_text() for p in data.glob("*.txt") if not p.is_symlink())
    assert (data / "c.txt").read_text() == "ohwx, bird\n"
