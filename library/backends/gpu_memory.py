"""The tagger's batch size when --batch_size is not given: sized to the GPU's free memory, or a CPU default."""

from __future__ import annotations

import logging
import os

logger = logging.getLogger(__name__)

CPU_BATCH = 8  # ONNX Runtime on CPU gains nothing past this; larger batches only delay the first files
GPU_DEFAULT_BATCH = 16  # a GPU whose free memory cannot be read (DirectML, ROCm, CoreML, no NVML)
GPU_MAX_BATCH = 64  # WD models saturate a large GPU well before this
# peak activation memory of one 448 px image in the largest WD models (ViT-L / EVA02-L) in float32, with room
# for ONNX Runtime's arena; it scales with the pixel count and halves in float16
BYTES_PER_IMAGE_448 = 160 * 1024 ** 2
MEMORY_SHARE = 0.6  # of the free memory, leaving the rest to the weights, cuDNN workspaces and other processes


def visible_device(cuda_index: int, visible: str | None) -> int | str | None:
    """What CUDA device `cuda_index` is under CUDA_VISIBLE_DEVICES: an NVML index, or a UUID as CUDA takes them
    ('GPU-8a6f1c2e-...', a unique prefix of one, or 'MIG-...'); None when CUDA sees no such device.

    Like CUDA, the list is read up to the first entry that is neither (such as -1); unset or empty means every GPU.
    """
    if not visible:
        return cuda_index
    entries: list[int | str] = []
    for entry in (e.strip() for e in visible.split(",")):
        if entry.isdigit():
            entries.append(int(entry))
        elif entry[:4].upper() in ("GPU-", "MIG-"):
            entries.append(entry)
        else:
            break
    return entries[cuda_index] if 0 <= cuda_index < len(entries) else None


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _nvml_handle(nvml, device: int | str):
    """The NVML handle of an index or UUID (a unique prefix of a GPU's UUID too, as CUDA allows); None if none."""
    if isinstance(device, int):
        return nvml.nvmlDeviceGetHandleByIndex(device)
    try:
        return nvml.nvmlDeviceGetHandleByUUID(device)
    except nvml.NVMLError:
        pass
    handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]
    found = [h for h in handles if _text(nvml.nvmlDeviceGetUUID(h)).lower().startswith(device.lower())]
    return found[0] if len(found) == 1 else None


def free_gpu_memory(cuda_index: int = 0, nvml=None) -> int | None:
    """Free bytes on the NVIDIA GPU CUDA numbers `cuda_index`, read through NVML (no CUDA context is made).

    Args:
        cuda_index: the N of --device cuda:N, counted among the devices CUDA_VISIBLE_DEVICES leaves visible.
        nvml: the NVML binding (default: pynvml of the optional nvidia-ml-py package).
    Returns:
        None when unknown: no NVIDIA driver, nvidia-ml-py not installed, or no such device.
    """
    device = visible_device(cuda_index, os.environ.get("CUDA_VISIBLE_DEVICES"))
    if device is None:
        return None
    if nvml is None:
        try:
            import pynvml as nvml
        except ImportError:
            logger.debug("nvidia-ml-py is not installed (pip install nvidia-ml-py): free GPU memory unknown")
            return None
    try:
        nvml.nvmlInit()
    except nvml.NVMLError:  # no driver, no GPU
        return None
    try:
        handle = _nvml_handle(nvml, device)
        return None if handle is None else int(nvml.nvmlDeviceGetMemoryInfo(handle).free)
    except nvml.NVMLError as exc:
        logger.debug("NVML cannot read the memory of CUDA device %d (%s): %s", cuda_index, device, exc)
        return None
    finally:
        nvml.nvmlShutdown()


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
