"""Edit the caption files of a dataset in bulk: prefix, suffix, remove, replace, dedupe, sort.

Tags are matched whatever their underscores ('long_hair' == 'long hair'); every edit is idempotent (adding a
trigger twice does not duplicate it); images without a caption file are left alone unless --create_missing;
--dry_run shows what would change and writes nothing.
Examples:
    python finetune/caption_tools.py prefix ./dataset ohwx --recursive --dry_run
    python finetune/caption_tools.py remove ./dataset "simple background, white background"
    python finetune/caption_tools.py replace ./dataset 1girl "1woman" --caption_extension .txt
    python finetune/caption_tools.py sort ./dataset --keep_first 1
"""

from __future__ import annotations

import argparse
import sys

import _bootstrap  # noqa: F401  (this checkout's library first on sys.path)

from finetune import cli
from library.dataset.caption_edit import CaptionEdit, edit_captions
from library.errors import OptionError
from library.sidecars import split_caption

HELP = {
    "prefix": "put tags first (a trigger word); moves them there if they are elsewhere",
    "suffix": "put tags last",
    "remove": "remove tags",
    "replace": "replace whole tags: OLD NEW [OLD NEW ...] (an empty NEW removes; --substring for plain text)",
    "dedupe": "remove repeated tags, keeping the first",
    "sort": "sort tags alphabetically (--keep_first N keeps a trigger in front)",
}


def lines_arg(text: str) -> str:
    if text in ("all", "first", "last") or (text.isdigit() and int(text) >= 1):
        return text
    raise argparse.ArgumentTypeError(f"expected all, first, last or a line number, got {text!r}")


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
        if name == "sort":
            sp.add_argument("--keep_first", type=cli.non_negative_int, default=0,
                            help="leave the first N tags in place (default 0)")
        _options(sp)
    return p


def build_edit(args: argparse.Namespace) -> CaptionEdit:
    tags = [t for text in getattr(args, "tags", []) or [] for t in split_caption(text, args.caption_separator)]
    pairs = []
    if args.command == "replace":
        if len(args.pairs) % 2:
            raise OptionError("replace needs OLD NEW pairs (an even number of arguments)")
        pairs = list(zip(args.pairs[::2], args.pairs[1::2]))
    return CaptionEdit(args.command, tags=tags, replacements=pairs, substring=getattr(args, "substring", False),
                       keep_first=getattr(args, "keep_first", 0), ignore_case=args.ignore_case, lines=args.lines)


def main(args: argparse.Namespace) -> int:
    cli.resolve_caption_extension(args)
    outcome = edit_captions(args.train_data_dir, build_edit(args), args.caption_extension, args.caption_separator,
                            recursive=args.recursive, dry_run=args.dry_run,
                            create_missing=getattr(args, "create_missing", False))
    for line in outcome.lines(show=args.show):
        print(line)
    return cli.EXIT_OK


if __name__ == "__main__":
    sys.exit(cli.run_script(main, setup_parser()))
