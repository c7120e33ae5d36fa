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
    import torch

    if quantization not in QUANTIZATIONS:
        raise FatalError(f"--quantization {quantization!r}: choose one of {', '.join(QUANTIZATIONS)}")
    if quantization == "none":
        return {}
    if device.type != "cuda":
        raise FatalError(f"--quantization {quantization} needs a CUDA GPU (bitsandbytes); this run uses {device}")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise FatalError(f"--quantization {quantization} needs bitsandbytes: pip install bitsandbytes")
    from transformers import BitsAndBytesConfig

    skip = list(never_quantize)
    if quantization == "8bit":
        config = BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    else:
        compute = dtype if dtype != torch.float32 else torch.bfloat16
        config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute,
                                    bnb_4bit_use_double_quant=True, llm_int8_skip_modules=skip)
    return {"quantization_config": config, "device_map": {"": device.index or 0}}
