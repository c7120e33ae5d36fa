"""The Ray actor: one model per actor; decodes rows (a bad image is that row's error), runs batches, writes sidecars."""

from __future__ import annotations

import io
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

from library.errors import FatalError
from library.pipeline import LoadedItem, load_one
from library.sidecars import SidecarLayout, write_captions

logger = logging.getLogger(__name__)


@dataclass
class ItemResult:
    """What a model gave for one image: the caption or an error, with tagger scores and caption warnings."""

    caption: str | None
    error: str | None = None
    scores: dict[str, float] | None = None
    tags: list[str] | None = None
    warnings: list[str] = field(default_factory=list)


class BatchModel(Protocol):
    """A model loaded in an actor: its picklable per-image loader, its batch size, and one batch -> results."""

    loader: Callable
    batch_size: int

    def process(self, items: list[LoadedItem]) -> list[ItemResult]: ...


class RayJob(Protocol):
    """A picklable description of the work (built in the driver); open() loads the model inside an actor."""

    uses_gpu: bool
    batch_size: int | None

    def open(self, layout: SidecarLayout) -> BatchModel: ...


class BatchWorker:
    """Ray Data callable class: loads the model once per actor, decodes rows, runs batches, writes sidecars.

    Args:
        job: the RayJob (unpickled in the actor).
        layout: where caption files go.
        write_sidecars: write them (else only return the results for --ray_output).
        threads: decoding threads per actor (0 = decode in the calling thread).
        cwd: the driver's working directory: relative paths (images, --model_dir, --output_dir) mean the same in
            the actor when that folder exists on its node (a shared filesystem mounted at the same place).
    """

    def __init__(self, job: RayJob, layout: SidecarLayout, write_sidecars: bool, threads: int, cwd: str):
        if os.path.isdir(cwd):
            os.chdir(cwd)
        self.model = job.open(layout)
        self.layout = layout
        self.write_sidecars = write_sidecars
        self.pool = ThreadPoolExecutor(threads) if threads > 0 else None

    def _load(self, key: str, path: str | None, data: bytes | None) -> LoadedItem:
        item = load_one(self.model.loader, io.BytesIO(data) if data is not None else Path(path))
        item.path = Path(path or key)
        return item

    def __call__(self, batch):
        rows = batch.to_pylist()
        results: list[ItemResult | None] = [None] * len(rows)
        sizes: list[list[int] | None] = [None] * len(rows)
        todo = [i for i, r in enumerate(rows) if not r.get("error")]
        for i in set(range(len(rows))) - set(todo):
            results[i] = ItemResult(None, rows[i]["error"])
        load = lambda i: self._load(rows[i]["key"], rows[i].get("path"), rows[i].get("data"))  # noqa: E731
        good = []
        for i, item in zip(todo, self.pool.map(load, todo) if self.pool else map(load, todo)):
            sizes[i] = list(item.size) if item.size else None
            if item.error:
                results[i] = ItemResult(None, item.error)
            else:
                good.append((i, item))
        size = max(1, self.model.batch_size)
        for start in range(0, len(good), size):
            chunk = good[start:start + size]
            try:
                out = self.model.process([item for _, item in chunk])
            except FatalError:
                raise
            except Exception as exc:  # noqa: BLE001 - the batch failed as a whole; the run goes on
                logger.exception("batch of %d images failed", len(chunk))
                out = [ItemResult(None, f"{exc.__class__.__name__}: {exc}") for _ in chunk]
            for (i, _), res in zip(chunk, self._write(chunk, out)):
                results[i] = res
        return result_table(rows, results, sizes)

    def _write(self, chunk: list[tuple[int, LoadedItem]], out: list[ItemResult]) -> list[ItemResult]:
        """Write the chunk's captions as sidecars (several at once); a failed write becomes that row's error."""
        if not self.write_sidecars:
            return out
        captioned = [(item, res) for (_, item), res in zip(chunk, out) if res.caption is not None]
        errors = iter(write_captions([(self.layout.path_for(item.path), res.caption) for item, res in captioned]))
        written = []
        for res in out:
            error = next(errors) if res.caption is not None else None
            written.append(ItemResult(None, error) if error else res)
        return written


def result_table(rows: list[dict], results: list[ItemResult], sizes: list):
    """One result row per input row (key, caption, error, size, scores as JSON, tags, warnings, shard)."""
    import pyarrow as pa

    schema = pa.schema([("key", pa.string()), ("caption", pa.string()), ("error", pa.string()),
                        ("image_size", pa.list_(pa.int32())), ("scores", pa.string()), ("tags", pa.list_(pa.string())),
                        ("warnings", pa.list_(pa.string())), ("shard", pa.string()), ("shard_size", pa.int64())])
    return pa.Table.from_pydict({
        "key": [r["key"] for r in rows], "caption": [x.caption for x in results], "error": [x.error for x in results],
        "image_size": sizes, "scores": [json.dumps(x.scores) if x.scores is not None else None for x in results],
        "tags": [x.tags for x in results], "warnings": [list(x.warnings) for x in results],
        "shard": [r.get("shard") for r in rows], "shard_size": [r.get("shard_size") for r in rows]}, schema=schema)
