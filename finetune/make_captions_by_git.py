"""Caption images with a GIT model (transformers) and write one sentence per image.

A drop-in for sd-scripts' finetune/make_captions_by_git.py: same flags and defaults (greedy decoding,
max_length 50, --remove_words). Example:
    python finetune/make_captions_by_git.py ./dataset --batch_size 8 --remove_words --caption_extension .txt
"""

from __future__ import annotations

import argparse
import sys

import _bootstrap  # noqa: F401  (this checkout's library first on sys.path)


from finetune import cli, dataset_args
from library.captioners.git import DEFAULT_GIT_MODEL_ID, GitCaptioner, remove_words
from library.captioners.hf_models import GenerationSettings


def setup_parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("train_data_dir", type=str, help="folder of images to caption (or one image file)")
    p.add_argument("--model_id", type=str, default=DEFAULT_GIT_MODEL_ID,
                   help=f"GIT model: hub id or local folder (default {DEFAULT_GIT_MODEL_ID})")
    cli.add_common_run_args(p, caption_extension=".caption", device_help=cli.TORCH_DEVICE_HELP)
    cli.add_torch_args(p)
    p.add_argument("--max_length", type=cli.positive_int, default=50,
                   help="maximum caption length in tokens (default 50)")
    p.add_argument("--remove_words", action="store_true",
                   help="drop phrases such as 'with the words xxx' and 'that says xxx' from the captions")
    p.add_argument("--num_beams", type=cli.positive_int, default=1,
                   help="beam search with this many beams (default 1 = greedy, as sd-scripts)")
    p.add_argument("--pin_memory", action="store_true", help="accepted for compatibility; has no effect")
    dataset_args.add_dataset_config_args(p)
    cli.add_ray_args(p)
    return p


def main(args: argparse.Namespace) -> int:
    cli.resolve_caption_extension(args)
    settings = GenerationSettings(sample=False, num_beams=args.num_beams, max_length=args.max_length)
    settings.validate()
    make = lambda: GitCaptioner(args.model_id, settings, device=args.device, dtype=args.dtype)  # noqa: E731
    return cli.run_captioner(args, make, remove_words if args.remove_words else None)


if __name__ == "__main__":
    sys.exit(cli.run_script(main, setup_parser()))
