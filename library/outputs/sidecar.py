"""Caption sidecars as a result writer: <stem><extension> beside each image (or mirrored under --output_dir)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from library.run.jobs import ItemResult
from library.outputs.writer import ResultRow, ResultWriter
from library.files.sidecars import SidecarLayout, read_caption, write_captions

Merge = Callable[[str, ItemResult], str]  # (existing caption text, new result) -> text to write (--append_tags)


class SidecarWriter(ResultWriter):
    """Writes each caption atomically as its image's sidecar; several files of a batch at once.

    Args:
        layout: where each image's caption file goes.
        merge: with --append_tags, combines an existing caption with the new result.
    """

    in_worker = True

    def __init__(self, layout: SidecarLayout, merge: Merge | None = None):
        self.layout, self.merge = layout, merge

    def done(self, image_path: Path) -> bool:
        return self.layout.exists_for(image_path)

    def _existing(self, image_path: Path) -> str | None:
        existing = read_caption(self.layout.path_for(image_path))
        if existing is None and self.layout.output_dir is not None:  # a first run with --output_dir: the dataset's
            existing = read_caption(image_path.with_name(image_path.stem + self.layout.extension))
        return existing

    def _text(self, row: ResultRow) -> str:
        existing = self._existing(row.path) if self.merge is not None else None
        return self.merge(existing, row.result) if existing else row.result.caption

    def write(self, rows: list[ResultRow]) -> list[str | None]:
        errors: list[str | None] = [row.result.error for row in rows]
        todo: list[tuple[int, Path, str]] = []
        for i, row in enumerate(rows):
            if row.result.caption is None:
                continue
            try:
                todo.append((i, self.layout.path_for(row.path), self._text(row)))
            except (OSError, UnicodeDecodeError) as exc:
                errors[i] = f"cannot read the existing caption: {exc}"
        for (i, _, _), error in zip(todo, write_captions([(target, text) for _, target, text in todo])):
            errors[i] = error
        return errors


def sidecar_writer(extension: str, input_root, output_dir=None, merge: Merge | None = None) -> SidecarWriter:
    """A SidecarWriter for the run's flags (a bad --caption_extension raises OptionError)."""
    return SidecarWriter(SidecarLayout(extension, input_root, output_dir), merge)
