"""Command-line plumbing for dataset features: --dataset_config on every captioner, bucket flags, metadata merges."""

from __future__ import annotations

import argparse
from pathlib import Path

from finetune import cli
from library.dataset.buckets import BUCKET_KEYS, DEFAULT_RESOLUTION, BucketSettings, as_resolution, default_bucket_settings
from library.dataset.config import add_metadata_subset, write_dataset_config
from library.dataset.report import config_report, folder_report
from library.dataset.metadata_merge import merge_sidecars_to_metadata


def resolution_arg(text: str) -> int | list[int]:
    """'1024' -> 1024; '1216,832' or '1216x832' -> [1216, 832]."""
    try:
        w, h = as_resolution(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return w if w == h else [w, h]


def add_dataset_config_args(parser: argparse.ArgumentParser) -> None:
    """The options a captioning script offers for training: call once in its setup_parser()."""
    group = parser.add_argument_group("training dataset")
    group.add_argument("--dataset_config", type=str, default=None, metavar="PATH.toml",
                       help="after the run, write (or add subsets to) an sd-scripts dataset config for the captioned "
                            "images; train with --dataset_config PATH.toml")
    group.add_argument("--bucket_report", action="store_true",
                       help="after the run, print images per bucket, upscaled images, caption lengths and top tags")
    group.add_argument("--report", type=str, default=None, metavar="PATH.html",
                       help="after the run, write a review page: every image beside its caption, tag frequencies, "
                            "buckets, images without a caption and the failures (open it in a browser)")


def after_run(args: argparse.Namespace, image_root: str | Path, caption_extension: str,
              multiline: bool = False) -> list[str]:
    """Write the --dataset_config and/or the --bucket_report of a finished run; returns lines to print.

    Args:
        args: the script's namespace (reads dataset_config, bucket_report, recursive, output_dir,
            output_path, caption_separator when present).
        image_root: the folder (or image) the run captioned.
        caption_extension: the extension the run wrote.
        multiline: the run writes several lines per caption (dual captions).
    Raises:
        FatalError: nothing was captioned, or the existing config is not valid TOML.
    """
    lines: list[str] = []
    config = getattr(args, "dataset_config", None)
    separator = getattr(args, "caption_separator", None)
    if config:
        metadata = getattr(args, "output_path", None)
        if metadata:
            update = add_metadata_subset(config, metadata, image_dir=image_root, multiline=multiline,
                                         caption_separator=separator)
        else:
            update = write_dataset_config(config, image_root, caption_extension,
                                          recursive=getattr(args, "recursive", False), multiline=multiline,
                                          caption_dir=getattr(args, "output_dir", None), caption_separator=separator)
        lines += update.lines()
    if getattr(args, "bucket_report", False):
        if config:
            lines += config_report(config)
        else:
            lines += folder_report(image_root, caption_extension, default_bucket_settings(),
                                   getattr(args, "recursive", False),
                                   (separator or ",").strip() or " ")
    return lines


def finish_run(summary, args: argparse.Namespace, image_root: str | Path, caption_extension: str,
               multiline: bool = False) -> int:
    """Print a run's summary, then (unless it was interrupted or every image failed) its dataset config and bucket
    report; the exit code (cli.run_exit_code)."""
    for line in summary.lines():
        print(line)
    if getattr(args, "profile", False) or getattr(args, "debug", False):
        for line in summary.clock.lines(summary.seconds, summary.done + summary.failed):
            print(line)
    if summary.interrupted:
        return cli.EXIT_INTERRUPTED
    if not cli.all_failed(summary):
        for line in after_run(args, image_root, caption_extension, multiline):
            print(line)
    if getattr(args, "report", None):
        for line in write_run_report(summary, args, image_root, caption_extension):
            print(line)
    return cli.run_exit_code(summary)


def write_run_report(summary, args: argparse.Namespace, image_root: str | Path, caption_extension: str) -> list[str]:
    """Write the --report page of a finished run (its failures included); returns lines to print."""
    from library.review.report import ReportOptions, write_report

    options = ReportOptions(caption_extension, recursive=getattr(args, "recursive", False),
                            output_dir=getattr(args, "output_dir", None),
                            separator=getattr(args, "caption_separator", None) or ", ",
                            metadata_path=getattr(args, "output_path", None),
                            progress=not getattr(args, "no_progress", False))
    return write_report(image_root, args.report, options, summary.failures).lines()


def add_bucket_args(parser: argparse.ArgumentParser) -> None:
    """sd-scripts' dataset-level bucket keys as flags (None = the default for the resolution)."""
    group = parser.add_argument_group("buckets (as in the sd-scripts dataset config)")
    group.add_argument("--resolution", type=resolution_arg, default=None,
                       help=f"training resolution: 1024, or W,H such as 1216,832 (default {DEFAULT_RESOLUTION})")
    group.add_argument("--enable_bucket", action=argparse.BooleanOptionalAction, default=None,
                       help="aspect-ratio bucketing (default on; --no-enable_bucket crops everything square)")
    group.add_argument("--min_bucket_reso", type=cli.positive_int, default=None,
                       help="smallest bucket side (default 256, or the resolution's short side if smaller)")
    group.add_argument("--max_bucket_reso", type=cli.positive_int, default=None,
                       help="largest bucket side (default twice the resolution's long side)")
    group.add_argument("--bucket_reso_steps", type=cli.positive_int, default=None, help="bucket side step (default 64)")
    group.add_argument("--bucket_no_upscale", action=argparse.BooleanOptionalAction, default=None,
                       help="never enlarge small images; buckets follow each image's own size")


def bucket_overrides(args: argparse.Namespace) -> dict:
    """The bucket flags the user gave, as sd-scripts config keys."""
    return {k: getattr(args, k) for k in BUCKET_KEYS if getattr(args, k, None) is not None}


def bucket_settings(args: argparse.Namespace) -> BucketSettings:
    """BucketSettings from the bucket flags, with the same defaults make_dataset_config.py writes."""
    return default_bucket_settings(bucket_overrides(args))


def merge_parser(description: str, default_extension: str, what: str) -> argparse.ArgumentParser:
    """sd-scripts' merge_*_to_metadata.py command line, plus --dataset_config."""
    p = cli.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("train_data_dir", type=str, help="folder of training images")
    p.add_argument("out_json", type=str, help="metadata file to write (.json; .jsonl for JSON Lines)")
    p.add_argument("--in_json", type=str, default=None,
                   help="metadata to start from (default: out_json when it exists); its other fields are kept")
    p.add_argument("--caption_extension", type=str, default=default_extension,
                   help=f"extension of the {what} files (default {default_extension})")
    p.add_argument("--caption_extention", type=str, default=None, help="old misspelling, still accepted")
    p.add_argument("--full_path", action="store_true",
                   help="key each image by its path as found under train_data_dir (as given, relative stays "
                        "relative) instead of its file name stem: sd-scripts' rule, which prepare_buckets_latents.py "
                        "follows too (the kohya_ss GUI's 'use full path', on by default)")
    p.add_argument("--recursive", action="store_true", help="include images in subfolders")
    p.add_argument("--debug", action="store_true", help=f"log every {what} text")
    p.add_argument("--dataset_config", type=str, default=None, metavar="PATH.toml",
                   help="also add a fine-tuning subset (metadata_file = out_json) to this sd-scripts dataset config")
    return p


def merge_main(args: argparse.Namespace, field: str) -> int:
    """Run a metadata merge from its parsed arguments and print the summary."""
    cli.resolve_caption_extension(args)
    result = merge_sidecars_to_metadata(args.train_data_dir, args.out_json, field, args.caption_extension,
                                        in_path=args.in_json, recursive=args.recursive, debug=args.debug,
                                        full_path=args.full_path)
    for line in result.lines():
        print(line)
    if args.dataset_config:
        update = add_metadata_subset(args.dataset_config, args.out_json, image_dir=args.train_data_dir,
                                     multiline=result.multiline > 0)
        for line in update.lines():
            print(line)
    return cli.EXIT_OK
