"""Shared command-line plumbing for the scripts: the parser (snake_case and dash-case), number types, common flags."""

from __future__ import annotations

import argparse
import errno
import logging
import signal
import sys
import threading
from typing import Callable

from library.errors import FatalError, OptionError
from library.run.runtime import (is_main_process, limit_openmp_spinning, log_around_progress_bars, process_rank,
                             setup_logging)

logger = logging.getLogger("captionkit")

EXIT_OK, EXIT_FATAL, EXIT_INTERRUPTED = 0, 1, 130
EXIT_ALL_FAILED = 3  # every image the run attempted failed (full disk, read-only folder, dead API server)
_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG, errno.ENAMETOOLONG}
EXIT_TERMINATED = 143  # SIGTERM: handled like Ctrl-C (files written so far kept, summary printed), 128 + 15


def all_failed(summary) -> bool:
    """True when the run attempted images and every one of them failed (skipped ones are not attempts)."""
    return summary.failed > 0 and summary.done == 0


def run_exit_code(summary) -> int:
    """A finished run's exit code: 130 interrupted, 3 when every attempted image failed (said on stderr), else 0."""
    if summary.interrupted:
        return EXIT_INTERRUPTED
    if all_failed(summary):
        print(f"error: all {summary.failed} images failed (reasons above)", file=sys.stderr)
        return EXIT_ALL_FAILED
    return EXIT_OK


SPELLING_NOTE = "Every option may also be written with dashes: --batch-size = --batch_size."


def _spellings(option: str, boolean_optional: bool) -> set[str]:
    """'--batch_size' -> {'--batch_size', '--batch-size'}; a BooleanOptionalAction's '--no-' prefix stays as is."""
    if not option.startswith("--") or len(option) < 3:
        return {option}
    body = option[2:]
    prefix = "no-" if boolean_optional and body.startswith("no-") else ""
    rest = body[len(prefix):]
    return {option, f"--{prefix}{rest.replace('-', '_')}", f"--{prefix}{rest.replace('_', '-')}"}


class ArgumentParser(argparse.ArgumentParser):
    """argparse with every long option accepted as --snake_case and as --dash-case (one action, one dest).

    The option strings given to add_argument are the canonical ones (help and errors show them); the other
    spelling of each is registered before parsing, for argument groups too. Abbreviations stay allowed (sd-scripts
    users rely on them), and a prefix that matches only the two spellings of one option is not ambiguous.
    """

    def __init__(self, *args, **kwargs):
        if kwargs.get("epilog") is None:
            kwargs["epilog"] = SPELLING_NOTE
        super().__init__(*args, **kwargs)
        self._canonical: dict[str, str] = {}  # other spelling -> the option string it stands for

    def add_spellings(self) -> None:
        """Register the other spelling of every option string (idempotent; parse_known_args calls it)."""
        for action in self._actions:
            boolean_optional = isinstance(action, argparse.BooleanOptionalAction)
            for option in list(action.option_strings):
                for other in _spellings(option, boolean_optional) - {option}:
                    owner = self._option_string_actions.get(other)
                    if owner is None:
                        self._option_string_actions[other] = action
                        self._canonical[other] = option
                    elif owner is not action:
                        raise ValueError(f"{other} is both another spelling of {option} and an option of its own")

    def parse_known_args(self, args=None, namespace=None):
        self.add_spellings()
        return super().parse_known_args(args, namespace)

    def _get_option_tuples(self, option_string):
        # an abbreviation matching both spellings of one option names that option once, by its canonical string
        # (tuple layouts differ between Python versions; the matched option string is always the second element)
        tuples, seen = [], set()
        for found in map(self._to_canonical, super()._get_option_tuples(option_string)):
            if found[1] not in seen:
                seen.add(found[1])
                tuples.append(found)
        return tuples

    def _parse_optional(self, arg_string):
        # hand actions the canonical option string (BooleanOptionalAction reads its '--no-' prefix from it)
        parsed = super()._parse_optional(arg_string)
        if isinstance(parsed, list):  # Python 3.12.7+/3.13: a list of tuples
            return [self._to_canonical(found) for found in parsed]
        return self._to_canonical(parsed) if parsed is not None else None

    def _to_canonical(self, found: tuple) -> tuple:
        if found[0] is None or found[1] not in self._canonical:
            return found
        return (found[0], self._canonical[found[1]], *found[2:])


