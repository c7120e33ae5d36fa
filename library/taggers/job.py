"""Tag a folder of images with a WD tagger: discovery, resume, batched inference, sidecars or metadata, summary."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from library.backends.gpu_memory import free_gpu_memory, tagger_batch_size
from library.discovery import discover_images
from library.errors import FatalError
from library.outputs.metadata import MetadataWriter
from library.backends.onnx_runtime import parse_device
from library.pipeline import LoadedItem, RunSummary, default_workers, run_batches
from library.taggers.preprocess import SquareImageLoader
from library.sidecars import SidecarLayout, read_caption, shared_sidecars, split_caption, write_captions
from library.taggers.tag_rules import TagOptions, TagResult, TagSelector, tag_key
from library.taggers.wd import DEFAULT_REPO_ID, WDTagger

logger = logging.getLogger(__name__)


@dataclass
class TaggerConfig:
    """Everything a tagging run needs, resolved from the command line."""

    train_data_dir: Path
    repo_id: str = DEFAULT_REPO_ID
    model_dir: str = "wd14_tagger_model"
    force_download: bool = False
    device: str = "auto"
    backend: str = "auto"
    fast_decode: bool = False
    fp16: bool = False
    batch_size: int | None = None  # None: sized to the device (library.backends.gpu_memory)
    workers: int | None = None
    recursive: bool = False
    caption_extension: str = ".txt"
    output_dir: Path | None = None
    output_path: Path | None = None
    skip_existing: bool = False
    append_tags: bool = False
    debug: bool = False
    progress: bool = True
    tag_options: TagOptions = field(default_factory=TagOptions)


@dataclass
class TaggerOutcome:
    summary: RunSummary
    tag_frequency: Counter


def _merge_existing(tags: list[str], existing_text: str | None, separator: str) -> list[str]:
    if not existing_text:
        return tags
    existing = split_caption(existing_text, separator)
    seen = {tag_key(t) for t in existing}
    return existing + [t for t in tags if tag_key(t) not in seen]


def _log_debug(path: Path, result: TagResult, separator: str) -> None:
    cats = result.by_category
    logger.info("%s:", path)
    logger.info("\tRating tags: %s", separator.join(cats.get("rating", [])))
    logger.info("\tCharacter tags: %s", separator.join(cats.get("character", [])))
    logger.info("\tGeneral tags: %s", separator.join(cats.get("general", [])))
    other = [f"{t} ({c})" for c in ("copyright", "artist", "meta", "model", "quality") for t in cats.get(c, [])]
    if other:
        logger.info("\tOther tags: %s", separator.join(other))


def auto_batch_size(tagger: WDTagger, device: str | None) -> int:
    """The batch size when --batch_size is not given: sized to the GPU's free memory, or the CPU default."""
    if tagger.fixed_batch:
        return tagger.fixed_batch
    free = free_gpu_memory(parse_device(device)[1]) if tagger.on_gpu else None
    size = tagger_batch_size(tagger.on_gpu, tagger.image_size, free, tagger.fp16)
    where = (f"{free / 1024 ** 3:.1f} GiB free on the GPU" if free is not None
             else "GPU memory unknown" if tagger.on_gpu else "CPU")
    logger.info("batch size %d (%s; --batch_size sets it)", size, where)
    return size


class BatchTagger:
    """A loaded tagger with the run's tag rules: a batch of decoded images -> (caption, TagResult) per image.

    The single-machine run and the Ray actors (library.distributed.jobs) both tag through it, so they write the same captions.
    """

    def __init__(self, cfg: TaggerConfig, layout: SidecarLayout):
        self.cfg, self.layout = cfg, layout
        self.tagger = WDTagger.from_repo(cfg.repo_id, cfg.model_dir, cfg.force_download, cfg.device, cfg.backend,
                                         cfg.fp16)
        self.selector = TagSelector(self.tagger.labels, cfg.tag_options)
        self.batch_size = cfg.batch_size or auto_batch_size(self.tagger, cfg.device)
        if self.tagger.fixed_batch and self.tagger.fixed_batch != self.batch_size:
            logger.warning("the model has a fixed batch size of %d: using it instead of --batch_size %d",
                           self.tagger.fixed_batch, self.batch_size)
            self.batch_size = self.tagger.fixed_batch
        self.loader = SquareImageLoader(self.tagger.image_size, cfg.fast_decode)

    def tag(self, batch: list[LoadedItem]) -> list[tuple[str, TagResult]]:
        """Caption text (with --append_tags merged in) and the tag result of each loaded image, in order."""
        probs = self.tagger.predict(np.stack([item.data for item in batch]))
        sep = self.cfg.tag_options.caption_separator
        out = []
        for item, p in zip(batch, probs):
            result = self.selector.select(p)
            tags = result.tags
            if self.cfg.append_tags:
                existing = read_caption(self.layout.path_for(item.path))
                if existing is None and self.cfg.output_dir is not None:
                    existing = read_caption(item.path.with_name(item.path.stem + self.layout.extension))
                tags = _merge_existing(tags, existing, sep)
            out.append((sep.join(tags), result))
        return out


def tag_images(cfg: TaggerConfig) -> TaggerOutcome:
    """Run the tagger over cfg.train_data_dir and return the summary and tag frequencies."""
    images = discover_images(cfg.train_data_dir, cfg.recursive)
    try:
        layout = SidecarLayout(cfg.caption_extension, cfg.train_data_dir, cfg.output_dir)
    except ValueError as exc:
        raise FatalError(str(exc)) from None
    if cfg.output_path is None:
        for caption, owners in shared_sidecars(images, layout).items():
            logger.warning("%s is the caption file of %d images (%s): the last one written wins; rename them "
                           "to keep both", caption, len(owners), ", ".join(p.name for p in owners))
    metadata = MetadataWriter(cfg.output_path, resume=cfg.skip_existing) if cfg.output_path else None
    summary = RunSummary(verb="tagged")
    if cfg.skip_existing:
        done = metadata.has if metadata else layout.exists_for
        todo = [p for p in images if not done(p)]
        summary.skipped = len(images) - len(todo)
        summary.total = summary.skipped
        images = todo
    logger.info("found %d images to tag (%d skipped)", len(images), summary.skipped)
    freq: Counter = Counter()
    if not images:
        return TaggerOutcome(summary, freq)

    batcher = BatchTagger(cfg, layout)
    sep = cfg.tag_options.caption_separator

    def process(batch: list[LoadedItem]) -> list[str | None]:
        tagged = batcher.tag(batch)
        if metadata is not None:
            for item, (caption, result) in zip(batch, tagged):
                metadata.add(item.path, caption, item.size, result.scores)
            errors: list[str | None] = [None] * len(batch)
        else:
            errors = write_captions([(layout.path_for(item.path), caption) for item, (caption, _) in zip(batch, tagged)])
        for item, (_, result), error in zip(batch, tagged, errors):
            if error is None:
                freq.update(result.tags)
                if cfg.debug:
                    _log_debug(item.path, result, sep)
        return errors

    workers = default_workers() if cfg.workers is None else cfg.workers
    try:
        run_batches(images, batcher.loader, process, batch_size=batcher.batch_size, workers=workers,
                    summary=summary, desc="tagging", progress=cfg.progress)
    finally:
        if metadata is not None:
            metadata.write()
            logger.info("captions saved to %s", cfg.output_path)
    return TaggerOutcome(summary, freq)
