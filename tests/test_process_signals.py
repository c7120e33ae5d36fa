"""Killed and terminated runs: SIGTERM is handled like Ctrl-C, and no worker outlives a SIGKILLed main process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import SCRIPT

pytestmark = [pytest.mark.timeout(180),
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc to find the workers")]


@pytest.fixture()
def big_dataset(tmp_path) -> Path:
    """80 large PNGs: decoding keeps the workers busy long enough to interrupt the run."""
    data = tmp_path / "data"
    data.mkdir()
    base = Image.fromarray(np.random.default_rng(0).integers(0, 255, (600, 800, 3), dtype=np.uint8))
    for i in range(80):
        base.save(data / f"img{i:03d}.png", compress_level=1)
    return data


def start_tagger(data: Path, model_dir: Path, cwd: Path) -> subprocess.Popen:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, str(SCRIPT), str(data), "--repo_id", "org/tiny", "--model_dir",
                             str(model_dir), "--max_data_loader_n_workers", "2", "--no_progress"], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for_captions(data: Path, proc: subprocess.Popen) -> None:
    deadline = time.time() + 90
    while time.time() < deadline and not list(data.glob("*.txt")) and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None and list(data.glob("*.txt")), "the run ended before it could be interrupted"


def children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry))
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def test_sigterm_is_handled_like_ctrl_c(big_dataset, model_dir, tmp_path):
    proc = start_tagger(big_dataset, model_dir, tmp_path)
    wait_for_captions(big_dataset, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    out, err = out.decode(), err.decode()
    assert proc.returncode == 143, err[-3000:]
    assert "interrupted" in out and "tagged " in out  # the summary is printed
    assert "Traceback" not in err
    written = list(big_dataset.glob("*.txt"))
    assert 0 < len(written) < 80
    assert not [p for p in big_dataset.iterdir() if p.name.startswith(".")]  # no temp files
    assert all(p.read_text().endswith("\n") for p in written)


def test_workers_exit_soon_after_the_main_process_is_killed(big_dataset, model_dir, tmp_path):
    proc = start_tagger(big_dataset, model_dir, tmp_path)
    wait_for_captions(big_dataset, proc)
    kids = children(proc.pid)
    assert len(kids) >= 2  # decode workers (and the multiprocessing resource tracker)
    eof = threading.Event()

    def drain(stream):
        stream.read()  # returns when every process holding the pipe has closed it
        eof.set()

    readers = [threading.Thread(target=drain, args=(s,), daemon=True) for s in (proc.stdout, proc.stderr)]
    for r in readers:
        r.start()
    proc.kill()
    proc.wait(10)
    killed = time.monotonic()
    for r in readers:
        r.join(15)
    assert not any(r.is_alive() for r in readers), "a child of the killed run still holds its stdout/stderr"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(alive(k) for k in kids):
        time.sleep(0.1)
    assert not [k for k in kids if alive(k)]
    assert time.monotonic() - killed < 15
