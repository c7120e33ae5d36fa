"""Thumbnail cache for the caption report: JPEGs made once in worker processes, remade only when an image changes."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from library.outputs import json_text
from library.files.image_io import ImageLoadError, open_image
from library.run.pipeline import LoadedItem, RunSummary, default_workers, run_batches
from library.files.sidecars import atomic_write, atomic_write_text

logger = logging.getLogger(__name__)

CACHE_VERSION = 1
INDEX_NAME = "index.json"
NAME_PATTERN = re.compile(r"^[0-9a-f]{20}\.jpg$")  # the only files this module ever writes or deletes
IN_PROCESS_BELOW = 48  # fewer images than this are not worth starting worker processes for


def absolute(path: str | os.PathLike) -> Path:
    """An absolute path without resolving symlinks (an image linked from elsewhere keeps its place in the dataset)."""
    return Path(os.path.abspath(path))


def relative_key(path: Path, root: Path) -> str:
    """The image's path relative to the dataset root, with forward slashes (its id in the report and server)."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.name


def thumb_name(rel: str, stat: os.stat_result, size: int) -> str:
    """Cache file name for one version of one image: changes whenever the file's size or mtime changes."""
    key = f"{CACHE_VERSION}|{rel}|{stat.st_size}|{stat.st_mtime_ns}|{size}"
    return hashlib.sha1(key.encode("utf-8", "surrogatepass")).hexdigest()[:20] + ".jpg"


@dataclass(frozen=True)
class ThumbnailJob:
    """Picklable per-image job for worker processes: image path -> (thumbnail file name, image size).

    Args:
        root: the dataset folder (names are made from paths relative to it).
        dest: the thumbnail folder.
        size: longest side of a thumbnail in pixels.
        quality: JPEG quality.
    """

    root: Path
    dest: Path
    size: int = 256
    quality: int = 82

    def __call__(self, path: Path) -> tuple[str, tuple[int, int]]:
        from PIL import Image

        try:
            stat = path.stat()
        except OSError as exc:
            raise ImageLoadError(f"cannot read file ({exc.strerror or exc})") from None
        name = thumb_name(relative_key(path, self.root), stat, self.size)
        img, size = open_image(path, min_side=self.size)  # ImageLoadError carries the one-line reason
        img.thumbnail((self.size, self.size), Image.LANCZOS, reducing_gap=3.0)
        atomic_write(self.dest / name, lambda tmp: img.save(tmp, format="JPEG", quality=self.quality,
                                                             optimize=True))
        return name, size


@dataclass
class ThumbInfo:
    """What the cache knows about one image: its thumbnail and size, or why it could not be read."""

    name: str | None
    size: tuple[int, int] | None
    error: str | None = None


def _load_index(dest: Path) -> dict[str, dict]:
    try:
        data = json.loads((dest / INDEX_NAME).read_text(encoding="utf-8"))
        if data.get("version") == CACHE_VERSION and isinstance(data.get("entries"), dict):
            return data["entries"]
    except (OSError, ValueError, AttributeError):
        pass
    return {}


def build_thumbnails(images: list[Path], root: Path, dest: Path, size: int = 256, workers: int | None = None,
                     progress: bool = True) -> dict[Path, ThumbInfo]:
    """Make (or reuse) a thumbnail for every image; returns what is known about each one.

    Thumbnails of unchanged images are reused, failures are remembered until the file changes, and files
    of images no longer in the list are deleted (only files named like thumbnails are ever touched).

    Args:
        images: the dataset's images.
        root: the dataset folder.
        dest: the thumbnail folder (created when missing).
        size: longest side of a thumbnail.
        workers: processes that decode images (None: one per core; small jobs run in this process).
    Raises:
        OSError: dest cannot be created or written.
    """
    dest.mkdir(parents=True, exist_ok=True)
    index = _load_index(dest)
    out: dict[Path, ThumbInfo] = {}
    names: dict[Path, str] = {}
    todo: list[Path] = []
    for image in images:
        try:
            name = thumb_name(relative_key(image, root), image.stat(), size)
        except OSError as exc:
            out[image] = ThumbInfo(None, None, f"cannot read file ({exc.strerror or exc})")
            continue
        names[image] = name
        entry = index.get(name)
        if entry and entry.get("error"):
            out[image] = ThumbInfo(None, tuple(entry["size"]) if entry.get("size") else None, entry["error"])
        elif entry and (dest / name).is_file():
            out[image] = ThumbInfo(name, tuple(entry["size"]))
        else:
            todo.append(image)

    if todo:
        summary = RunSummary(verb="thumbnails")

        def record(batch: list[LoadedItem]) -> list[None]:
            for item in batch:
                out[item.path] = ThumbInfo(item.data, tuple(item.size))
            return [None] * len(batch)

        n_workers = default_workers() if workers is None else workers
        if len(todo) < IN_PROCESS_BELOW:
            n_workers = 0
        run_batches(todo, ThumbnailJob(root, dest, size), record, batch_size=64, workers=n_workers,
                    summary=summary, desc="thumbnails", progress=progress)
        for path, reason in summary.failures:
            out[path] = ThumbInfo(None, None, reason)
        if summary.interrupted:
            raise KeyboardInterrupt

    entries: dict[str, dict] = {}
    for image, info in out.items():
        if info.name:
            entries[info.name] = {"rel": relative_key(image, root), "size": list(info.size)}
        elif image in names:
            entries[names[image]] = {"rel": relative_key(image, root), "error": info.error}
    keep = set(entries)
    for entry in os.scandir(dest):
        if NAME_PATTERN.match(entry.name) and entry.name not in keep:
            try:
                os.unlink(entry.path)
            except OSError:
                pass
    if entries != index:
        atomic_write_text(dest / INDEX_NAME, json_text.dumps({"version": CACHE_VERSION, "entries": entries},
                                                              separators=(",", ":")))
    return out
