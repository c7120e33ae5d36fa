"""Load transformers models and processors by hub id or local folder, turning offline/missing errors into clear ones."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from library.backends.hub_files import ModelNotAvailable


def is_offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _validation_error() -> type[Exception]:
    """huggingface_hub < 1.0 raises HFValidationError (not an OSError) for a path-like id that does not exist."""
    try:
        from huggingface_hub.errors import HFValidationError
    except ImportError:
        from huggingface_hub.utils import HFValidationError
    return HFValidationError


def load_pretrained(loader: Callable[..., Any], model_id: str, **kwargs) -> Any:
    """Call `loader(model_id, **kwargs)` (a from_pretrained) and explain failures in one line.

    Args:
        loader: e.g. BlipForConditionalGeneration.from_pretrained or AutoProcessor.from_pretrained.
        model_id: a hub id ('Salesforce/blip-image-captioning-large') or a local folder.
    Raises:
        ModelNotAvailable: the model is neither a local folder nor in the hub cache and cannot be downloaded.
    """
    local = Path(model_id).expanduser()
    source = str(local) if local.is_dir() else model_id
    try:
        return loader(source, **kwargs)
    except (OSError, _validation_error()) as exc:
        if local.is_dir():
            raise ModelNotAvailable(f"{local}: not a complete model folder ({first_line(exc)})") from None
        why = ("offline mode (HF_HUB_OFFLINE) is on and it is not in the cache" if is_offline()
               else f"it could not be downloaded ({first_line(exc)})")
        raise ModelNotAvailable(
            f"model {model_id!r} is not available: {why}. Download it where there is network "
            f"(hf download {model_id} --local-dir DIR) and pass the folder instead of the id") from None


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its class name when the message is empty), for one-line errors."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else exc.__class__.__name__


def dtype_kwarg() -> str:
    """The from_pretrained keyword for the weights' dtype: `dtype` on transformers >= 4.56, `torch_dtype` before."""
    import transformers

    major, minor = (int(p) for p in transformers.__version__.split(".")[:2])
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"
