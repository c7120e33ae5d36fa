"""Torch device and dtype choice for the transformers captioners (--device, --dtype), seeding, out-of-memory handling."""

from __future__ import annotations

import logging
import random
from typing import Callable, TypeVar

from library.errors import FatalError

logger = logging.getLogger(__name__)

DTYPES = ("auto", "fp32", "fp16", "bf16")
T = TypeVar("T")


def resolve_device(device: str | None = "auto"):
    """'auto' -> cuda if present, else mps, else cpu; 'cuda:1', 'cpu', ... are checked and returned as torch.device."""
    import torch

    name = (device or "auto").strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise FatalError(f"--device {device!r}: use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise FatalError(f"--device {device}: this torch build sees no CUDA GPU "
                             f"(torch {torch.__version__}); use --device cpu or install a CUDA build of torch")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise FatalError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) present")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise FatalError(f"--device {device}: MPS is not available on this machine")
    return dev


def resolve_dtype(dtype: str | None, device):
    """'auto' -> bf16 (or fp16) on a GPU, fp32 on CPU; 'fp32'/'fp16'/'bf16' as asked."""
    import torch

    name = (dtype or "auto").strip().lower()
    if name not in DTYPES:
        raise FatalError(f"--dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device.type == "mps":
            return torch.float16
        return torch.float32
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch so sampling gives the same captions for the same seed."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def is_out_of_memory(exc: BaseException) -> bool:
    """A CUDA/MPS out-of-memory error (torch.OutOfMemoryError, or a RuntimeError that says so)."""
    return "OutOfMemory" in type(exc).__name__ or (isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower())


def free_accelerator_memory() -> None:
    """Return cached GPU memory after an out-of-memory error (best effort, no-op without CUDA)."""
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001 - best effort only
        pass


def run_in_chunks(n: int, size: int, run: Callable[[slice], T], on_resize: Callable[[int], None] | None = None) -> list[T]:
    """[run(slice) for consecutive slices of `size` rows over n rows], halving `size` on out-of-memory.

    on_resize(new_size) is told each halving (so later batches start smaller); a row that runs out of memory alone
    raises.
    """
    size = max(1, size)
    parts: list[T] = []
    start = 0
    while start < n:
        stop = min(n, start + size)
        try:
            parts.append(run(slice(start, stop)))
            start = stop
        except Exception as exc:  # noqa: BLE001 - only out-of-memory is handled here
            if not is_out_of_memory(exc) or size == 1:
                raise
            free_accelerator_memory()
            size = max(1, size // 2)
            logger.warning("out of GPU memory: batch size halved to %d", size)
            if on_resize is not None:
                on_resize(size)
    return parts
