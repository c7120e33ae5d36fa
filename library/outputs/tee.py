"""Two writers as one: the run's main output (sidecars, a metadata file) and a side file such as the scores file."""

from __future__ import annotations

from pathlib import Path

from library.outputs.writer import ResultRow, ResultWriter


class TeeWriter(ResultWriter):
    """Hands every batch to `main`, then to `side`; resume follows `main` (an image skipped there is skipped here).

    A row `main` could not write is not passed to `side`; a row `side` could not record becomes that image's error.
    Both are written where results meet (the driver) unless both can write in the worker.
    """

    def __init__(self, main: ResultWriter, side: ResultWriter):
        self.main, self.side = main, side
        self.in_worker = main.in_worker and side.in_worker
        self.keeps_failures = main.keeps_failures
        self.layout = getattr(main, "layout", None)  # the run loop warns about images sharing one sidecar

    def done(self, image_path: Path) -> bool:
        return self.main.done(image_path)

    def write(self, rows: list[ResultRow]) -> list[str | None]:
        errors = list(self.main.write(rows))
        todo = [i for i, (row, error) in enumerate(zip(rows, errors)) if error is None and row.result.error is None]
        for i, error in zip(todo, self.side.write([rows[i] for i in todo])):
            errors[i] = errors[i] or error
        return errors

    def close(self) -> None:
        try:
            self.main.close()
        finally:
            self.side.close()
