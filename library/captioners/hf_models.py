"""Load transformers captioning models safely (safetensors or weights_only, no remote code); generate() kwargs."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from library.errors import FatalError
from library.backends.hf_loading import dtype_kwarg, first_line, load_pretrained, load_weights
from library.backends.hub_files import ModelNotAvailable
from library.captioners.image_transform import ImageTransform
from library.backends.torch_device import resolve_device, resolve_dtype

logger = logging.getLogger(__name__)


def load_config(model_id: str):
    """The model's config (its model_type tells the architecture); never runs code from the repository."""
    from transformers import AutoConfig

    try:
        return load_pretrained(AutoConfig.from_pretrained, model_id, trust_remote_code=False)
    except (ValueError, KeyError) as exc:  # unknown model_type, damaged config.json
        raise ModelNotAvailable(f"{model_id}: unreadable or unsupported config.json ({first_line(exc)})") from None


def load_model(model_cls: Any, model_id: str, config: Any, device: str = "auto", dtype: str = "auto"):
    """Load weights onto the chosen device in the chosen dtype, in eval mode.

    Args:
        model_cls: e.g. BlipForConditionalGeneration.
        model_id: hub id or local folder.
        config: the already loaded config (saves a second read).
        device: --device ('auto', 'cpu', 'cuda', 'cuda:1', 'mps').
        dtype: --dtype ('auto' = bf16/fp16 on a GPU, fp32 on CPU; 'fp32', 'fp16', 'bf16').
    Weights come from .safetensors files when the repository has them; older .bin files are read with
    torch.load(weights_only=True), which refuses pickled code.
    """
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    kwargs = {"config": config, dtype_kwarg(): torch_dtype}
    model = load_weights(model_cls.from_pretrained, model_id, **kwargs).to(torch_device)
    model.eval()
    logger.info("loaded %s (%s) on %s as %s", model_id, model_cls.__name__, torch_device, str(torch_dtype)[6:])
    return model


def load_tokenizer(model_id: str):
    from transformers import AutoTokenizer

    return load_pretrained(AutoTokenizer.from_pretrained, model_id, trust_remote_code=False)


def load_image_transform(model_id: str) -> ImageTransform:
    """Read the repository's preprocessor_config.json through transformers and mirror it in PIL + numpy."""
    from transformers import AutoImageProcessor

    processor = load_pretrained(AutoImageProcessor.from_pretrained, model_id, trust_remote_code=False)
    return ImageTransform.from_image_processor(processor)


def text_positions(text_config: Any) -> int | None:
    """The text model's absolute position limit (None for relative positions such as T5's)."""
    if getattr(text_config, "is_encoder_decoder", False):
        return None
    value = getattr(text_config, "max_position_embeddings", None)
    return int(value) if isinstance(value, int) and value > 0 else None


def model_device_dtype(model: Any) -> tuple[Any, Any]:
    """The device and floating dtype of the model's parameters (where pixel values must go)."""
    param = next(model.parameters())
    return param.device, param.dtype


@dataclass
class GenerationSettings:
    """Decoding settings; None means 'leave it to the model's generation config'.

    max_length / min_length count the text tokens the decoder holds, prompt and start token included
    (the meaning they have in sd-scripts); max_new_tokens / min_new_tokens, when given, override them.
    """

    sample: bool = False
    num_beams: int = 1
    top_p: float | None = None
    temperature: float | None = None
    repetition_penalty: float | None = None
    length_penalty: float | None = None
    max_length: int | None = None
    min_length: int | None = None
    max_new_tokens: int | None = None
    min_new_tokens: int | None = None

    def validate(self) -> None:
        """Raise FatalError for values generate() would reject deep inside the run."""
        if self.num_beams < 1:
            raise FatalError("--num_beams must be at least 1")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise FatalError(f"--top_p {self.top_p}: must be in (0, 1]")
        if self.temperature is not None and self.temperature <= 0:
            raise FatalError(f"--temperature {self.temperature}: must be above 0")
        for name in ("max_length", "max_new_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise FatalError(f"--{name} must be at least 1")

    def kwargs(self, prompt_tokens: int, max_positions: int | None = None) -> dict[str, Any]:
        """generate() keyword arguments for a decoder that already holds `prompt_tokens` text tokens.

        Args:
            prompt_tokens: text tokens before the first generated one (prompt, bos or decoder start).
            max_positions: the text model's position limit; longer requests are cut to fit it.
        """
        out: dict[str, Any] = {"do_sample": self.sample, "num_beams": 1 if self.sample else self.num_beams,
                               "num_return_sequences": 1}
        if self.sample:
            if self.top_p is not None:
                out["top_p"] = self.top_p
            if self.temperature is not None:
                out["temperature"] = self.temperature
        if self.repetition_penalty is not None:
            out["repetition_penalty"] = self.repetition_penalty
        if self.length_penalty is not None and not self.sample:
            out["length_penalty"] = self.length_penalty
        max_new = self.max_new_tokens
        if max_new is None and self.max_length is not None:
            max_new = max(1, self.max_length - prompt_tokens)
        min_new = self.min_new_tokens
        if min_new is None and self.min_length is not None:
            min_new = max(0, self.min_length - prompt_tokens)
        if max_positions and max_new is not None and prompt_tokens + max_new > max_positions:
            logger.warning("the model handles at most %d text positions: generating at most %d new tokens",
                           max_positions, max(1, max_positions - prompt_tokens))
            max_new = max(1, max_positions - prompt_tokens)
        if max_new is not None:
            out["max_new_tokens"] = max_new
            if min_new is not None:
                min_new = min(min_new, max_new)
        if min_new:
            out["min_new_tokens"] = min_new
        return out


def eos_token_ids(model: Any, tokenizer: Any, generation_only: bool = False) -> list[int]:
    """Every end-of-sequence id of a model: its generation config's (one or a list), then the tokenizer's.

    generation_only: only the ids generate() stops at (the generation config's; the tokenizer's when it has none),
        so that text after a tokenizer-only end token is kept as generate() keeps it.
    """
    ids: list[int] = []
    configured = getattr(model.generation_config, "eos_token_id", None)
    sources = (configured,) if generation_only and configured is not None else (configured, tokenizer.eos_token_id)
    for source in sources:
        for value in (source if isinstance(source, (list, tuple)) else [source]):
            if value is not None and int(value) not in ids:
                ids.append(int(value))
    if not ids:
        raise FatalError("the model defines no end-of-sequence token")
    return ids
