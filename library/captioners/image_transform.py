"""A transformers image processor's resize/crop/normalise in PIL + numpy: uint8 in workers, floats on the device."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from library.errors import FatalError
from library.files.image_io import open_image


def _get(obj: Any, key: str) -> Any:
    """Read `key` from a SizeDict (transformers 5), a dict (4.x) or an int; None when absent."""
    if obj is None:
        return None
    if isinstance(obj, dict):
        return obj.get(key)
    return getattr(obj, key, None)


_FILTERS = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}


def _pil_filter(resample: Any) -> int:
    """PIL filter number from an int, a PILImageResampling or a torchvision InterpolationMode; BICUBIC if unset."""
    if resample is None:
        return 3
    value = getattr(resample, "value", resample)
    if isinstance(value, str):
        return _FILTERS.get(value.lower(), 3)
    return int(value)


@dataclass(frozen=True)
class ImageTransform:
    """The image half of a BLIP / BLIP-2 / GIT processor, picklable, used as the pipeline's per-image loader.

    Attributes:
        resize: exact (height, width), or None.
        shortest_edge: resize so the short side has this length (CLIP/GIT), or None.
        crop: centre crop (height, width) after resizing, or None.
        resample: PIL resampling filter number (3 = BICUBIC).
        rescale_factor: multiply pixel values by this (1/255), or None to skip.
        mean, std: per-channel normalisation, or None to skip.
    """

    resize: tuple[int, int] | None = None
    shortest_edge: int | None = None
    crop: tuple[int, int] | None = None
    resample: int = 3
    rescale_factor: float | None = 1 / 255
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    @classmethod
    def from_image_processor(cls, processor: Any) -> "ImageTransform":
        """Read the settings of a loaded image processor (slow, PIL or fast; transformers 4.x or 5.x).

        Raises:
            FatalError: the processor uses settings this reimplementation does not cover (padding,
                longest-edge limits, no resize), so the results would not match the model's training.
        """
        if getattr(processor, "do_pad", False):
            raise FatalError(f"{type(processor).__name__}: padding image processors are not supported")
        if getattr(processor, "do_resize", True) is False:
            raise FatalError(f"{type(processor).__name__}: do_resize=False is not supported (batches need one size)")
        size = getattr(processor, "size", None)
        resize = shortest = None
        if isinstance(size, int):
            resize = (size, size)
        elif _get(size, "longest_edge") or _get(size, "max_height"):
            raise FatalError(f"{type(processor).__name__}: size {size} (longest edge limits) is not supported")
        elif _get(size, "shortest_edge"):
            shortest = int(_get(size, "shortest_edge"))
        elif _get(size, "height") and _get(size, "width"):
            resize = (int(_get(size, "height")), int(_get(size, "width")))
        else:
            raise FatalError(f"{type(processor).__name__}: image size {size!r} is not understood")
        crop = None
        if getattr(processor, "do_center_crop", False):
            crop_size = getattr(processor, "crop_size", None)
            crop = ((int(crop_size), int(crop_size)) if isinstance(crop_size, int)
                    else (int(_get(crop_size, "height")), int(_get(crop_size, "width"))))
        if resize is None and crop is None:
            raise FatalError(f"{type(processor).__name__}: shortest-edge resizing without a crop gives "
                             "images of different sizes, which cannot be batched")
        resample = _pil_filter(getattr(processor, "resample", None))
        rescale = None
        if getattr(processor, "do_rescale", True):
            rescale = float(getattr(processor, "rescale_factor", 1 / 255))
        mean = std = None
        if getattr(processor, "do_normalize", True):
            mean, std = tuple(float(v) for v in processor.image_mean), tuple(float(v) for v in processor.image_std)
        return cls(resize=resize, shortest_edge=shortest, crop=crop, resample=resample, rescale_factor=rescale,
                   mean=mean, std=std)

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) after the resize step, with transformers' rounding (int() of the long side)."""
        if self.resize is not None:
            return self.resize[1], self.resize[0]
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = self.shortest_edge, int(self.shortest_edge * long / short)
        return (new_short, new_long) if width <= height else (new_long, new_short)

    def apply(self, img: Image.Image) -> np.ndarray:
        """Resize and crop an RGB image; returns HxWx3 uint8 (normalisation happens on the device)."""
        size = self.resized_size(*img.size)
        if size != img.size:
            img = img.resize(size, resample=self.resample)
        arr = np.asarray(img, dtype=np.uint8)
        if self.crop is not None:
            arr = center_crop(arr, self.crop)
        return arr

    def __call__(self, path: Path) -> tuple[np.ndarray, tuple[int, int]]:
        img, original_size = open_image(path)
        return self.apply(img), original_size

    def to_pixel_values(self, arrays: Sequence[np.ndarray], device: Any = "cpu", dtype: Any = None):
        """Stack HxWx3 uint8 arrays into the normalised NCHW float tensor the model expects.

        Args:
            arrays: outputs of `apply` (all the same size).
            device: torch device for the result.
            dtype: torch dtype of the result (the model's); float32 when None.
        """
        import torch

        batch = torch.from_numpy(np.stack(arrays)).to(device)
        x = batch.permute(0, 3, 1, 2).to(torch.float32)
        if self.rescale_factor is not None:
            x = x * self.rescale_factor
        if self.mean is not None:
            mean = torch.tensor(self.mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
            std = torch.tensor(self.std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
            x = (x - mean) / std
        return x.to(dtype) if dtype is not None else x


def center_crop(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Centre-crop HxWxC to size (h, w) as transformers does, zero-padding when the image is smaller."""
    h, w = arr.shape[:2]
    ch, cw = size
    if h < ch or w < cw:
        nh, nw = max(h, ch), max(w, cw)
        padded = np.zeros((nh, nw) + arr.shape[2:], dtype=arr.dtype)
        top_pad, left_pad = -(-(nh - h) // 2), -(-(nw - w) // 2)  # ceil, as transformers
        padded[top_pad:top_pad + h, left_pad:left_pad + w] = arr
        top, left = max(0, (h - ch) // 2 + top_pad), max(0, (w - cw) // 2 + left_pad)
        return padded[top:top + ch, left:left + cw]
    top, left = (h - ch) // 2, (w - cw) // 2
    return arr[top:top + ch, left:left + cw]
