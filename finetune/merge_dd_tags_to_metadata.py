"""Merge tag files into sd-scripts fine-tuning metadata: {key: {"tags": ...}}, keyed as sd-scripts does.

A drop-in for sd-scripts' finetune/merge_dd_tags_to_metadata.py: same flags, keys that name real files.
Run it after merge_captions_to_metadata.py with the same out_json to get captions and tags in one file.
Example:
    python finetune/merge_dd_tags_to_metadata.py ./dataset meta_cap.json --dataset_config dataset.toml
"""

from __future__ import annotations

import sys

import _bootstrap  # noqa: F401  (this checkout's library first on sys.path)

from finetune import cli, dataset_args


def setup_parser():
    return dataset_args.merge_parser(__doc__, ".txt", "tag")


def main(args) -> int:
    return dataset_args.merge_main(args, "tags")


if __name__ == "__main__":
    sys.exit(cli.run_script(main, setup_parser()))
