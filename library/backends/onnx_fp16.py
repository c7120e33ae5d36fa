"""Opt-in float16 copies of ONNX models: converted once, cached beside the original, inputs and outputs kept float32."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from library.errors import FatalError
from library.files.sidecars import atomic_write

logger = logging.getLogger(__name__)

FP16_SUFFIX = "_fp16"


def fp16_path(model_path: str | os.PathLike) -> Path:
    """Where the float16 copy of `model_path` lives: model.onnx -> model_fp16.onnx."""
    model_path = Path(model_path)
    return model_path.with_name(model_path.stem + FP16_SUFFIX + model_path.suffix)


def is_current(model_path: Path, converted: Path) -> bool:
    """True when the cached copy exists and is not older than the model it came from."""
    return converted.is_file() and converted.stat().st_mtime >= model_path.stat().st_mtime


def float16_model(model_path: str | os.PathLike) -> Path:
    """Return a float16 version of the model, converting and caching it on first use.

    The graph's inputs and outputs stay float32 (Cast nodes are added inside), so preprocessing and thresholds are
    unchanged; weights and activations become float16, which halves memory and uses tensor cores on a GPU.
    Probabilities differ from float32 by about 1e-3, so a tag right at the threshold can flip.
    """
    model_path = Path(model_path)
    converted = fp16_path(model_path)
    if is_current(model_path, converted):
        return converted
    try:
        import onnx
        from onnxruntime.transformers.float16 import convert_float_to_float16
    except ImportError:
        raise FatalError("--fp16 converts the model with the onnx package: pip install onnx "
                         "(or run without --fp16)") from None
    logger.info("converting %s to float16 (once; cached as %s)", model_path.name, converted.name)
    model = convert_float_to_float16(onnx.load(str(model_path)), keep_io_types=True)
    data = model.SerializeToString()
    try:
        atomic_write(converted, lambda tmp: Path(tmp).write_bytes(data))
    except OSError as exc:
        raise FatalError(f"cannot write the float16 model {converted}: {exc.strerror or exc}; "
                         "make the model folder writable or run without --fp16") from None
    return converted
