"""BLIP and BLIP-2 captioning through transformers, with sd-scripts' --caption_weights URLs mapped to hub models."""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import urlparse

import numpy as np

from library.errors import FatalError
from library.captioners.hf_models import (GenerationSettings, load_config, load_image_transform, load_model, load_tokenizer,
                        model_device_dtype, text_positions)

logger = logging.getLogger(__name__)

DEFAULT_MODEL_ID = "Salesforce/blip-image-captioning-large"
SD_SCRIPTS_CAPTION_WEIGHTS = (
    "https://storage.googleapis.com/sfr-vision-language-research/BLIP/models/model_large_caption.pth")
# Original BLIP checkpoints (the captioning ones in Salesforce's BLIP README) -> the same weights in transformers.
KNOWN_CAPTION_WEIGHTS = {
    "model_large_caption.pth": "Salesforce/blip-image-captioning-large",
    "model_base_caption_capfilt_large.pth": "Salesforce/blip-image-captioning-base",
}
# sd-scripts' BLIP decoder starts every caption with this prompt and cuts it off the output.
SD_SCRIPTS_BLIP_PROMPT = "a picture of "
# sd-scripts' BLIP sampling uses a fixed repetition penalty; its beam search uses none.
SD_SCRIPTS_SAMPLING_REPETITION_PENALTY = 1.1


def model_id_for_caption_weights(caption_weights: str) -> str:
    """Map sd-scripts' --caption_weights to a transformers model id or folder.

    Args:
        caption_weights: a URL of an original BLIP .pth, a local transformers folder, or a local .pth.
    Raises:
        FatalError: for a local .pth file (captionkit never unpickles checkpoints) or an unknown URL.
    """
    value = caption_weights.strip()
    if urlparse(value).scheme in ("http", "https"):
        name = os.path.basename(urlparse(value).path)
        if name in KNOWN_CAPTION_WEIGHTS:
            return KNOWN_CAPTION_WEIGHTS[name]
        known = ", ".join(f"{k} -> {v}" for k, v in KNOWN_CAPTION_WEIGHTS.items())
        raise FatalError(f"--caption_weights {value}: not a known BLIP captioning checkpoint ({known}). "
                         "Use --model_id with a transformers BLIP or BLIP-2 model instead")
    path = Path(value).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        return str(path)
    raise FatalError(
        f"--caption_weights {value}: original BLIP .pth checkpoints are not loaded (they are pickle files, and "
        "captionkit runs BLIP through transformers). Use --model_id Salesforce/blip-image-captioning-large "
        "(the same weights as model_large_caption.pth), or --model_id with a local transformers folder "
        "(config.json + model.safetensors)")


def resolve_model_id(model_id: str | None, caption_weights: str | None) -> str:
    """--model_id wins; otherwise --caption_weights is mapped; otherwise the default BLIP large."""
    if model_id:
        if caption_weights and caption_weights != SD_SCRIPTS_CAPTION_WEIGHTS:
            logger.warning("both --model_id and --caption_weights given: using --model_id %s", model_id)
        return model_id
    if caption_weights:
        return model_id_for_caption_weights(caption_weights)
    return DEFAULT_MODEL_ID


def model_class_for(config: Any, model_id: str) -> Any:
    """BlipForConditionalGeneration for model_type 'blip', Blip2ForConditionalGeneration for 'blip-2'."""
    import transformers

    model_type = getattr(config, "model_type", None)
    if model_type == "blip":
        return transformers.BlipForConditionalGeneration
    if model_type in ("blip-2", "blip_2"):
        return transformers.Blip2ForConditionalGeneration
    hint = " (use make_captions_by_git.py for GIT models)" if model_type == "git" else ""
    raise FatalError(f"{model_id}: model_type {model_type!r} is not BLIP or BLIP-2{hint}")


