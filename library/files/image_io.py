"""Open any image file robustly: every Pillow mode to RGB on white, failures as a clear one-line reason."""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I", "F"}


class ImageLoadError(Exception):
    """An image could not be read; the message is the reason shown to the user."""


def failure_reason(exc: BaseException, path: Path) -> str:
    if isinstance(exc, Image.DecompressionBombError):
        return f"too large to open safely (decompression bomb protection): {exc}"
    if isinstance(exc, UnidentifiedImageError):
        try:
            size = path.getbuffer().nbytes if isinstance(path, io.BytesIO) else os.path.getsize(path)
            if size == 0:
                return "empty file (0 bytes)"
        except OSError:
            pass
        return "not an image or an unsupported format"
    text = str(exc) or exc.__class__.__name__
    if "truncated" in text.lower():
        return f"truncated or damaged file ({text})"
    if isinstance(exc, (OSError, SyntaxError, EOFError, ValueError)):
        return f"damaged or unreadable image ({text})"
    if isinstance(exc, MemoryError):
        return "not enough memory to decode this image"
    return f"{exc.__class__.__name__}: {text}"


def _to_eight_bit(img: Image.Image) -> Image.Image:
    """16-bit and float grayscale to 8-bit 'L' (Pillow's own convert clips them)."""
    arr = np.asarray(img)
    if img.mode == "F":
        arr = np.clip(arr, 0.0, 1.0 if arr.max(initial=0) <= 1.0 else 255.0)
        scale = 255.0 if arr.max(initial=0) <= 1.0 else 1.0
        return Image.fromarray((arr * scale).round().astype(np.uint8), "L")
    arr = arr.astype(np.uint32)
    if img.mode != "I" or arr.max(initial=0) > 255:
        arr = arr >> 8
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "L")


def to_rgb_on_white(img: Image.Image) -> Image.Image:
    """Any Pillow image (first frame) to RGB, compositing transparency onto white as the reference does."""
    if img.mode in SIXTEEN_BIT_MODES:
        img = _to_eight_bit(img)
    has_alpha = img.mode in ALPHA_MODES or "transparency" in img.info
    if not has_alpha:
        return img if img.mode == "RGB" else img.convert("RGB")
    rgba = img if img.mode == "RGBA" else img.convert("RGBA")
    canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    canvas.alpha_composite(rgba)
    return canvas.convert("RGB")


def shrink_to_pixels(img: Image.Image, max_pixels: int | None) -> Image.Image:
    """`img` shrunk (aspect kept, LANCZOS) to at most max_pixels pixels; as it is when smaller or max_pixels is None."""
    if not max_pixels or img.width * img.height <= max_pixels:
        return img
    scale = (max_pixels / (img.width * img.height)) ** 0.5
    return img.resize((max(1, int(img.width * scale)), max(1, int(img.height * scale))), Image.LANCZOS)


def open_image(path: str | os.PathLike | io.BytesIO,
               min_side: int | None = None) -> tuple[Image.Image, tuple[int, int]]:
    """Decode the first frame of `path` (a file, or an io.BytesIO of its bytes) as RGB on white.

    Args:
        min_side: when given, JPEGs are decoded at a reduced scale (DCT scaling) whose longest side is still
            at least this; much faster for large photos, but pixels differ slightly from a full decode.

    Returns:
        (image, (width, height)) where the size is the file's own size.
    Raises:
        ImageLoadError: with a one-line reason, for empty, truncated, non-image or oversized files.
    """
    path = path if isinstance(path, io.BytesIO) else Path(path)
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # EXIF/ICC chatter is not the user's problem
            with Image.open(path) as img:
                img.seek(0)
                size = img.size
                if min_side and img.format == "JPEG" and max(size) > 2 * min_side:
                    ratio = min_side / max(size)
                    img.draft(img.mode, (max(1, int(size[0] * ratio + 0.999)), max(1, int(size[1] * ratio + 0.999))))
                img.load()
                rgb = to_rgb_on_white(img)
                rgb.load()
        return rgb, size
    except FileNotFoundError:
        raise ImageLoadError("file disappeared before it could be read") from None
    except PermissionError:
        raise ImageLoadError("permission denied") from None
    except Exception as exc:  # noqa: BLE001 - every decoder failure becomes a per-image reason
        raise ImageLoadError(failure_reason(exc, path)) from None
