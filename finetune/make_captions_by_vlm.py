"""Caption images with a vision-language model (Qwen2.5-VL, Qwen3-VL, Gemma 3, Florence-2, SmolVLM, LLaVA-OneVision,
JoyCaption, ...): one caption per image in <stem>.txt, batched, locally or through an OpenAI-compatible server.

The prompt goes to the model's own chat template as one user turn (the image, then the prompt text), after a
system turn only when --system_prompt is given; Florence-2's prompt is a task token such as <MORE_DETAILED_CAPTION>.
Examples:
    python finetune/make_captions_by_vlm.py ./dataset --model Qwen/Qwen2.5-VL-7B-Instruct --batch_size 8
    python finetune/make_captions_by_vlm.py ./dataset --model HuggingFaceTB/SmolVLM-256M-Instruct --greedy
    python finetune/make_captions_by_vlm.py ./dataset --model Qwen/Qwen3-VL-8B-Instruct --tags_from .txt \\
        --caption_extension .caption --prompt "Describe this image. Use these tags where they fit: {tags}"
    python finetune/make_captions_by_vlm.py ./dataset --api_base http://localhost:8000/v1 --api_model Qwen/Qwen2.5-VL-7B-Instruct
"""

from __future__ import annotations

import argparse
import logging
import sys

import _bootstrap  # noqa: F401  (this checkout's library first on sys.path)

from pathlib import Path

from finetune import cli, dataset_args, prompted_args
from library.captioners.vlm_families import DEFAULT_PROMPT, describe_families
from library.errors import FatalError
from library.joycaption.generation import Sampling
from library.joycaption.job import CaptionTask, DualCaptionConfig, run_dual_caption
from library.joycaption.prompt_tags import NO_TAGS_NOTE, TAGS_FIELD, check_tags_from

logger = logging.getLogger("captionkit")
DEFAULT_MODEL = "Qwen/Qwen2.5-VL-7B-Instruct"


def setup_parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("train_data_dir", nargs="?", help="folder of images to caption (or one image file)")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"hub id or local folder (default {DEFAULT_MODEL})")
    p.add_argument("--list_models", action="store_true",
                   help="show the model families, example repos, download sizes and licences, and exit")
    g = p.add_argument_group("prompt")
    g.add_argument("--prompt", default=None,
                   help="the instruction (default: the family's, see --list_models); {tags} becomes the image's "
                        "tags with --tags_from; Florence-2: a task token such as <MORE_DETAILED_CAPTION>")
    g.add_argument("--prompt_file", default=None, help="read the prompt from this UTF-8 text file")
    g.add_argument("--system_prompt", default=None, help="a system turn before the prompt (default: none)")
    g.add_argument("--tags_from", default=None, metavar="EXT",
                   help="read each image's existing tag file with this extension (e.g. .txt) into {tags}; images "
                        "without one get an empty string (counted in the summary)")
    g.add_argument("--max_new_tokens", type=cli.positive_int, default=256, help="caption length limit in tokens (256)")
    s = p.add_argument_group("decoding")
    s.add_argument("--greedy", action="store_true", help="greedy decoding (deterministic; the model card's output)")
    s.add_argument("--temperature", type=float, default=0.7, help="sampling temperature (default 0.7)")
    s.add_argument("--top_p", type=float, default=0.9, help="nucleus sampling (default 0.9)")
    s.add_argument("--top_k", type=cli.non_negative_int, default=None, help="top-k sampling (default off)")
    s.add_argument("--seed", type=cli.lenient_int, default=42,
                   help="sampling seed (default 42): each image gets its own seed from it and its path, so its "
                        "caption does not depend on batch size, order, workers or resume")
    s.add_argument("--max_retries", type=cli.non_negative_int, default=0,
                   help="resample a caption that loops, comes back empty or hits --max_new_tokens (default 0)")
    p.add_argument("--batch_size", type=cli.positive_int, default=None,
                   help="images per batch (default: from free GPU memory, 4 on CPU; halved on out-of-memory; "
                        "API: 4 x concurrency)")
    p.add_argument("--max_pixels", type=cli.positive_int, default=None,
                   help="shrink larger images (aspect kept) to this many pixels before the model sees them: fewer "
                        "image tokens for dynamic-resolution models such as Qwen-VL (default: as they are)")
    prompted_args.add_output_args(p, skip_by_default=False)
    prompted_args.add_local_model_args(p)
    prompted_args.add_api_args(p, image_size=None)
    prompted_args.add_run_args(p)
    return p


