"""Options shared by the prompted captioners (dual_caption.py, make_captions_by_vlm.py): files, local model, API server."""

from __future__ import annotations

import argparse

from finetune import cli
from library.backends.quantization import QUANTIZATIONS


def add_output_args(parser: argparse.ArgumentParser, skip_by_default: bool) -> None:
    """--num_workers, --skip_existing/--overwrite, --recursive, --caption_extension, --output_dir (and old spellings)."""
    parser.add_argument("--num_workers", type=cli.non_negative_int, default=4,
                        help="processes that decode and resize images (default 4; 0 = none)")
    parser.add_argument("--max_data_loader_n_workers", dest="num_workers", type=cli.non_negative_int,
                        help=argparse.SUPPRESS)
    cli.add_resume_args(parser, skip_by_default=skip_by_default)
    parser.add_argument("--recursive", action="store_true", help="also caption images in subfolders")
    parser.add_argument("--caption_extension", default=".txt", help="caption file extension (default .txt)")
    parser.add_argument("--caption_extention", dest="caption_extension", help=argparse.SUPPRESS)
    parser.add_argument("--output_dir", default=None, help="write caption files here, mirroring the input tree")


def add_local_model_args(parser: argparse.ArgumentParser) -> None:
    """--quantization, --device, --dtype."""
    loc = parser.add_argument_group("local model")
    loc.add_argument("--quantization", choices=QUANTIZATIONS, default="none",
                     help="bitsandbytes quantisation of the language model (CUDA; the vision tower stays as is)")
    loc.add_argument("--device", default="auto", help=cli.TORCH_DEVICE_HELP)
    loc.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU), fp32, fp16, bf16")


def add_api_args(parser: argparse.ArgumentParser, image_size: int | None) -> None:
    """--api_base and the client's settings; --api_image_size when the uploads are squashed (image_size: its default)."""
    api = parser.add_argument_group("OpenAI-compatible server (vLLM, Ollama, LM Studio, llama.cpp, hosted APIs)")
    api.add_argument("--api_base", default=None,
                     help="server URL, e.g. http://localhost:8000/v1; uses the server instead of a local model")
    api.add_argument("--api_model", default=None, help="served model name (default: the first one the server lists)")
    api.add_argument("--api_key_env", default=None,
                     help="environment variable holding the API key (default OPENAI_API_KEY, used when set)")
    api.add_argument("--api_concurrency", type=cli.positive_int, default=4, help="parallel requests (default 4)")
    api.add_argument("--api_timeout", type=float, default=120.0,
                     help="seconds one whole request may take before a retry (120)")
    api.add_argument("--api_retries", type=cli.non_negative_int, default=5,
                     help="retries on 429/5xx/timeouts, with exponential backoff and Retry-After (default 5)")
    api.add_argument("--api_backoff", type=float, default=1.0, help="first retry delay in seconds, doubled each time")
    if image_size is not None:
        api.add_argument("--api_image_size", type=cli.non_negative_int, default=image_size,
                         help=f"upload images squashed to this square ({image_size}, JoyCaption's input); "
                              "0 = keep their own size")


def add_run_args(parser: argparse.ArgumentParser) -> None:
    """--debug, --failures_file/--profile, --no_progress, the dataset config and report options, --ray."""
    from finetune import dataset_args

    parser.add_argument("--debug", action="store_true", help="log every caption")
    cli.add_failures_arg(parser)
    parser.add_argument("--no_progress", action="store_true", help="hide the progress bar")
    dataset_args.add_dataset_config_args(parser)
    cli.add_ray_args(parser)


def api_client(args: argparse.Namespace, image_size: int, system_prompt: str | None, max_pixels: int | None = None):
    """The checked OpenAI-compatible client for --api_base (fails fast when the server is unreachable)."""
    from library.joycaption.api import DEFAULT_KEY_ENV, ApiJoyCaption

    client = ApiJoyCaption(args.api_base, args.api_model, args.api_key_env or DEFAULT_KEY_ENV, args.api_concurrency,
                           args.api_timeout, args.api_retries, args.api_backoff, image_size, system_prompt,
                           key_required=bool(args.api_key_env), max_pixels=max_pixels)
    client.check()
    return client
