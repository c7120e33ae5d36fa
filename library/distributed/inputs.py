"""Inputs of a Ray run: an image folder, WebDataset tar shards or a parquet table, as rows of key, path and bytes."""

from __future__ import annotations

import logging
import tarfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Iterator

from library.files.discovery import discover_images, find_images, is_image_file
from library.errors import FatalError

logger = logging.getLogger(__name__)

PATH_COLUMNS = ("image_path", "path")  # a parquet input's image paths (also its keys)
DATA_COLUMNS = ("image", "bytes", "image_bytes")  # its image bytes: binary, or a struct with a 'bytes' field
ROWS_PER_BLOCK = 64  # rows per block read from a shard: small blocks keep every actor fed


@dataclass
class RayInput:
    """What the run reads.

    Attributes:
        kind: 'folder' (image files on a filesystem every node sees), 'tar' (WebDataset shards) or 'parquet'.
        root: the path the user gave (a folder, a .tar or a .parquet file).
        files: the images (folder), the shards (tar) or the tables (parquet).
        path_column / data_column: the parquet columns holding image paths and image bytes (None: absent).
    """

    kind: str
    root: Path
    files: list[Path] = field(default_factory=list)
    path_column: str | None = None
    data_column: str | None = None

    @property
    def base(self) -> Path:
        """The folder relative paths of a parquet input are resolved against."""
        return (self.root if self.root.is_dir() else self.root.parent).resolve()


def _visible(paths, root: Path) -> list[Path]:
    return sorted(p for p in paths if not any(part.startswith(".") for part in p.relative_to(root).parts))


def detect_input(root: str | Path, recursive: bool = False) -> RayInput:
    """Decide what `root` is: a .tar shard, a .parquet table, an image or a folder of images, shards or tables.

    A folder holding images is an image folder (its .tar files are ignored, with a warning); one holding no
    images but .tar files is a folder of shards; one holding only .parquet files is a table.
    """
    root = Path(root)
    if root.is_file() and root.suffix.lower() == ".tar":
        return RayInput("tar", root, [root.resolve()])
    if root.is_file() and root.suffix.lower() == ".parquet":
        return _parquet_input(root, [root])
    if root.is_dir():
        images = find_images(root, recursive)
        pattern = "**/*" if recursive else "*"
        shards = _visible(root.glob(pattern + ".tar"), root)
        if images:
            if shards:
                logger.warning("%s holds images and %d .tar files: captioning the images (give a .tar path to "
                               "caption a shard)", root, len(shards))
            return RayInput("folder", root, images)
        if shards:
            return RayInput("tar", root, [s.resolve() for s in shards])
        tables = _visible(root.glob(pattern + ".parquet"), root)
        if tables:
            return _parquet_input(root, tables)
    return RayInput("folder", root, discover_images(root, recursive))  # raises the usual 'no images' FatalError


def _parquet_input(root: Path, files: list[Path]) -> RayInput:
    import pyarrow.parquet as pq

    try:
        names = pq.read_schema(files[0]).names
    except Exception as exc:  # noqa: BLE001 - a damaged or non-parquet file
        raise FatalError(f"{files[0]}: not a readable parquet file ({exc})") from None
    path_column = next((c for c in PATH_COLUMNS if c in names), None)
    data_column = next((c for c in DATA_COLUMNS if c in names), None)
    if path_column is None:
        raise FatalError(f"{files[0]}: a parquet input needs a column of image paths named "
                         f"{' or '.join(PATH_COLUMNS)} (they key the results; with a {DATA_COLUMNS[0]!r} column of "
                         "bytes they need not exist as files)")
    return RayInput("parquet", root, [f.resolve() for f in files], path_column, data_column)


def parquet_keys(inp: RayInput) -> list[str]:
    """The key of every row of a parquet input, read in this process (only the path column is read)."""
    import pyarrow.parquet as pq

    values: list[str] = []
    for f in inp.files:
        values += [str(v) for v in pq.read_table(f, columns=[inp.path_column]).column(0).to_pylist()]
    return [row_key(v, inp.base, inp.data_column is not None) for v in values]


