"""resize_images: oversized images shrunk to their training size, nothing enlarged, formats and sidecars kept."""

import math

import pytest
from PIL import Image

from library.dataset.buckets import BucketPlanner, BucketSettings
from library.errors import FatalError
from library.dataset.resize import resize_images, target_size
from tests.conftest import ROOT, run_script
from tests.fixtures.datasets import make_image, write_sidecar
from tests.fixtures.images import awkward_images, bad_images

pytestmark = pytest.mark.timeout(90)
SCRIPT = ROOT / "finetune" / "resize_images.py"
SETTINGS = BucketSettings((256, 256), True, 128, 512, 64, False)


def covering_size(w, h, bucket):
    """The size sd-scripts scales an image to so it covers its bucket (round half up)."""
    s = max(bucket[0] / w, bucket[1] / h)
    return math.floor(w * s + 0.5), math.floor(h * s + 0.5)


@pytest.mark.parametrize("settings", [SETTINGS, BucketSettings((256, 256), True, 128, 512, 64, True),
                                      BucketSettings((320, 192), False)])
def test_target_sizes_keep_bucket_and_need_no_training_resize(settings):
    planner = BucketPlanner(settings)
    for w, h in [(1000, 700), (700, 1000), (2000, 300), (257, 256), (999, 998), (640, 480), (100, 100)]:
        t = target_size(w, h, settings)
        before = planner.assign(w, h)
        if t is None:
            assert before.resized[0] >= w or before.resized[1] >= h  # only images training would not shrink
            continue
        assert t[0] < w and t[1] < h and abs(t[0] / t[1] - w / h) < 0.02
        after = planner.assign(*t)
        assert after.bucket == before.bucket and after.resized == t


def test_folder_resize_keeps_formats_sidecars_and_small_images(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    big_jpg = make_image(src / "big.jpg", 1200, 800, quality=90)
    big_png = make_image(src / "sub" / "alpha.png", 600, 900, mode="RGBA")
    small = make_image(src / "small.webp", 200, 150)
    write_sidecar(big_jpg, "1girl, solo")
    write_sidecar(big_png, "cat", ".caption")
    (src / "big.npz").write_bytes(b"stale latents")
    outcome = resize_images(src, out, SETTINGS, recursive=True, workers=0, progress=False)
    assert outcome.summary.done == 3 and not outcome.summary.failures
    planner = BucketPlanner(SETTINGS)
    for orig in (big_jpg, big_png):
        rel = orig.relative_to(src)
        with Image.open(orig) as a, Image.open(out / rel) as b:
            assert b.format == a.format and b.mode == a.mode
            bucket = planner.assign(*a.size).bucket
            assert b.size == covering_size(*a.size, bucket) and b.size[0] < a.size[0]
    assert (out / "small.webp").read_bytes() == small.read_bytes()  # never enlarged, copied as is
    assert (out / "big.txt").read_text() == "1girl, solo\n"
    assert (out / "sub" / "alpha.caption").read_text() == "cat\n"
    assert not (out / "big.npz").exists()
    assert "resized 2, copied unchanged 1" in "\n".join(outcome.lines())


def test_exif_orientation_is_baked_in_only_when_asked(tmp_path):
    src = tmp_path / "src"
    kinds = awkward_images(src)  # exif_rotated: stored 160x100 with orientation 6
    settings = BucketSettings((32, 32), True, 32, 64, 32, False)
    resize_images(src, tmp_path / "kept", settings, workers=0, progress=False)
    resize_images(src, tmp_path / "turned", settings, exif_transpose=True, workers=0, progress=False)
    with Image.open(tmp_path / "kept" / "exif_rotated.jpg") as kept, \
            Image.open(tmp_path / "turned" / "exif_rotated.jpg") as turned:
        assert kept.size[0] > kept.size[1] and kept.getexif().get(0x0112) == 6
        assert turned.size[0] < turned.size[1] and turned.getexif().get(0x0112, 1) == 1
    with Image.open(kinds["palette_png"]) as a, Image.open(tmp_path / "turned" / "palette.png") as b:
        assert b.size[0] < a.size[0] and b.format == "PNG" and b.mode == "RGBA"  # transparency survives
    assert not (tmp_path / "turned" / "sub").exists()  # not recursive


def test_bad_images_are_reported_and_the_rest_done(tmp_path):
    src = tmp_path / "src"
    bad = bad_images(src)
    good = make_image(src / "good.png", 900, 900)
    outcome = resize_images(src, tmp_path / "out", SETTINGS, workers=0, progress=False)
    failed = {p.name for p, _ in outcome.summary.failures}
    assert {bad["zero_bytes"].name, bad["truncated_png"].name, bad["text_as_png"].name} <= failed
    assert (tmp_path / "out" / good.name).is_file() and not (tmp_path / "out" / bad["zero_bytes"].name).exists()
    assert not list((tmp_path / "out").glob(".*.tmp"))  # no half-written files
    with pytest.raises(FatalError, match="must differ"):
        resize_images(src, src, SETTINGS)


def test_script_runs_from_another_folder(tmp_path):
    src = tmp_path / "src"
    make_image(src / "a.jpg", 2000, 1000)
    write_sidecar(src / "a.jpg", "tag")
    r = run_script(SCRIPT, src, tmp_path / "out", "--resolution", "512", "--max_data_loader_n_workers", "1",
                   "--no_progress", cwd=ROOT / "tests")
    assert r.returncode == 0, r.stderr
    assert "processed 1, skipped 0, failed 0" in r.stdout and "resized 1" in r.stdout
    with Image.open(tmp_path / "out" / "a.jpg") as img:
        assert img.size == covering_size(2000, 1000, BucketPlanner(BucketSettings((512, 512), True, 256, 1024)).
                                         assign(2000, 1000).bucket)
    bad = run_script(SCRIPT, src, tmp_path / "o2", "--resolution", "512", "--min_bucket_reso", "640", cwd=tmp_path)
    assert bad.returncode == 1 and "min_bucket_reso" in bad.stderr
