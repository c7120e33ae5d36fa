"""The three kinds of Ray jobs (WD tagger, BLIP/GIT captioners, JoyCaption) on the single-machine batch code."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

from library.captioners.job import Captioner, CaptionRunConfig, caption_batch
from library.joycaption.job import DualCaptionConfig, DualCaptionOutcome, caption_batch as dual_caption_batch
from library.errors import FatalError
from library.pipeline import LoadedItem, RunSummary
from library.distributed.runner import RayOptions, run_job
from library.distributed.worker import ItemResult
from library.sidecars import SidecarLayout
from library.taggers.job import BatchTagger, TaggerConfig, TaggerOutcome

logger = logging.getLogger(__name__)


def _layout(extension: str, root, output_dir) -> SidecarLayout:
    try:
        return SidecarLayout(extension, root, output_dir)
    except ValueError as exc:
        raise FatalError(str(exc)) from None


class _TaggerModel:
    def __init__(self, batcher: BatchTagger):
        self.batcher, self.loader, self.batch_size = batcher, batcher.loader, batcher.batch_size

    def process(self, items: list[LoadedItem]) -> list[ItemResult]:
        return [ItemResult(caption, scores=result.scores, tags=result.tags)
                for caption, result in self.batcher.tag(items)]


@dataclass
class TaggerJob:
    """A WD tagger run: each actor loads the tagger once and tags through BatchTagger, as tag_images does."""

    cfg: TaggerConfig
    uses_gpu: bool = True

    @property
    def batch_size(self) -> int | None:
        return self.cfg.batch_size

    def open(self, layout: SidecarLayout) -> _TaggerModel:
        return _TaggerModel(BatchTagger(self.cfg, layout))


class _CaptionerModel:
    def __init__(self, captioner: Captioner, batch_size: int, postprocess):
        self.captioner, self.loader, self.batch_size = captioner, captioner.preprocess, batch_size
        self.postprocess = postprocess

    def process(self, items: list[LoadedItem]) -> list[ItemResult]:
        return [ItemResult(caption, error) for caption, error in caption_batch(self.captioner, items, self.postprocess)]


@dataclass
class CaptionerJob:
    """A BLIP / BLIP-2 / GIT run: each actor calls make_captioner() once and captions through caption_batch."""

    make_captioner: Callable[[], Captioner]
    batch_size: int
    postprocess: Callable[[str], str] | None = None
    uses_gpu: bool = True

    def open(self, layout: SidecarLayout) -> _CaptionerModel:
        return _CaptionerModel(self.make_captioner(), self.batch_size, self.postprocess)


class _DualModel:
    def __init__(self, backend, cfg: DualCaptionConfig):
        self.backend, self.cfg, self.loader = backend, cfg, backend.loader()
        self.batch_size = cfg.batch_size or backend.images_per_batch([t.prompt for t in cfg.tasks],
                                                                     max(t.max_new_tokens for t in cfg.tasks))

    def process(self, items: list[LoadedItem]) -> list[ItemResult]:
        results = dual_caption_batch(self.backend, items, self.cfg.tasks, self.cfg.sampling, self.cfg.max_retries)
        return [ItemResult("\n".join(captions) if captions is not None else None, error, warnings=warnings)
                for captions, error, warnings in results]


@dataclass
class DualCaptionJob:
    """A JoyCaption run (local model or API client per actor) through dual_captioning.caption_batch."""

    cfg: DualCaptionConfig
    make_backend: Callable
    uses_gpu: bool = True

    @property
    def batch_size(self) -> int | None:
        return self.cfg.batch_size

    def open(self, layout: SidecarLayout) -> _DualModel:
        return _DualModel(self.make_backend(), self.cfg)


def tag_images_ray(cfg: TaggerConfig, opts: RayOptions) -> TaggerOutcome:
    """tag_images on a Ray cluster: the same captions, from a folder, tar shards or a parquet table."""
    if cfg.output_path is not None:
        raise FatalError("--output_path is not used with --ray: give --ray_output tags.jsonl (or .parquet, or a "
                         "folder), which holds the captions, image sizes and scores")
    if cfg.append_tags and opts.output is not None:
        raise FatalError("--append_tags merges into caption files: leave --ray_output out to use it")
    layout = _layout(cfg.caption_extension, cfg.train_data_dir, cfg.output_dir)
    outcome = run_job(TaggerJob(cfg, uses_gpu=cfg.device != "cpu"), cfg.train_data_dir, opts, layout,
                      recursive=cfg.recursive, resume=cfg.skip_existing, threads=cfg.workers, verb="tagged",
                      progress=cfg.progress, debug=cfg.debug)
    return TaggerOutcome(outcome.summary, outcome.tag_frequency)


def caption_images_ray(make_captioner: Callable[[], Captioner], cfg: CaptionRunConfig, opts: RayOptions,
                       device: str = "auto", verb: str = "captioned") -> RunSummary:
    """caption_images on a Ray cluster: one make_captioner() per actor, the same captions."""
    layout = _layout(cfg.caption_extension, cfg.train_data_dir, cfg.output_dir)
    job = CaptionerJob(make_captioner, cfg.batch_size, cfg.postprocess, uses_gpu=device != "cpu")
    return run_job(job, cfg.train_data_dir, opts, layout, recursive=cfg.recursive, resume=cfg.skip_existing,
                   threads=cfg.workers, verb=verb, progress=cfg.progress, debug=cfg.debug).summary


def dual_caption_ray(cfg: DualCaptionConfig, make_backend: Callable, opts: RayOptions,
                     uses_gpu: bool = True) -> DualCaptionOutcome:
    """run_dual_caption on a Ray cluster (images that have a caption are skipped unless cfg.overwrite)."""
    if not cfg.tasks:
        raise FatalError("nothing to generate: no caption task")
    layout = _layout(cfg.caption_extension, cfg.image_path, cfg.output_dir)
    outcome = run_job(DualCaptionJob(cfg, make_backend, uses_gpu=uses_gpu), cfg.image_path, opts, layout,
                      recursive=cfg.recursive, resume=not cfg.overwrite, threads=cfg.workers, progress=cfg.progress,
                      debug=cfg.debug)
    if outcome.warnings:
        logger.warning("%d captions were written although they hit the token limit (raise --*-max-new-tokens "
                       "or check them)", len(outcome.warnings))
    return DualCaptionOutcome(outcome.summary, outcome.warnings)
