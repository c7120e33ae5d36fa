"""The job interface every model family implements: a picklable description, a loaded model, results per image."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from library.errors import FatalError

logger = logging.getLogger(__name__)


@dataclass
class ItemResult:
    """What a model gave for one image: the text to write or an error, plus optional scores, tags and warnings.

    Attributes:
        caption: the sidecar text (None when the image failed).
        error: one-line reason the image failed.
        scores: tag -> probability (taggers), written to metadata files that keep scores.
        tags: the tags of the caption (taggers), counted by --frequency_tags.
        warnings: written anyway, but the user should know (e.g. a caption cut at the token limit).
        details: JSON-able extras for --debug lines (e.g. tags by category).
        notes: facts counted in the run's summary but not logged per image (e.g. 'no tag file').
    """

    caption: str | None
    error: str | None = None
    scores: dict[str, float] | None = None
    tags: list[str] | None = None
    warnings: list[str] = field(default_factory=list)
    details: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    @classmethod
    def failed(cls, reason: str) -> ItemResult:
        return cls(None, reason)


class Model(ABC):
    """A model loaded where it runs (the main process or a Ray actor).

    Attributes:
        loader: picklable callable (path or io.BytesIO) -> (payload, (width, height)), run in the decode workers;
            raises library.files.image_io.ImageLoadError for an unreadable file.
        batch_size: payloads per process() call.
    """

    loader: Callable
    batch_size: int

    @abstractmethod
    def process(self, items: list) -> list[ItemResult]:
        """One result per loaded item (library.run.pipeline.LoadedItem: path, data, size), in order."""

    def close(self) -> None:
        """Release the model (API sessions, thread pools)."""


class Job(ABC):
    """A picklable description of a run's model, built by the script; open() loads it where it runs.

    Attributes:
        verb: the summary's word ('tagged', 'captioned'); action and progress_desc: 'tag', 'tagging'.
        uses_gpu: a Ray actor asks for a GPU when the cluster has one.
    """

    verb: str = "captioned"
    action: str = "caption"
    progress_desc: str = "captioning"
    uses_gpu: bool = True

    @abstractmethod
    def open(self) -> Model:
        """Load the model; called once per process that runs batches, and only when there is work."""

    def debug_lines(self, path: Path, result: ItemResult) -> list[str]:
        """What --debug logs for one written image."""
        return [f"{path}: {result.caption}"]


def process_batch(model: Model, items: list) -> list[ItemResult]:
    """model.process(items), with a failed batch (not a FatalError) turned into one error per item."""
    try:
        results = list(model.process(items))
    except FatalError:
        raise  # the run cannot go on (bad key, broken model): not a per-image failure
    except Exception as exc:  # noqa: BLE001 - the batch failed as a whole; the run goes on
        logger.exception("batch of %d images failed", len(items))
        return [ItemResult.failed(f"{exc.__class__.__name__}: {exc}") for _ in items]
    if len(results) != len(items):
        raise FatalError(f"the model returned {len(results)} results for {len(items)} images")
    return results


def image_seed(seed: int, key: str) -> int:
    """A per-image seed from the run's --seed and a stable key (the image's path relative to the dataset, plus what
    is generated): an image's sampled caption does not depend on batch size, worker count, order or resume."""
    import hashlib

    digest = hashlib.sha256(f"{seed}\0{key}".encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF
