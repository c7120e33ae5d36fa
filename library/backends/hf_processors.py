"""Load a model's processor; without torchvision, build an image-only processor (Qwen-VL's needs it for video)."""

from __future__ import annotations

import inspect
import json
import logging
from pathlib import Path

from library.backends.hf_loading import load_pretrained
from library.backends.hub_files import ModelNotAvailable

logger = logging.getLogger(__name__)


def load_processor(model_id: str):
    """AutoProcessor of `model_id`; when it fails only for want of torchvision (a video processor), the same processor
    class built from the image processor, the tokenizer and the chat template, without the video part."""
    from transformers import AutoProcessor

    try:
        return load_pretrained(AutoProcessor.from_pretrained, model_id)
    except ModelNotAvailable:
        raise
    except (ImportError, ValueError) as exc:  # transformers 5 raises either, naming torchvision
        if "torchvision" not in str(exc).lower():
            raise
        logger.debug("the processor of %s needs torchvision (%s); building it without its video processor",
                     model_id, str(exc).strip().splitlines()[0])
    return _image_only_processor(model_id)


def _image_only_processor(model_id: str):
    import transformers
    from transformers import AutoImageProcessor, AutoTokenizer

    image_processor = load_pretrained(AutoImageProcessor.from_pretrained, model_id)
    tokenizer = load_pretrained(AutoTokenizer.from_pretrained, model_id)
    name = getattr(image_processor, "processor_class", None) or _processor_class_name(model_id)
    cls = getattr(transformers, name or "", None)
    if cls is None:
        raise ModelNotAvailable(f"{model_id}: its processor needs torchvision (pip install torchvision) and no "
                                "image-only processor class could be found")

    class ImageOnlyProcessor(cls):
        """The processor without its video part (whose class cannot be checked without torchvision)."""

        def check_argument_for_proper_class(self, argument_name, argument):
            if argument is None:
                return None
            return super().check_argument_for_proper_class(argument_name, argument)

    ImageOnlyProcessor.__name__ = ImageOnlyProcessor.__qualname__ = cls.__name__
    kwargs = {"image_processor": image_processor, "tokenizer": tokenizer,
              "chat_template": _chat_template(model_id) or getattr(tokenizer, "chat_template", None)}
    if "video_processor" in cls.get_attributes():
        kwargs["video_processor"] = None
    accepted = inspect.signature(cls.__init__).parameters
    for key, value in _processor_settings(model_id).items():  # e.g. LLaVA-OneVision's num_image_tokens
        if key in accepted and key not in kwargs:
            kwargs[key] = value
    return ImageOnlyProcessor(**kwargs)


def _processor_settings(model_id: str) -> dict:
    """The processor's own settings from processor_config.json (not its parts' configs)."""
    folder = _local_folder(model_id)
    try:
        data = json.loads((folder / "processor_config.json").read_text(encoding="utf-8")) if folder else {}
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if k not in ("processor_class", "image_processor", "video_processor",
                                                        "tokenizer", "chat_template", "auto_map")}


def _processor_class_name(model_id: str) -> str | None:
    folder = _local_folder(model_id)
    for name in ("processor_config.json", "preprocessor_config.json"):
        try:
            value = json.loads((folder / name).read_text(encoding="utf-8")).get("processor_class") if folder else None
        except (OSError, ValueError, AttributeError):
            continue
        if value:
            return value
    return None


def _chat_template(model_id: str) -> str | None:
    """The processor's chat template (chat_template.jinja or chat_template.json) of a local folder or cached repo."""
    folder = _local_folder(model_id)
    if folder is None:
        return None
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    try:
        return json.loads((folder / "chat_template.json").read_text(encoding="utf-8")).get("chat_template")
    except (OSError, ValueError, AttributeError):
        return None


def _local_folder(model_id: str) -> Path | None:
    """The folder holding the model's files: the path itself, or the Hugging Face cache snapshot of a hub id."""
    path = Path(model_id).expanduser()
    if path.is_dir():
        return path
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model_id, local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached: the processor is built from what loaded
        return None
