"""Any transformers image-text-to-text model as a caption backend: its own processor and chat template, batched."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from library.backends.hf_loading import load_pretrained, load_weights
from library.backends.hf_processors import load_processor
from library.backends.quantization import placement_kwargs
from library.backends.torch_device import run_in_chunks
from library.captioners.vlm_families import Family, family_for
from library.errors import FatalError
from library.captioners.hf_models import eos_token_ids
from library.files.image_io import open_image, shrink_to_pixels
from library.joycaption.generation import CaptionJob, Generation, Sampling, run_in_groups

logger = logging.getLogger(__name__)

CPU_BATCH_SIZE = 4
MAX_AUTO_BATCH = 32
ASSUMED_PROMPT_TOKENS = 1024  # image tokens + prompt, for sizing batches before the first one is seen


@dataclass(frozen=True)
class RgbLoader:
    """Picklable worker job: path -> (H x W x 3 uint8 RGB, original size), shrunk (aspect kept) above max_pixels."""

    max_pixels: int | None = None

    def __call__(self, path: Path) -> tuple[np.ndarray, tuple[int, int]]:
        img, original = open_image(path)
        return np.asarray(shrink_to_pixels(img, self.max_pixels), dtype=np.uint8), original


def conversation(prompt: str, system_prompt: str | None = None) -> list[dict]:
    """The prompt contract: [system turn if given] + one user turn holding the image, then the prompt text."""
    convo = [{"role": "system", "content": [{"type": "text", "text": system_prompt}]}] if system_prompt else []
    return convo + [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]


class LocalVLM:
    """A loaded image-text-to-text model and its processor, captioning batches of images.

    Args:
        model_id: hub id or local folder (transformers-native layout, safetensors; remote code is never run).
        device: 'auto', 'cpu', 'cuda', 'cuda:N', 'mps'.
        dtype: 'auto' (bf16 on GPU, fp32 on CPU), 'fp32', 'fp16', 'bf16'.
        quantization: 'none', '8bit', '4bit' (bitsandbytes on CUDA; the vision parts stay unquantised).
        batch_size: images per forward pass; None = from free GPU memory (4 on CPU), halved on out-of-memory.
        system_prompt: a system turn before the user turn (None: no system turn).
        max_pixels: shrink larger images to this many pixels before the processor sees them (None: as they are).
    """

    def __init__(self, model_id: str, device: str = "auto", dtype: str = "auto", quantization: str = "none",
                 batch_size: int | None = None, system_prompt: str | None = None, max_pixels: int | None = None):
        import torch
        from transformers import AutoConfig, AutoModelForImageTextToText

        from library.backends.torch_device import resolve_device, resolve_dtype

        self.torch = torch
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.quantization, self.batch_size = quantization, batch_size
        self.system_prompt, self.max_pixels = system_prompt or None, max_pixels
        try:
            config = load_pretrained(AutoConfig.from_pretrained, model_id)
        except ValueError as exc:  # an architecture this transformers does not know (newer, or remote code)
            import transformers

            raise FatalError(f"{model_id}: transformers {transformers.__version__} cannot load this model "
                             f"({str(exc).splitlines()[0]}). If the model is newer than it (Qwen3-VL needs 4.57 "
                             "or later), pip install -U transformers; otherwise use a "
                             "transformers-native copy: captionkit never runs a repository's own code "
                             "(trust_remote_code); see --list_models") from None
        self.family: Family = family_for(config.model_type)
        kwargs = placement_kwargs(quantization, self.device, self.dtype, self.family.never_quantize)
        logger.info("loading %s (%s; %s, %s%s)", model_id, self.family.name, self.device,
                    str(self.dtype).replace("torch.", ""), "" if quantization == "none" else f", {quantization}")
        self.model = load_weights(AutoModelForImageTextToText.from_pretrained, model_id, **kwargs)
        if "device_map" not in kwargs:
            self.model.to(self.device)
        self.model.eval()
        self.processor = load_processor(model_id)
        self.tokenizer = getattr(self.processor, "tokenizer", None)
        if self.tokenizer is None:
            raise FatalError(f"{model_id}: its processor has no tokenizer")
        self.tokenizer.padding_side = self.family.padding_side
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if not self.family.uses_task_tokens and not getattr(self.processor, "chat_template", None) \
                and not getattr(self.tokenizer, "chat_template", None):
            raise FatalError(f"{model_id}: the model has no chat template, so its prompt format is unknown")
        self.encoder_decoder = bool(getattr(self.model.config, "is_encoder_decoder", False))
        self.eos_ids = eos_token_ids(self.model, self.tokenizer, generation_only=True)  # where generate() stops
        self._warned_task = False
        self._rendered: dict[str, str] = {}  # prompt -> templated text (one entry unless prompts hold {tags})

    # ----- prompts -----
    def render(self, prompt: str) -> str:
        """The text input for one image: the chat template applied to the conversation (Florence-2: the task token)."""
        if self.family.uses_task_tokens:
            if prompt not in self.family.task_tokens and not self._warned_task:
                self._warned_task = True
                logger.warning("%s takes a task token as its prompt (%s); %r is passed as it is", self.family.name,
                               ", ".join(self.family.task_tokens[:3]), prompt)
            return prompt
        cached = self._rendered.get(prompt)
        if cached is not None:
            return cached
        owner = self.processor if getattr(self.processor, "chat_template", None) else self.tokenizer
        text = owner.apply_chat_template(conversation(prompt, self.system_prompt), tokenize=False,
                                         add_generation_prompt=True)
        text = text[0] if isinstance(text, list) else text
        if len(self._rendered) < 64:  # per-image prompts ({tags}) are not worth keeping
            self._rendered[prompt] = text
        return text

    def inputs(self, images: Sequence[Image.Image], prompts: Sequence[str]):
        """Processor outputs for one row per (image, prompt), padded on the family's side, on the model's device."""
        texts = [self.render(p) for p in prompts]
        if self.family.uses_task_tokens:
            batch = self.processor(text=texts, images=list(images), return_tensors="pt", padding=True)
        else:  # the rendered template already holds bos and the like: never add special tokens twice
            batch = self.processor(text=texts, images=[[img] for img in images], return_tensors="pt", padding=True,
                                   add_special_tokens=False, **self.family.image_kwargs)
        out = {}
        for key, value in batch.items():
            if hasattr(value, "to"):
                value = value.to(self.device)
                if value.is_floating_point():
                    value = value.to(self.model.dtype)
            out[key] = value
        return out

    # ----- generation -----
    def generate(self, images: Sequence[Image.Image], prompts: Sequence[str], max_new_tokens: int, sampling: Sampling,
                 seeds: Sequence[int] | None = None) -> list[Generation]:
        """One caption per row (image i with prompt i), in chunks of the batch size, halved on out-of-memory.

        seeds: with sampling, one seed per row: each row samples from its own generator (batch-size invariant).
        """
        seeds = list(seeds) if seeds is not None and not sampling.greedy else None
        parts = run_in_chunks(len(prompts), self.batch_size or CPU_BATCH_SIZE, lambda s: self._generate(
            images[s], prompts[s], max_new_tokens, sampling, seeds[s] if seeds is not None else None),
            lambda size: setattr(self, "batch_size", size))
        return [gen for part in parts for gen in part]

    def _generate(self, images, prompts, max_new_tokens: int, sampling: Sampling, seeds) -> list[Generation]:
        torch = self.torch
        inputs = self.inputs(images, prompts)
        kwargs = dict(max_new_tokens=max_new_tokens, pad_token_id=self.tokenizer.pad_token_id)
        if sampling.greedy:
            kwargs.update(do_sample=False)
        elif seeds is not None:  # each row draws from its own generator
            from library.captioners.row_sampling import RowSampler

            kwargs.update(do_sample=True, temperature=1.0, top_p=1.0, top_k=0, num_beams=1,
                          logits_processor=[RowSampler(seeds, sampling.temperature, sampling.top_p, sampling.top_k)])
        else:
            if sampling.seed is not None:
                torch.manual_seed(sampling.seed)
            kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p,
                          top_k=sampling.top_k or 0, num_beams=1)  # Florence-2's generation_config asks for beams
        with torch.inference_mode():
            out = self.model.generate(**inputs, **kwargs)
        if self.encoder_decoder:
            start = getattr(self.model.generation_config, "decoder_start_token_id", None)
            rows = [r[1:] if r and r[0] == start else r for r in out.tolist()]
        else:
            rows = out[:, inputs["input_ids"].shape[1]:].tolist()
        return [self._decode(row) for row in rows]

    def _decode(self, tokens: list[int]) -> Generation:
        stop = next((i for i, t in enumerate(tokens) if t in self.eos_ids), None)
        kept = tokens if stop is None else tokens[:stop]
        text = self.tokenizer.decode(kept, skip_special_tokens=True)
        return Generation(text=text.strip(), hit_limit=stop is None, tokens=kept)

    # ----- the backend protocol of library.joycaption.job -----
    def loader(self) -> RgbLoader:
        return RgbLoader(self.max_pixels)

    def images_per_batch(self, prompts: Sequence[str], max_new_tokens: int) -> int:
        """--batch_size when given; else what free GPU memory holds (4 on CPU/MPS)."""
        if self.batch_size:
            return self.batch_size
        if self.device.type != "cuda":
            self.batch_size = CPU_BATCH_SIZE
            return self.batch_size
        from library.joycaption.local import row_bytes

        text_config = getattr(self.model.config, "text_config", None) or self.model.config
        width = 4 if self.dtype == self.torch.float32 and self.quantization == "none" else 2
        seq = ASSUMED_PROMPT_TOKENS + max_new_tokens
        try:
            per_row = row_bytes(text_config, seq, width)
        except (AttributeError, TypeError):
            per_row = 256 << 20
        free, _total = self.torch.cuda.mem_get_info(self.device)
        self.batch_size = int(max(1, min(MAX_AUTO_BATCH, (free * 0.8 - (1 << 30)) // per_row)))
        logger.info("batch size %d (%.1f GiB free, about %.0f MiB per %d-token row)", self.batch_size, free / 2**30,
                    per_row / 2**20, seq)
        return self.batch_size

    def prepare(self, items) -> list[Image.Image]:
        return [Image.fromarray(item.data) for item in items]

    def run(self, images: list[Image.Image], jobs: Sequence[CaptionJob]) -> list[Generation | str]:
        """Generate every job; jobs sharing max_new_tokens and sampling run as one padded batch."""
        return run_in_groups(jobs, lambda idx, max_new_tokens, sampling, seeds: self.generate(
            [images[jobs[i].row] for i in idx], [jobs[i].prompt for i in idx], max_new_tokens, sampling, seeds))
