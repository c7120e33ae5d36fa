"""Where a run's time goes: wall and main-thread CPU per stage (receiving images, model, writing), with advice."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

STAGES = ("receive", "model", "write")
STAGE_TEXT = {"receive": "waiting for decoded images", "model": "in the model", "write": "writing"}


@dataclass
class StageClock:
    """Accumulated wall seconds and main-thread CPU seconds per stage."""

    wall: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @contextmanager
    def stage(self, name: str, wall: bool = True):
        """Time the block as `name`: wall time (unless wall=False: work in a helper thread that overlaps the main
        thread) and the CPU time of the calling thread."""
        wall0, cpu0 = time.perf_counter(), time.thread_time()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - wall0 if wall else 0.0, time.thread_time() - cpu0)

    def add(self, name: str, wall: float, cpu: float) -> None:
        with self._lock:
            self.wall[name] = self.wall.get(name, 0.0) + wall
            self.cpu[name] = self.cpu.get(name, 0.0) + cpu

    def lines(self, total_seconds: float, images: int) -> list[str]:
        """The --profile report: share of wall time per stage, main-process CPU per image, one line of advice."""
        if total_seconds <= 0 or images <= 0 or not self.wall:  # nothing timed (an empty or a Ray run)
            return []
        shares = {s: self.wall.get(s, 0.0) / total_seconds for s in STAGES}
        other = max(0.0, 1.0 - sum(shares.values()))
        head = "time: " + ", ".join(f"{STAGE_TEXT[s]} {100 * shares[s]:.0f}%" for s in STAGES) + \
            f", other {100 * other:.0f}%"
        per_image = {s: 1000 * self.cpu.get(s, 0.0) / images for s in STAGES}  # "write": the writer thread
        cpu = ("main-process CPU per image: " + ", ".join(f"{s} {per_image[s]:.2f} ms" for s in STAGES)
               + f" (total {sum(per_image.values()):.2f} ms)")
        return [head, cpu, "advice: " + advice(shares)]


def advice(shares: dict[str, float]) -> str:
    """One line: what to change, from where the time went."""
    if shares.get("receive", 0.0) >= max(shares.get("model", 0.0), shares.get("write", 0.0)):
        return ("decode-bound: the model waits for images; use more --max_data_loader_n_workers (one per core), "
                "--fast_decode, or smaller images (resize_images.py)")
    if shares.get("model", 0.0) >= shares.get("write", 0.0):
        return ("model-bound: the images are ready before the model is; use a bigger --batch_size, --fp16, "
                "a GPU (--device cuda) or TensorRT (--device tensorrt)")
    return "write-bound: the caption files are slow to write; write to a local disk or use --output_path"
