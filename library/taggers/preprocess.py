"""Tagger preprocessing as SmilingWolf's reference: white pad to a centred square, BICUBIC resize, BGR arrays."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from library.image_io import open_image


def pad_to_square(img: Image.Image) -> Image.Image:
    """Centre an RGB image on a white square of side max(w, h)."""
    w, h = img.size
    side = max(w, h)
    if w == h:
        return img
    canvas = Image.new("RGB", (side, side), (255, 255, 255))
    canvas.paste(img, ((side - w) // 2, (side - h) // 2))
    return canvas


def square_rgb_uint8(img: Image.Image, size: int) -> np.ndarray:
    """Pad and resize an RGB image to `size` x `size`; returns HxWx3 uint8 RGB (the compact form shipped between processes)."""
    square = pad_to_square(img)
    if square.size[0] != size:
        square = square.resize((size, size), Image.BICUBIC)
    return np.asarray(square, dtype=np.uint8)


def wd_input(batch_rgb: np.ndarray) -> np.ndarray:
    """NHWC uint8 RGB -> NHWC float32 BGR 0..255 (SmilingWolf layout)."""
    return np.ascontiguousarray(batch_rgb[..., ::-1], dtype=np.float32)


def cl_input(batch_rgb: np.ndarray) -> np.ndarray:
    """NHWC uint8 RGB -> NCHW float32 BGR in [-1, 1] (tag_mapping.json layout)."""
    bgr = batch_rgb[..., ::-1].transpose(0, 3, 1, 2).astype(np.float32)
    return np.ascontiguousarray(bgr / 127.5 - 1.0)


@dataclass(frozen=True)
class SquareImageLoader:
    """Picklable per-image job for worker processes: path -> (uint8 RGB square, original size)."""

    size: int
    fast_decode: bool = False

    def __call__(self, path: Path) -> tuple[np.ndarray, tuple[int, int]]:
        img, original_size = open_image(path, self.size if self.fast_decode else None)
        return square_rgb_uint8(img, self.size), original_size
