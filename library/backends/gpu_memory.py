"""The tagger's batch size when --batch_size is not given: sized to the GPU's free memory, or a CPU default."""

from __future__ import annotations

import ctypes
import logging
import os
import sys

logger = logging.getLogger(__name__)

CPU_BATCH = 8  # ONNX Runtime on CPU gains nothing past this; larger batches only delay the first files
GPU_DEFAULT_BATCH = 16  # a GPU whose free memory cannot be read (DirectML, ROCm, CoreML, no NVML)
GPU_MAX_BATCH = 64  # WD models saturate a large GPU well before this
# peak activation memory of one 448 px image in the largest WD models (ViT-L / EVA02-L) in float32, with room
# for ONNX Runtime's arena; it scales with the pixel count and halves in float16
BYTES_PER_IMAGE_448 = 160 * 1024 ** 2
MEMORY_SHARE = 0.6  # of the free memory, leaving the rest to the weights, cuDNN workspaces and other processes


class _NvmlMemory(ctypes.Structure):
    _fields_ = [("total", ctypes.c_ulonglong), ("free", ctypes.c_ulonglong), ("used", ctypes.c_ulonglong)]


def nvml_index(cuda_index: int, visible: str | None) -> int | None:
    """The NVML index of CUDA device `cuda_index` under CUDA_VISIBLE_DEVICES (None when it names UUIDs)."""
    if not visible:
        return cuda_index
    entries = [e.strip() for e in visible.split(",") if e.strip()]
    if cuda_index >= len(entries) or not entries[cuda_index].isdigit():
        return None
    return int(entries[cuda_index])


def free_gpu_memory(cuda_index: int = 0) -> int | None:
    """Free bytes on an NVIDIA GPU, read through NVML (no CUDA context is created); None when unknown."""
    index = nvml_index(cuda_index, os.environ.get("CUDA_VISIBLE_DEVICES"))
    if index is None:
        return None
    name = "nvml.dll" if sys.platform == "win32" else "libnvidia-ml.so.1"
    try:
        nvml = ctypes.CDLL(name)
    except OSError:
        return None
    try:
        if nvml.nvmlInit_v2() != 0:
            return None
        try:
            handle = ctypes.c_void_p()
            memory = _NvmlMemory()
            if nvml.nvmlDeviceGetHandleByIndex_v2(index, ctypes.byref(handle)) != 0:
                return None
            if nvml.nvmlDeviceGetMemoryInfo(handle, ctypes.byref(memory)) != 0:
                return None
            return int(memory.free)
        finally:
            nvml.nvmlShutdown()
    except AttributeError:
        return None


def tagger_batch_size(on_gpu: bool, image_size: int, free_bytes: int | None, fp16: bool = False) -> int:
    """A batch size that keeps the device busy without running out of memory.

    Args:
        on_gpu: the session runs on a GPU provider.
        image_size: the model's square input side in pixels.
        free_bytes: free GPU memory, or None when it cannot be read.
        fp16: the model runs in float16 (half the activation memory).
    """
    if not on_gpu:
        return CPU_BATCH
    if free_bytes is None:
        return GPU_DEFAULT_BATCH
    per_image = BYTES_PER_IMAGE_448 * (image_size / 448) ** 2 * (0.5 if fp16 else 1.0)
    fits = int(free_bytes * MEMORY_SHARE / per_image)
    batch = 1
    while batch * 2 <= min(fits, GPU_MAX_BATCH):
        batch *= 2
    return batch
