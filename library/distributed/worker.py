"""The Ray actor: one model per actor; decodes rows (a bad image is that row's error), runs batches, writes sidecars."""

from __future__ import annotations

import io
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from library.run.jobs import ItemResult, Job, process_batch
from library.outputs.writer import ResultWriter
from library.run.pipeline import LoadedItem, load_one
from library.run.runner import write_batch

logger = logging.getLogger(__name__)


class BatchWorker:
    """Ray Data callable class: loads the job's model once per actor, decodes rows, runs batches, writes sidecars.

    Args:
        job: the Job (unpickled in the actor).
        writer: a writer that writes where the model runs (sidecars), or None: results go back to the driver.
        threads: decoding threads per actor (0 = decode in the calling thread).
        cwd: the driver's working directory: relative paths (images, --model_dir, --output_dir) mean the same in
            the actor when that folder exists on its node (a shared filesystem mounted at the same place).
    """

    def __init__(self, job: Job, writer: ResultWriter | None, threads: int, cwd: str):
        if os.path.isdir(cwd):
            os.chdir(cwd)
        self.model = job.open()
        self.writer = writer
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
            results[i] = ItemResult.failed(rows[i]["error"])
        load = lambda i: self._load(rows[i]["key"], rows[i].get("path"), rows[i].get("data"))  # noqa: E731
        good = []
        for i, item in zip(todo, self.pool.map(load, todo) if self.pool else map(load, todo)):
            sizes[i] = list(item.size) if item.size else None
            if item.error:
                results[i] = ItemResult.failed(item.error)
            else:
                good.append((i, item))
        size = max(1, self.model.batch_size)
        for start in range(0, len(good), size):
            chunk = good[start:start + size]
            items = [item for _, item in chunk]
            out = process_batch(self.model, items)
            if self.writer is not None:
                out = write_batch(self.writer, items, out)
            for (i, _), res in zip(chunk, out):
                results[i] = res
        return result_table(rows, results, sizes)


def result_table(rows: list[dict], results: list[ItemResult], sizes: list):
    """One result row per input row (key, caption, error, size, scores/details as JSON, tags, warnings, notes, shard)."""
    import pyarrow as pa

    schema = pa.schema([("key", pa.string()), ("caption", pa.string()), ("error", pa.string()),
                        ("image_size", pa.list_(pa.int32())), ("scores", pa.string()), ("tags", pa.list_(pa.string())),
                        ("warnings", pa.list_(pa.string())), ("details", pa.string()), ("shard", pa.string()),
                        ("shard_size", pa.int64()), ("notes", pa.list_(pa.string()))])
    dump = lambda value: json.dumps(value) if value is not None else None  # noqa: E731
    return pa.Table.from_pydict({
        "key": [r["key"] for r in rows], "caption": [x.caption for x in results], "error": [x.error for x in results],
        "image_size": sizes, "scores": [dump(x.scores) for x in results], "tags": [x.tags for x in results],
        "warnings": [list(x.warnings) for x in results], "details": [dump(x.details) for x in results],
        "shard": [r.get("shard") for r in rows], "shard_size": [r.get("shard_size") for r in rows],
        "notes": [list(x.notes) for x in results]}, schema=schema)


def row_result(row: dict) -> ItemResult:
    """The ItemResult of a result_table row (in the driver)."""
    return ItemResult(row["caption"], row["error"], json.loads(row["scores"]) if row["scores"] else None,
                      row["tags"], list(row["warnings"] or []), json.loads(row["details"]) if row["details"] else None,
                      list(row.get("notes") or []))
