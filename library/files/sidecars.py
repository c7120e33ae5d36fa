"""Caption sidecar files: where they go, atomic writes, reading tags back and append-merging."""

from __future__ import annotations

import logging
import os
import random
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

from library.errors import OptionError

logger = logging.getLogger(__name__)


def normalize_extension(extension: str) -> str:
    """'.txt' or 'txt' -> '.txt'; an empty extension is an error (it would overwrite the image's stem file)."""
    extension = (extension or "").strip()
    if not extension or extension == ".":
        raise OptionError("caption extension must not be empty (e.g. .txt or .caption)")
    return extension if extension.startswith(".") else "." + extension


class SidecarLayout:
    """Maps an image to its caption file: next to the image, or mirrored under an output folder.

    Args:
        extension: caption extension, with or without the leading dot.
        input_root: the dataset folder the images were found in (needed for `output_dir`).
        output_dir: when given, sidecars go to output_dir/<path relative to input_root>.
    """

    def __init__(self, extension: str, input_root: str | os.PathLike | None = None,
                 output_dir: str | os.PathLike | None = None):
        self.extension = normalize_extension(extension)
        self.input_root = Path(input_root) if input_root is not None else None
        if self.input_root is not None and self.input_root.is_file():
            self.input_root = self.input_root.parent
        self.output_dir = Path(output_dir) if output_dir else None

    def path_for(self, image_path: str | os.PathLike) -> Path:
        image_path = Path(image_path)
        target = image_path
        if self.output_dir is not None:
            try:
                rel = image_path.relative_to(self.input_root) if self.input_root else Path(image_path.name)
            except ValueError:
                rel = Path(image_path.name)
            target = self.output_dir / rel
        return target.with_name(target.stem + self.extension)

    def exists_for(self, image_path: str | os.PathLike) -> bool:
        """True when the caption file is there (a name too long to exist, or an unreadable folder: False)."""
        try:
            return self.path_for(image_path).is_file()
        except OSError:
            return False


def _read_umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


_UMASK = _read_umask()  # read once: os.umask is process-wide, so reading it later could race other threads


def _final_mode(path: Path) -> int:
    """The permissions a plain open() would give: the replaced file's, else 0o666 less the umask (mkstemp uses 0o600)."""
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        return 0o666 & ~_UMASK


# Temporary files: ".<name, cut to fit>.<writer pid in hex>-<6 random>.tmp", never longer than the final name
# (at least TEMP_NAME_MIN bytes), so every name that can exist can be written through its temporary file.
TEMP_NAME_MIN = 32
_TEMP_TAIL = re.compile(r"\.([0-9a-f]{1,8})-[a-z0-9]{6}\.tmp$")
_LEGACY_TEMP = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")  # tempfile.mkstemp names of earlier versions
STALE_AFTER = 5.0  # seconds: a temporary file of a dead process this old is left over from a kill
LEGACY_STALE_AFTER = 3600.0
_RANDOM = "abcdefghijklmnopqrstuvwxyz0123456789"
_swept: set[Path] = set()
_swept_lock = threading.Lock()


