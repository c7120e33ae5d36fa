"""Tagger preprocessing per layout: picklable uint8 loaders for worker processes, float conversion per batch."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from library.files.image_io import open_image

CAMIE_PAD = (124, 116, 104)  # Camie's reference pads with the ImageNet mean as 8-bit RGB
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# imgutils' Pillow names and numbers of resampling filters (the numbers are Pillow's own)
RESAMPLE = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "box": Image.BOX,
            "hamming": Image.HAMMING, "lanczos": Image.LANCZOS}


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


def fit_and_pad_uint8(img: Image.Image, size: int, colour: tuple[int, int, int] = CAMIE_PAD) -> np.ndarray:
    """Camie's geometry: longest side to `size` (LANCZOS, short side truncated), centred on a `colour` square.

    Camie's float part is IMAGENET_TENSOR (RGB, NCHW, ImageNet mean/std).
    """
    w, h = img.size
    aspect = w / h
    if aspect > 1:
        new_w, new_h = size, max(1, int(size / aspect))
    else:
        new_w, new_h = max(1, int(size * aspect)), size
    resized = img.resize((new_w, new_h), Image.LANCZOS)
    canvas = Image.new("RGB", (size, size), colour)
    canvas.paste(resized, ((size - new_w) // 2, (size - new_h) // 2))
    return np.asarray(canvas, dtype=np.uint8)


def wd_input(batch_rgb: np.ndarray) -> np.ndarray:
    """NHWC uint8 RGB -> NHWC float32 BGR 0..255 (SmilingWolf layout)."""
    return np.ascontiguousarray(batch_rgb[..., ::-1], dtype=np.float32)


def cl_input(batch_rgb: np.ndarray) -> np.ndarray:
    """NHWC uint8 RGB -> NCHW float32 BGR in [-1, 1] (tag_mapping.json layout)."""
    bgr = batch_rgb[..., ::-1].transpose(0, 3, 1, 2).astype(np.float32)
    return np.ascontiguousarray(bgr / 127.5 - 1.0)


def _triple(value) -> tuple[float, float, float]:
    values = [float(v) for v in (value if isinstance(value, (list, tuple)) else [value])]
    if len(values) == 1:
        values *= 3
    if len(values) != 3:
        raise ValueError(f"expected 1 or 3 channel values, got {value!r}")
    return values[0], values[1], values[2]


@dataclass(frozen=True)
class TensorStages:
    """The float part of a preprocessing: NHWC uint8 RGB -> NCHW float32 RGB, as to_tensor then each op in order.

    Attributes:
        ops: ('normalize', mean, std): (x - mean) / std; ('rescale', (f, f, f), ()): x * f.
    """

    ops: tuple[tuple[str, tuple[float, ...], tuple[float, ...]], ...] = ()

    def __call__(self, batch_rgb: np.ndarray) -> np.ndarray:
        x = batch_rgb.transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255)
        for kind, a, b in self.ops:
            a_arr = np.asarray(a, np.float32).reshape(1, -1, 1, 1)
            if kind == "normalize":
                x = (x - a_arr) / np.asarray(b, np.float32).reshape(1, -1, 1, 1)
            else:
                x = x * a_arr
        return np.ascontiguousarray(x, dtype=np.float32)


    def onnx_ops(self) -> tuple[tuple[str, object], ...]:
        """The same steps as library.backends.onnx_uint8 InputSpec ops (after the cast to float and NCHW)."""
        out: list[tuple[str, object]] = [("div", 255.0)]
        for kind, a, b in self.ops:
            out += [("sub", a), ("div", b)] if kind == "normalize" else [("mul", a)]
        return tuple(out)


IMAGENET_TENSOR = TensorStages((("normalize", IMAGENET_MEAN, IMAGENET_STD),))


@dataclass(frozen=True)
class ResizeStage:
    """imgutils' Pillow resize: size (h, w) exactly, or one int for the shorter side (aspect kept, max_size cap)."""

    size: tuple[int, ...]
    resample: int = Image.BILINEAR
    max_size: int | None = None
    antialias: bool = True

    def target(self, w: int, h: int) -> tuple[int, int]:
        if len(self.size) == 2:
            return self.size[1], self.size[0]
        side = self.size[0]
        ow, oh = (side, int(side * h / w)) if w < h else (int(side * w / h), side)
        if self.max_size is not None and max(ow, oh) > self.max_size:
            ow, oh = ((int(self.max_size * ow / oh), self.max_size) if oh > ow
                      else (self.max_size, int(self.max_size * oh / ow)))
        return ow, oh

    def __call__(self, img: Image.Image) -> Image.Image:
        size = self.target(*img.size)
        if size == img.size:
            return img
        if self.resample in (Image.BILINEAR, Image.BICUBIC):
            return img.resize(size, self.resample, reducing_gap=None if self.antialias else 1.0)
        return img.resize(size, self.resample)