def lenient_int(text: str) -> int:
    """An integer that also accepts integral floats such as '1.0' (the kohya_ss GUI passes those)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not value.is_integer():
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}")
    return int(value)


def positive_int(text: str) -> int:
    value = lenient_int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    value = lenient_int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text!r}")
    return value


def separator_arg(text: str) -> str:
    """A tag separator: any non-empty text (', ', ' | ', a single space)."""
    if not text:
        raise argparse.ArgumentTypeError("must not be empty (a space is fine)")
    return text


def int_in_range(low: int, high: int, what: str):
    """An argparse type: a lenient int between low and high inclusive, e.g. int_in_range(1, 100, "quality")."""

    def parse(text: str) -> int:
        value = lenient_int(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{what} must be {low}..{high}, got {text!r}")
        return value

    return parse


ONNX_DEVICE_HELP = ("auto (default), cpu, cuda, cuda:N, tensorrt[:N] (engines cached beside the model), rocm, dml, "
                    "coreml, openvino")
TORCH_DEVICE_HELP = "auto (default: cuda, then mps, then cpu), cpu, cuda, cuda:N, mps"


def add_common_run_args(parser: argparse.ArgumentParser, caption_extension: str,
                        device_help: str = ONNX_DEVICE_HELP, batch_help: str | None = None) -> None:
    """Flags every captioning script shares (sd-scripts names first, captionkit additions after).

    batch_help: given when the script sizes the batch itself if --batch_size is left out (its default is then None).
    """
    parser.add_argument("--batch_size", type=positive_int, default=None if batch_help else 1,
                        help=batch_help or "images per inference batch (default 1)")
    parser.add_argument("--max_data_loader_n_workers", type=non_negative_int, default=None,
                        help="processes that decode images (default: one per CPU core, at most 16; 0 = none)")
    add_caption_extension_args(parser, caption_extension)
    parser.add_argument("--recursive", action="store_true", help="also caption images in subfolders")
    parser.add_argument("--debug", action="store_true", help="log every caption as it is written")
    add_resume_args(parser, skip_by_default=False)
    parser.add_argument("--output_dir", type=str, default=None,
                        help="write caption files into this folder, mirroring the input tree (for read-only datasets)")
    parser.add_argument("--device", type=str, default="auto", help=device_help)
    parser.add_argument("--no_progress", action="store_true", help="hide the progress bar")
    add_failures_arg(parser)


def add_resume_args(parser: argparse.ArgumentParser, skip_by_default: bool) -> None:
    """--skip_existing or --overwrite: what a run does with images that already have a caption.

    skip_by_default: the script's default when neither is given (sd-scripts-named scripts overwrite, as sd-scripts
    does; dual_caption.py skips, as its users expect). Read the choice with resume_flag().
    """
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--skip_existing", action="store_true",
                       help="resume: skip images that already have a caption (a caption file, or an entry in "
                            "--output_path / --ray_output)" + (" (default)" if skip_by_default else ""))
    group.add_argument("--overwrite", action="store_true",
                       help="caption every image again, replacing existing captions"
                            + ("" if skip_by_default else " (default)"))


def resume_flag(args: argparse.Namespace, default: bool) -> bool:
    """Whether existing captions are skipped: True with --skip_existing, False with --overwrite, else `default`."""
    if getattr(args, "skip_existing", False):
        return True
    if getattr(args, "overwrite", False):
        return False
    return default


def add_failures_arg(parser: argparse.ArgumentParser) -> None:
    """--failures_file (the failed images and why, as JSON Lines) and --profile."""
    parser.add_argument("--profile", action="store_true",
                        help="at the end, print where the time went (waiting for images, model, writing) and what "
                             "to change (also with --debug)")
    parser.add_argument("--failures_file", type=str, default=None, metavar="PATH.jsonl",
                        help="write each failed image and its reason to this JSON Lines file (default: beside "
                             "--output_path or --ray_output as NAME.failures.jsonl when those are given)")


def add_torch_args(parser: argparse.ArgumentParser) -> None:
    """--dtype for the transformers captioners."""
    parser.add_argument("--dtype", type=str, default="auto", choices=("auto", "fp32", "fp16", "bf16"),
                        help="model precision: auto (bf16/fp16 on a GPU, fp32 on CPU), fp32, fp16, bf16")


def add_caption_extension_args(parser: argparse.ArgumentParser, default: str | None, help: str | None = None) -> None:
    """--caption_extension and sd-scripts' old misspelling --caption_extention (see resolve_caption_extension)."""
    parser.add_argument("--caption_extension", type=str, default=default,
                        help=help or f"extension of the caption files, with or without the dot (default {default})")
    parser.add_argument("--caption_extention", type=str, default=None,
                        help="old misspelling of --caption_extension, still accepted")


def add_ray_args(parser: argparse.ArgumentParser) -> None:
    """--ray and its options (Ray Data across GPUs and machines; the --ray section of README.md): call once."""
    g = parser.add_argument_group("Ray cluster (pip install \"ray[data]\"; see the --ray section of README.md)")
    g.add_argument("--ray", action="store_true",
                   help="run on Ray Data: one model per GPU, on this machine or a cluster. The input may also be "
                        "a WebDataset .tar shard, a folder of shards, or a .parquet table of image paths (and bytes)")
    g.add_argument("--ray_address", type=str, default=None,
                   help="cluster to join: 'auto' (the one `ray start` runs here), host:port, ray://host:10001 "
                        "(default: join a local cluster or start one)")
    g.add_argument("--ray_actors", type=positive_int, default=None,
                   help="model copies (default: one per GPU of the cluster; one without GPUs)")
    g.add_argument("--ray_gpus_per_actor", type=float, default=None,
                   help="GPUs per model copy, e.g. 0.5 for two small models per GPU (default 1 when there are GPUs)")
    g.add_argument("--ray_cpus_per_actor", type=float, default=1.0, help="CPUs reserved per model copy (default 1)")
    g.add_argument("--ray_output", type=str, default=None, metavar="PATH",
                   help="write results to PATH.parquet, PATH.jsonl or a folder of per-shard parquet files (image "
                        "path, caption, image size, scores, error) instead of caption files; needed for tar and "
                        "parquet-bytes inputs")


