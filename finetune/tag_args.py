"""The tag-shaping flags shared by the tagger and retag_from_scores.py: thresholds, filters, order, spelling."""

from __future__ import annotations

import argparse

from finetune import cli
from library.taggers.tag_rules import DEFAULT_THRESHOLD, THRESHOLD_CATEGORIES, TagOptions, parse_tag_replacement


def add_tag_shaping_args(p: argparse.ArgumentParser) -> None:
    """--thresh .. --character_tag_expand, as sd-scripts' tagger names them (plus captionkit's MCut flags)."""
    p.add_argument("--thresh", type=float, default=None,
                   help="confidence threshold for a tag (default: the model's own per-category thresholds where it "
                        f"has them (PixAI), else {DEFAULT_THRESHOLD})")
    for cat in THRESHOLD_CATEGORIES:
        p.add_argument(f"--{cat}_threshold", type=float, default=None,
                       help=f"threshold for {cat} tags (default: --thresh; above 1 disables them)")
    p.add_argument("--general_mcut", action="store_true",
                   help="automatic general threshold (MCut: middle of the largest gap between scores)")
    p.add_argument("--character_mcut", action="store_true",
                   help="automatic character threshold (MCut, never below 0.15)")
    p.add_argument("--remove_underscore", action="store_true",
                   help="write 'long hair' instead of 'long_hair' (kaomoji and tags of 3 characters keep theirs)")
    p.add_argument("--undesired_tags", type=str, default="", help="tags never to write, e.g. 'solo,simple background'")
    p.add_argument("--frequency_tags", action="store_true", help="print how often each tag was written")
    p.add_argument("--append_tags", action="store_true",
                   help="keep an existing caption's tags first and add only the new ones")
    p.add_argument("--use_rating_tags", action="store_true", help="put the rating tag first")
    p.add_argument("--use_rating_tags_as_last_tag", action="store_true", help="put the rating tag last")
    p.add_argument("--use_quality_tags", action="store_true", help="put the quality tag first (cl_tagger layout)")
    p.add_argument("--use_quality_tags_as_last_tag", action="store_true", help="put the quality tag last")
    p.add_argument("--character_tags_first", action="store_true", help="character tags before general tags")
    p.add_argument("--always_first_tags", type=str, default=None,
                   help="tags moved to the front in the order given, e.g. '1girl,1boy'")
    p.add_argument("--caption_separator", type=cli.separator_arg, default=", ",
                   help="separator between tags (default ', ')")
    p.add_argument("--tag_replacement", type=str, default=None,
                   help="'source1,target1;source2,target2'; escape ',' and ';' inside tags as '\\,' and '\\;'")
    p.add_argument("--character_tag_expand", action="store_true",
                   help="'chara_(series)' becomes two tags: 'chara', 'series' (PixAI: the series its model "
                        "maps the character to, e.g. 'misaka_mikoto' adds 'toaru_kagaku_no_railgun')")


def tag_options(args: argparse.Namespace) -> TagOptions:
    """The TagOptions of the parsed flags; a bad --tag_replacement is an OptionError (one line, exit 1)."""
    parse_tag_replacement(args.tag_replacement)  # before any model loads or file is read
    # only the thresholds the user gave: the others come from the model (PixAI's thresholds.csv) or default to 0.35
    given = {c: getattr(args, f"{c}_threshold") if getattr(args, f"{c}_threshold") is not None else args.thresh
             for c in THRESHOLD_CATEGORIES}
    return TagOptions(
        caption_separator=args.caption_separator, thresholds={c: v for c, v in given.items() if v is not None},
        general_mcut=args.general_mcut, character_mcut=args.character_mcut, remove_underscore=args.remove_underscore,
        undesired_tags=args.undesired_tags, always_first_tags=args.always_first_tags,
        tag_replacement=args.tag_replacement, character_tag_expand=args.character_tag_expand,
        character_tags_first=args.character_tags_first, use_rating_tags=args.use_rating_tags,
        use_rating_tags_as_last_tag=args.use_rating_tags_as_last_tag, use_quality_tags=args.use_quality_tags,
        use_quality_tags_as_last_tag=args.use_quality_tags_as_last_tag)
