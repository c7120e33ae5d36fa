"""Edit the caption files of a dataset in bulk: prefix, suffix, remove, replace, dedupe, sort, shorten, prune.

Tags are matched whatever their underscores ('long_hair' == 'long hair'); every edit is idempotent (adding a
trigger twice does not duplicate it); images without a caption file are left alone unless --create_missing;
--dry_run shows what would change and writes nothing.
Examples:
    python finetune/caption_tools.py prefix ./dataset ohwx --recursive --dry_run
    python finetune/caption_tools.py remove ./dataset "simple background, white background"
    python finetune/caption_tools.py replace ./dataset 1girl "1woman" --caption_extension .txt
    python finetune/caption_tools.py sort ./dataset --keep_first 1
    python finetune/caption_tools.py shorten ./dataset --max_tokens 75 --encoder clip --keep_first 1
    python finetune/caption_tools.py common ./dataset --min_share 0.9
    python finetune/caption_tools.py prune ./dataset --min_share 0.9 --keep 1girl --apply
"""

from __future__ import annotations

import argparse
import sys

import _bootstrap  # noqa: F401  (this checkout's library first on sys.path)

from finetune import cli
from library.dataset.caption_edit import CaptionEdit, edit_captions
from library.dataset.common_tags import common_tags
from library.dataset.tokens import ENCODERS, load_tokenizer, parse_tokenizer_spec
from library.errors import OptionError
from library.files.sidecars import split_caption
from library.taggers.scores import read_scores, tag_scores
from library.taggers.tag_rules import parse_tag_list, tag_key

HELP = {
    "prefix": "put tags first (a trigger word); moves them there if they are elsewhere",
    "suffix": "put tags last",
    "remove": "remove tags",
    "replace": "replace whole tags: OLD NEW [OLD NEW ...] (an empty NEW removes; --substring for plain text)",
    "dedupe": "remove repeated tags, keeping the first",
    "sort": "sort tags alphabetically (--keep_first N keeps a trigger in front)",
    "shorten": "drop the lowest-priority tags until each line fits --max_tokens of a text encoder (--encoder)",
    "common": "list the tags in at least --min_share of the captions (what a trigger word should absorb)",
    "prune": "remove the tags in at least --min_share of the captions, except --keep (dry run unless --apply)",
}


def lines_arg(text: str) -> str:
    if text in ("all", "first", "last") or (text.isdigit() and int(text) >= 1):
        return text
    raise argparse.ArgumentTypeError(f"expected all, first, last or a line number, got {text!r}")


def share_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected a share between 0 and 1 (e.g. 0.9), got {text!r}")
    return value


def _shorten_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max_tokens", type=cli.positive_int, default=75,
                   help="tokens a line may have (default 75: CLIP's chunk; 150/225 with sd-scripts' "
                        "--max_token_length, 512 for T5)")
    p.add_argument("--encoder", choices=tuple(ENCODERS), default="clip", help="text encoder to count for")
    p.add_argument("--tokenizer", type=str, default=None, metavar="clip=PATH,t5=PATH",
                   help="tokenizer folders (default: the Hugging Face cache, else an estimate; docs/tokens.md)")
    p.add_argument("--scores", type=str, action="append", default=None, metavar="SCORES.jsonl",
                   help="drop the lowest-scored tags first, scores from the tagger's --scores_file (repeatable)")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("train_data_dir", type=str, help="folder of images whose caption files to edit")


def _options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recursive", action="store_true", help="include subfolders")
    p.add_argument("--caption_extension", type=str, default=".txt", help="caption file extension (default .txt)")
    p.add_argument("--caption_extention", type=str, default=None, help="old misspelling, still accepted")
    p.add_argument("--caption_separator", "--separator", type=cli.separator_arg, default=", ",
                   help="tag separator (default ', '); --separator is its old name")
    p.add_argument("--dry_run", action="store_true", help="show what would change; write nothing")
    p.add_argument("--ignore_case", action="store_true", help="'Smile' matches 'smile'")
    p.add_argument("--lines", type=lines_arg, default=None,
                   help="lines of multi-line captions to edit: all, first, last or N (default: first for sort, "
                        "all otherwise)")
    p.add_argument("--show", type=cli.non_negative_int, default=50, help="changes listed by --dry_run (default 50)")


