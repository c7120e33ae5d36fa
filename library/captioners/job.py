"""The captioner job (BLIP, BLIP-2, GIT): any Captioner behind the job interface, with OOM fallback and tidy text."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

from library.backends.torch_device import free_accelerator_memory, is_out_of_memory
from library.run.jobs import ItemResult, Job, Model
from library.outputs.sidecar import sidecar_writer
from library.outputs.writer import ResultWriter
from library.run.pipeline import LoadedItem, RunSummary
from library.run.runner import RunOptions, run
from library.files.sidecars import one_line

logger = logging.getLogger(__name__)


class Captioner(Protocol):
    """What a model backend offers the run loop.

    Attributes:
        preprocess: picklable callable path -> (payload, (width, height)) run in the worker processes
            (decode + resize there; raise ImageLoadError for unreadable files).
    """

    preprocess: Callable[[Path], tuple[Any, tuple[int, int]]]

    def generate(self, batch: Sequence[Any]) -> list[str]:
        """One caption per payload, in order; the same text whatever the batch size."""
        ...


@dataclass
class CaptionRunConfig:
    """Where the images are, where captions go, and how to batch.

    Args:
        train_data_dir: dataset folder (or one image).
        caption_extension: sidecar extension ('.caption', '.txt').
        output_dir: mirror sidecars under this folder instead of next to the images.
        skip_existing: leave images that already have a sidecar alone (resume).
        workers: decode processes (None = one per core, 0 = decode in this process).
        debug: log each caption.
        postprocess: applied to each generated caption before writing (e.g. GIT's --remove_words).
    """

    train_data_dir: Path
    caption_extension: str = ".caption"
    output_dir: Path | None = None
    recursive: bool = False
    skip_existing: bool = False
    batch_size: int = 1
    workers: int | None = None
    debug: bool = False
    progress: bool = True
    postprocess: Callable[[str], str] | None = None


def generate_with_fallback(captioner: Captioner, payloads: Sequence[Any]) -> list[str | BaseException]:
    """Captions for `payloads`; when a batch runs out of memory, retry the images one at a time."""
    try:
        return list(captioner.generate(payloads))
    except Exception as exc:  # noqa: BLE001
        if not is_out_of_memory(exc) or len(payloads) == 1:
            raise
        logger.warning("out of memory on a batch of %d: retrying one image at a time (lower --batch_size)",
                       len(payloads))
    free_accelerator_memory()
    results: list[str | BaseException] = []
    for payload in payloads:
        try:
            results.append(captioner.generate([payload])[0])
        except Exception as exc:  # noqa: BLE001 - that image fails, the run goes on
            free_accelerator_memory()
            results.append(exc)
    return results


def caption_batch(captioner: Captioner, batch: Sequence[LoadedItem],
                  postprocess: Callable[[str], str] | None = None) -> list[ItemResult]:
    """One result per loaded image: generate (OOM fallback), postprocess, tidy; an empty caption is a failure."""
    captions = generate_with_fallback(captioner, [item.data for item in batch])
    if len(captions) != len(batch):
        raise RuntimeError(f"the model returned {len(captions)} captions for {len(batch)} images")
    out: list[ItemResult] = []
    for caption in captions:
        if isinstance(caption, BaseException):
            out.append(ItemResult.failed(f"{caption.__class__.__name__}: {caption}"))
            continue
        caption = one_line(postprocess(caption) if postprocess is not None else caption)  # models emit newlines
        out.append(ItemResult(caption) if caption else ItemResult.failed("the model produced an empty caption"))
    return out


class CaptionerModel(Model):
    """A loaded BLIP / BLIP-2 / GIT captioner as the run loop sees it."""

    def __init__(self, captioner: Captioner, batch_size: int, postprocess: Callable[[str], str] | None):
        self.captioner, self.loader, self.batch_size = captioner, captioner.preprocess, batch_size
        self.postprocess = postprocess

    def process(self, items: list[LoadedItem]) -> list[ItemResult]:
        return caption_batch(self.captioner, items, self.postprocess)


@dataclass
class CaptionerJob(Job):
    """A BLIP / BLIP-2 / GIT run: each process that runs batches calls make_captioner() once."""

    make_captioner: Callable[[], Captioner]
    batch_size: int = 1
    postprocess: Callable[[str], str] | None = None
    uses_gpu: bool = True

    def open(self) -> CaptionerModel:
        return CaptionerModel(self.make_captioner(), self.batch_size, self.postprocess)


def caption_images(make_captioner: Callable[[], Captioner], cfg: CaptionRunConfig, ray=None,
                   failures_file: Path | None = None, device: str = "auto",
                   writer: ResultWriter | None = None) -> RunSummary:
    """Caption every image of cfg.train_data_dir and write one sidecar per image (on Ray Data when `ray` is given).

    Args:
        make_captioner: builds the model; called only when there is something to caption.
        cfg: the run's folders, resume and batching settings.
        writer: where captions go (default: sidecars by cfg.caption_extension / cfg.output_dir).
    Returns:
        The run summary (done, skipped, failed with reasons, speed).
    """
    job = CaptionerJob(make_captioner, cfg.batch_size, cfg.postprocess, uses_gpu=device != "cpu")
    opts = RunOptions(cfg.train_data_dir, recursive=cfg.recursive, resume=cfg.skip_existing, workers=cfg.workers,
                      progress=cfg.progress, debug=cfg.debug, failures_file=failures_file, ray=ray)
    writer = writer or sidecar_writer(cfg.caption_extension, cfg.train_data_dir, cfg.output_dir)
    return run(job, writer, opts).summary
