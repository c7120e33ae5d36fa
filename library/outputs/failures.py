"""Failures as data: one JSON line per failed image (path, reason), so a run's failures can be retried or reviewed."""

from __future__ import annotations

import json
import os
from pathlib import Path

from library.sidecars import atomic_write_text


def _text(value: str) -> str:
    """JSON for a str that may hold lone surrogates (file names that are not UTF-8), escaped so the file stays UTF-8."""
    return json.dumps(value, ensure_ascii=True)


def write_failures(path: str | os.PathLike, failures: list[tuple[Path, str]]) -> None:
    """Write `failures` as JSON Lines {"path": ..., "reason": ...} (atomically, replacing an earlier list)."""
    lines = [f'{{"path": {_text(os.fspath(p))}, "reason": {_text(reason)}}}\n' for p, reason in failures]
    atomic_write_text(path, "".join(lines))


def read_failures(path: str | os.PathLike) -> list[tuple[str, str]]:
    """The (path, reason) pairs of a failures file."""
    rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    return [(row["path"], row["reason"]) for row in rows]