def setup_parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    subs = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, text in HELP.items():
        sp = subs.add_parser(name, help=text, description=text,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
        _common(sp)
        if name in ("prefix", "suffix", "remove"):
            sp.add_argument("tags", nargs="+", help="tags, as separate arguments or one separated list")
        if name == "replace":
            sp.add_argument("pairs", nargs="+", metavar="OLD NEW", help="pairs of tags")
            sp.add_argument("--substring", action="store_true", help="replace plain text anywhere in the caption")
        if name in ("prefix", "suffix"):
            sp.add_argument("--create_missing", action="store_true",
                            help="write a caption with just these tags for images that have none")
        if name in ("sort", "shorten"):
            sp.add_argument("--keep_first", type=cli.non_negative_int, default=0,
                            help="leave the first N tags in place (default 0)")
        if name == "shorten":
            _shorten_options(sp)
        if name in ("common", "prune"):
            sp.add_argument("--min_share", type=share_arg, default=0.9,
                            help="share of captions a tag must be in, 0..1 (default 0.9)")
        if name == "prune":
            sp.add_argument("--keep", type=str, default="", help="tags never removed, e.g. '1girl,solo'")
            sp.add_argument("--apply", action="store_true", help="write the changes (default: show the diff only)")
        _options(sp)
    return p


def _shorten_fields(args: argparse.Namespace) -> dict:
    if args.command != "shorten":
        return {}
    tokenizer = load_tokenizer(ENCODERS[args.encoder], parse_tokenizer_spec(args.tokenizer).get(args.encoder))
    if tokenizer.estimate:
        print(f"{args.encoder} tokens: {tokenizer.label()}")
    scores = tag_scores([read_scores(path) for path in args.scores]) if args.scores else None
    return {"max_tokens": args.max_tokens, "count": tokenizer.count, "scores": scores}


def build_edit(args: argparse.Namespace) -> CaptionEdit:
    tags = [t for text in getattr(args, "tags", []) or [] for t in split_caption(text, args.caption_separator)]
    pairs = []
    if args.command == "replace":
        if len(args.pairs) % 2:
            raise OptionError("replace needs OLD NEW pairs (an even number of arguments)")
        pairs = list(zip(args.pairs[::2], args.pairs[1::2]))
    return CaptionEdit(args.command, tags=tags, replacements=pairs, substring=getattr(args, "substring", False),
                       keep_first=getattr(args, "keep_first", 0), ignore_case=args.ignore_case, lines=args.lines,
                       **_shorten_fields(args))


def common_or_prune(args: argparse.Namespace) -> int:
    """common: list the shared tags; prune: remove them (less --keep) from every caption, a dry run unless --apply."""
    found = common_tags(args.train_data_dir, args.min_share, args.caption_extension, args.caption_separator,
                        args.recursive, args.lines)
    keep = {tag_key(t) for t in parse_tag_list(args.keep if args.command == "prune" else "", args.caption_separator)}
    drop = [tag for tag, _ in found.tags if tag_key(tag) not in keep]
    if args.command == "common" or not drop:
        for line in found.lines():
            print(line)
        if args.command == "prune":
            print("nothing to prune")
        return cli.EXIT_OK
    edit = CaptionEdit("remove", tags=drop, ignore_case=args.ignore_case, lines=args.lines)
    outcome = edit_captions(args.train_data_dir, edit, args.caption_extension, args.caption_separator,
                            recursive=args.recursive, dry_run=args.dry_run or not args.apply)
    print(f"pruning {', '.join(drop)} (in at least {args.min_share:.0%} of {found.captions} captions)"
          + ("" if args.apply else "; dry run, --apply writes"))
    for line in outcome.lines(show=args.show):
        print(line)
    return cli.EXIT_OK


def main(args: argparse.Namespace) -> int:
    cli.resolve_caption_extension(args)
    if args.command in ("common", "prune"):
        return common_or_prune(args)
    outcome = edit_captions(args.train_data_dir, build_edit(args), args.caption_extension, args.caption_separator,
                            recursive=args.recursive, dry_run=args.dry_run,
                            create_missing=getattr(args, "create_missing", False))
    for line in outcome.lines(show=args.show):
        print(line)
    return cli.EXIT_OK


if __name__ == "__main__":
    sys.exit(cli.run_script(main, setup_parser()))