@dataclass(frozen=True)
class CenterCropStage:
    """imgutils' Pillow centre crop to (h, w): black padding first when the image is smaller, floor offsets."""

    height: int
    width: int

    def __call__(self, img: Image.Image) -> Image.Image:
        w, h = img.size
        if w < self.width or h < self.height:
            pad_w, pad_h = max(self.width - w, 0), max(self.height - h, 0)
            canvas = Image.new(img.mode, (w + pad_w, h + pad_h), (0, 0, 0))
            canvas.paste(img, (pad_w // 2, pad_h // 2))
            img, (w, h) = canvas, canvas.size
        left, top = (w - self.width) // 2, (h - self.height) // 2
        return img.crop((left, top, left + self.width, top + self.height))


@dataclass(frozen=True)
class StagedPreprocess:
    """A preprocess.json split into the image stages (run by workers) and the tensor stages (main process).

    Attributes:
        geometry: resize / centre-crop stages in file order.
        tensor: to_tensor, normalize and rescale stages.
        output_size: (height, width) the geometry always produces, or None when it depends on the image.
    """

    geometry: tuple
    tensor: TensorStages
    output_size: tuple[int, int] | None


def _resample(value) -> int:
    if isinstance(value, int) and value in RESAMPLE.values():
        return value
    if isinstance(value, str) and value.lower() in RESAMPLE:
        return RESAMPLE[value.lower()]
    raise ValueError(f"unsupported interpolation {value!r} (supported: {', '.join(RESAMPLE)})")


def _size(value) -> tuple[int, ...]:
    values = tuple(int(v) for v in (value if isinstance(value, (list, tuple)) else [value]))
    if len(values) not in (1, 2) or min(values) <= 0:
        raise ValueError(f"size must be one or two positive numbers, got {value!r}")
    return values


def parse_preprocess_json(path: str | Path) -> StagedPreprocess:
    """Read a deepghs preprocess.json ({"stages": [...]}, imgutils' Pillow transforms) into a StagedPreprocess.

    Supported stages: resize, center_crop, convert_rgb (white background), to_tensor, maybe_to_tensor,
    normalize, rescale. Raises ValueError naming the file and stage otherwise.
    """
    path = Path(path)
    try:
        stages = json.loads(path.read_text(encoding="utf-8"))["stages"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: expected a JSON object with a 'stages' list ({exc})") from None
    geometry: list = []
    ops: list = []
    size: tuple[int, int] | None = None
    tensor = False
    for n, stage in enumerate(stages if isinstance(stages, list) else [stages], start=1):
        kind = stage.get("type") if isinstance(stage, dict) else None
        try:
            if kind in ("to_tensor", "maybe_to_tensor"):
                tensor = True
            elif kind in ("resize", "center_crop", "convert_rgb") and tensor:
                raise ValueError("image stages must come before to_tensor")
            elif kind == "resize":
                resize = ResizeStage(_size(stage["size"]), _resample(stage.get("interpolation", "bilinear")),
                                     stage.get("max_size"), bool(stage.get("antialias", True)))
                geometry.append(resize)
                size = (resize.size[0], resize.size[1]) if len(resize.size) == 2 else None
            elif kind == "center_crop":
                crop = _size(stage["size"])
                geometry.append(CenterCropStage(crop[0], crop[-1]))
                size = (crop[0], crop[-1])
            elif kind == "convert_rgb":
                if stage.get("force_background", "white") != "white":
                    raise ValueError("only a white background is supported")
            elif kind == "normalize" and tensor:
                ops.append(("normalize", _triple(stage["mean"]), _triple(stage["std"])))
            elif kind == "rescale" and tensor:
                ops.append(("rescale", _triple(stage.get("rescale_factor", 1 / 255)), ()))
            else:
                raise ValueError("unsupported stage" + ("" if tensor else " (or it needs to_tensor first)"))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: stage {n} ({kind or repr(stage)}): {exc}") from None
    if not tensor:
        raise ValueError(f"{path}: no to_tensor stage")
    return StagedPreprocess(tuple(geometry), TensorStages(tuple(ops)), size)


@dataclass(frozen=True)
class SquareImageLoader:
    """Picklable per-image job for worker processes: path -> (uint8 RGB square, original size). WD and cl_tagger."""

    size: int
    fast_decode: bool = False

    def __call__(self, path: Path) -> tuple[np.ndarray, tuple[int, int]]:
        img, original_size = open_image(path, self.size if self.fast_decode else None)
        return square_rgb_uint8(img, self.size), original_size


@dataclass(frozen=True)
class FitPadImageLoader:
    """Picklable per-image job: path -> (uint8 RGB, fitted and padded to `size`, original size). Camie."""

    size: int
    colour: tuple[int, int, int] = CAMIE_PAD
    fast_decode: bool = False

    def __call__(self, path: Path) -> tuple[np.ndarray, tuple[int, int]]:
        img, original_size = open_image(path, self.size if self.fast_decode else None)
        return fit_and_pad_uint8(img, self.size, self.colour), original_size


@dataclass(frozen=True)
class StagedImageLoader:
    """Picklable per-image job: path -> (uint8 RGB after a preprocess.json's image stages, original size). PixAI."""

    geometry: tuple
    size: int
    fast_decode: bool = False

    def __call__(self, path: Path) -> tuple[np.ndarray, tuple[int, int]]:
        img, original_size = open_image(path, self.size if self.fast_decode else None)
        for stage in self.geometry:
            img = stage(img)
        return np.asarray(img, dtype=np.uint8), original_size