def read_prompt(args: argparse.Namespace) -> str | None:
    """--prompt, or the text of --prompt_file (stripped); None when neither is given."""
    if args.prompt is not None and args.prompt_file:
        raise FatalError("give --prompt or --prompt_file, not both")
    if not args.prompt_file:
        return args.prompt
    try:
        text = Path(args.prompt_file).read_text(encoding="utf-8-sig").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise FatalError(f"--prompt_file {args.prompt_file}: cannot read it as UTF-8 text ({exc})") from None
    if not text:
        raise FatalError(f"--prompt_file {args.prompt_file} is empty")
    return text


def check_tags_option(args: argparse.Namespace, prompt: str | None) -> None:
    """--tags_from must name other files than the captions, and the prompt should use {tags}."""
    if not args.tags_from:
        if prompt is not None and TAGS_FIELD in prompt:
            raise FatalError(f"the prompt holds {TAGS_FIELD} but no --tags_from says where the tags are "
                             "(e.g. --tags_from .txt)")
        return
    problem = check_tags_from(args.tags_from, args.caption_extension, args.output_dir)
    if problem:
        raise FatalError(problem)
    if prompt is not None and TAGS_FIELD not in prompt:
        logger.warning("--tags_from %s is given but the prompt has no %s: the tags are not used", args.tags_from,
                       TAGS_FIELD)


def backend_factory(args: argparse.Namespace, prompt: str | None):
    """A callable that loads the model (or checks the server) in the process that runs the batches."""
    def make():
        if args.api_base:  # uploads keep their aspect (shrunk above --max_pixels)
            return prompted_args.api_client(args, 0, args.system_prompt, args.max_pixels)
        from library.captioners.vlm import LocalVLM

        return LocalVLM(args.model, args.device, args.dtype, args.quantization, args.batch_size, args.system_prompt,
                        args.max_pixels)
    return make


def default_prompt(args: argparse.Namespace) -> str:
    """The family's default prompt (read from the model's config.json; the generic one for a server or unknown model)."""
    if args.api_base:
        return DEFAULT_PROMPT
    from transformers import AutoConfig

    from library.backends.hf_loading import load_pretrained
    from library.captioners.vlm_families import family_for

    try:
        model_type = load_pretrained(AutoConfig.from_pretrained, args.model).model_type
    except ValueError:
        return DEFAULT_PROMPT  # an architecture transformers does not know: loading the model says so
    return family_for(model_type).default_prompt


def main(args: argparse.Namespace) -> int:
    if args.list_models:
        print(describe_families())
        return cli.EXIT_OK
    if not args.train_data_dir:
        raise FatalError("give a folder of images or an image file (TRAIN_DATA_DIR)")
    if args.temperature < 0 or not 0 < args.top_p <= 1:
        raise FatalError("--temperature must be >= 0 and --top_p in (0, 1]")
    prompt = read_prompt(args)
    check_tags_option(args, prompt)
    prompt = prompt if prompt is not None else default_prompt(args)
    logger.debug("prompt: %s", prompt)
    cfg = DualCaptionConfig(
        image_path=Path(args.train_data_dir), tasks=[CaptionTask("caption", prompt, args.max_new_tokens)],
        recursive=args.recursive, caption_extension=args.caption_extension,
        output_dir=Path(args.output_dir) if args.output_dir else None, overwrite=not cli.resume_flag(args, False),
        batch_size=args.batch_size, workers=args.num_workers,
        sampling=Sampling(do_sample=not args.greedy, temperature=args.temperature, top_p=args.top_p,
                          top_k=args.top_k, seed=args.seed),
        max_retries=args.max_retries, debug=args.debug, progress=not args.no_progress, tags_from=args.tags_from)
    ray = cli.ray_options(args)
    outcome = run_dual_caption(cfg, backend_factory(args, prompt), ray, cli.failures_file(args),
                               uses_gpu=not args.api_base and args.device != "cpu",
                               writer=cli.result_writer(ray, lambda: None, not cfg.overwrite))
    if outcome.warnings:
        print(f"{len(outcome.warnings)} captions hit --max_new_tokens and were written anyway")
    if args.tags_from and outcome.notes[NO_TAGS_NOTE]:
        print(f"{outcome.notes[NO_TAGS_NOTE]} images had no {args.tags_from} tag file: their {TAGS_FIELD} was empty")
    return dataset_args.finish_run(outcome.summary, args, args.train_data_dir, args.caption_extension)


if __name__ == "__main__":
    sys.exit(cli.run_script(main, setup_parser()))
