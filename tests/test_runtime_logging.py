"""Log lines during a run are printed whole, around the progress bar, never glued to it."""

import argparse
import logging
import sys

import pytest
from tqdm import tqdm

from finetune import cli

pytestmark = pytest.mark.timeout(60)


def segments(text: str) -> list[str]:
    """What a terminal shows as separate pieces: split at newlines and carriage returns, blank-only ones dropped."""
    return [s.strip() for line in text.split("\n") for s in line.split("\r") if s.strip()]


def test_log_lines_do_not_tear_the_progress_bar(capsys):
    def main(args):
        bar = tqdm(total=3, file=sys.stderr, mininterval=0, miniters=1, desc="tagging", ascii=True)
        bar.update(1)
        logging.getLogger("captionkit").warning("a.png: damaged image")
        bar.update(1)
        logging.getLogger("library.run.pipeline").info("batch done")
        bar.update(1)
        bar.close()
        return cli.EXIT_OK

    assert cli.run_script(main, argparse.ArgumentParser(), argv=[]) == 0
    pieces = segments(capsys.readouterr().err)
    assert "WARNING a.png: damaged image" in pieces and "INFO batch done" in pieces
    assert not any("tagging" in p and ("damaged" in p or "batch done" in p) for p in pieces)
    bar_lines = [p for p in pieces if p.startswith("tagging")]
    assert bar_lines[-1].startswith("tagging: 100%") and pieces.index(bar_lines[-1]) > pieces.index("INFO batch done")
    root = logging.getLogger().handlers  # the plain handler is back after the run
    assert len(root) == 1 and type(root[0]) is logging.StreamHandler
