"""--ray_output: results as one parquet / JSON Lines file or a folder of per-shard parquet files, with resume."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from library.errors import OptionError
from library.outputs import json_text
from library.outputs.writer import ResultRow, ResultWriter
from library.files.sidecars import atomic_write, atomic_write_text

logger = logging.getLogger(__name__)

SINGLE_SUFFIXES = (".parquet", ".jsonl")
PART_PREFIX = "part-"
ROWS_PER_PART = 10_000  # rows per part file of a folder output (inputs that are not tar shards)


def _schema():
    import pyarrow as pa

    return pa.schema([("image_path", pa.string()), ("caption", pa.string()), ("image_size", pa.list_(pa.int32())),
                      ("scores", pa.map_(pa.string(), pa.float32())), ("error", pa.string())])


def write_rows(path: Path, rows: list[dict]) -> None:
    """Write result rows atomically as parquet or (for a .jsonl name) JSON Lines."""
    if path.suffix.lower() == ".jsonl":
        lines = []
        for row in rows:
            out = {"image_path": row["image_path"], "caption": row["caption"], "image_size": row["image_size"]}
            if row.get("scores") is not None:
                out["scores"] = row["scores"]
            out["error"] = row["error"]
            lines.append(json_text.dumps(out, ensure_ascii=False))
        atomic_write_text(path, "".join(line + "\n" for line in lines))
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = {name: [row.get(name) for row in rows] for name in _schema().names}
    columns["scores"] = [list(s.items()) if s is not None else None for s in columns["scores"]]
    table = pa.Table.from_pydict(columns, schema=_schema())
    atomic_write(path, lambda tmp: pq.write_table(table, tmp))


def read_rows(path: Path) -> list[dict]:
    """The rows of a result file written by write_rows (a damaged line or file is skipped with a warning)."""
    try:
        if path.suffix.lower() == ".jsonl":
            rows = []
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    rows.append(json.loads(line)) if line.strip() else None
                except json.JSONDecodeError:
                    logger.warning("%s: skipping a damaged line", path)
            return rows
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()
        for row in rows:
            if row.get("scores") is not None:
                row["scores"] = dict(row["scores"])
        return rows
    except Exception as exc:  # noqa: BLE001 - an unreadable earlier result is redone, never the end of the run
        logger.warning("%s: cannot read it (%s); its images are captioned again", path, exc)
        return []


class TableOutput(ResultWriter):
    """Where --ray_output results go and what an earlier run already did (a result writer living in the driver).

    Args:
        target: a .parquet or .jsonl file, or a folder (per-shard parquet files).
        resume: keep earlier results and report their captioned keys as done (--skip_existing / no --overwrite).
    A single file is rewritten atomically at the end (earlier rows kept when resuming, one row per image). A folder
    gets one file per tar shard (named after it, skipped on a rerun) or part files of ROWS_PER_PART rows; after
    the run, rows of images done again are dropped from the older part files, so each image has one row.
    """

    def __init__(self, target: str | os.PathLike, resume: bool):
        self.target = Path(target)
        self.single = self.target.suffix.lower() in SINGLE_SUFFIXES
        self.resume = resume
        self.run_id = time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}"
        self.new_rows: list[dict] = []  # single file: every row of this run; folder: rows not yet in a part file
        self.written: set[str] = set()  # keys written by this run
        self.files_written: set[Path] = set()
        self.parts = 0
        if self.single and self.target.is_dir():
            raise OptionError(f"--ray_output {self.target} is a folder, not a {' or '.join(SINGLE_SUFFIXES)} file")
        if not self.single and self.target.is_file():
            raise OptionError(f"--ray_output {self.target} is a file: name it .parquet or .jsonl, or give a folder")
        self.old_files = self._existing_files()
        self._done: set[str] | None = None

    def _existing_files(self) -> list[Path]:
        if self.single:
            return [self.target] if self.target.is_file() else []
        return sorted(self.target.rglob("*.parquet")) if self.target.is_dir() else []

    keeps_failures = True  # a failed image gets a row with its error (and is tried again on resume)

    def done(self, image_path: Path) -> bool:
        if self._done is None:
            self._done = self.done_keys()
        return str(image_path) in self._done or str(Path(image_path).resolve()) in self._done

    def write(self, rows: list[ResultRow]) -> list[str | None]:
        for row in rows:
            self.add({"image_path": str(Path(row.path).resolve()), "caption": row.result.caption,
                      "image_size": list(row.size) if row.size else None, "scores": row.result.scores,
                      "error": row.result.error})
        return [None] * len(rows)

    def done_keys(self) -> set[str]:
        """Keys an earlier run captioned (rows with an error are tried again)."""
        if not self.resume:
            return set()
        return {row["image_path"] for f in self.old_files for row in read_rows(f) if row.get("caption") is not None}

    def shard_file(self, shard: Path, root: Path) -> Path:
        """The folder output's file for a tar shard: its path under the input folder, .parquet instead of .tar."""
        base = (root if root.is_dir() else root.parent).resolve()
        try:
            rel = shard.relative_to(base)
        except ValueError:
            rel = Path(shard.name)
        return self.target / rel.with_suffix(".parquet")

    @staticmethod
    def row_count(path: Path) -> int:
        """Rows of a parquet result file, from its footer (0 when it cannot be read)."""
        import pyarrow.parquet as pq

        try:
            return pq.ParquetFile(path).metadata.num_rows
        except Exception:  # noqa: BLE001 - only used for the 'skipped' count
            return 0

    def shard_done(self, shard: Path, root: Path) -> bool:
        return self.resume and not self.single and self.shard_file(shard, root).is_file()

    def add(self, row: dict) -> None:
        self.new_rows.append(row)
        if not self.single and len(self.new_rows) >= ROWS_PER_PART:
            self._write_part()

    def add_shard(self, shard: Path, root: Path, rows: list[dict]) -> None:
        """All rows of one tar shard: their own file in a folder output (the rows of a single file otherwise)."""
        if self.single:
            self.new_rows += rows
            return
        path = self.shard_file(shard, root)
        write_rows(path, rows)
        self.files_written.add(path)
        self.written.update(r["image_path"] for r in rows)

    def _write_part(self) -> None:
        if not self.new_rows:
            return
        self.parts += 1
        path = self.target / f"{PART_PREFIX}{self.run_id}-{self.parts:05d}.parquet"
        write_rows(path, self.new_rows)
        self.files_written.add(path)
        self.written.update(r["image_path"] for r in self.new_rows)
        self.new_rows = []

    def close(self) -> None:
        """Write what is pending (also after Ctrl-C) and keep one row per image."""
        if not self.single:
            self._write_part()
            self._compact()
            return
        new_keys = {r["image_path"] for r in self.new_rows}
        old = [r for f in self.old_files for r in read_rows(f)] if self.resume else []
        write_rows(self.target, [r for r in old if r["image_path"] not in new_keys] + self.new_rows)
        self.written |= new_keys

    def _compact(self) -> None:
        for path in self.old_files:
            if path in self.files_written:
                continue
            rows = read_rows(path)
            kept = [r for r in rows if r["image_path"] not in self.written]
            if len(kept) == len(rows):
                continue
            if kept:
                write_rows(path, kept)
            else:
                path.unlink()
            logger.info("%s: %d rows replaced by this run's results", path, len(rows) - len(kept))
