"""The WD tagger job: a loaded tagger with the run's tag rules, and tag_images() to run it over a folder."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from library.backends.gpu_memory import free_gpu_memory, tagger_batch_size
from library.backends.gpu_decode import JpegBytesLoader, gpu_decoder
from library.backends.onnx_runtime import parse_device
from library.run.jobs import ItemResult, Job, Model
from library.outputs.metadata import MetadataWriter
from library.outputs.sidecar import sidecar_writer
from library.outputs.tee import TeeWriter
from library.outputs.writer import ResultWriter
from library.run.pipeline import LoadedItem
from library.run.runner import RunOptions, RunOutcome, run
from library.files.sidecars import split_caption
from library.taggers.preprocess import SquareImageLoader
from library.taggers.scores import DEFAULT_FLOOR, RECORD_KEY, ScoresWriter, file_sha256, image_record, make_header
from library.taggers.tag_rules import TagOptions, TagSelector, tag_key
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
    decode: str = "cpu"  # "gpu": JPEGs decoded and resized on the GPU (library.backends.gpu_decode), when it can
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
    scores_file: Path | None = None  # also keep the raw scores here (library.taggers.scores)
    scores_floor: float = DEFAULT_FLOOR



def _merge_existing(tags: list[str], existing_text: str | None, separator: str) -> list[str]:
    if not existing_text:
        return tags
    existing = split_caption(existing_text, separator)
    seen = {tag_key(t) for t in existing}
    return existing + [t for t in tags if tag_key(t) not in seen]


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


class TaggerModel(Model):
    """A loaded tagger with the run's tag rules: a batch of decoded images -> caption, tags and scores per image."""

    def __init__(self, cfg: TaggerConfig):
        self.cfg = cfg
        self.tagger = WDTagger.from_repo(cfg.repo_id, cfg.model_dir, cfg.force_download, cfg.device, cfg.backend,
                                         cfg.fp16)
        self.selector = TagSelector(self.tagger.labels, cfg.tag_options)
        self.batch_size = cfg.batch_size or auto_batch_size(self.tagger, cfg.device)
        if self.tagger.fixed_batch and self.tagger.fixed_batch != self.batch_size:
            logger.warning("the model has a fixed batch size of %d: using it instead of --batch_size %d",
                           self.tagger.fixed_batch, self.batch_size)
            self.batch_size = self.tagger.fixed_batch
        self.loader = self.tagger.image_loader(cfg.fast_decode)
        self.gpu_decoder = None
        if cfg.decode == "gpu":
            if isinstance(self.loader, SquareImageLoader):
                self.gpu_decoder = gpu_decoder(self.tagger.image_size, self.loader, cfg.decode)
            else:
                logger.warning("--decode gpu: the %s layout's preprocessing runs on the CPU only; decoding on the CPU",
                               self.tagger.layout)
            if self.gpu_decoder is not None:
                self.loader = JpegBytesLoader(self.loader)
        self.scores_header, self._header_sent = None, False
        if cfg.scores_file is not None:
            files = self.tagger.files
            self.scores_header = make_header(self.tagger.labels, cfg.repo_id, file_sha256(files.labels),
                                             cfg.scores_floor, cfg.train_data_dir, files.layout)

    def process(self, items: list[LoadedItem]) -> list[ItemResult]:
        batch = (self.gpu_decoder.squares([item.data for item in items]) if self.gpu_decoder is not None
                 else np.stack([item.data for item in items]))
        probs = self.tagger.predict(batch)
        sep = self.cfg.tag_options.caption_separator
        out = []
        for p in probs:
            result = self.selector.select(p)
            details = {"by_category": result.by_category}
            if self.scores_header is not None:
                details[RECORD_KEY] = image_record(self.tagger.labels, p, self.cfg.scores_floor)
                if not self._header_sent:  # once per loaded model: the scores writer takes it from the first row
                    details["scores_header"], self._header_sent = self.scores_header, True
            out.append(ItemResult(sep.join(result.tags), scores=result.scores, tags=result.tags, details=details))
        return out


@dataclass
class TaggerJob(Job):
    """A WD tagger run (picklable: each process that runs batches loads the tagger once)."""

    cfg: TaggerConfig
    verb = "tagged"
    action = "tag"
    progress_desc = "tagging"

    @property
    def uses_gpu(self) -> bool:
        return self.cfg.device != "cpu"

    def open(self) -> TaggerModel:
        return TaggerModel(self.cfg)

    def debug_lines(self, path: Path, result: ItemResult) -> list[str]:
        cats = (result.details or {}).get("by_category", {})
        sep = self.cfg.tag_options.caption_separator
        lines = [f"{path}:", f"\tRating tags: {sep.join(cats.get('rating', []))}",
                 f"\tCharacter tags: {sep.join(cats.get('character', []))}",
                 f"\tGeneral tags: {sep.join(cats.get('general', []))}"]
        other = [f"{t} ({c})" for c in ("copyright", "artist", "meta", "model", "quality") for t in cats.get(c, [])]
        if other:
            lines.append(f"\tOther tags: {sep.join(other)}")
        return lines


def append_merge(separator: str):
    """--append_tags: the existing caption's tags first, then the new ones it does not have (by tag_key)."""

    def merge(existing: str, result: ItemResult) -> str:
        return separator.join(_merge_existing(result.tags or [], existing, separator))

    return merge


def tagger_writer(cfg: TaggerConfig) -> ResultWriter:
    """Sidecars (with --append_tags merging), or the --output_path metadata file; plus the --scores_file."""
    if cfg.output_path is not None:
        writer = MetadataWriter(cfg.output_path, resume=cfg.skip_existing)
    else:
        writer = sidecar_writer(cfg.caption_extension, cfg.train_data_dir, cfg.output_dir,
                                append_merge(cfg.tag_options.caption_separator) if cfg.append_tags else None)
    if cfg.scores_file is None:
        return writer
    return TeeWriter(writer, ScoresWriter(cfg.scores_file, resume=cfg.skip_existing))


def tag_images(cfg: TaggerConfig, ray=None, failures_file: Path | None = None,
               writer: ResultWriter | None = None) -> RunOutcome:
    """Run the tagger over cfg.train_data_dir (on Ray Data when `ray` is given; writer: default tagger_writer)."""
    opts = RunOptions(cfg.train_data_dir, recursive=cfg.recursive, resume=cfg.skip_existing, workers=cfg.workers,
                      progress=cfg.progress, debug=cfg.debug, failures_file=failures_file, ray=ray)
    return run(TaggerJob(cfg), writer or tagger_writer(cfg), opts)
