"""JoyCaption on local transformers LLaVA: token checks, one vision pass per image, batched generation, OOM halving."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from library.joycaption.generation import CaptionJob, Generation, Sampling, run_in_groups
from library.errors import FatalError
from library.captioners.hf_models import eos_token_ids
from library.backends.hf_loading import load_pretrained, load_weights
from library.backends.quantization import placement_kwargs
from library.backends.torch_device import run_in_chunks
from library.files.image_io import open_image
from library.joycaption.prompts import SYSTEM_PROMPT

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "fancyfeast/llama-joycaption-beta-one-hf-llava"
NEVER_QUANTIZE = ["vision_tower", "multi_modal_projector"]  # quantising SigLIP or the projector breaks JoyCaption
CPU_BATCH_SIZE = 4
MAX_AUTO_BATCH = 64


@dataclass(frozen=True)
class SquashLoader:
    """Picklable worker job: path -> (size x size x 3 uint8 RGB squashed with LANCZOS, no padding; original size)."""

    size: int

    def __call__(self, path: Path) -> tuple[np.ndarray, tuple[int, int]]:
        img, original = open_image(path)
        if img.size != (self.size, self.size):
            img = img.resize((self.size, self.size), Image.LANCZOS)
        return np.asarray(img, dtype=np.uint8), original


def vision_tower(model):
    """The vision encoder on transformers 4.5x (model.vision_tower) and 5.x (model.model.vision_tower)."""
    return _submodule(model, "vision_tower")


def multi_modal_projector(model):
    """The projector on transformers 4.5x (model.multi_modal_projector) and 5.x (model.model.multi_modal_projector)."""
    return _submodule(model, "multi_modal_projector")


def _submodule(model, name: str):
    for owner in (getattr(model, "model", None), model):
        module = getattr(owner, name, None) if owner is not None else None
        if module is not None:
            return module
    raise FatalError(f"this model has no {name}: is it a LLaVA (JoyCaption) checkpoint?")


def image_token_count(config) -> int:
    """Image tokens per image implied by the config: (image_size / patch_size)^2, adjusted for a CLS token."""
    vc = config.vision_config
    count = (vc.image_size // vc.patch_size) ** 2
    if getattr(vc, "model_type", "") == "clip_vision_model":
        count += 1  # CLIP adds a CLS token; SigLIP does not
    if getattr(config, "vision_feature_select_strategy", "full") == "default":
        count -= 1
    return count


def check_rows(input_ids, attention_mask, bos_id: int | None, image_token_id: int, image_tokens: int) -> None:
    """Raise FatalError unless every row has exactly one bos (its first real token) and `image_tokens` image tokens."""
    for row, (ids, mask) in enumerate(zip(input_ids.tolist(), attention_mask.tolist())):
        real = [t for t, m in zip(ids, mask) if m]
        n_img = real.count(image_token_id)
        if n_img != image_tokens:
            raise FatalError(f"prompt row {row} has {n_img} image tokens, the model needs exactly {image_tokens}")
        if bos_id is not None and (real.count(bos_id) != 1 or real[0] != bos_id):
            raise FatalError(f"prompt row {row} has {real.count(bos_id)} bos tokens (must be exactly one, first); "
                             "a doubled bos silently degrades JoyCaption's output")


def kv_bytes_per_token(text_config, width: int = 2) -> int:
    """KV-cache bytes per token: 2 x layers x KV heads x head dim x width (128 KiB for Llama 3.1 8B in bf16)."""
    heads = text_config.num_attention_heads
    kv_heads = getattr(text_config, "num_key_value_heads", None) or heads
    head_dim = getattr(text_config, "head_dim", None) or text_config.hidden_size // heads
    return 2 * text_config.num_hidden_layers * kv_heads * head_dim * width


def row_bytes(text_config, seq_len: int, width: int = 2) -> int:
    """Rough memory of one generating row: its KV cache plus prefill activations and attention scores.

    Args:
        text_config: the language model's config.
        seq_len: image tokens + prompt + max_new_tokens.
        width: bytes per value (2 for bf16/fp16, 4 for fp32).
    """
    kv = kv_bytes_per_token(text_config, width) * seq_len
    activations = seq_len * (3 * text_config.intermediate_size + 6 * text_config.hidden_size) * width
    attention = seq_len * seq_len * text_config.num_attention_heads * width  # eager/math attention in the prefill
    return int(kv + activations + attention)


class LocalJoyCaption:
    """A loaded JoyCaption (or any LLaVA) model with its processor, ready to caption batches.

    Args:
        model_id: hub id or local folder.
        device: 'auto', 'cpu', 'cuda', 'cuda:N', 'mps'.
        dtype: 'auto', 'fp32', 'fp16', 'bf16'.
        quantization: 'none', '8bit' or '4bit' (bitsandbytes, CUDA only; vision tower and projector stay unquantised).
        batch_size: rows per forward pass; None = from free GPU memory (4 on CPU).
        system_prompt: the system message of every conversation.
    """

    def __init__(self, model_id: str = DEFAULT_MODEL, device: str = "auto", dtype: str = "auto",
                 quantization: str = "none", batch_size: int | None = None, system_prompt: str = SYSTEM_PROMPT):
        import torch
        from transformers import LlavaForConditionalGeneration

        from library.backends.torch_device import resolve_device, resolve_dtype

        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.system_prompt = system_prompt
        self.quantization = quantization
        kwargs = placement_kwargs(quantization, self.device, self.dtype, NEVER_QUANTIZE)
        logger.info("loading %s (%s, %s%s)", model_id, self.device, str(self.dtype).replace("torch.", ""),
                    "" if quantization == "none" else f", {quantization}")
        self.model = load_weights(LlavaForConditionalGeneration.from_pretrained, model_id, **kwargs)
        if "device_map" not in kwargs:
            self.model.to(self.device)
        self.model.eval()
        self.processor = _load_processor(model_id)
        self.tokenizer = getattr(self.processor, "tokenizer", self.processor)
        cfg = self.model.config
        self.image_token_id = getattr(cfg, "image_token_id", None)
        if self.image_token_id is None:
            self.image_token_id = cfg.image_token_index
        self.image_tokens = image_token_count(cfg)
        self.image_size = int(cfg.vision_config.image_size)
        self.bos_id = self.tokenizer.bos_token_id
        self.eos_ids = eos_token_ids(self.model, self.tokenizer)
        self.pad_id = self._pad_id()  # falls back to the first end token
        self._prompt_cache: dict[str, list[int]] = {}
        self.batch_size = batch_size
        self.torch = torch

    # ----- loading helpers -----
    def _pad_id(self) -> int:
        if self.tokenizer.pad_token_id is not None:
            return int(self.tokenizer.pad_token_id)
        pad = self.tokenizer.convert_tokens_to_ids("<|finetune_right_pad_id|>")
        if isinstance(pad, int) and pad != self.tokenizer.unk_token_id:
            return pad  # Llama 3.1's pad token (128004)
        return int(self.eos_ids[0])

    # ----- prompts and inputs -----
    def _template(self, content) -> str:
        convo = [{"role": "system", "content": self.system_prompt}, {"role": "user", "content": content}]
        owner = self.processor if getattr(self.processor, "chat_template", None) else self.tokenizer
        text = owner.apply_chat_template(convo, tokenize=False, add_generation_prompt=True)
        return text[0] if isinstance(text, list) else text

    def prompt_ids(self, prompt: str) -> list[int]:
        """Token ids of the full conversation for `prompt`, with exactly one bos and the image tokens expanded."""
        cached = self._prompt_cache.get(prompt)
        if cached is not None:
            return cached
        ids: list[int] = []
        for content in (prompt, [{"type": "image"}, {"type": "text", "text": prompt}]):
            ids = self.tokenizer(self._template(content), add_special_tokens=False)["input_ids"]
            if self.image_token_id in ids:
                break
        n_img = ids.count(self.image_token_id)
        if n_img == 1:
            at = ids.index(self.image_token_id)
            ids = ids[:at] + [self.image_token_id] * self.image_tokens + ids[at + 1:]
        elif n_img != self.image_tokens:
            raise FatalError(f"the chat template of this model put {n_img} image tokens into the prompt "
                             f"(expected 1 or {self.image_tokens}); is it a JoyCaption/LLaVA checkpoint?")
        if self.bos_id is not None and self.bos_id not in ids:
            ids = [self.bos_id] + ids
        if len(self._prompt_cache) < 64:  # per-image prompts ({tags}) are not worth keeping
            self._prompt_cache[prompt] = ids
        return ids

    def pack(self, prompts: Sequence[str]):
        """Left-padded input_ids and attention_mask (torch, on the model's device) for one prompt per row."""
        torch = self.torch
        rows = [self.prompt_ids(p) for p in prompts]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
            mask[i, width - len(r):] = 1
        check_rows(ids, mask, self.bos_id, self.image_token_id, self.image_tokens)
        return ids.to(self.device), mask.to(self.device)

    def pixel_values(self, images: np.ndarray):
        """N x H x W x 3 uint8 -> N x 3 x H x W in [-1, 1], in the vision tower's dtype, on the device."""
        torch = self.torch
        x = torch.from_numpy(np.require(images, np.uint8, ["C", "W"])).to(self.device).permute(0, 3, 1, 2)
        tower_dtype = next(vision_tower(self.model).parameters()).dtype
        return (x.float() / 255.0 - 0.5).div(0.5).to(tower_dtype)

    # ----- inference -----
    def encode_images(self, images: np.ndarray):
        """Run the vision tower and projector once: N x image_tokens x hidden features for the given images."""
        return self._chunked(len(images), lambda s: self._encode(images[s]), cat=True)

    def _encode(self, images: np.ndarray):
        torch = self.torch
        cfg = self.model.config
        with torch.inference_mode():
            out = vision_tower(self.model)(self.pixel_values(images), output_hidden_states=True)
            layers = cfg.vision_feature_layer
            pool = [out.hidden_states[i] for i in ([layers] if isinstance(layers, int) else layers)]
            if getattr(cfg, "vision_feature_select_strategy", "full") == "default":
                pool = [h[:, 1:] for h in pool]
            features = multi_modal_projector(self.model)(torch.cat(pool, dim=-1))
        if features.shape[1] != self.image_tokens:
            raise FatalError(f"the vision tower gave {features.shape[1]} features per image but the config implies "
                             f"{self.image_tokens} image tokens")
        return features

    def generate(self, features, prompts: Sequence[str], max_new_tokens: int, sampling: Sampling,
                 seeds: Sequence[int] | None = None) -> list[Generation]:
        """One caption per row from precomputed image features (row i uses features[i] and prompts[i]).

        seeds: with sampling, one seed per row: each row samples from its own generator (batch-size invariant).
        """
        prompts = list(prompts)
        seeds = list(seeds) if seeds is not None and not sampling.greedy else None
        parts = self._chunked(len(prompts), lambda s: self._generate(
            features[s], prompts[s], max_new_tokens, sampling, seeds[s] if seeds is not None else None))
        return [gen for part in parts for gen in part]

    def _generate(self, features, prompts: Sequence[str], max_new_tokens: int, sampling: Sampling,
                  seeds: Sequence[int] | None = None) -> list[Generation]:
        torch = self.torch
        ids, mask = self.pack(prompts)
        with torch.inference_mode():
            embeds = self.model.get_input_embeddings()(ids)
            image_mask = (ids == self.image_token_id).unsqueeze(-1)
            embeds = embeds.masked_scatter(image_mask, features.to(embeds.device, embeds.dtype))
            kwargs = dict(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=max_new_tokens,
                          eos_token_id=self.eos_ids, pad_token_id=self.pad_id, use_cache=True, suppress_tokens=None)
            if not sampling.greedy and seeds is not None:  # each row draws from its own generator
                from library.captioners.row_sampling import RowSampler

                kwargs.update(do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                              logits_processor=[RowSampler(seeds, sampling.temperature, sampling.top_p, sampling.top_k)])
            elif not sampling.greedy:
                if sampling.seed is not None:
                    torch.manual_seed(sampling.seed)
                kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p,
                              top_k=sampling.top_k or 0)
            else:
                kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
            seqs = self.model.generate(**kwargs)
        if seqs.shape[1] > max_new_tokens:  # some versions prepend the prompt ids
            seqs = seqs[:, -max_new_tokens:]
        return [self._decode(row) for row in seqs.tolist()]

    def _decode(self, tokens: list[int]) -> Generation:
        stop = next((i for i, t in enumerate(tokens) if t in self.eos_ids), None)
        kept = tokens if stop is None else tokens[:stop]
        kept = [t for t in kept if t != self.pad_id]
        text = self.tokenizer.decode(kept, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        return Generation(text=text.strip(), hit_limit=stop is None, tokens=kept)

    # ----- the backend protocol of library.joycaption.job -----
    def loader(self) -> SquashLoader:
        """The picklable worker job that prepares images for this model."""
        return SquashLoader(self.image_size)

    def images_per_batch(self, prompts: Sequence[str], max_new_tokens: int) -> int:
        return self.choose_batch_size(prompts, max_new_tokens)

    def prepare(self, items):
        """Encode a batch of loaded images once; both captions reuse these features."""
        return self.encode_images(np.stack([item.data for item in items]))

    def run(self, features, jobs: Sequence[CaptionJob]) -> list[Generation | str]:
        """Generate every job; jobs sharing max_new_tokens and sampling run as one left-padded batch."""
        def generate(idx, max_new_tokens, sampling, seeds):
            rows = self.torch.tensor([jobs[i].row for i in idx], device=features.device)
            return self.generate(features.index_select(0, rows), [jobs[i].prompt for i in idx], max_new_tokens,
                                 sampling, seeds)
        return run_in_groups(jobs, generate)

    # ----- batch sizing -----
    def choose_batch_size(self, prompts: Sequence[str], max_new_tokens: int) -> int:
        """--batch-size when given; else what free GPU memory holds for the longest prompt (4 on CPU/MPS)."""
        if self.batch_size:
            return self.batch_size
        if self.device.type != "cuda":
            self.batch_size = CPU_BATCH_SIZE
            return self.batch_size
        seq = max(len(self.prompt_ids(p)) for p in prompts) + max_new_tokens
        free, _total = self.torch.cuda.mem_get_info(self.device)
        per_row = self.bytes_per_row(seq)
        usable = free * 0.85 - (512 << 20)
        self.batch_size = int(max(1, min(MAX_AUTO_BATCH, usable // per_row)))
        logger.info("batch size %d (%.1f GiB free, about %.0f MiB per %d-token row)", self.batch_size,
                    free / 2**30, per_row / 2**20, seq)
        return self.batch_size

    def bytes_per_row(self, seq_len: int) -> int:
        """Rough GPU memory of one generating row of `seq_len` tokens with this model."""
        width = 4 if self.dtype == self.torch.float32 and self.quantization == "none" else 2
        return row_bytes(self.model.config.text_config, seq_len, width)

    def _chunked(self, n: int, run: Callable[[slice], object], cat: bool = False):
        """Call run(slice) over rows in chunks of self.batch_size, halving it on out-of-memory."""
        parts = run_in_chunks(n, self.batch_size or CPU_BATCH_SIZE, run, lambda size: setattr(self, "batch_size", size))
        return self.torch.cat(parts, dim=0) if cat else parts


def _load_processor(model_id: str):
    """The model's processor (its chat template inserts the image token); only the tokenizer if that fails.

    Images are preprocessed by SquashLoader, so a processor whose image part cannot load (a missing
    torchvision, say) costs nothing as long as the tokenizer and chat template load.
    """
    from transformers import AutoProcessor, AutoTokenizer

    from library.backends.hub_files import ModelNotAvailable

    try:
        return load_pretrained(AutoProcessor.from_pretrained, model_id)
    except ModelNotAvailable:
        raise
    except Exception as exc:  # noqa: BLE001 - fall back to the tokenizer alone
        logger.warning("the processor of %s did not load (%s); using its tokenizer", model_id, exc)
        return load_pretrained(AutoTokenizer.from_pretrained, model_id)
