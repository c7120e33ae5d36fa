"""Caption metadata files for --output_path: sd-scripts' JSON ({path: {tags, image_size}}) or JSON Lines with scores."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from library.outputs import json_text
from library.outputs.writer import ResultRow, ResultWriter
from library.files.sidecars import atomic_write_text

logger = logging.getLogger(__name__)

class MetadataWriter(ResultWriter):
    """Collects one entry per image (absolute path keys) and writes the file atomically when closed.

    Args:
        path: output file; a name ending in .jsonl gives JSON Lines, anything else JSON.
        resume: keep the entries of an existing file (for --skip_existing).
    """

    def __init__(self, path: str | os.PathLike, resume: bool = False):
        self.path = Path(path)
        self.jsonl = self.path.suffix.lower() == ".jsonl"
        self.entries: dict[str, dict] = {}
        if resume and self.path.is_file():
            self.entries = self._read()

    def _read(self) -> dict[str, dict]:
        text = self.path.read_text(encoding="utf-8")
        if not self.jsonl:
            return {k: v for k, v in json.loads(text or "{}").items()}
        entries = {}
        for line in text.splitlines():
            if line.strip():
                row = json.loads(line)
                entries[row["image_path"]] = {"tags": row.get("caption", ""), "image_size": row.get("image_size"),
                                              "scores": row.get("scores")}
        return entries

    @staticmethod
    def key(image_path: str | os.PathLike) -> str:
        return str(Path(image_path).resolve())

    def done(self, image_path: str | os.PathLike) -> bool:
        return self.key(image_path) in self.entries

    def write(self, rows: list[ResultRow]) -> list[str | None]:
        for row in rows:
            self.add(row.path, row.result.caption, row.size, row.result.scores)
        return [None] * len(rows)

    def close(self) -> None:
        self.save()
        logger.info("captions saved to %s", self.path)

    def add(self, image_path, caption: str, image_size, scores: dict[str, float] | None = None) -> None:
        self.entries[self.key(image_path)] = {"tags": caption, "image_size": list(image_size) if image_size else None,
                                              "scores": scores}

    def save(self) -> None:
        """Write the collected entries (atomically)."""
        if self.jsonl:
            lines = []
            for path, e in self.entries.items():
                row = {"image_path": path, "caption": e["tags"], "image_size": e["image_size"]}
                if e.get("scores") is not None:
                    row["scores"] = e["scores"]
                lines.append(json_text.dumps(row, ensure_ascii=False))
            atomic_write_text(self.path, "\n".join(lines) + ("\n" if lines else ""))
        else:
            data = {p: {"tags": e["tags"], "image_size": e["image_size"]} for p, e in self.entries.items()}
            atomic_write_text(self.path, json_text.dumps(data, ensure_ascii=False, indent=4) + "\n")