class BlipCaptioner:
    """A BLIP or BLIP-2 model, its tokenizer and its image transform; generate() captions uint8 image arrays.

    Args:
        model_id: hub id or local folder of a transformers BLIP / BLIP-2 model.
        settings: decoding settings (sampling or beam search, lengths, penalties).
        prompt: text the caption continues (cut from the output); None = sd-scripts' 'a picture of ' for
            BLIP and no prompt for BLIP-2.
        device, dtype: as --device and --dtype.
    """

    def __init__(self, model_id: str, settings: GenerationSettings, prompt: str | None = None,
                 device: str = "auto", dtype: str = "auto"):
        settings.validate()
        config = load_config(model_id)
        model_cls = model_class_for(config, model_id)
        self.family = "blip" if config.model_type == "blip" else "blip-2"
        self.encoder_decoder = False
        self.preprocess = load_image_transform(model_id)
        self.tokenizer = load_tokenizer(model_id)
        self.model = load_model(model_cls, model_id, config, device, dtype)
        self.device, self.dtype = model_device_dtype(self.model)
        if prompt is None:
            prompt = SD_SCRIPTS_BLIP_PROMPT if self.family == "blip" else ""
        self.prompt = prompt
        if self.family == "blip" and settings.repetition_penalty is None:
            settings = replace(settings, repetition_penalty=(
                SD_SCRIPTS_SAMPLING_REPETITION_PENALTY if settings.sample else 1.0))
        self.settings = settings
        self.input_ids, prompt_tokens = self._prompt_ids(config)
        text_config = getattr(config, "text_config", config)
        self.generate_kwargs = settings.kwargs(prompt_tokens, text_positions(text_config))
        logger.info("%s: %s, prompt %r, %s", model_id, self.family.upper(), prompt, self.generate_kwargs)

    def _prompt_ids(self, config: Any) -> tuple[list[int], int]:
        """Token ids of one row of the prompt, and how many of them count towards max_length."""
        ids = list(self.tokenizer(self.prompt).input_ids)
        if self.family == "blip":
            return ids, len(ids) - 1  # BLIP swaps [CLS] for its bos token and drops the trailing [SEP]
        image_token = getattr(config, "image_token_id", None)
        if image_token is None:
            image_token = getattr(config, "image_token_index", None)
        # len(tokenizer) leaves out tokens added past a Unigram vocabulary on transformers 4.x (flan-t5's <image>)
        known = image_token is not None and (image_token < len(self.tokenizer)
                                             or self.tokenizer.convert_ids_to_tokens(image_token) is not None)
        if not known:
            raise FatalError("this BLIP-2 checkpoint predates the image-token format of current transformers "
                             "(no image_token_index in config.json): download the current revision of the model")
        self.encoder_decoder = bool(getattr(config.text_config, "is_encoder_decoder", False))
        bos = getattr(config.text_config, "bos_token_id", None)
        if not self.encoder_decoder and bos is not None:  # exactly one bos, as the processor's OPT prompts have
            while ids[:2] == [bos, bos]:
                ids = ids[1:]
            if ids[:1] != [bos]:
                ids = [bos] + ids
        row = [image_token] * config.num_query_tokens + ids
        return row, (1 if self.encoder_decoder else len(ids))

    def generate(self, batch: Sequence[np.ndarray]) -> list[str]:
        """Captions for HxWx3 uint8 arrays made by self.preprocess, in order.

        Every row shares the prompt, so no row is padded: each image gives the same text alone or in a batch.
        """
        import torch

        pixel_values = self.preprocess.to_pixel_values(batch, self.device, self.dtype)
        input_ids = torch.tensor([self.input_ids] * len(batch), dtype=torch.long, device=self.device)
        attention_mask = torch.ones_like(input_ids)
        with torch.inference_mode():
            out = self.model.generate(pixel_values=pixel_values, input_ids=input_ids.clone(),
                                      attention_mask=attention_mask, **self.generate_kwargs)
        prompt_len = input_ids.shape[1] - 1 if self.family == "blip" else input_ids.shape[1]  # BLIP drops [SEP]
        echoes_prompt = not self.encoder_decoder and out.shape[1] >= prompt_len and torch.equal(
            out[:, 1:prompt_len], input_ids[:, 1:prompt_len])
        if not echoes_prompt:  # encoder-decoder (T5) outputs hold only the answer
            return [text.strip() for text in self.tokenizer.batch_decode(out, skip_special_tokens=True)]
        # Decode prompt + answer together (a word may continue the prompt) and cut the prompt's text off,
        # as sd-scripts does; fall back to the answer tokens alone when the text does not start with it.
        prompt_text = self.tokenizer.decode(out[0, :prompt_len], skip_special_tokens=True).strip()
        full = self.tokenizer.batch_decode(out, skip_special_tokens=True)
        tail = self.tokenizer.batch_decode(out[:, prompt_len:], skip_special_tokens=True)
        return [(f.strip()[len(prompt_text):] if f.strip().startswith(prompt_text) else t).strip()
                for f, t in zip(full, tail)]
