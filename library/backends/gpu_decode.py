"""Opt-in JPEG decoding on the GPU (--decode gpu): NVIDIA nvImageCodec decodes, torch pads and resizes on the device.

The decode workers then only read JPEG bytes (and the header's size); other formats, CMYK and odd JPEGs still
decode on the CPU in the workers, exactly as before. Decoders differ slightly (IDCT rounding, chroma upsampling)
and torch's antialiased bicubic is not PIL's BICUBIC bit for bit (on photos: mean difference under 0.4 of 255,
99% of values within 3), so probabilities differ slightly and a tag right at the threshold can flip.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install nvidia-nvimgcodec-cu12 (CUDA 12) or nvidia-nvimgcodec-cu13 (CUDA 13), and torch with CUDA"
GPU_MODES = ("RGB", "L")  # JPEG colour modes nvImageCodec decodes to the same RGB as Pillow


def gpu_decode_unavailable() -> str | None:
    """Why --decode gpu cannot run here (None when it can): the nvImageCodec package, torch, a CUDA device."""
    try:
        from nvidia import nvimgcodec  # noqa: F401
    except ImportError:
        return f"nvImageCodec is not installed ({INSTALL_HINT})"
    try:
        import torch
    except ImportError:
        return "torch is not installed (it pads and resizes the decoded images on the GPU)"
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible to torch"
    return None


@dataclass(frozen=True)
class JpegBytesLoader:
    """Picklable worker job: a plain RGB/grayscale JPEG -> ('jpeg', its bytes), anything else -> the CPU loader's array.

    Returns (payload, file size) like every loader; payload is ('jpeg', bytes) or ('rgb', uint8 HxWx3 array).
    """

    cpu_loader: Callable

    def __call__(self, path) -> tuple[tuple[str, object], tuple[int, int]]:
        data = path.getvalue() if isinstance(path, io.BytesIO) else Path(path).read_bytes()
        try:
            with Image.open(io.BytesIO(data)) as img:
                if img.format == "JPEG" and img.mode in GPU_MODES:
                    return ("jpeg", data), img.size
        except Exception:  # noqa: BLE001 - the CPU loader gives the one-line reason
            pass
        array, size = self.cpu_loader(io.BytesIO(data))
        return ("rgb", array), size


def pad_resize(images: list, size: int):
    """Decoded HxWx3 uint8 torch tensors (any device) -> (N, size, size, 3) uint8: centred white square, bicubic.

    The geometry is the reference's: side = max(w, h), left = (side - w) // 2, top = (side - h) // 2, then one
    bicubic resize (antialiased when shrinking, as PIL does) with values rounded and clamped to 0..255.
    """
    import torch
    import torch.nn.functional as F

    out = []
    for img in images:
        h, w = int(img.shape[0]), int(img.shape[1])
        side = max(w, h)
        square = torch.full((side, side, 3), 255, dtype=torch.uint8, device=img.device)
        top, left = (side - h) // 2, (side - w) // 2
        square[top:top + h, left:left + w] = img
        if side != size:
            x = square.permute(2, 0, 1)[None].float()
            x = F.interpolate(x, size=(size, size), mode="bicubic", antialias=side > size, align_corners=False)
            square = x[0].round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0)
        out.append(square)
    return torch.stack(out)


class GpuJpegDecoder:
    """Decodes a batch's JPEG payloads on the GPU and returns the model's uint8 squares on the CPU."""

    def __init__(self, size: int, cpu_loader: Callable, device: str = "cuda"):
        from nvidia import nvimgcodec

        self.size, self.cpu_loader, self.device = size, cpu_loader, device
        self.decoder = nvimgcodec.Decoder()
        self.params = nvimgcodec.DecodeParams(apply_exif_orientation=False)  # the CPU path ignores EXIF too

    def squares(self, payloads: list[tuple[str, object]]) -> np.ndarray:
        """(N, size, size, 3) uint8 RGB for ('jpeg', bytes) / ('rgb', array) payloads, in order."""
        import torch

        jpeg_rows = [i for i, (kind, _) in enumerate(payloads) if kind == "jpeg"]
        out = np.empty((len(payloads), self.size, self.size, 3), dtype=np.uint8)
        for i, (kind, data) in enumerate(payloads):
            if kind == "rgb":
                out[i] = data
        if jpeg_rows:
            decoded = self.decoder.decode([payloads[i][1] for i in jpeg_rows], params=self.params)
            gpu_rows = [i for i, img in zip(jpeg_rows, decoded) if img is not None]
            for i, img in zip(jpeg_rows, decoded):
                if img is None:  # nvImageCodec refused this one: decode it on the CPU as the workers would
                    out[i] = self.cpu_loader(io.BytesIO(payloads[i][1]))[0]
            tensors = [torch.as_tensor(img, device=self.device) for img in decoded if img is not None]
            if tensors:
                out[gpu_rows] = pad_resize(tensors, self.size).cpu().numpy()
        return out


def gpu_decoder(size: int, cpu_loader: Callable, wanted: str) -> GpuJpegDecoder | None:
    """The GPU decoder for --decode gpu, or None (CPU decoding) with one warning saying why."""
    if wanted != "gpu":
        return None
    reason = gpu_decode_unavailable()
    if reason is None:
        try:
            return GpuJpegDecoder(size, cpu_loader)
        except Exception as exc:  # noqa: BLE001 - a driver or library mismatch: decode on the CPU instead
            reason = f"nvImageCodec could not start ({exc})"
    logger.warning("--decode gpu: %s; decoding on the CPU instead", reason)
    return None
