"""Find the images of a dataset folder: case-insensitive extensions, hidden files skipped, loop-safe recursion."""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import Iterable

from library.errors import FatalError

logger = logging.getLogger(__name__)

BASE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
OPTIONAL_EXTENSIONS = (".avif", ".jxl")


@functools.lru_cache(maxsize=1)
def _optional_extensions() -> tuple[str, ...]:
    """Extensions whose Pillow plugin is installed (pillow-avif-plugin, pillow-jxl-plugin, or Pillow's own)."""
    found = []
    for module in ("pillow_avif", "pillow_jxl"):
        try:
            __import__(module)
        except Exception:  # plugin missing or broken: that format is simply not offered
            pass
    try:
        from PIL import Image

        registered = Image.registered_extensions()
        found = [ext for ext in OPTIONAL_EXTENSIONS if ext in registered]
    except Exception:
        pass
    return tuple(found)


def image_extensions() -> tuple[str, ...]:
    """All lower-case extensions (with dot) that discovery accepts on this installation."""
    return BASE_EXTENSIONS + _optional_extensions()


def _is_hidden(name: str) -> bool:
    return name.startswith(".")  # also covers macOS "._x.png" resource forks


def is_image_file(path: Path, extensions: Iterable[str] | None = None) -> bool:
    """True when `path` has an image extension (any case) and is not hidden."""
    exts = tuple(extensions) if extensions is not None else image_extensions()
    return not _is_hidden(path.name) and path.suffix.lower() in exts


def find_images(root: str | os.PathLike, recursive: bool = False) -> list[Path]:
    """Image files under `root` in a deterministic order.

    Args:
        root: a folder, or a single image file (returned alone).
        recursive: descend into subfolders (hidden folders are skipped; symlinked
            folders are followed once, so symlink loops cannot hang the walk).
    """
    root = Path(root)
    exts = image_extensions()
    if root.is_file():
        return [root] if root.suffix.lower() in exts else []
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder")

    found: list[Path] = []
    seen_dirs: set[tuple[int, int]] = set()
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            st = folder.stat()
        except OSError as exc:
            logger.warning("%s: cannot read folder (%s)", folder, exc)
            continue
        key = (st.st_dev, st.st_ino)
        if key in seen_dirs:
            continue
        seen_dirs.add(key)
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            logger.warning("%s: cannot list folder (%s)", folder, exc)
            continue
        subdirs = []
        for entry in entries:
            if _is_hidden(entry.name):
                continue
            try:
                if entry.is_dir():
                    if recursive:
                        subdirs.append(Path(entry.path))
                elif os.path.splitext(entry.name)[1].lower() in exts:
                    if entry.is_file():
                        found.append(Path(entry.path))
                    elif entry.is_symlink() and not os.path.exists(entry.path):
                        logger.warning("%s: skipped, a symbolic link to %s, which does not exist", entry.path,
                                       os.readlink(entry.path))
            except OSError:
                continue
        stack.extend(reversed(subdirs))
    return sorted(found, key=lambda p: p.relative_to(root).parts)


def discover_images(root: str | os.PathLike, recursive: bool = False) -> list[Path]:
    """Images to caption under `root`, or a FatalError that tells the user why there are none."""
    root = Path(root)
    if not root.exists():
        raise FatalError(f"{root}: no such file or folder")
    images = find_images(root, recursive)
    if not images:
        hint = ""
        if not recursive and root.is_dir() and find_images(root, True):
            hint = " (images exist in subfolders: add --recursive)"
        raise FatalError(f"no images found in {root}{hint}")
    return images
