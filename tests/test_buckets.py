"""sd-scripts' bucket list and bucket assignment, checked against independent brute-force re-derivations."""

import math
from pathlib import Path

import pytest

from library.dataset.buckets import BucketPlanner, BucketSettings, adjust_bucket_bounds, as_resolution, make_bucket_resolutions
from library.dataset.report import ReportItem, report_lines
from tests.fixtures.datasets import make_image

pytestmark = pytest.mark.timeout(60)


def brute_force_buckets(res, lo, hi, step):
    """Every step-multiple width in [lo, hi] with the tallest step-multiple height <= hi fitting the area."""
    area = res[0] * res[1]
    out = set()
    side = 0
    while (side + step) * (side + step) <= area:  # largest square of step multiples within the area
        side += step
    out.add((side, side))
    for w in range(lo, hi + 1, step):
        fitting = [h for h in range(step, hi + 1, step) if w * h <= area]
        if fitting and max(fitting) >= lo:
            out.add((w, max(fitting)))
            out.add((max(fitting), w))
    return sorted(out)


def reference_assign_default(buckets, w, h):
    """Closest aspect ratio (first of equals), exact size first; scale to cover the bucket, round half up."""
    if (w, h) in buckets:
        b = (w, h)
    else:
        best = min(abs(bw / bh - w / h) for bw, bh in buckets)
        b = next(x for x in buckets if abs(x[0] / x[1] - w / h) == best)
    scale = max(b[0] / w, b[1] / h)
    resized = (math.floor(w * scale + 0.5), math.floor(h * scale + 0.5))
    return b, resized


