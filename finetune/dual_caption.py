"""Caption images with JoyCaption: line 1 Booru-like tags, line 2 a description, in <stem>.txt next to each image.

Runs the model locally (transformers; bf16 on a 24 GB GPU, --quantization 8bit/4bit for less) or sends the
images to an OpenAI-compatible server (--api_base, e.g. vLLM). Images that already have a caption file are
skipped unless --overwrite.
Examples:
    python finetune/dual_caption.py ./dataset --recursive
    python finetune/dual_caption.py ./dataset --api_base http://localhost:8000/v1 --api_concurrency 16
    python finetune/dual_caption.py ./dataset --mode description --desc_type Descriptive --desc_length long
"""

from __future__ import annotations

import argparse
import logging
import sys

import _bootstrap  # noqa: F401  (this checkout's library first on sys.path)

from pathlib import Path

from finetune import cli, dataset_args, prompted_args
from library.joycaption import prompts as jp
from library.joycaption.generation import Sampling
from library.joycaption.job import MODES, CaptionTask, DualCaptionConfig, run_dual_caption
from library.errors import FatalError
from library.joycaption.prompt_tags import NO_TAGS_NOTE, TAGS_FIELD, TAGS_SENTENCE, check_tags_from

logger = logging.getLogger("captionkit")
DEFAULT_MODEL = "fancyfeast/llama-joycaption-beta-one-hf-llava"  # same as library.joycaption.local.DEFAULT_MODEL


def setup_parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("image_path", nargs="?", help="folder of images (or one image file)")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"hub id or local folder (default {DEFAULT_MODEL})")
    p.add_argument("--batch_size", type=cli.positive_int, default=None,
                   help="images per batch (default: from free GPU memory, halved on out-of-memory; "
                        "API: 4 x concurrency)")
    p.add_argument("--temperature", type=float, default=0.6, help="sampling temperature (default 0.6)")
    p.add_argument("--top_p", type=float, default=0.9, help="nucleus sampling (default 0.9)")
    p.add_argument("--top_k", type=cli.non_negative_int, default=None, help="top-k sampling (default off)")
    p.add_argument("--greedy", action="store_true", help="greedy decoding instead of sampling (deterministic)")
    p.add_argument("--seed", type=cli.lenient_int, default=42, help="random seed for sampling (default 42)")
    prompted_args.add_output_args(p, skip_by_default=True)
    p.add_argument("--mode", choices=MODES, default="dual",
                   help="dual (default): tags line + description line; tags or description: that caption only")
    g = p.add_argument_group("prompts (JoyCaption's own prompt set; see --list_prompts)")
    g.add_argument("--list_prompts", action="store_true",
                   help="show caption types, lengths and extra options, and exit")
    g.add_argument("--tags_type", default=jp.DEFAULT_TAGS_TYPE, help=f"default {jp.DEFAULT_TAGS_TYPE!r}")
    g.add_argument("--tags_length", default=jp.DEFAULT_TAGS_LENGTH,
                   help=f"'any', very short ... very long, or a number of words "
                        f"(default {jp.DEFAULT_TAGS_LENGTH})")
    g.add_argument("--desc_type", default=jp.DEFAULT_DESC_TYPE, help=f"default {jp.DEFAULT_DESC_TYPE!r}")
    g.add_argument("--desc_length", default=jp.DEFAULT_DESC_LENGTH,
                   help=f"as --tags_length (default {jp.DEFAULT_DESC_LENGTH})")
    g.add_argument("--extra_option", action="append", default=[],
                   help="extra option for the description, by number or text; repeatable")
    g.add_argument("--tags_extra_option", action="append", default=[],
                   help="extra option for the tag list; repeatable")
    g.add_argument("--name", default=None, help="name for the person/character extra option (number 1)")
    g.add_argument("--system_prompt", default=jp.SYSTEM_PROMPT,
                   help="system message (default: JoyCaption's batch one)")
    g.add_argument("--tags_from", default=None, metavar="EXT",
                   help="ground the description in each image's existing tag file with this extension (e.g. .txt "
                        "from a tagger run, with --caption_extension .caption): its prompt gets "
                        f"'{TAGS_SENTENCE}'")
    g.add_argument("--tags_max_new_tokens", type=cli.positive_int, default=300, help="token limit of the tags (300)")
    g.add_argument("--desc_max_new_tokens", type=cli.positive_int, default=512,
                   help="token limit of the description (512)")
    g.add_argument("--max_retries", type=cli.non_negative_int, default=2,
                   help="retries of a caption that loops, refuses, comes back empty or hits its token limit "
                        "(default 2); one that still loops, refuses or is empty is reported as failed and no file "
                        "is written, one that is only cut off is written with a warning")
    prompted_args.add_local_model_args(p)
    prompted_args.add_api_args(p, image_size=384)
    prompted_args.add_run_args(p)
    return p


