"""GPU check: execution providers actually used, tagger images/s per precision, batch size, decode bound, GPU decode.

Run through benchmarks/gpu_check.sh on a fresh GPU machine (it installs what this needs). Models are random-weight
ONNX ViTs with the WD contract, of the size of wd-swinv2-tagger-v3 (ViT-B/16 class, 448 px) and
wd-eva02-large-tagger-v3 (ViT-L/14 class, 448 px): speed depends on the size, not on the weights.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from benchmarks.bench_tagger import decode_bound, make_images, make_vit_model  # noqa: E402
from library.backends.gpu_decode import gpu_decode_unavailable  # noqa: E402
from library.backends.hub_files import locate_model  # noqa: E402
from library.run.pipeline import default_workers  # noqa: E402
from library.taggers.job import TaggerConfig, auto_batch_size, tag_images  # noqa: E402
from library.taggers.tag_rules import TagOptions  # noqa: E402
from library.taggers.wd import WDTagger, ensure_tagger_files  # noqa: E402

MODELS = {  # name: (patch, dim, depth, heads)
    "swinv2-size (ViT-B/16, 448)": ("org_vitb", 16, 768, 12, 12),
    "eva02-large-size (ViT-L/14, 448)": ("org_vitl", 14, 1024, 24, 16),
}


def model_rate(tagger: WDTagger, batch: int, seconds: float) -> float:
    x = np.random.default_rng(0).integers(0, 256, (batch, tagger.image_size, tagger.image_size, 3), dtype=np.uint8)
    tagger.predict(x)  # warm-up (TensorRT builds its engine here)
    start, done = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        tagger.predict(x)
        done += batch
    return done / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=5.0, help="timed seconds per model measurement")
    ap.add_argument("--n", type=int, default=400, help="1024x768 JPEGs for the decode and end-to-end runs")
    ap.add_argument("--device", default="cuda", help="cuda (default), or cpu for a smoke test of this script")
    ap.add_argument("--quick", action="store_true", help="small models and few images (checks the script only)")
    args = ap.parse_args()
    import onnxruntime as ort

    print(f"onnxruntime {ort.__version__}; available providers: {', '.join(ort.get_available_providers())}")
    print(f"{os.cpu_count()} CPU cores; GPU decode: {gpu_decode_unavailable() or 'available'}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        models = tmp / "models"
        rows = []
        for label, (name, patch, dim, depth, heads) in MODELS.items():
            if args.quick:
                dim, depth, heads = 64, 2, 2
            folder = models / name
            t0 = time.perf_counter()
            make_vit_model(folder, patch=patch, dim=dim, depth=depth, heads=heads)
            print(f"built {label} in {time.perf_counter() - t0:.0f} s")
            files = ensure_tagger_files(locate_model(f"org/{name[4:]}", str(models)))
            devices = [("fp32", args.device, False), ("fp16", args.device, True)]
            if args.device == "cuda" and "TensorrtExecutionProvider" in ort.get_available_providers():
                devices += [("TensorRT fp16", "tensorrt", True)]
            for precision, device, fp16 in devices:
                try:
                    tagger = WDTagger(files, device, fp16)
                    batch = auto_batch_size(tagger, device)
                    rate = model_rate(tagger, batch, args.seconds)
                    rows.append((label, precision, tagger.runner.provider, batch, f"{rate:.0f}"))
                except Exception as exc:  # noqa: BLE001 - report and go on with the next configuration
                    rows.append((label, precision, "failed", "-", f"{exc.__class__.__name__}: {str(exc)[:60]}"))
                print(" | ".join(map(str, rows[-1])), flush=True)
        print("\n| model | precision | provider used | batch | images/s (model only) |\n|---|---|---|---|---|")
        for row in rows:
            print("| " + " | ".join(map(str, row)) + " |")

        data = tmp / "data"
        data.mkdir()
        paths = make_images(data, 40 if args.quick else args.n, 4 if args.quick else 20)
        workers = default_workers()
        tagger = WDTagger(ensure_tagger_files(locate_model("org/vitb", str(models))), "cpu")
        bound = decode_bound(paths, tagger.image_loader(), workers)
        print(f"\ndecode bound (CPU decode + pad + resize to 448) with {workers} workers: {bound:.0f} images/s")
        for decode in ("cpu", "gpu"):
            cfg = TaggerConfig(train_data_dir=data, repo_id="org/vitb", model_dir=str(models), device=args.device,
                               fp16=args.device != "cpu", decode=decode, output_dir=tmp / f"out_{decode}",
                               progress=False, tag_options=TagOptions())
            summary = tag_images(cfg).summary
            print(f"end to end, swinv2-size fp16, --decode {decode}: {summary.done / summary.seconds:.0f} images/s "
                  f"({summary.failed} failed)")
            for line in summary.clock.lines(summary.seconds, summary.done + summary.failed):
                print("   " + line)


if __name__ == "__main__":
    main()