def temp_name(name: str) -> str:
    """A fresh temporary name for `name` in the same folder, at most max(len(name), TEMP_NAME_MIN) bytes long."""
    tail = f".{os.getpid():x}-{''.join(random.choices(_RANDOM, k=6))}.tmp"
    raw = os.fsencode(name)
    room = max(len(raw), TEMP_NAME_MIN) - 1 - len(tail)
    return "." + os.fsdecode(raw[:room]) + tail


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def is_stale_temp(name: str, age_seconds: float) -> bool:
    """True for a temporary file of our naming left by a process that died (or, for old-style names, long ago)."""
    if not name.startswith("."):
        return False
    match = _TEMP_TAIL.search(name)
    if match:
        pid = int(match.group(1), 16)
        return pid != os.getpid() and age_seconds > STALE_AFTER and not _pid_alive(pid)
    return bool(_LEGACY_TEMP.match(name)) and age_seconds > LEGACY_STALE_AFTER


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Delete the stale temporary files of our naming in `folder` (left by a SIGKILL or power loss); the removed."""
    removed = []
    now = time.time()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.endswith(".tmp"):
            continue
        try:
            if entry.is_file(follow_symlinks=False) and is_stale_temp(entry.name, now - entry.stat(
                    follow_symlinks=False).st_mtime):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:
            continue
    if removed:
        logger.info("%s: removed %d temporary files left by an interrupted run", folder, len(removed))
    return removed


def _sweep_once(folder: Path) -> None:
    """The first write of this process into a folder clears the stale temporary files there."""
    with _swept_lock:
        if folder in _swept:
            return
        _swept.add(folder)
    remove_stale_temps(folder)


def _create_temp(folder: Path, name: str) -> str:
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = os.path.join(folder, temp_name(name))
        try:
            os.close(os.open(tmp, flags, 0o600))
            return tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"{folder}: no free temporary name for {name}")


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Let `write(tmp_path)` fill a temporary file beside `path`, then rename it into place (never half-written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _sweep_once(path.parent)
    tmp = _create_temp(path.parent, path.name)
    try:
        write(tmp)
        os.chmod(tmp, _final_mode(path))
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 text through a temporary file in the same folder and rename it into place."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    atomic_write(path, write)


def write_caption(path: str | os.PathLike, caption: str) -> None:
    """Write one caption with exactly one trailing newline, atomically."""
    atomic_write_text(path, caption.rstrip("\n") + "\n")


def write_error(path: str | os.PathLike, exc: OSError) -> str:
    """The one-line reason a caption file could not be written."""
    return f"cannot write {path}: {exc.strerror or exc}"


_WRITERS: ThreadPoolExecutor | None = None
WRITER_THREADS = 8  # each write waits on fsync; a few in flight at once hide that wait


def write_captions(items: Sequence[tuple[Path, str]]) -> list[str | None]:
    """Write a batch of captions (each atomically, several at once); None or the error line per file, in order."""
    global _WRITERS

    def one(target: Path, caption: str) -> str | None:
        try:
            write_caption(target, caption)
        except OSError as exc:
            return write_error(target, exc)
        return None

    if len(items) <= 1 or len({target for target, _ in items}) < len(items):
        return [one(t, c) for t, c in items]  # two images of one stem: in order, so the last one wins as always
    if _WRITERS is None:
        _WRITERS = ThreadPoolExecutor(WRITER_THREADS, thread_name_prefix="caption-writer")
    return list(_WRITERS.map(lambda pair: one(*pair), items))


class CaptionReadError(OSError):
    """A caption file that exists but cannot be used as text (not UTF-8); the message says which and why."""


def read_caption(path: str | os.PathLike) -> str | None:
    """The caption text without a UTF-8 BOM and trailing newlines, or None when there is no file.

    Raises:
        CaptionReadError: the file is not UTF-8 text.
        OSError: it cannot be read (permissions, a folder of that name).
    """
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return None
    try:
        return data.decode("utf-8-sig").strip("\r\n")
    except UnicodeDecodeError as exc:
        raise CaptionReadError(f"{path}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
                               "save it as UTF-8") from None


def one_line(text: str) -> str:
    """A caption as one line: newlines and runs of whitespace become single spaces, no blanks at either end."""
    return " ".join(text.split())


def split_caption(text: str, separator: str) -> list[str]:
    """Tags of a caption written with `separator` (whitespace separators split on whitespace)."""
    sep = separator.strip()
    parts = text.split(sep) if sep else text.split()
    return [p.strip() for p in parts if p.strip()]


def shared_sidecars(images, layout: SidecarLayout) -> dict[Path, list[Path]]:
    """Caption files that several images would write (a.png and a.jpg both map to a.txt)."""
    owners: dict[Path, list[Path]] = {}
    for image in images:
        owners.setdefault(layout.path_for(image), []).append(Path(image))
    return {caption: imgs for caption, imgs in owners.items() if len(imgs) > 1}
