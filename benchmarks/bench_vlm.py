"""VLM captioning throughput: one image at a time (as taggui runs) vs captionkit's batches, on a tiny stand-in.

Usage:
    python benchmarks/bench_vlm.py [--family qwen2.5-vl] [--n 32] [--batches 1,4,8] [--max_new_tokens 24]

It builds the tiny random model of tests/fixtures (real layout, tiny sizes), writes N 1024x768 JPEGs, and runs
make_captions_by_vlm.py's job end to end (decode workers, processor, generate, sidecar writes) at each batch size
with greedy decoding, printing images/s, the speed-up over batch 1, and whether the captions are identical.
On a CPU the tiny model makes the per-call overhead (processor, generate's set-up) dominate, which is what batching
removes; on a GPU with a real model the gain comes from filling the GPU.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from library.run.runtime import limit_openmp_spinning  # noqa: E402

limit_openmp_spinning()

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from library.captioners.vlm import LocalVLM  # noqa: E402
from library.joycaption.generation import Sampling  # noqa: E402
from library.joycaption.job import CaptionTask, DualCaptionConfig, run_dual_caption  # noqa: E402
from tests.fixtures.vlm_models import builder  # noqa: E402


def make_images(folder: Path, n: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        base = rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)
        Image.fromarray(base).resize((1024, 768), Image.BICUBIC).save(folder / f"{i:05d}.jpg", quality=90)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", default="qwen2.5-vl")
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--batches", default="1,4,8")
    ap.add_argument("--max_new_tokens", type=int, default=24)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make = builder(args.family)
        if make is None:
            sys.exit(f"no tiny stand-in for {args.family}")
        model = make(tmp / "model")
        make_images(tmp / "images", args.n)
        backend = LocalVLM(str(model), device="cpu")
        base, first = None, None
        print(f"{args.family} tiny stand-in, {args.n} images 1024x768, {args.max_new_tokens} new tokens, greedy, CPU")
        for batch in (int(b) for b in args.batches.split(",")):
            backend.batch_size = batch
            out = tmp / f"out{batch}"
            cfg = DualCaptionConfig(tmp / "images", [CaptionTask("caption", "Describe this image.", args.max_new_tokens)],
                                    output_dir=out, overwrite=True, batch_size=batch, workers=args.workers,
                                    sampling=Sampling(do_sample=False), max_retries=0, progress=False)
            summary = run_dual_caption(cfg, lambda: backend, uses_gpu=False).summary
            speed = summary.done / summary.seconds
            texts = sorted(p.read_text() for p in out.glob("*.txt"))
            base = base or speed
            first = first or texts
            print(f"  batch {batch:>2}: {speed:6.2f} img/s  x{speed / base:4.2f}  captions identical to batch 1: "
                  f"{texts == first}  ({summary.done} done, {summary.failed} failed)")


if __name__ == "__main__":
    main()
