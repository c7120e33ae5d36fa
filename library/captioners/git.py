"""GIT captioning through transformers (greedy by default) and sd-scripts' --remove_words clean-up."""

from __future__ import annotations

import logging
import re
from typing import Sequence

import numpy as np

from library.errors import FatalError
from library.captioners.hf_models import (GenerationSettings, load_config, load_image_transform, load_model, load_tokenizer,
                        model_device_dtype, text_positions)
from library.files.sidecars import one_line

logger = logging.getLogger(__name__)

DEFAULT_GIT_MODEL_ID = "microsoft/git-large-textcaps"

# The phrases sd-scripts' --remove_words deletes (GIT TextCaps models like to read out text they "see":
# "with the words xxx", "that says xxx", "with the number 3 on it"), applied in this order.
REMOVE_WORDS_PATTERNS = [
    re.compile(r'(has|with|and) the (words?|letters?|name) (" ?[^"]*"|\w+)'
               r'( ?(is )?(on|in) (the |her |their |him )?\w+)?'),
    re.compile(r'(with a sign )?that says ?(" ?[^"]*"|\w+)( ?on it)?'),
    re.compile(r"(with a sign )?that says ?(' ?(i'm)?[^']*'|\w+)( ?on it)?"),
    re.compile(r"with the number \d+ on (it|\w+ \w+)"),
    re.compile(r'with the words "'),
    re.compile(r"word \w+ on it"),
    re.compile(r"that says the word \w+ on it"),
    re.compile("that says'the word \"( on it)?"),
]


def remove_words(caption: str) -> str:
    """Delete sd-scripts' 'with the words xxx' / 'that says xxx' phrases, then tidy the spaces left behind."""
    out = caption
    for pattern in REMOVE_WORDS_PATTERNS:
        out = pattern.sub("", out)
    out = one_line(out)
    if out != caption.strip():
        logger.debug("remove_words: %r -> %r", caption, out)
    return out


class GitCaptioner:
    """A GIT model (GitForCausalLM), its tokenizer and image transform; generate() captions uint8 image arrays.

    Args:
        model_id: hub id or local folder (default microsoft/git-large-textcaps).
        settings: decoding settings; sd-scripts uses greedy decoding with max_length 50.
        device, dtype: as --device and --dtype.
    """

    def __init__(self, model_id: str = DEFAULT_GIT_MODEL_ID, settings: GenerationSettings | None = None,
                 device: str = "auto", dtype: str = "auto"):
        import transformers

        settings = settings or GenerationSettings(max_length=50)
        settings.validate()
        config = load_config(model_id)
        if getattr(config, "model_type", None) != "git":
            hint = " (use make_captions.py for BLIP and BLIP-2)" if config.model_type in ("blip", "blip-2") else ""
            raise FatalError(f"{model_id}: model_type {config.model_type!r} is not GIT{hint}")
        self.preprocess = load_image_transform(model_id)
        self.tokenizer = load_tokenizer(model_id)
        self.model = load_model(transformers.GitForCausalLM, model_id, config, device, dtype)
        self.device, self.dtype = model_device_dtype(self.model)
        bos = config.bos_token_id if config.bos_token_id is not None else self.tokenizer.cls_token_id
        if bos is None:
            raise FatalError(f"{model_id}: config.json has no bos_token_id")
        self.bos_token_id = int(bos)
        positions = text_positions(config)
        vision = getattr(config, "vision_config", None)
        if positions and vision is not None:  # the cache holds the image tokens, so they use up positions too
            positions -= (vision.image_size // vision.patch_size) ** 2 + 1
        self.generate_kwargs = settings.kwargs(prompt_tokens=1, max_positions=positions)
        logger.info("%s: GIT, %s", model_id, self.generate_kwargs)

    def generate(self, batch: Sequence[np.ndarray]) -> list[str]:
        """Captions for HxWx3 uint8 arrays made by self.preprocess, in order (every row starts from bos alone)."""
        import torch

        pixel_values = self.preprocess.to_pixel_values(batch, self.device, self.dtype)
        input_ids = torch.full((len(batch), 1), self.bos_token_id, dtype=torch.long, device=self.device)
        with torch.inference_mode():
            out = self.model.generate(pixel_values=pixel_values, input_ids=input_ids,
                                      attention_mask=torch.ones_like(input_ids), **self.generate_kwargs)
        return [text.strip() for text in self.tokenizer.batch_decode(out[:, 1:], skip_special_tokens=True)]
