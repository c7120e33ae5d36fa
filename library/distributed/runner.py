"""Run a captioning job on Ray Data: connect, build the dataset, one model per actor, stream results, resume."""

from __future__ import annotations

import logging
import math
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from library.distributed.inputs import RayInput, detect_input, parquet_keys, parquet_table, tar_tables
from library.distributed.worker import BatchWorker, row_result
from library.errors import FatalError
from library.run.jobs import Job
from library.outputs.sidecar import SidecarWriter
from library.outputs.table import TableOutput
from library.outputs.writer import ResultWriter
from library.run.pipeline import LoadedItem, RunSummary
from library.run.runner import RunOptions, RunOutcome, warn_shared_sidecars, write_batch
from library.files.sidecars import SidecarLayout

logger = logging.getLogger(__name__)

INSTALL_HINT = 'pip install "ray[data]"'
PASSED_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME", "HF_ENDPOINT", "HF_HUB_CACHE")
MIN_RAY_BATCH = 16  # rows per actor call at least, so decoding threads have work while the model runs


@dataclass
class RayOptions:
    """The --ray_* flags.

    Attributes:
        address: None = start or join a local cluster; 'auto' = the cluster `ray start` runs; 'host:port'.
        actors: model copies; None = one per GPU of the cluster (one on a cluster without GPUs).
        gpus_per_actor: None = 1 when the cluster has GPUs (and the job uses one), else 0.
        cpus_per_actor: logical CPUs each actor reserves.
        output: --ray_output (.parquet / .jsonl file or folder); None = caption files next to the images.
    """

    address: str | None = None
    actors: int | None = None
    gpus_per_actor: float | None = None
    cpus_per_actor: float = 1.0
    output: Path | None = None


