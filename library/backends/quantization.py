"""bitsandbytes 8/4-bit loading arguments for transformers models, with the vision parts kept in full precision."""

from __future__ import annotations

import importlib.util
from typing import Sequence

from library.errors import FatalError

QUANTIZATIONS = ("none", "8bit", "4bit")


def quantization_kwargs(quantization: str, device, dtype, never_quantize: Sequence[str]) -> dict:
    """from_pretrained keywords for --quantization ('none' gives {}); FatalError when it cannot run here.

    Args:
        device: the torch.device the model runs on (bitsandbytes needs CUDA).
        dtype: the run's dtype; 4-bit computes in it (bf16 when it is fp32).
        never_quantize: module names left unquantised (vision tower, projector: quantising them ruins the captions).
    """

    if quantization not in QUANTIZATIONS:
        raise FatalError(f"--quantization {quantization!r}: choose one of {', '.join(QUANTIZATIONS)}")
    if quantization == "none":
        return {}
    if device.type != "cuda":
        raise FatalError(f"--quantization {quantization} needs a CUDA GPU (bitsandbytes); this run uses {device}")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise FatalError(f"--quantization {quantization} needs bitsandbytes: pip install bitsandbytes")
    return {"quantization_config": bnb_config(quantization, dtype, never_quantize), "device_map": {"": device.index or 0}}


def placement_kwargs(quantization: str, device, dtype, never_quantize: Sequence[str]) -> dict:
    """from_pretrained keywords for where and how the weights load: dtype, --quantization, and a device_map that
    puts the model on its CUDA device directly (when this transformers can)."""
    from library.backends.hf_loading import device_map_supported, dtype_kwarg

    kwargs = {dtype_kwarg(): dtype, **quantization_kwargs(quantization, device, dtype, never_quantize)}
    if "device_map" not in kwargs and device.type == "cuda" and device_map_supported():
        kwargs["device_map"] = {"": device.index or 0}
    return kwargs


def skip_patterns(names: Sequence[str]) -> list[str]:
    """llm_int8_skip_modules for module names such as 'vision_tower', on every transformers version.

    transformers 4.x skips a module whose full name contains a pattern; 5.x matches a pattern from the start of the
    name (or as its end), where the vision tower is 'model.vision_tower': both spellings are given.
    """
    out: list[str] = []
    for name in names:
        for pattern in (name, f"model.{name}"):
            if pattern not in out and not (name == "lm_head" and pattern != name):
                out.append(pattern)
    return out


def bnb_config(quantization: str, dtype, never_quantize: Sequence[str]):
    """The BitsAndBytesConfig of '8bit' (LLM.int8) or '4bit' (NF4, double quantisation, computing in `dtype`, bf16
    for fp32), leaving the modules named in never_quantize unquantised."""
    import torch
    from transformers import BitsAndBytesConfig

    skip = skip_patterns(never_quantize)
    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    compute = dtype if dtype != torch.float32 else torch.bfloat16
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute,
                              bnb_4bit_use_double_quant=True, llm_int8_skip_modules=skip)
