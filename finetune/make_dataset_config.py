"""Write an sd-scripts dataset config (TOML) for a captioned folder, or add its subsets to an existing one.

Every folder with captioned images becomes one [[datasets.subsets]] (sd-scripts never looks into subfolders),
the caption extension is named (sd-scripts would otherwise look for .caption), multi-line captions get
enable_wildcard, and re-running on the same folder updates its subset instead of adding a second one.
Example:
    python finetune/make_dataset_config.py ./dataset --out dataset.toml --recursive --trigger ohwx \
        --num_repeats 10 --shuffle_caption --resolution 1024
    accelerate launch sdxl_train_network.py --dataset_config dataset.toml ...
"""

from __future__ import annotations

import argparse
import sys

import _bootstrap  # noqa: F401  (this checkout's library first on sys.path)

from finetune import cli, dataset_args
from library.dataset.config import add_metadata_subset, write_dataset_config
from library.dataset.report import config_report
from library.dataset.scan import detect_caption_extension


def setup_parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("train_data_dir", type=str, help="the captioned folder (the images' folder)")
    p.add_argument("--out", type=str, required=True, metavar="PATH.toml",
                   help="the config to write; an existing one gets subsets added, never replaced")
    cli.add_caption_extension_args(
        p, None, "extension of the caption files (default: .txt or .caption, whichever the folder has)")
    p.add_argument("--recursive", action="store_true", help="one subset per subfolder that has captioned images")
    p.add_argument("--caption_dir", type=str, default=None,
                   help="captions were written to this folder (--output_dir of a captioner): a metadata file is "
                        "written and a fine-tuning subset added, since sd-scripts reads captions next to images")
    p.add_argument("--metadata_file", type=str, default=None,
                   help="add a fine-tuning subset for this existing metadata .json/.jsonl instead of a folder subset")
    dataset_args.add_bucket_args(p)
    p.add_argument("--batch_size", type=cli.positive_int, default=None, help="dataset batch size (default: trainer's)")
    sub = p.add_argument_group("subset options")
    sub.add_argument("--num_repeats", type=cli.positive_int, default=None, help="times each image is seen per epoch")
    sub.add_argument("--shuffle_caption", action=argparse.BooleanOptionalAction, default=None,
                     help="shuffle the tags at every step (tags after the first keep_tokens)")
    sub.add_argument("--keep_tokens", type=cli.non_negative_int, default=None,
                     help="leading tags never shuffled (default: the number of --trigger tags, else 0)")
    sub.add_argument("--trigger", type=str, action="append", default=None, metavar="WORD",
                     help="trigger word(s) the captions start with (repeatable); sets keep_tokens and warns about "
                          "captions that do not start with them")
    sub.add_argument("--caption_separator", type=str, default=None,
                     help="separator the captions use when it is not a comma, e.g. ' | '")
    sub.add_argument("--class_tokens", type=str, default=None, help="caption for images without a caption file")
    sub.add_argument("--is_reg", action="store_true", default=None, help="these are regularisation images")
    sub.add_argument("--multiline", action="store_true",
                     help="force enable_wildcard (set automatically when any caption has several lines)")
    p.add_argument("--bucket_report", action="store_true",
                   help="print the bucket and caption report of the written config (as dataset_report.py)")
    return p


def main(args: argparse.Namespace) -> int:
    cli.resolve_caption_extension(args)
    options = dict(dataset_args.bucket_overrides(args), batch_size=args.batch_size, num_repeats=args.num_repeats,
                   shuffle_caption=args.shuffle_caption, keep_tokens=args.keep_tokens, trigger=args.trigger,
                   caption_separator=args.caption_separator)
    if args.metadata_file:
        update = add_metadata_subset(args.out, args.metadata_file, image_dir=args.train_data_dir,
                                     multiline=args.multiline, **options)
    else:
        extension = args.caption_extension
        if extension is None:
            extension = detect_caption_extension(args.train_data_dir, args.recursive, args.caption_dir)
        update = write_dataset_config(args.out, args.train_data_dir, extension, recursive=args.recursive,
                                      multiline=args.multiline, caption_dir=args.caption_dir,
                                      class_tokens=args.class_tokens, is_reg=args.is_reg, **options)
    for line in update.lines():
        print(line)
    if args.bucket_report:
        for line in config_report(args.out):
            print(line)
    return cli.EXIT_OK


if __name__ == "__main__":
    sys.exit(cli.run_script(main, setup_parser()))