def reference_assign_no_upscale(res, step, w, h):
    """Shrink to the area at the image's own aspect; round one side to the step and derive the other from it,
    whichever keeps the aspect better; bucket = resized size floored to the step."""
    area, ar = res[0] * res[1], w / h
    if w * h > area:
        def to_step(x):
            return math.floor(x + 0.5) // step * step
        width_first = to_step(math.sqrt(area * ar))
        height_first = to_step(math.sqrt(area / ar))
        err_w = abs(width_first / to_step(width_first / ar) - ar)
        err_h = abs(to_step(height_first * ar) / height_first - ar)
        if err_w < err_h:
            resized = (width_first, math.floor(width_first / ar + 0.5))
        else:
            resized = (math.floor(height_first * ar + 0.5), height_first)
    else:
        resized = (w, h)
    return (resized[0] // step * step, resized[1] // step * step), resized


BUCKET_CASES = [((512, 512), 256, 1024, 64), ((768, 768), 256, 1536, 64), ((1024, 1024), 256, 2048, 64),
                ((1024, 1024), 512, 1024, 64), ((768, 512), 256, 1024, 32), ((1024, 1024), 320, 2048, 128),
                ((640, 640), 256, 768, 64)]
SIZES = [(512, 512), (1024, 1024), (4000, 3000), (3000, 4000), (1920, 1080), (1080, 1920), (300, 300),
         (250, 4000), (4000, 250), (1, 1), (2048, 2048), (1217, 833), (832, 1216), (999, 1001), (64, 64),
         (5000, 1000), (640, 960), (1536, 640), (700, 1400)]


@pytest.mark.parametrize("res,lo,hi,step", BUCKET_CASES)
def test_bucket_list_matches_brute_force(res, lo, hi, step):
    assert make_bucket_resolutions(res, lo, hi, step) == brute_force_buckets(res, lo, hi, step)


def test_known_sd15_bucket_list():
    # resolution 512, buckets 256..1024: the list sd-scripts logs for SD 1.5 LoRA training
    assert make_bucket_resolutions((512, 512), 256, 1024, 64) == [
        (256, 832), (256, 896), (256, 960), (256, 1024), (320, 704), (320, 768), (384, 640), (448, 576),
        (512, 512), (576, 448), (640, 384), (704, 320), (768, 320), (832, 256), (896, 256), (960, 256),
        (1024, 256)]


@pytest.mark.parametrize("res,lo,hi,step", BUCKET_CASES)
def test_default_assignment_matches_reference(res, lo, hi, step):
    planner = BucketPlanner(BucketSettings(res, True, lo, hi, step, False))
    # sd-scripts first rounds min_bucket_reso down and max_bucket_reso up to the step (320 -> 256 at 128)
    buckets = brute_force_buckets(res, lo // step * step, -(-hi // step) * step, step)
    for w, h in SIZES:
        a = planner.assign(w, h)
        bucket, resized = reference_assign_default(buckets, w, h)
        assert (a.bucket, a.resized) == (bucket, resized), (w, h)
        assert a.resized[0] >= a.bucket[0] and a.resized[1] >= a.bucket[1]  # covers the bucket, crop only
        assert a.upscaled == (resized[0] > w or resized[1] > h)


@pytest.mark.parametrize("res,step", [((1024, 1024), 64), ((512, 512), 64), ((768, 512), 32), ((1024, 1024), 128)])
def test_no_upscale_assignment_matches_reference(res, step):
    planner = BucketPlanner(BucketSettings(res, True, 256, 2048, step, True))
    for w, h in SIZES:
        a = planner.assign(w, h)
        assert (a.bucket, a.resized) == reference_assign_no_upscale(res, step, w, h), (w, h)
        assert not a.upscaled


def test_no_upscale_hand_computed():
    planner = BucketPlanner(BucketSettings((1024, 1024), True, 256, 2048, 64, True))
    # 4000x3000: width-first gives 1152/832 (err .051), height-first 1088/832 (err .026) -> height-first
    a = planner.assign(4000, 3000)
    assert (a.bucket, a.resized) == ((1088, 832), (1109, 832))
    small = planner.assign(700, 500)  # below the area: kept, bucket floored to 64
    assert (small.bucket, small.resized) == ((640, 448), (700, 500))
    assert planner.assign(50, 50).bucket == (0, 0)  # sd-scripts cannot train this; the report flags it


def test_without_bucketing_everything_goes_to_the_resolution():
    planner = BucketPlanner(BucketSettings((768, 512), False))
    for w, h in SIZES:
        a = planner.assign(w, h)
        assert a.bucket == (768, 512)
        assert a.resized == (math.floor(w * max(768 / w, 512 / h) + 0.5), math.floor(h * max(768 / w, 512 / h) + 0.5))


def test_exact_bucket_size_wins_and_ties_take_the_first():
    planner = BucketPlanner(BucketSettings((1024, 1024), True, 256, 2048, 64))
    assert planner.assign(832, 1216).bucket == (832, 1216)
    assert planner.assign(832, 1216).resized == (832, 1216)
    buckets = brute_force_buckets((1024, 1024), 256, 2048, 64)
    for w, h in [(1000, 1000), (3, 2), (2, 3)]:
        assert planner.assign(w, h).bucket == reference_assign_default(buckets, w, h)[0]


def test_bounds_rounding_and_refusals():
    assert adjust_bucket_bounds(300, 1000, 64) == (256, 1024)
    assert adjust_bucket_bounds(256, 2048, 64) == (256, 2048)
    with pytest.raises(ValueError, match="min_bucket_reso"):
        BucketPlanner(BucketSettings((512, 512), True, 768, 1024, 64))
    with pytest.raises(ValueError, match="max_bucket_reso"):
        BucketPlanner(BucketSettings((1024, 1024), True, 256, 768, 64))
    assert as_resolution(1024) == (1024, 1024)
    assert as_resolution([1216, 832]) == as_resolution("1216,832") == as_resolution("1216x832") == (1216, 832)
    for bad in (True, [1, 2, 3], "big", 0):
        with pytest.raises(ValueError):
            as_resolution(bad)


def test_report_counts_buckets_upscales_and_lonely_buckets(tmp_path: Path):
    sizes = {"a.png": (1024, 1024), "b.png": (2048, 2048), "c.png": (512, 512), "d.png": (1920, 640)}
    items = [ReportItem(make_image(tmp_path / n, w, h), "1girl, solo" if n != "d.png" else "scenery", repeats=2)
             for n, (w, h) in sizes.items()]
    items.append(ReportItem(tmp_path / "missing.png", None))
    lines = report_lines(items, BucketSettings((1024, 1024), True, 256, 2048, 64), top_tags=5)
    text = "\n".join(lines)
    buckets = brute_force_buckets((1024, 1024), 256, 2048, 64)
    expected = {}
    for w, h in sizes.values():
        b = reference_assign_default(buckets, w, h)[0]
        expected[b] = expected.get(b, 0) + 2
    for (bw, bh), count in expected.items():
        assert f"    {bw}x{bh}: {count}" in lines
    assert "5 images, 4 with a caption, 1 without" in text
    assert "images training will enlarge (1, up to 2.00x" in text and "c.png 512x512 -> 1024x1024" in text
    assert "buckets with a single image (1;" in text and "(d.png)" in text
    assert "unreadable images (1)" in text
    assert "1girl (3), solo (3), scenery (1)" in text
