"""Tag images with a WD-style tagger (SmilingWolf v2/v3, cl_tagger, PixAI, Camie v2) and write Danbooru-style captions.

A drop-in for sd-scripts' finetune/tag_images_by_wd14_tagger.py: same flags, same files, its bugs fixed.
Example:
    python finetune/tag_images_by_wd14_tagger.py ./dataset --repo_id SmilingWolf/wd-swinv2-tagger-v3 \\
        --batch_size 8 --remove_underscore --thresh 0.35
"""

from __future__ import annotations

import argparse
import sys

import _bootstrap  # noqa: F401  (this checkout's library first on sys.path)

from pathlib import Path

from finetune import cli, dataset_args, tag_args
from library.errors import FatalError, OptionError
from library.taggers.layouts import list_models_text
from library.taggers.scores import DEFAULT_FLOOR
from library.taggers.job import TaggerConfig, tag_images, tagger_writer
from library.taggers.wd import DEFAULT_REPO_ID


class ListModels(argparse.Action):
    """--list_models: print the known taggers and exit (like --help, before the image folder is required)."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(list_models_text())
        parser.exit()


def setup_parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("train_data_dir", type=str, help="folder of images to tag (or one image file)")
    p.add_argument("--list_models", action=ListModels, help="list known taggers (repo id, layout, size, licence) and exit")
    p.add_argument("--repo_id", "--model", dest="repo_id", type=str, default=DEFAULT_REPO_ID,
                   help="hub id 'org/name' or 'org/name/subfolder' (cl_tagger layout), or a local model folder; "
                        f"the layout is detected from its files (default {DEFAULT_REPO_ID}; see --list_models). --model is the "
                        "same flag (the kohya_ss GUI passed --model=... from 2023-05 to 2024-03)")
    p.add_argument("--model_dir", type=str, default="wd14_tagger_model",
                   help="where models are kept, as <model_dir>/<org>_<name>/ (default wd14_tagger_model)")
    p.add_argument("--force_download", action="store_true", help="download the model files again")
    p.add_argument("--onnx", action="store_true",
                   help="accepted for compatibility: ONNX Runtime is used whenever the model has model.onnx")
    p.add_argument("--backend", choices=("auto", "onnx", "tensorflow"), default="auto",
                   help="auto (default): ONNX when the model has model.onnx, else its TensorFlow SavedModel")
    cli.add_common_run_args(p, caption_extension=".txt", batch_help=(
        "images per inference batch (default: sized to the device: 8 on CPU, up to 64 from the GPU's free memory)"))
    p.add_argument("--output_path", type=str, default=None,
                   help="write captions to this .json (sd-scripts metadata) or .jsonl file (with scores) "
                        "instead of caption files")
    tag_args.add_tag_shaping_args(p)
    p.add_argument("--scores_file", type=str, default=None, metavar="PATH.jsonl",
                   help="also keep every tag's score in this file (docs/scores.md), beside the captions: "
                        "retag_from_scores.py re-decides the tags from it later without the model")
    p.add_argument("--scores_floor", type=float, default=DEFAULT_FLOOR,
                   help=f"lowest score kept in --scores_file (default {DEFAULT_FLOOR}); retagging needs thresholds "
                        "at or above it")
    p.add_argument("--fp16", action="store_true",
                   help="run the model in float16 (converted once, cached as model_fp16.onnx; needs the onnx package). "
                        "Faster on GPUs; probabilities differ by ~1e-3, so a tag at the threshold can flip")
    p.add_argument("--decode", choices=("cpu", "gpu"), default="cpu",
                   help="gpu: decode and resize JPEGs on the GPU with NVIDIA nvImageCodec (pip install "
                        "nvidia-nvimgcodec-cu12 or -cu13; falls back to the CPU with a warning); other formats and "
                        "the PixAI/Camie layouts decode on the CPU. Probabilities differ by ~1e-2 from CPU decoding")
    p.add_argument("--fast_decode", action="store_true",
                   help="decode large JPEGs at reduced scale (much faster; tags may differ slightly from the reference)")
    dataset_args.add_dataset_config_args(p)
    cli.add_ray_args(p)
    return p


def build_config(args: argparse.Namespace) -> TaggerConfig:
    cli.resolve_caption_extension(args)
    options = tag_args.tag_options(args)
    if args.scores_file and not 0 <= args.scores_floor <= 1:
        raise OptionError(f"--scores_floor must be between 0 and 1, got {args.scores_floor}")
    return TaggerConfig(
        train_data_dir=Path(args.train_data_dir), repo_id=args.repo_id, model_dir=args.model_dir,
        force_download=args.force_download, device=args.device, backend=args.backend, batch_size=args.batch_size,
        workers=args.max_data_loader_n_workers, recursive=args.recursive, caption_extension=args.caption_extension,
        output_dir=Path(args.output_dir) if args.output_dir else None,
        output_path=Path(args.output_path) if args.output_path else None, skip_existing=cli.resume_flag(args, False),
        append_tags=args.append_tags, fast_decode=args.fast_decode, decode=args.decode, fp16=args.fp16, debug=args.debug,
        progress=not args.no_progress, tag_options=options,
        scores_file=Path(args.scores_file) if args.scores_file else None, scores_floor=args.scores_floor)


def main(args: argparse.Namespace) -> int:
    cfg, ray = build_config(args), cli.ray_options(args)
    if ray is not None and ray.output is not None:
        if cfg.append_tags:
            raise FatalError("--append_tags merges into caption files: leave --ray_output out to use it")
        if cfg.scores_file is not None:
            raise FatalError("--ray_output keeps the scores itself: give --scores_file or --ray_output, not both")
        if cfg.output_path is not None:
            raise FatalError("--ray_output holds the captions, image sizes and scores: give --output_path or "
                             "--ray_output, not both")
    writer = cli.result_writer(ray, lambda: tagger_writer(cfg), cfg.skip_existing)
    outcome = tag_images(cfg, ray, cli.failures_file(args), writer)
    if args.frequency_tags:
        print("Tag frequencies:")
        for tag, count in outcome.tag_frequency.most_common():
            print(f"{tag}: {count}")
    return dataset_args.finish_run(outcome.summary, args, args.train_data_dir, args.caption_extension)


if __name__ == "__main__":
    sys.exit(cli.run_script(main, setup_parser()))
