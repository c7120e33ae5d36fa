"""Write bucketing-friendly copies of a dataset: oversized images shrunk to the size training resizes them to.

Each image is stored at the size sd-scripts scales it to for its bucket (aspect kept, never enlarged), so
training loads and caches less and lands every image in the same bucket; smaller images are copied as they
are. Formats and sidecars (captions, tag files) are kept; --exif_transpose bakes the EXIF orientation in,
which sd-scripts otherwise ignores. Originals are never touched.
Example:
    python finetune/resize_images.py ./dataset ./dataset_1024 --recursive --resolution 1024 --exif_transpose
"""

from __future__ import annotations

import argparse
import sys

import _bootstrap  # noqa: F401  (this checkout's library first on sys.path)

from finetune import cli, dataset_args
from library.dataset.resize import resize_images


quality_arg = cli.int_in_range(1, 100, "quality")


def setup_parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("train_data_dir", type=str, help="folder of images (left unchanged)")
    p.add_argument("output_dir", type=str, help="folder for the resized copies (the input tree is mirrored)")
    p.add_argument("--recursive", action="store_true", help="include subfolders")
    p.add_argument("--exif_transpose", action="store_true",
                   help="rotate pixels as the EXIF orientation says and drop the tag (sd-scripts ignores it)")
    p.add_argument("--quality", type=quality_arg, default=95, help="JPEG/WebP quality of resized images (default 95)")
    p.add_argument("--max_data_loader_n_workers", type=cli.non_negative_int, default=None,
                   help="processes that decode and encode (default: one per CPU core, at most 16)")
    p.add_argument("--debug", action="store_true", help="log what happens to every image")
    p.add_argument("--no_progress", action="store_true", help="hide the progress bar")
    dataset_args.add_bucket_args(p)
    return p


def main(args: argparse.Namespace) -> int:
    settings = dataset_args.bucket_settings(args)
    outcome = resize_images(args.train_data_dir, args.output_dir, settings, recursive=args.recursive,
                            exif_transpose=args.exif_transpose, quality=args.quality,
                            workers=args.max_data_loader_n_workers, progress=not args.no_progress)
    for line in outcome.lines():
        print(line)
    return cli.run_exit_code(outcome.summary)


if __name__ == "__main__":
    sys.exit(cli.run_script(main, setup_parser()))
