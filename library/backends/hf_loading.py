"""Load transformers models and processors by hub id or local folder, turning offline/missing errors into clear ones."""

from __future__ import annotations

import logging
import os
from typing import Any, Callable

from library.backends.hub_access import (download_hint, first_line, hub_unreachable)
from library.backends.hub_files import ModelNotAvailable, path_like_folder

logger = logging.getLogger(__name__)
_told_cache_only: set[str] = set()


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


def refused_pickle(exc: BaseException) -> bool:
    """True when torch.load(weights_only=True) refused pickled objects somewhere in the exception's chain.

    transformers 5 lets the UnpicklingError through; 4.x (the kohya_ss GUI's 4.54) wraps it in an OSError
    "Unable to load weights from pytorch checkpoint file".
    """
    import pickle

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, pickle.UnpicklingError) or "weights only load failed" in str(exc).lower():
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def refused_pickle_error(model_id: str) -> ModelNotAvailable:
    return ModelNotAvailable(f"{model_id}: cannot load the model weights: its .bin file holds pickled objects other "
                             "than tensors, which are refused (torch.load weights_only=True). Use a copy of the "
                             "model with model.safetensors")


def load_pretrained(loader: Callable[..., Any], model_id: str, **kwargs) -> Any:
    """Call `loader(model_id, **kwargs)` (a from_pretrained) and explain failures in one line.

    A model_id that looks like a path ('/x', './x', '../x', '~/x', 'C:\\x', or anything on disk) is a local folder.
    A hub id is loaded from the Hugging Face cache alone when the hub cannot be reached (no retries).

    Args:
        loader: e.g. BlipForConditionalGeneration.from_pretrained or AutoProcessor.from_pretrained.
        model_id: a hub id ('Salesforce/blip-image-captioning-large') or a local folder.
    Raises:
        ModelNotAvailable: no such folder, an incomplete folder, or a hub id that is not in the cache and
            cannot be downloaded.
    """
    local = path_like_folder(model_id, f"model {model_id!r} is not available",
                             "a model name that looks like a path is a local folder; hub ids look like 'org/name'")
    if local is not None:
        try:
            return loader(str(local), **kwargs)
        except (OSError, _validation_error()) as exc:
            if refused_pickle(exc):
                raise refused_pickle_error(model_id) from None
            raise ModelNotAvailable(f"{local}: not a complete model folder ({first_line(exc)})") from None
    why = "HF_HUB_OFFLINE is set" if is_offline() else hub_unreachable()
    if why:
        kwargs["local_files_only"] = True  # the cache, or a clear error at once instead of five retries
        if model_id not in _told_cache_only:
            _told_cache_only.add(model_id)
            logger.info("offline or hub unreachable (%s): loading %s from the Hugging Face cache", why, model_id)
    try:
        return loader(model_id, **kwargs)
    except (OSError, _validation_error()) as exc:
        if refused_pickle(exc):
            raise refused_pickle_error(model_id) from None
        reason = (f"offline or hub unreachable ({why}) and it is not in the Hugging Face cache" if why
                  else f"it could not be downloaded ({first_line(exc)})")
        raise ModelNotAvailable(f"model {model_id!r} is not available: {reason}. It needs the whole repository "
                                "(config.json, the weights and the processor/tokenizer files). "
                                + download_hint(model_id, None, "--model_id /path/to/folder (dual_caption.py: --model "
                                                "/path/to/folder)")) from None


def dtype_kwarg() -> str:
    """The from_pretrained keyword for the weights' dtype: `dtype` on transformers >= 4.56, `torch_dtype` before."""
    import transformers

    major, minor = (int(p) for p in transformers.__version__.split(".")[:2])
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"


def device_map_supported() -> bool:
    """device_map loading works without accelerate on transformers 5; 4.x needs accelerate for it."""
    import importlib.util

    import transformers

    return int(transformers.__version__.split(".")[0]) >= 5 or importlib.util.find_spec("accelerate") is not None


def load_weights(loader: Callable[..., Any], model_id: str, **kwargs) -> Any:
    """`load_pretrained` for model weights: .safetensors when present, else .bin read with torch.load(weights_only=True)
    (passed explicitly), so pickled code never runs; any failure is one line.

    Raises:
        ModelNotAvailable: missing model, weights holding pickled objects other than tensors, or unloadable weights.
    """
    kwargs["weights_only"] = True
    try:
        return load_pretrained(loader, model_id, **kwargs)
    except ModelNotAvailable:
        raise
    except Exception as exc:  # noqa: BLE001 - unsafe pickles, shape mismatches: one clear line, exit 1
        if refused_pickle(exc):
            raise refused_pickle_error(model_id) from None
        raise ModelNotAvailable(f"{model_id}: cannot load the model weights ({exc.__class__.__name__}: "
                                f"{first_line(exc)})") from None

