"""Review a captioned dataset in the browser: every image beside its caption, tag frequencies, buckets, failures.

Writes one self-contained HTML page (works offline; thumbnails are cached in a hidden folder beside it), or with
--serve runs a local server where captions can be edited and tags added or removed across selected images.
Examples:
    python finetune/caption_report.py ./dataset --recursive                 # writes ./dataset/caption_report.html
    python finetune/caption_report.py ./dataset --out review.html --caption_extension .caption
    python finetune/caption_report.py ./dataset --recursive --serve         # then open the printed address
"""

from __future__ import annotations

import argparse
import os
import sys

import _bootstrap  # noqa: F401  (this checkout's library first on sys.path)

from finetune import cli, dataset_args
from finetune.dataset_report import add_token_args, token_counter
from library.review.report import (ReportOptions, default_page_path, thumbs_dir_for,
                                    write_report)
from library.errors import OptionError

DEFAULT_PORT = 8765


port_arg = cli.int_in_range(0, 65535, "port")


def setup_parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("train_data_dir", type=str, help="the captioned folder (or one image)")
    p.add_argument("--out", type=str, default=None, metavar="PATH.html",
                   help="page to write (default: caption_report.html in the caption folder); thumbnails go to "
                        "the hidden folder .<name>_thumbs beside it")
    cli.add_caption_extension_args(p, ".txt")
    p.add_argument("--recursive", action="store_true", help="include subfolders")
    p.add_argument("--output_dir", type=str, default=None,
                   help="the captions are in this folder, mirroring the dataset tree (as written with --output_dir)")
    p.add_argument("--metadata", type=str, default=None, metavar="PATH.json",
                   help="read captions from this sd-scripts metadata file (.json/.jsonl) instead of caption files")
    p.add_argument("--caption_separator", type=cli.separator_arg, default=", ", help="tag separator (default ', ')")
    p.add_argument("--thumb_size", type=cli.positive_int, default=256, help="thumbnail size in pixels (default 256)")
    p.add_argument("--max_data_loader_n_workers", type=cli.non_negative_int, default=None,
                   help="processes that make thumbnails (default: one per CPU core, at most 16; 0 = none)")
    p.add_argument("--no_progress", action="store_true", help="hide the progress bar")
    p.add_argument("--debug", action="store_true", help="log every request of the server")
    s = p.add_argument_group("edit in the browser")
    s.add_argument("--serve", action="store_true",
                   help="serve the page on a local web server where captions can be edited and saved")
    s.add_argument("--host", type=str, default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this computer only; else use an SSH tunnel)")
    s.add_argument("--port", type=port_arg, default=DEFAULT_PORT,
                   help=f"port (default {DEFAULT_PORT}; 0 = any free port, printed at start)")
    s.add_argument("--allow_host", action="append", default=[], metavar="NAME",
                   help="also accept requests addressed to this host name, e.g. a reverse proxy's "
                        "(abc-8765.proxy.runpod.net); anyone who can reach that address can edit. Repeatable")
    s.add_argument("--open", action="store_true", help="open the page in the default browser")
    add_token_args(p)
    dataset_args.add_bucket_args(p)
    return p


def build_options(args: argparse.Namespace) -> ReportOptions:
    cli.resolve_caption_extension(args)
    return ReportOptions(args.caption_extension, args.recursive, args.output_dir, args.caption_separator,
                         dataset_args.bucket_settings(args), args.thumb_size, args.max_data_loader_n_workers,
                         args.metadata, progress=not args.no_progress, tokens=token_counter(args))


def serve(args: argparse.Namespace, options: ReportOptions) -> int:
    from library.review.report import collect_report
    from library.review.server import ReviewServer, serve as serve_forever

    if options.metadata_path:
        raise OptionError("--serve edits caption files; it cannot edit captions read from --metadata")
    page = args.out or default_page_path(args.train_data_dir, args.output_dir)
    thumbs = thumbs_dir_for(os.path.abspath(page))
    data = collect_report(args.train_data_dir, options, thumbs)  # thumbnails made once, before the first visit
    server = ReviewServer(args.train_data_dir, options, thumbs, args.host, args.port, args.allow_host)
    print(f"{len(data['images'])} images, {len(data['failures'])} failed; thumbnails in {thumbs}")
    if not server.loopback or server.allow_hosts:
        where = ", ".join([f"{args.host}:{server.port}"] * (not server.loopback) + sorted(server.allow_hosts))
        print(f"warning: the editor can be reached from other machines ({where}): anyone who can open it can see "
              "the images and edit the captions; the default --host 127.0.0.1 with an SSH tunnel keeps them private")
    print(f"serving the caption editor at {server.url}  (Ctrl-C to stop; every save is written at once)",
          flush=True)
    if args.open:
        import webbrowser

        webbrowser.open(server.url)
    serve_forever(server)
    print("stopped; all saved captions are on disk")
    return cli.EXIT_OK


def main(args: argparse.Namespace) -> int:
    options = build_options(args)
    if args.serve:
        return serve(args, options)
    result = write_report(args.train_data_dir, args.out, options)
    for line in result.lines():
        print(line)
    if args.open:
        import webbrowser

        webbrowser.open(result.path.as_uri())
    return cli.EXIT_OK


if __name__ == "__main__":
    sys.exit(cli.run_script(main, setup_parser()))
