"""Re-decide tags from a tagger's stored scores and write the caption files again, without loading any model.

Takes the tagger's tag flags (thresholds, MCut, undesired tags, replacements, order, spelling, separator) and, for
the same flags, writes byte for byte what the tagger would. Several scores files (different taggers) combine into
one ensemble. The scores come from `tag_images_by_wd14_tagger.py DIR --scores_file scores.jsonl` (docs/scores.md).
Examples:
    python finetune/retag_from_scores.py scores.jsonl --general_threshold 0.5 --remove_underscore
    python finetune/retag_from_scores.py wd.jsonl pixai.jsonl --combine mean --output_dir ./ensemble
"""

from __future__ import annotations

import argparse
import sys

import _bootstrap  # noqa: F401  (this checkout's library first on sys.path)

from finetune import cli, tag_args
from library.errors import FatalError
from library.outputs.sidecar import sidecar_writer
from library.taggers.job import append_merge
from library.taggers.retag import COMBINE, STAGES, Retagger, retag
from library.taggers.scores import read_scores


def setup_parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scores_files", nargs="+", metavar="SCORES.jsonl",
                   help="scores file(s) written by the tagger's --scores_file; several combine into an ensemble")
    p.add_argument("--combine", choices=COMBINE, default="max",
                   help="several files: a tag's score is the highest (max, default) or the mean of the models that "
                        "know the tag; tags are matched by name, underscores and spaces alike")
    p.add_argument("--threshold_stage", choices=STAGES, default="after",
                   help="several files: apply the thresholds to the combined scores (after, default), or each "
                        "model's own thresholds first (before: with max, the union of the models' picks)")
    cli.add_caption_extension_args(p, ".txt")
    p.add_argument("--output_dir", type=str, default=None,
                   help="write caption files into this folder, mirroring the tagged folder (as the tagger's flag)")
    p.add_argument("--debug", action="store_true", help="log every caption as it is written")
    tag_args.add_tag_shaping_args(p)
    return p


def main(args: argparse.Namespace) -> int:
    cli.resolve_caption_extension(args)
    options = tag_args.tag_options(args)
    files = [read_scores(path) for path in args.scores_files]
    retagger = Retagger(files, options, args.combine, args.threshold_stage)
    writer = sidecar_writer(args.caption_extension, files[0].root, args.output_dir,
                            append_merge(options.caption_separator) if args.append_tags else None)
    outcome = retag(retagger, writer, args.debug)
    if args.frequency_tags:
        print("Tag frequencies:")
        for tag, count in outcome.tag_frequency.most_common():
            print(f"{tag}: {count}")
    for path, reason in outcome.failures:
        print(f"failed: {path}: {reason}")
    print(f"retagged {outcome.written}, failed {len(outcome.failures)}, MCut warnings {len(outcome.warnings)} "
          f"(from {len(files)} scores file{'s' if len(files) > 1 else ''})")
    if not outcome.written and outcome.failures:
        raise FatalError("no caption written")
    return cli.EXIT_OK


if __name__ == "__main__":
    sys.exit(cli.run_script(main, setup_parser()))
