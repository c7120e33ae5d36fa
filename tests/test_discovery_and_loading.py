"""Image discovery, robust loading of every awkward file, and preprocessing equal to the reference."""

import os

import numpy as np
import pytest

from library.files.discovery import discover_images, find_images
from library.errors import FatalError
from library.files.image_io import ImageLoadError, open_image
from library.taggers.preprocess import SquareImageLoader, cl_input, wd_input
from tests.fixtures.images import awkward_images, bad_images, real_photos
from tests.fixtures.wd_models import reference_preprocess


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return root, awkward_images(root), bad_images(root), real_photos(root, n=6)


def test_discovery_case_insensitive_hidden_and_recursive(dataset):
    root, awkward, bad, photos = dataset
    names = {p.name for p in find_images(root)}
    assert {"UPPER.JPG", "Mixed.Jpeg", "palette.gif", "image.tif", "image.webp", "image.bmp", "café photo 1.png"} <= names
    assert ".hidden.png" not in names and "._photo.png" not in names and "notes.txt" not in names
    assert "x.png" not in names
    deep = find_images(root, recursive=True)
    assert awkward["nested"] in deep
    assert deep == find_images(root, recursive=True)  # deterministic
    assert deep == sorted(deep, key=lambda p: p.relative_to(root).parts)


def test_discovery_survives_symlink_loops(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "img.png").write_bytes(b"x")
    os.symlink(tmp_path, tmp_path / "a" / "loop")
    os.symlink(tmp_path / "a", tmp_path / "a" / "self")
    found = find_images(tmp_path, recursive=True)
    assert found == [tmp_path / "a" / "img.png"]


def test_discover_images_fatal_messages(tmp_path):
    with pytest.raises(FatalError, match="no such"):
        discover_images(tmp_path / "missing")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.png").write_bytes(b"x")
    with pytest.raises(FatalError, match="--recursive"):
        discover_images(tmp_path)
    assert discover_images(tmp_path / "sub" / "a.png") == [tmp_path / "sub" / "a.png"]


def test_every_awkward_image_loads_as_rgb(dataset):
    _, awkward, _, _ = dataset
    for kind, path in awkward.items():
        img, size = open_image(path)
        assert img.mode == "RGB", kind
        assert size[0] >= 1 and size[1] >= 1


def test_alpha_is_composited_on_white(dataset):
    _, awkward, _, _ = dataset
    img, _ = open_image(awkward["rgba"])
    left = np.asarray(img)[:, 0]  # alpha 0 column
    assert (left == 255).all()
    pal, _ = open_image(awkward["palette_png"])
    assert (np.asarray(pal)[0, 0] == 255).all()  # transparent index 0


def test_sixteen_bit_is_scaled_not_clipped(dataset):
    _, awkward, _, _ = dataset
    img, _ = open_image(awkward["gray16_png"])
    arr = np.asarray(img)
    assert arr.max() > 200 and arr.min() < 10 and len(np.unique(arr)) > 50


@pytest.mark.parametrize("kind,reason", [
    ("zero_bytes", "empty file"), ("truncated_jpeg", "truncated"), ("truncated_png", ""),
    ("text_as_png", "not an image"), ("decompression_bomb", "decompression bomb"),
])
def test_bad_files_give_one_line_reasons(dataset, kind, reason):
    _, _, bad, _ = dataset
    with pytest.raises(ImageLoadError) as info:
        open_image(bad[kind])
    assert reason in str(info.value) and "\n" not in str(info.value)


def test_preprocessing_equals_the_reference(dataset):
    _, awkward, _, photos = dataset
    loader = SquareImageLoader(64)
    for path in list(awkward.values()) + photos:
        square, _ = loader(path)
        ours = wd_input(square[None])[0]
        expected = reference_preprocess(path, 64)
        assert ours.dtype == np.float32 and ours.shape == (64, 64, 3)
        assert np.array_equal(ours, expected), path.name


def test_preprocessing_at_448_and_no_resize_when_equal(tmp_path):
    photos = real_photos(tmp_path, n=2)
    for path in photos:
        square, _ = SquareImageLoader(448)(path)
        assert np.array_equal(wd_input(square[None])[0], reference_preprocess(path, 448))
    from PIL import Image
    Image.new("RGB", (32, 32), (10, 20, 30)).save(tmp_path / "exact.png")
    square, _ = SquareImageLoader(32)(tmp_path / "exact.png")
    assert (square == [10, 20, 30]).all()


def test_cl_input_is_nchw_bgr_minus_one_to_one():
    rgb = np.zeros((1, 2, 2, 3), np.uint8)
    rgb[..., 0] = 255  # red
    x = cl_input(rgb)
    assert x.shape == (1, 3, 2, 2)
    assert np.allclose(x[0, 2], 1.0) and np.allclose(x[0, 0], -1.0)  # BGR: red is the last channel


def test_fast_decode_is_close_to_the_reference_and_only_for_large_jpegs(tmp_path):
    from PIL import Image
    from tests.fixtures.images import pattern

    big = tmp_path / "big.jpg"
    Image.fromarray(pattern(2000, 1500, 3)).save(big, quality=95)
    full, size = open_image(big)
    reduced, size2 = open_image(big, min_side=448)
    assert size == size2 == (2000, 1500)
    assert reduced.size == (500, 375) and full.size == (2000, 1500)
    fast = SquareImageLoader(448, fast_decode=True)(big)[0].astype(float)
    ref = reference_preprocess(big, 448)[..., ::-1]
    assert np.abs(fast - ref).mean() < 3.0
    small = tmp_path / "small.jpg"
    Image.fromarray(pattern(600, 400, 4)).save(small, quality=95)
    assert np.array_equal(SquareImageLoader(448, fast_decode=True)(small)[0],
                          SquareImageLoader(448)(small)[0])  # not much larger than the input: exact path
