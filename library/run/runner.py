"""The one run loop: discover, skip what is done, run any job on a distributor, write results, account for each image."""

from __future__ import annotations

import logging
import threading
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from library.files.discovery import discover_images
from library.run.jobs import ItemResult, Job, Model, process_batch
from library.outputs.failures import write_failures
from library.outputs.writer import ResultRow, ResultWriter
from library.run.pipeline import LoadedItem, RunSummary, default_workers, run_batches
from library.files.sidecars import SidecarLayout, shared_sidecars

logger = logging.getLogger(__name__)


@dataclass
class RunOptions:
    """How to run a job over a dataset.

    Attributes:
        source: a folder of images or one image (with --ray also tar shards or a parquet table).
        recursive: include subfolders.
        resume: skip images the writer already has a result for.
        workers: decode processes (None = one per core, 0 = decode in this process; Ray: threads per actor).
        failures_file: JSON Lines file of (path, reason) per failed image, written at the end of the run.
        ray: library.distributed.runner.RayOptions to run on Ray Data; None runs on this machine.
    """

    source: Path
    recursive: bool = False
    resume: bool = False
    workers: int | None = None
    progress: bool = True
    debug: bool = False
    failures_file: Path | None = None
    ray: Any = None


@dataclass
class RunOutcome:
    """A finished run: the summary, tag frequencies (taggers), the warnings of images written anyway, and how many
    images each note applies to (ItemResult.notes)."""

    summary: RunSummary
    tag_frequency: Counter = field(default_factory=Counter)
    warnings: list[tuple[Path, str]] = field(default_factory=list)
    notes: Counter = field(default_factory=Counter)

    def account(self, job: Job, path: Path, result: ItemResult, debug: bool = False, count: bool = True) -> None:
        """Note one image's final result (after writing): counts (unless the pipeline counts), tags, warnings, logs."""
        if result.error is not None:
            if count:
                self.summary.failures.append((path, result.error))
                logger.error("%s: %s", path, result.error)
            return
        if count:
            self.summary.done += 1
        self.tag_frequency.update(result.tags or [])
        self.notes.update(result.notes)
        for warning in result.warnings:
            self.warnings.append((path, warning))
            logger.warning("%s: %s", path, warning)
        if debug:
            for line in job.debug_lines(path, result):
                logger.info("%s", line)


def warn_shared_sidecars(images: list[Path], layout: SidecarLayout) -> None:
    """Say which caption files several images would write (a.png and a.jpg both map to a.txt)."""
    for caption, owners in shared_sidecars(images, layout).items():
        logger.warning("%s is the caption file of %d images (%s): the last one written wins; rename them "
                       "to keep both", caption, len(owners), ", ".join(p.name for p in owners))


def write_batch(writer: ResultWriter, items: list, results: list[ItemResult]) -> list[ItemResult]:
    """Hand a batch's results to the writer; a row it could not write becomes that image's error."""
    rows = [ResultRow(item.path, item.size, res) for item, res in zip(items, results)
            if res.error is None or writer.keeps_failures]
    errors = iter(writer.write(rows)) if rows else iter(())
    out = []
    for res in results:
        if res.error is None or writer.keeps_failures:
            error = next(errors)
            if error is not None and res.error is None:
                res = ItemResult.failed(error)
        out.append(res)
    return out


class BackgroundWrites:
    """Writes and accounts for batches in one helper thread, so batch k is written while batch k+1 runs.

    At most `depth` batches wait for their files; the main thread waits (timed as "write") only beyond that.
    """

    def __init__(self, job: Job, writer: ResultWriter, outcome: RunOutcome, debug: bool, depth: int = 2):
        self.job, self.writer, self.outcome, self.debug, self.depth = job, writer, outcome, debug, depth
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="result-writer")
        self.pending: deque = deque()
        self.lock = threading.Lock()

    def submit(self, items: list, results: list[ItemResult]) -> None:
        while len(self.pending) >= self.depth:
            self._wait_oldest()
        self.pending.append(self.pool.submit(self._write, items, results))

    def _write(self, items: list, results: list[ItemResult]) -> None:
        clock = self.outcome.summary.clock
        with clock.stage("write", wall=False):
            results = write_batch(self.writer, items, results)
            with self.lock:
                for item, res in zip(items, results):
                    self.outcome.account(self.job, item.path, res, self.debug)

    def _wait_oldest(self) -> None:
        with self.outcome.summary.clock.stage("write"):
            self.pending.popleft().result()

    def drain(self) -> None:
        """Wait for every submitted batch (also after Ctrl-C: files in flight are finished, never half-written)."""
        try:
            while self.pending:
                self._wait_oldest()
        finally:
            self.pool.shutdown(wait=True)


def _finish(outcome: RunOutcome, opts: RunOptions) -> None:
    if opts.failures_file is not None and (outcome.summary.failures or opts.failures_file.exists()):
        write_failures(opts.failures_file, outcome.summary.failures)
        logger.info("failures listed in %s", opts.failures_file)


def run(job: Job, writer: ResultWriter, opts: RunOptions) -> RunOutcome:
    """Run `job` over opts.source and write through `writer`: locally, or on Ray Data when opts.ray is set.

    The model is loaded only when there is something to do. Returns the outcome (summary, tag counts, warnings).
    """
    if opts.ray is not None:
        from library.distributed.runner import run_on_ray

        outcome = run_on_ray(job, writer, opts)
        _finish(outcome, opts)
        return outcome
    outcome = RunOutcome(RunSummary(verb=job.verb))
    summary = outcome.summary
    images = discover_images(opts.source, opts.recursive)
    layout = getattr(writer, "layout", None)
    if layout is not None:
        warn_shared_sidecars(images, layout)
    if opts.resume:
        todo = [p for p in images if not writer.done(p)]
        summary.skipped = summary.total = len(images) - len(todo)
        images = todo
    logger.info("found %d images to %s (%d skipped)", len(images), job.action, summary.skipped)
    model: Model | None = None
    writes: BackgroundWrites | None = None
    try:
        if images:
            model = job.open()
            writes = BackgroundWrites(job, writer, outcome, opts.debug)

            def process(batch: list[LoadedItem]) -> None:
                with summary.clock.stage("model"):
                    results = process_batch(model, batch)
                writes.submit(list(batch), results)  # accounted for when written

            workers = default_workers() if opts.workers is None else opts.workers
            run_batches(images, model.loader, process, batch_size=max(1, model.batch_size), workers=workers,
                        summary=summary, desc=job.progress_desc, progress=opts.progress)
    finally:
        try:
            if writes is not None:
                writes.drain()
        finally:
            writer.close()
            if model is not None:
                model.close()
    _finish(outcome, opts)
    return outcome
