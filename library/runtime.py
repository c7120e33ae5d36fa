"""Process-level helpers for the scripts: tqdm-friendly logging and the one-writer rule under accelerate launch."""

from __future__ import annotations

import logging
import os


class _TqdmHandler(logging.StreamHandler):
    """Writes log lines through tqdm so they do not break the progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # noqa: BLE001 - logging must never crash the run
            self.handleError(record)


def setup_logging(debug: bool = False) -> None:
    """Log INFO (DEBUG with --debug) to stderr as 'LEVEL message', through tqdm."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = _TqdmHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    for noisy in ("httpx", "httpcore", "urllib3", "filelock", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def process_rank() -> int:
    """This process's rank under accelerate/torchrun (0 when launched alone)."""
    for var in ("RANK", "LOCAL_RANK"):
        value = os.environ.get(var)
        if value and value.strip().isdigit():
            return int(value)
    return 0


def is_main_process() -> bool:
    """Only rank 0 may write files when several processes run the same script."""
    return process_rank() == 0