def row_key(value: str, base: Path, has_bytes: bool) -> str:
    """A row's key: the absolute path of a file read from disk; the value itself when the row carries its bytes."""
    if has_bytes:
        return value
    path = Path(value)
    return str((path if path.is_absolute() else base / path).resolve())


def shard_keys(shard: Path) -> tuple[list[tarfile.TarInfo], list[str]]:
    """The image members of a tar shard and their keys ('<shard>/<member name>'), reading only the headers."""
    with tarfile.open(shard, "r:*") as tf:
        members = [m for m in tf.getmembers() if m.isfile() and is_image_file(PurePosixPath(m.name))]
    return members, [f"{shard}/{m.name}" for m in members]


def tar_rows(shard: str, done: frozenset[str], rows_per_block: int = ROWS_PER_BLOCK) -> Iterator[dict]:
    """Rows (key, data, shard, shard_size, error) of one shard's image members not in `done`, in blocks.

    An unreadable shard gives one row with its error; an unreadable member, one row with its own error.
    """
    try:
        members, keys = shard_keys(Path(shard))
        todo = [(m, k) for m, k in zip(members, keys) if k not in done]
        with tarfile.open(shard, "r:*") as tf:
            block: list[dict] = []
            for member, key in todo:
                try:
                    data, error = tf.extractfile(member).read(), None
                except Exception as exc:  # noqa: BLE001 - one damaged member, not the whole shard
                    data, error = None, f"cannot read it from the shard ({exc.__class__.__name__}: {exc})"
                block.append({"key": key, "data": data, "shard": shard, "shard_size": len(todo), "error": error})
                if len(block) >= rows_per_block:
                    yield block
                    block = []
            if block:
                yield block
    except (tarfile.TarError, OSError, EOFError) as exc:
        yield [{"key": shard, "data": None, "shard": shard, "shard_size": 1,
                "error": f"cannot read the shard ({exc.__class__.__name__}: {exc})"}]


def parquet_rows(values: list, data: list | None, base: Path, done: frozenset[str]) -> list[dict]:
    """Rows (key, path, data, error) of a block of a parquet input, leaving out keys in `done`.

    Args:
        values: the path column's values.
        data: the bytes column's values (None when the table has no bytes: the files are read from disk).
        base: the folder relative paths are resolved against.
    """
    rows = []
    for i, value in enumerate(values):
        if value is None or str(value) == "":
            rows.append({"key": f"{base}#row-without-path", "path": None, "data": None,
                         "error": "the row has no image path"})
            continue
        key = row_key(str(value), base, data is not None)
        if key in done:
            continue
        blob = data[i] if data is not None else None
        rows.append({"key": key, "path": None if data is not None else key, "data": blob,
                     "error": "the row has no image bytes" if data is not None and blob is None else None})
    return rows


def tar_tables(batch, done: frozenset[str]):
    """Ray Data batch function: a batch of shard paths -> pyarrow tables of their rows (see tar_rows)."""
    import pyarrow as pa

    schema = pa.schema([("key", pa.string()), ("data", pa.binary()), ("shard", pa.string()),
                        ("shard_size", pa.int64()), ("error", pa.string())])
    for shard in batch.column("shard").to_pylist():
        for block in tar_rows(shard, done):
            yield pa.Table.from_pylist(block, schema=schema)


def parquet_table(batch, path_column: str, data_column: str | None, base: str, done: frozenset[str]):
    """Ray Data batch function: a block of a parquet input -> a pyarrow table of its rows (see parquet_rows)."""
    import pyarrow as pa

    data = None
    if data_column is not None:
        col = batch.column(data_column).combine_chunks()
        if pa.types.is_struct(col.type):  # Hugging Face datasets: {"bytes": ..., "path": ...}
            col = col.field("bytes")
        data = col.to_pylist()
    rows = parquet_rows(batch.column(path_column).to_pylist(), data, Path(base), done)
    return pa.Table.from_pylist(rows, schema=pa.schema([("key", pa.string()), ("path", pa.string()),
                                                         ("data", pa.binary()), ("error", pa.string())]))
