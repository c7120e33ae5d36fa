"""Failures as data: one JSON line per failed image (path, reason), so a run's failures can be retried or reviewed."""

from __future__ import annotations

import json
import os
from pathlib import Path

from library.outputs import json_text
from library.files.sidecars import atomic_write_text


def write_failures(path: str | os.PathLike, failures: list[tuple[Path, str]]) -> None:
    """Write `failures` as JSON Lines {"path": ..., "reason": ...} (atomically, replacing an earlier list)."""
    lines = [json_text.dumps({"path": os.fspath(p), "reason": reason}) + "\n" for p, reason in failures]
    atomic_write_text(path, "".join(lines))


def read_failures(path: str | os.PathLike) -> list[tuple[str, str]]:
    """The (path, reason) pairs of a failures file."""
    rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    return [(row["path"], row["reason"]) for row in rows]