def ray_options(args: argparse.Namespace):
    """The RayOptions of --ray (None without it); checks that Ray is installed before any work starts."""
    from pathlib import Path

    from library.distributed.runner import RayOptions, require_ray

    if not getattr(args, "ray", False):
        if getattr(args, "ray_output", None):
            raise OptionError("--ray_output needs --ray")
        return None
    require_ray()
    if args.ray_output and any(getattr(args, f, None) for f in ("dataset_config", "bucket_report", "report")):
        raise OptionError("--dataset_config, --bucket_report and --report need caption files: leave --ray_output out")
    return RayOptions(address=args.ray_address, actors=args.ray_actors, gpus_per_actor=args.ray_gpus_per_actor,
                      cpus_per_actor=args.ray_cpus_per_actor, output=Path(args.ray_output) if args.ray_output else None)


def failures_file(args: argparse.Namespace):
    """--failures_file, or NAME.failures.jsonl beside --output_path / --ray_output when one is given; else None."""
    from pathlib import Path

    if getattr(args, "failures_file", None):
        return Path(args.failures_file)
    output = getattr(args, "output_path", None) or getattr(args, "ray_output", None)
    if not output:
        return None
    output = Path(output)
    stem = output.stem if output.suffix.lower() in (".json", ".jsonl", ".parquet") else output.name
    return output.with_name(stem + ".failures.jsonl")


def result_writer(ray, default: Callable[[], object], resume: bool):
    """The run's writer: the --ray_output table when given, else `default()` (sidecars or a metadata file)."""
    if ray is None or ray.output is None:
        return default()
    from library.outputs.table import TableOutput

    return TableOutput(ray.output, resume)


def resolve_caption_extension(args: argparse.Namespace) -> None:
    if getattr(args, "caption_extention", None) is not None:
        args.caption_extension = args.caption_extention


def run_script(main: Callable[[argparse.Namespace], int], parser: argparse.ArgumentParser,
               fatal_errors: tuple[type[BaseException], ...] = (FatalError,), argv: list[str] | None = None) -> int:
    """Parse, set up logging, enforce the one-writer rule, run main, and map failures to exit codes.

    Fatal errors print one line 'error: ...' and give exit code 1; Ctrl-C gives 130, SIGTERM (handled the same
    way: what is written stays, the summary is printed) 143.
    """
    args = parser.parse_args(argv)
    for stream in (sys.stdout, sys.stderr):  # a file name that is not UTF-8 is printed as its own bytes
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="surrogateescape")
    limit_openmp_spinning()  # before any model library loads OpenMP
    setup_logging(getattr(args, "debug", False))
    if not is_main_process():
        logger.info("process rank %d: only rank 0 writes captions; nothing to do here", process_rank())
        return EXIT_OK
    terminated: list[int] = []

    def on_sigterm(signum, frame):
        if not terminated:  # the first SIGTERM stops the run like Ctrl-C; later ones let it finish stopping
            terminated.append(signum)
            raise KeyboardInterrupt

    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        with log_around_progress_bars():
            code = main(args)
    except fatal_errors as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = EXIT_FATAL
    except OSError as exc:
        if exc.errno not in _DISK_ERRNOS:
            raise
        where = f"{exc.filename}: " if exc.filename else ""  # full disk, read-only folder: one line, not a traceback
        print(f"error: {where}cannot write ({exc.strerror or exc})", file=sys.stderr)
        code = EXIT_FATAL
    except KeyboardInterrupt:
        print("terminated" if terminated else "interrupted", file=sys.stderr)
        code = EXIT_INTERRUPTED
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return EXIT_TERMINATED if terminated and code in (EXIT_INTERRUPTED, EXIT_OK) else code


def run_captioner(args: argparse.Namespace, make_captioner: Callable, postprocess: Callable | None = None) -> int:
    """The run of a BLIP/GIT-style script from its common flags: caption, write, print the summary; exit code."""
    from pathlib import Path

    from finetune import dataset_args
    from library.captioners.job import CaptionRunConfig, caption_images

    cfg = CaptionRunConfig(
        train_data_dir=Path(args.train_data_dir), caption_extension=args.caption_extension,
        output_dir=Path(args.output_dir) if args.output_dir else None, recursive=args.recursive,
        skip_existing=resume_flag(args, False), batch_size=args.batch_size, workers=args.max_data_loader_n_workers,
        debug=args.debug, progress=not args.no_progress, postprocess=postprocess)
    ray = ray_options(args)
    summary = caption_images(make_captioner, cfg, ray, failures_file(args), args.device,
                             result_writer(ray, lambda: None, cfg.skip_existing))
    return dataset_args.finish_run(summary, args, args.train_data_dir, args.caption_extension)