def require_ray():
    """The ray module, or a FatalError that says how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise FatalError(f"--ray needs Ray Data, which is not installed: {INSTALL_HINT}") from None
    return ray


def runtime_env() -> dict:
    """The job's runtime_env: captionkit's library package shipped to every worker, offline/cache settings passed on."""
    env = {"py_modules": [str(Path(__file__).resolve().parents[1])]}
    passed = {k: os.environ[k] for k in PASSED_ENV if os.environ.get(k)}
    if passed:
        env["env_vars"] = passed
    return env


def _local_address() -> str | None:
    """None (join it) when the last cluster `ray start` recorded here is alive; 'local' (start one) when it is gone.

    ray.init() alone would wait minutes for a cluster that was killed without `ray stop`.
    """
    if os.environ.get("RAY_ADDRESS"):
        return None
    recorded = None
    try:
        from ray._private.utils import read_ray_address  # private, hence the broad except below

        recorded = read_ray_address(None)
        if not recorded:
            return "local"
        host, port = recorded.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=2):
            return None
    except OSError:
        logger.info("the Ray cluster recorded at %s is gone: starting a local one", recorded)
        return "local"
    except Exception:  # noqa: BLE001 - let ray.init decide
        return None


def connect(address: str | None):
    """Join the cluster at `address` (None: start or join a local one) unless this process is already connected."""
    ray = require_ray()
    if not ray.is_initialized():
        address = address or _local_address()
        try:
            ray.init(address=address, runtime_env=runtime_env(), logging_level=logging.WARNING,
                     include_dashboard=False if address in (None, "local") else None)
        except ConnectionError as exc:
            raise FatalError(f"cannot reach a Ray cluster at {address}: {exc} (start one with `ray start --head`, "
                             "or leave --ray_address out to start a local one)") from None
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "progress bars disabled": ours runs
    return ray


@dataclass
class _Plan:
    rows: int | None  # rows to process, when known in advance
    skipped: int
    shards: list[Path] = field(default_factory=list)


def _plan(inp: RayInput, writer: ResultWriter, resume: bool) -> tuple[_Plan, Any]:
    """What is left to do, and the dataset of its rows."""
    ray = require_ray()
    table = writer if isinstance(writer, TableOutput) else None
    if inp.kind == "folder":
        key = (lambda p: str(p.resolve())) if table is not None else str  # tables key images by absolute path
        todo = [p for p in inp.files if not (resume and writer.done(p))]
        items = [{"key": key(p), "path": str(p)} for p in todo]
        plan = _Plan(len(items), len(inp.files) - len(items))
        blocks = max(1, min(20_000, math.ceil(len(items) / MIN_RAY_BATCH)))
        return plan, (ray.data.from_items(items, override_num_blocks=blocks) if items else None)
    if inp.kind == "parquet":
        keys = parquet_keys(inp)
        done = frozenset(k for k in keys if resume and writer.done(Path(k)))
        plan = _Plan(sum(k not in done for k in keys), sum(k in done for k in keys))
        if not plan.rows:
            return plan, None
        columns = [inp.path_column] + ([inp.data_column] if inp.data_column else [])
        ds = ray.data.read_parquet([str(f) for f in inp.files], columns=columns)
        return plan, ds.map_batches(parquet_table, batch_format="pyarrow", num_cpus=0.25, fn_kwargs=dict(
            path_column=inp.path_column, data_column=inp.data_column, base=str(inp.base), done=done))
    # tar shards: a folder output skips whole shards whose file exists; a single file skips keys already in it
    shards = [s for s in inp.files if not table.shard_done(s, inp.root)]
    done: frozenset[str] = frozenset()
    if table.single:
        done = frozenset(table.done_keys())
        names = {str(s) for s in shards}
        skipped = sum(k.split(".tar/", 1)[0] + ".tar" in names for k in done)
    else:
        skipped = sum(table.row_count(table.shard_file(s, inp.root)) for s in inp.files if s not in shards)
    plan = _Plan(None, skipped, shards)
    if not shards:
        return plan, None
    ds = ray.data.from_items([{"shard": str(s)} for s in shards], override_num_blocks=len(shards))
    return plan, ds.map_batches(tar_tables, batch_size=1, batch_format="pyarrow", num_cpus=0.25,
                                fn_kwargs={"done": done})


def _actor_resources(ray, job: Job, opts: RayOptions) -> tuple[int, float, float]:
    """(actors, GPUs per actor, CPUs per actor) from the flags and the cluster's resources."""
    total = ray.cluster_resources()
    gpus = total.get("GPU", 0.0)
    per_gpu = opts.gpus_per_actor if opts.gpus_per_actor is not None else (1.0 if gpus and job.uses_gpu else 0.0)
    actors = opts.actors or (max(1, int(gpus // per_gpu)) if per_gpu else 1)
    if per_gpu and actors * per_gpu > gpus:
        logger.warning("%d actors x %g GPUs need more than the cluster's %g GPUs: the run waits until that many "
                       "are free (lower --ray_actors)", actors, per_gpu, gpus)
    if actors * opts.cpus_per_actor > total.get("CPU", 0.0):
        logger.warning("%d actors x %g CPUs need more than the cluster's %g CPUs (lower --ray_actors or "
                       "--ray_cpus_per_actor)", actors, opts.cpus_per_actor, total.get("CPU", 0.0))
    return actors, per_gpu, opts.cpus_per_actor


def _cause(exc: BaseException) -> str:
    """The last line of the original error of a failed Ray task or actor."""
    text = str(getattr(exc, "cause", None) or exc)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else exc.__class__.__name__


def run_on_ray(job: Job, writer: ResultWriter, opts: RunOptions) -> RunOutcome:
    """Run `job` over opts.source (folder, tar shards, parquet) on the Ray cluster and account for each image.

    A writer that writes where the model runs (sidecars) is used inside the actors; any other (metadata file,
    --ray_output table) gets the results here in the driver. opts.workers: decoding threads per actor (None: 4).
    """

    inp = detect_input(opts.source, opts.recursive)
    table = writer if isinstance(writer, TableOutput) else None
    if table is None and (inp.kind == "tar" or inp.data_column):
        raise FatalError(f"{inp.root}: images inside {'tar shards' if inp.kind == 'tar' else 'a parquet table'} have "
                         "no folder for caption files: give --ray_output results.parquet (or .jsonl, or a folder)")
    if isinstance(writer, SidecarWriter):
        if inp.kind == "parquet":  # its paths are absolute: mirror them under --output_dir from the table's folder
            writer = SidecarWriter(SidecarLayout(writer.layout.extension, inp.base, writer.layout.output_dir),
                                   writer.merge)
        elif inp.kind == "folder":
            warn_shared_sidecars(inp.files, writer.layout)
    ray = connect(opts.ray.address)  # before any dataset: Ray Data would start a cluster without our runtime_env
    outcome = RunOutcome(RunSummary(verb=job.verb))
    summary = outcome.summary
    try:
        plan, ds = _plan(inp, writer, opts.resume)
        summary.skipped = summary.total = plan.skipped
        summary.total += plan.rows or 0
        logger.info("%s input %s: %s to do, %d skipped", inp.kind, inp.root,
                    plan.rows if plan.rows is not None else f"{len(plan.shards)} shards", plan.skipped)
        if ds is None:
            return outcome
        actors, gpus, cpus = _actor_resources(ray, job, opts.ray)
        logger.info("running %d actor%s (%g GPU, %g CPU each)", actors, "s" * (actors > 1), gpus, cpus)
        in_actor = writer if writer.in_worker else None
        ds = ds.map_batches(BatchWorker, batch_size=MIN_RAY_BATCH, batch_format="pyarrow",
                            fn_constructor_args=(job, in_actor, 4 if opts.workers is None else opts.workers,
                                                 os.getcwd()),
                            compute=ray.data.ActorPoolStrategy(size=actors), num_gpus=gpus or None, num_cpus=cpus)
        _stream(ds, job, writer if in_actor is None else None, inp, plan, outcome, opts)
    finally:
        writer.close()
    return outcome


def _stream(ds, job: Job, writer: ResultWriter | None, inp: RayInput, plan: _Plan, outcome: RunOutcome,
            opts: RunOptions) -> None:
    """Take the actors' result rows as they come: write them here when the writer lives in the driver, account."""
    from tqdm import tqdm

    summary = outcome.summary
    table = writer if isinstance(writer, TableOutput) else None
    start = time.perf_counter()
    bar = tqdm(total=plan.rows, desc=job.progress_desc, unit="img", disable=not opts.progress, dynamic_ncols=True)
    pending: dict[str, list[dict]] = {}
    seen_shards: set[str] = set()
    try:
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            rows = batch.to_pylist()
            results = [row_result(row) for row in rows]
            if table is not None:
                for row, res in zip(rows, results):
                    _collect(table, inp, row, res, pending, seen_shards)
            elif writer is not None:
                items = [LoadedItem(Path(row["key"]), size=tuple(row["image_size"]) if row["image_size"] else None)
                         for row in rows]
                results = write_batch(writer, items, results)
            for row, res in zip(rows, results):
                outcome.account(job, Path(row["key"]), res, opts.debug)
                if plan.rows is None:
                    summary.total += 1
                bar.update(1)
        if table is not None and inp.kind == "tar":
            for shard in plan.shards:  # shards without images still get their (empty) file
                if str(shard) not in seen_shards and not table.single:
                    table.add_shard(shard, inp.root, [])
    except KeyboardInterrupt:
        summary.interrupted = True
        logger.warning("interrupted: stopping after the results already written (no file is left half-written)")
    except Exception as exc:  # noqa: BLE001 - a task or actor that died: one line that says why
        if not _is_ray_error(exc):
            raise
        raise FatalError(f"the Ray run failed: {_cause(exc)}") from None
    finally:
        bar.close()
        summary.seconds += time.perf_counter() - start


def _is_ray_error(exc: BaseException) -> bool:
    return type(exc).__module__.startswith("ray")


def _collect(output: TableOutput, inp: RayInput, row: dict, result, pending: dict[str, list[dict]],
             seen_shards: set[str]) -> None:
    """Hand a result row to the table output; a tar shard's rows go out together once all have arrived."""
    out = {"image_path": row["key"], "caption": result.caption, "image_size": row["image_size"],
           "scores": result.scores, "error": result.error}
    if inp.kind != "tar" or output.single:
        output.add(out)
        return
    shard = row["shard"]
    seen_shards.add(shard)
    rows = pending.setdefault(shard, [])
    rows.append(out)
    if len(rows) >= row["shard_size"]:
        output.add_shard(Path(shard), inp.root, pending.pop(shard))