def build_tasks(args: argparse.Namespace) -> list[CaptionTask]:
    tags = CaptionTask("tags", jp.build_prompt(args.tags_type, args.tags_length, args.tags_extra_option, args.name),
                       args.tags_max_new_tokens)
    desc_prompt = jp.build_prompt(args.desc_type, args.desc_length, args.extra_option, args.name)
    if args.tags_from and TAGS_FIELD not in desc_prompt:
        desc_prompt = f"{desc_prompt} {TAGS_SENTENCE}"
    desc = CaptionTask("description", desc_prompt, args.desc_max_new_tokens)
    return {"dual": [tags, desc], "tags": [tags], "description": [desc]}[args.mode]


def backend_factory(args: argparse.Namespace):
    def make():
        if args.api_base:
            return prompted_args.api_client(args, args.api_image_size, args.system_prompt)
        from library.joycaption.local import LocalJoyCaption

        return LocalJoyCaption(args.model, args.device, args.dtype, args.quantization, args.batch_size,
                               args.system_prompt)
    return make


def main(args: argparse.Namespace) -> int:
    if args.list_prompts:
        print(jp.describe_prompts())
        return cli.EXIT_OK
    if not args.image_path:
        raise FatalError("give a folder of images or an image file (IMAGE_PATH)")
    if args.temperature < 0 or not 0 < args.top_p <= 1:
        raise FatalError("--temperature must be >= 0 and --top-p in (0, 1]")
    problem = check_tags_from(args.tags_from, args.caption_extension, args.output_dir)
    if problem:
        raise FatalError(problem)
    tasks = build_tasks(args)
    for task in tasks:
        logger.debug("%s prompt: %s", task.name, task.prompt)
    cfg = DualCaptionConfig(
        image_path=Path(args.image_path), tasks=tasks, recursive=args.recursive,
        caption_extension=args.caption_extension, output_dir=Path(args.output_dir) if args.output_dir else None,
        overwrite=not cli.resume_flag(args, True), batch_size=args.batch_size, workers=args.num_workers,
        sampling=Sampling(do_sample=not args.greedy, temperature=args.temperature, top_p=args.top_p,
                          top_k=args.top_k, seed=args.seed),
        max_retries=args.max_retries, debug=args.debug, progress=not args.no_progress, tags_from=args.tags_from)
    ray = cli.ray_options(args)
    outcome = run_dual_caption(cfg, backend_factory(args), ray, cli.failures_file(args),
                               uses_gpu=not args.api_base and args.device != "cpu",
                               writer=cli.result_writer(ray, lambda: None, not cfg.overwrite))
    if outcome.warnings:
        print(f"{len(outcome.warnings)} captions hit the token limit and were written anyway")
    if args.tags_from and outcome.notes[NO_TAGS_NOTE]:
        print(f"{outcome.notes[NO_TAGS_NOTE]} images had no {args.tags_from} tag file: described without tags")
    return dataset_args.finish_run(outcome.summary, args, args.image_path, args.caption_extension,
                                   multiline=args.mode == "dual")


if __name__ == "__main__":
    sys.exit(cli.run_script(main, setup_parser()))
