"""The batched pipeline every script shares: decode in worker processes with bounded prefetch, infer in batches."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from library.errors import FatalError
from library.files.image_io import ImageLoadError
from library.run.profiling import StageClock

logger = logging.getLogger(__name__)

CHUNK_SIZE = 4  # images per worker task: few enough to keep latency low, enough to amortise IPC


@dataclass
class LoadedItem:
    """One image after the loader ran: its payload, or the reason it failed."""

    path: Path
    data: Any = None
    size: tuple[int, int] | None = None
    error: str | None = None


@dataclass
class RunSummary:
    """Counts of a run, failures with reasons, and throughput."""

    verb: str = "done"
    total: int = 0
    done: int = 0
    skipped: int = 0
    failures: list[tuple[Path, str]] = field(default_factory=list)
    seconds: float = 0.0
    interrupted: bool = False
    clock: StageClock = field(default_factory=StageClock)

    @property
    def failed(self) -> int:
        return len(self.failures)

    def lines(self, max_failures: int = 50) -> list[str]:
        processed = self.done + self.failed
        head = f"{self.verb} {self.done}, skipped {self.skipped}, failed {self.failed} in {self.seconds:.1f} s"
        if processed and self.seconds > 0:  # a run that only skipped has no throughput to report
            head += f" ({processed / self.seconds:.1f} img/s)"
        if self.interrupted:
            head += f"; interrupted, {self.total - self.done - self.failed} not processed"
        out = [head]
        for path, reason in self.failures[:max_failures]:
            out.append(f"  failed: {path}: {reason}")
        if self.failed > max_failures:
            out.append(f"  ... and {self.failed - max_failures} more failures")
        return out


def default_workers() -> int:
    """Decode workers when --max_data_loader_n_workers is not given: every core, at most 16."""
    return max(1, min(16, os.cpu_count() or 1))


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _exit_with_parent(parent_death_signal: bool) -> None:
    """End this worker process soon after the process that started it dies (even by SIGKILL).

    On Linux the kernel sends SIGKILL at the parent's death (prctl PR_SET_PDEATHSIG; only when the parent started
    us from its main thread, because the signal follows the starting thread). Everywhere, a watchdog thread waits
    on the parent's pipe, which closes when the parent dies, and exits the process.
    """
    if parent_death_signal and sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):
            pass
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        from multiprocessing.connection import wait

        wait([parent.sentinel])
        os._exit(1)  # nothing to save: workers only decode

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def _worker_init(parent_death_signal: bool = False) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process handles Ctrl-C and shuts workers down
    _exit_with_parent(parent_death_signal)


def load_one(loader: Callable, path) -> LoadedItem:
    """Run `loader` on one image (a path, or an io.BytesIO of its bytes); a failure becomes the item's error."""
    try:
        data, size = loader(path)
        return LoadedItem(path, data, size)
    except ImageLoadError as exc:
        return LoadedItem(path, error=str(exc))
    except Exception as exc:  # noqa: BLE001 - a per-image failure is data, never the end of the run
        return LoadedItem(path, error=f"{exc.__class__.__name__}: {exc}")


def _load_chunk(loader: Callable, paths: Sequence[Path]) -> list[LoadedItem]:
    return [load_one(loader, p) for p in paths]


def iter_loaded(paths: Sequence[Path], loader: Callable, workers: int,
                prefetch: int | None = None) -> Iterator[LoadedItem]:
    """Yield LoadedItems in input order; with workers > 0 loading runs in a process pool.

    Args:
        paths: images to load.
        loader: picklable callable path -> (payload, (w, h)); raises ImageLoadError for bad files.
        workers: worker processes (0 = load in this process).
        prefetch: chunks in flight at most (bounded memory); default 4 per worker.
    """
    if workers <= 0:
        for p in paths:
            yield load_one(loader, p)
        return
    chunks = [list(paths[i:i + CHUNK_SIZE]) for i in range(0, len(paths), CHUNK_SIZE)]
    window = prefetch or workers * 4
    ctx = multiprocessing.get_context("spawn")
    executor = ProcessPoolExecutor(max_workers=min(workers, max(1, len(chunks))), mp_context=ctx,
                                   initializer=_worker_init,
                                   initargs=(threading.current_thread() is threading.main_thread(),))
    pending: deque = deque()
    next_chunk = 0
    try:
        while next_chunk < len(chunks) or pending:
            while next_chunk < len(chunks) and len(pending) < window:
                pending.append(executor.submit(_load_chunk, loader, chunks[next_chunk]))
                next_chunk += 1
            yield from pending.popleft().result()
    finally:
        for fut in pending:
            fut.cancel()
        executor.shutdown(wait=True, cancel_futures=True)


def run_batches(paths: Sequence[Path], loader: Callable, process_batch: Callable[[list[LoadedItem]], Iterable],
                *, batch_size: int, workers: int, summary: RunSummary, desc: str = "images",
                progress: bool = True) -> RunSummary:
    """Load `paths`, call `process_batch` on each batch of good items, and account for every image.

    Args:
        process_batch: gets up to batch_size good LoadedItems; returns one error string or None per item, or
            None when it accounts for the batch itself (in summary, possibly later from another thread).
        summary: filled in place (done, failures, seconds, interrupted) and returned.
    """
    from tqdm import tqdm

    summary.total += len(paths)
    start = time.perf_counter()
    batch: list[LoadedItem] = []
    bar = tqdm(total=len(paths), desc=desc, unit="img", smoothing=0.1, disable=not progress, dynamic_ncols=True)

    def flush() -> None:
        try:
            errors = process_batch(batch)
            if errors is None:  # the caller accounts for these images
                bar.update(len(batch))
                batch.clear()
                return
            errors = list(errors)
        except FatalError:
            raise  # the run cannot go on (bad key, broken model): not a per-image failure
        except Exception as exc:  # noqa: BLE001 - the batch failed as a whole; the run goes on
            logger.exception("batch of %d images failed", len(batch))
            errors = [f"{exc.__class__.__name__}: {exc}"] * len(batch)
        for item, err in zip(batch, errors):
            if err:
                summary.failures.append((item.path, err))
                logger.error("%s: %s", item.path, err)
            else:
                summary.done += 1
        bar.update(len(batch))
        batch.clear()

    loaded = iter(iter_loaded(paths, loader, workers))
    try:
        while True:
            with summary.clock.stage("receive"):
                item = next(loaded, None)
            if item is None:
                break
            if item.error:
                summary.failures.append((item.path, item.error))
                logger.error("%s: %s", item.path, item.error)
                bar.update(1)
                continue
            batch.append(item)
            if len(batch) >= batch_size:
                flush()
        if batch:
            flush()
    except KeyboardInterrupt:
        summary.interrupted = True
        logger.warning("interrupted: stopping after the files already written (no file is left half-written)")
    finally:
        loaded.close()  # stops the worker processes now, also after Ctrl-C
        bar.close()
        summary.seconds += time.perf_counter() - start
    return summary
