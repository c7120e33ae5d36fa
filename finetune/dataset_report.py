"""Print a dataset report before training: images per bucket, images training will enlarge, single-image
buckets, caption lengths and the most frequent tags.

Reads a folder (with the bucket flags you will train with) or an sd-scripts dataset config as sd-scripts loads it.
Examples:
    python finetune/dataset_report.py ./dataset --recursive --resolution 1024 --caption_extension .txt
    python finetune/dataset_report.py --dataset_config dataset.toml
"""

from __future__ import annotations

import argparse
import sys

import _bootstrap  # noqa: F401  (this checkout's library first on sys.path)

from finetune import cli, dataset_args
from library.dataset.report import config_report, folder_report
from library.dataset.scan import detect_caption_extension
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
    dataset_args.add_bucket_args(p)
    return p


def main(args: argparse.Namespace) -> int:
    cli.resolve_caption_extension(args)
    if args.dataset_config:
        lines = config_report(args.dataset_config, args.top_tags, default_resolution=args.resolution)
    elif args.train_data_dir:
        extension = args.caption_extension or detect_caption_extension(args.train_data_dir, args.recursive)
        settings = dataset_args.bucket_settings(args)
        separator = args.caption_separator.strip() or " "
        lines = folder_report(args.train_data_dir, extension, settings, args.recursive, separator, args.top_tags)
    else:
        raise OptionError("give a folder or --dataset_config PATH.toml")
    for line in lines:
        print(line)
    return cli.EXIT_OK


if __name__ == "__main__":
    sys.exit(cli.run_script(main, setup_parser()))
