"""The output-writer interface: where a run's results go (sidecars, metadata files, result tables)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

from library.run.jobs import ItemResult


@dataclass
class ResultRow:
    """One image's outcome as a writer sees it: the image path, its size (w, h) when decoded, the result."""

    path: Path
    size: tuple[int, int] | None
    result: ItemResult


class ResultWriter(ABC):
    """Takes the results of a run batch by batch and makes them durable.

    Attributes:
        in_worker: written where the model runs (a Ray actor writes its own sidecars); False: results travel to
            the driver, which writes them (one metadata file or table for the whole run).
        keeps_failures: rows of failed images are recorded too (result tables); otherwise they are not passed on.
    """

    in_worker: bool = False
    keeps_failures: bool = False

    def done(self, image_path: Path) -> bool:
        """The image already has a result here (resume skips it)."""
        return False

    @abstractmethod
    def write(self, rows: list[ResultRow]) -> list[str | None]:
        """Record the rows; per row None or the one-line reason it could not be written, in order."""

    def close(self) -> None:
        """Flush what is collected (metadata files and tables are written atomically here)."""
