"""Print a dataset report before training: images per bucket, images training will enlarge, single-image
buckets, caption lengths, token counts per text encoder (CLIP, T5) with the captions they cut, and the most
frequent tags.

Reads a folder (with the bucket flags you will train with) or an sd-scripts dataset config as sd-scripts loads it.
Examples:
    python finetune/dataset_report.py ./dataset --recursive --resolution 1024 --caption_extension .txt
    python finetune/dataset_report.py --dataset_config dataset.toml
    python finetune/dataset_report.py ./dataset --max_token_length 150 --tokenizer clip=./clip-vit-large-patch14
"""

from __future__ import annotations

import argparse
import sys

import _bootstrap  # noqa: F401  (this checkout's library first on sys.path)

from finetune import cli, dataset_args
from library.dataset.report import config_report, folder_report
from library.dataset.scan import detect_caption_extension
from library.dataset.tokens import TokenCounter
from library.errors import OptionError


def setup_parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("train_data_dir", type=str, nargs="?", default=None, help="the captioned folder")
    p.add_argument("--dataset_config", type=str, default=None, metavar="PATH.toml",
                   help="report every dataset of this sd-scripts config instead of a folder")
    cli.add_caption_extension_args(
        p, None, "extension of the caption files (default: .txt or .caption, whichever the folder has)")
    p.add_argument("--recursive", action="store_true", help="include subfolders")
    p.add_argument("--caption_separator", type=str, default=",", help="tag separator for tag counts (default ',')")
    p.add_argument("--top_tags", type=cli.non_negative_int, default=20, help="most frequent tags to list (default 20)")
    add_token_args(p)
    dataset_args.add_bucket_args(p)
    return p


def add_token_args(p: argparse.ArgumentParser) -> None:
    """--tokenizer and --max_token_length (also used by caption_report.py)."""
    p.add_argument("--tokenizer", type=str, default=None, metavar="clip=PATH,t5=PATH",
                   help="tokenizer folders for exact token counts (default: found in the Hugging Face cache as "
                        "openai/clip-vit-large-patch14 and google/t5-v1_1-xxl, else estimated; docs/tokens.md)")
    p.add_argument("--max_token_length", type=int, choices=(75, 150, 225), default=75,
                   help="CLIP tokens the trainer reads (sd-scripts' flag: 75 default, 150 or 225): captions over it "
                        "are listed with the words cut off")
    p.add_argument("--t5_max_length", type=int, choices=(256, 512), default=512,
                   help="T5 tokens the trainer reads (512: Flux dev, SD3; 256: Flux schnell)")


def token_counter(args: argparse.Namespace) -> TokenCounter:
    return TokenCounter.load(args.tokenizer, {"clip": args.max_token_length, "t5": args.t5_max_length})


def main(args: argparse.Namespace) -> int:
    cli.resolve_caption_extension(args)
    if args.dataset_config:
        lines = config_report(args.dataset_config, args.top_tags, default_resolution=args.resolution,
                              tokens=token_counter(args))
    elif args.train_data_dir:
        extension = args.caption_extension or detect_caption_extension(args.train_data_dir, args.recursive)
        settings = dataset_args.bucket_settings(args)
        separator = args.caption_separator.strip() or " "
        lines = folder_report(args.train_data_dir, extension, settings, args.recursive, separator, args.top_tags,
                              token_counter(args))
    else:
        raise OptionError("give a folder or --dataset_config PATH.toml")
    for line in lines:
        print(line)
    return cli.EXIT_OK


if __name__ == "__main__":
    sys.exit(cli.run_script(main, setup_parser()))
