"""Caption images with BLIP or BLIP-2 (transformers) and write one sentence per image.

A drop-in for sd-scripts' finetune/make_captions.py: same flags and defaults (nucleus sampling unless
--beam_search), plus --model_id for any BLIP / BLIP-2 model. Examples:
    python finetune/make_captions.py ./dataset --batch_size 8 --beam_search --num_beams 3 --caption_extension .txt
    python finetune/make_captions.py ./dataset --model_id Salesforce/blip2-opt-2.7b --beam_search --num_beams 16 \\
        --repetition_penalty 1.5 --min_new_tokens 20 --max_new_tokens 40 --dtype fp16
"""

from __future__ import annotations

import argparse
import sys

import _bootstrap  # noqa: F401  (this checkout's library first on sys.path)


from finetune import cli, dataset_args
from library.captioners.blip import (DEFAULT_MODEL_ID, SD_SCRIPTS_CAPTION_WEIGHTS, BlipCaptioner,
                                    resolve_model_id)
from library.captioners.hf_models import GenerationSettings
from library.backends.torch_device import seed_everything


def setup_parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("train_data_dir", type=str, help="folder of images to caption (or one image file)")
    p.add_argument("--caption_weights", type=str, default=None,
                   help="sd-scripts' BLIP checkpoint URL; the known Salesforce URLs map to the same weights on the "
                        f"hub (default {SD_SCRIPTS_CAPTION_WEIGHTS} = {DEFAULT_MODEL_ID}). Local .pth files are "
                        "not loaded: use --model_id")
    p.add_argument("--model_id", type=str, default=None,
                   help=f"transformers BLIP or BLIP-2 model: hub id or local folder (default {DEFAULT_MODEL_ID}); "
                        "e.g. Salesforce/blip2-opt-2.7b, Salesforce/blip2-flan-t5-xl")
    cli.add_common_run_args(p, caption_extension=".caption", device_help=cli.TORCH_DEVICE_HELP)
    cli.add_torch_args(p)
    p.add_argument("--beam_search", action="store_true",
                   help="beam search with --num_beams (default: nucleus sampling with --top_p)")
    p.add_argument("--num_beams", type=cli.positive_int, default=1, help="beams for --beam_search (default 1)")
    p.add_argument("--top_p", type=float, default=0.9, help="top_p of nucleus sampling (default 0.9)")
    p.add_argument("--max_length", type=cli.positive_int, default=75,
                   help="maximum caption length in tokens, prompt included (default 75)")
    p.add_argument("--min_length", type=cli.non_negative_int, default=5,
                   help="minimum caption length in tokens, prompt included (default 5)")
    p.add_argument("--seed", type=cli.lenient_int, default=42, help="random seed for sampling (default 42)")
    p.add_argument("--pin_memory", action="store_true", help="accepted for compatibility; has no effect")
    p.add_argument("--prompt", type=str, default=None,
                   help="text the caption continues, cut from the output (conditional captioning). Default: "
                        "'a picture of ' for BLIP as sd-scripts, none for BLIP-2; '' for none")
    p.add_argument("--repetition_penalty", type=float, default=None,
                   help="e.g. 1.5 (kohya_ss BLIP-2 setting); default: 1.1 when sampling / 1.0 in beam search for "
                        "BLIP (sd-scripts), the model's own for BLIP-2")
    p.add_argument("--length_penalty", type=float, default=None, help="beam search length penalty (>1 longer)")
    p.add_argument("--temperature", type=float, default=None, help="sampling temperature (default: model's, 1.0)")
    p.add_argument("--min_new_tokens", type=cli.non_negative_int, default=None,
                   help="minimum new tokens (overrides --min_length), e.g. 20 as kohya_ss' BLIP-2 tab")
    p.add_argument("--max_new_tokens", type=cli.positive_int, default=None,
                   help="maximum new tokens (overrides --max_length), e.g. 40 as kohya_ss' BLIP-2 tab")
    dataset_args.add_dataset_config_args(p)
    cli.add_ray_args(p)
    return p


def build_settings(args: argparse.Namespace) -> GenerationSettings:
    if args.num_beams > 1 and not args.beam_search:
        cli.logger.warning("--num_beams %d is ignored without --beam_search (nucleus sampling is the default)",
                           args.num_beams)
    return GenerationSettings(
        sample=not args.beam_search, num_beams=args.num_beams, top_p=args.top_p, temperature=args.temperature,
        repetition_penalty=args.repetition_penalty, length_penalty=args.length_penalty,
        max_length=args.max_length, min_length=args.min_length, max_new_tokens=args.max_new_tokens,
        min_new_tokens=args.min_new_tokens)


def main(args: argparse.Namespace) -> int:
    cli.resolve_caption_extension(args)
    model_id = resolve_model_id(args.model_id, args.caption_weights)
    settings = build_settings(args)
    settings.validate()
    def make_captioner() -> BlipCaptioner:
        captioner = BlipCaptioner(model_id, settings, prompt=args.prompt, device=args.device, dtype=args.dtype)
        seed_everything(args.seed)  # after loading, so the same seed gives the same captions
        return captioner

    return cli.run_captioner(args, make_captioner)


if __name__ == "__main__":
    sys.exit(cli.run_script(main, setup_parser()))
