"""Load a model's processor; without torchvision, build an image-only processor (Qwen-VL's needs it for video)."""

from __future__ import annotations

import inspect
import json
import logging
from pathlib import Path

from library.backends.hf_loading import load_pretrained
from library.backends.hub_files import ModelNotAvailable

logger = logging.getLogger(__name__)
PART_KEYS = ("processor_class", "image_processor", "video_processor", "tokenizer", "chat_template", "auto_map")


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
    folder = _local_folder(model_id)
    settings = _read_json(folder, "processor_config.json")
    name = (getattr(image_processor, "processor_class", None) or settings.get("processor_class")
            or _read_json(folder, "preprocessor_config.json").get("processor_class"))
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
              "chat_template": _chat_template(folder) or getattr(tokenizer, "chat_template", None)}
    if "video_processor" in cls.get_attributes():
        kwargs["video_processor"] = None
    accepted = inspect.signature(cls.__init__).parameters
    for key, value in settings.items():  # the processor's own settings, e.g. LLaVA-OneVision's num_image_tokens
        if key in accepted and key not in kwargs and key not in PART_KEYS:
            kwargs[key] = value
    return ImageOnlyProcessor(**kwargs)


def _read_json(folder: Path | None, name: str) -> dict:
    """The JSON object in folder/name; {} when there is no folder, no such file or no object in it."""
    try:
        data = json.loads((folder / name).read_text(encoding="utf-8")) if folder else {}
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _chat_template(folder: Path | None) -> str | None:
    """The processor's chat template (chat_template.jinja or chat_template.json) in the model's folder."""
    jinja = folder / "chat_template.jinja" if folder else None
    if jinja is not None and jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    return _read_json(folder, "chat_template.json").get("chat_template")


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
