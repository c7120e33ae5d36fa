"""Caption a folder with any Captioner: discovery, resume, batched generation on the pipeline, sidecars, summary."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

from library.discovery import discover_images
from library.errors import FatalError
from library.pipeline import LoadedItem, RunSummary, default_workers, run_batches
from library.sidecars import SidecarLayout, shared_sidecars, write_captions

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


def clean_caption(text: str) -> str:
    """One line, single spaces, no leading/trailing blanks (models emit newlines and double spaces)."""
    return re.sub(r"\s+", " ", text).strip()


def _is_out_of_memory(exc: BaseException) -> bool:
    return "OutOfMemory" in type(exc).__name__ or "out of memory" in str(exc).lower()


def _free_accelerator_memory() -> None:
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001 - best effort only
        pass


def generate_with_fallback(captioner: Captioner, payloads: Sequence[Any]) -> list[str | BaseException]:
    """Captions for `payloads`; when a batch runs out of memory, retry the images one at a time."""
    try:
        return list(captioner.generate(payloads))
    except Exception as exc:  # noqa: BLE001
        if not _is_out_of_memory(exc) or len(payloads) == 1:
            raise
        logger.warning("out of memory on a batch of %d: retrying one image at a time (lower --batch_size)",
                       len(payloads))
    _free_accelerator_memory()
    results: list[str | BaseException] = []
    for payload in payloads:
        try:
            results.append(captioner.generate([payload])[0])
        except Exception as exc:  # noqa: BLE001 - that image fails, the run goes on
            _free_accelerator_memory()
            results.append(exc)
    return results


def caption_batch(captioner: Captioner, batch: Sequence[LoadedItem],
                  postprocess: Callable[[str], str] | None = None) -> list[tuple[str | None, str | None]]:
    """(caption, None) or (None, error) per loaded image: generate (OOM fallback), postprocess, tidy, no empties.

    The single-machine run and the Ray actors (library.distributed.jobs) both caption through it.
    """
    captions = generate_with_fallback(captioner, [item.data for item in batch])
    if len(captions) != len(batch):
        raise RuntimeError(f"the model returned {len(captions)} captions for {len(batch)} images")
    out: list[tuple[str | None, str | None]] = []
    for caption in captions:
        if isinstance(caption, BaseException):
            out.append((None, f"{caption.__class__.__name__}: {caption}"))
            continue
        caption = clean_caption(postprocess(caption) if postprocess is not None else caption)
        out.append((caption, None) if caption else (None, "the model produced an empty caption"))
    return out


def caption_images(make_captioner: Callable[[], Captioner], cfg: CaptionRunConfig,
                   verb: str = "captioned") -> RunSummary:
    """Caption every image of cfg.train_data_dir and write one sidecar per image.

    Args:
        make_captioner: builds the model; called only when there is something to caption.
        cfg: the run's folders, resume and batching settings.
        verb: word used in the summary line.
    Returns:
        The run summary (done, skipped, failed with reasons, speed).
    """
    images = discover_images(cfg.train_data_dir, cfg.recursive)
    try:
        layout = SidecarLayout(cfg.caption_extension, cfg.train_data_dir, cfg.output_dir)
    except ValueError as exc:
        raise FatalError(str(exc)) from None
    for caption, owners in shared_sidecars(images, layout).items():
        logger.warning("%s is the caption file of %d images (%s): the last one written wins; rename them "
                       "to keep both", caption, len(owners), ", ".join(p.name for p in owners))
    summary = RunSummary(verb=verb)
    if cfg.skip_existing:
        todo = [p for p in images if not layout.exists_for(p)]
        summary.skipped = summary.total = len(images) - len(todo)
        images = todo
    logger.info("found %d images to caption (%d skipped)", len(images), summary.skipped)
    if not images:
        return summary

    captioner = make_captioner()

    def process(batch: list[LoadedItem]) -> list[str | None]:
        results = caption_batch(captioner, batch, cfg.postprocess)
        good = [(item, caption) for item, (caption, error) in zip(batch, results) if error is None]
        written = iter(write_captions([(layout.path_for(item.path), caption) for item, caption in good]))
        errors = [error if error is not None else next(written) for _, error in results]
        if cfg.debug:
            for item, caption in good:
                logger.info("%s: %s", item.path, caption)
        return errors

    workers = default_workers() if cfg.workers is None else cfg.workers
    return run_batches(images, captioner.preprocess, process, batch_size=cfg.batch_size, workers=workers,
                       summary=summary, desc="captioning", progress=cfg.progress)
