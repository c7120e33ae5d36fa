"""Tagger throughput benchmark: decode bound vs model-only vs end to end, with peak memory.

Usage:
    python benchmarks/bench_tagger.py [--n 300] [--large 20] [--workers N] [--batch_size 16]

It generates N real-content 1024x768 JPEGs (plus some 3000x2000 ones) in a temporary folder, builds a tiny
pixel-dependent WD model (64 px) and a realistic-size one (448 px, 10,861 outputs, a small conv net), and
prints images/s for (a) decode + preprocess alone on all cores, (b) the model alone on pre-decoded batches,
(c) the tagger end to end, and the ratios (c)/(a) and (c)/(b).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from library.pipeline import default_workers  # noqa: E402
from library.preprocess import SquareImageLoader  # noqa: E402
from library.tag_processing import TagOptions  # noqa: E402
from library.tagging import TaggerConfig, tag_images  # noqa: E402
from library.wd_tagger import WDTagger, ensure_tagger_files  # noqa: E402
from library.model_files import locate_model  # noqa: E402


def make_images(folder: Path, n: int, large: int) -> list[Path]:
    import skimage.data

    photos = [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea(), skimage.data.rocket()]
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n + large):
        size = (3000, 2000) if i >= n else (1024, 768)
        base = Image.fromarray(photos[i % len(photos)]).resize(size, Image.BICUBIC)
        arr = np.asarray(base).astype(np.int16) + rng.integers(-8, 8, (size[1], size[0], 3), dtype=np.int16)
        path = folder / f"img_{i:05d}.jpg"
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def make_realistic_model(folder: Path, n_tags: int = 10861, size: int = 448) -> Path:
    """A conv net at 448 px with the WD contract (NHWC BGR in, sigmoid probabilities out)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits = [], []
    nodes.append(helper.make_node("Transpose", ["input"], ["x0"], perm=[0, 3, 1, 2]))
    channels, cur = 3, "x0"
    for i, (out_c, stride) in enumerate([(96, 4), (192, 2), (384, 2), (768, 2), (1024, 2)]):
        for j, (s_, in_c) in enumerate(((stride, channels), (1, out_c))):  # a strided conv, then a 3x3 conv
            scale = (2.0 / (in_c * 9)) ** 0.5 / (255.0 if i == j == 0 else 1.0)
            name = f"w{i}_{j}"
            inits.append(numpy_helper.from_array(rng.normal(0, scale, (out_c, in_c, 3, 3)).astype(np.float32), name))
            nodes.append(helper.make_node("Conv", [cur, name], [f"c{i}_{j}"], strides=[s_, s_], pads=[1, 1, 1, 1]))
            nodes.append(helper.make_node("Relu", [f"c{i}_{j}"], [f"r{i}_{j}"]))
            cur = f"r{i}_{j}"
        channels = out_c
    nodes.append(helper.make_node("GlobalAveragePool", [cur], ["gap"]))
    nodes.append(helper.make_node("Flatten", ["gap"], ["flat"]))
    inits.append(numpy_helper.from_array(rng.normal(0, 0.05, (channels, n_tags)).astype(np.float32), "proj"))
    nodes.append(helper.make_node("MatMul", ["flat", "proj"], ["mm"]))
    bias = np.full(n_tags, -8.0, np.float32)  # like a real tagger: a few dozen tags pass the threshold
    bias[rng.choice(n_tags, 40, replace=False)] = 4.0
    inits.append(numpy_helper.from_array(bias, "bias"))
    nodes.append(helper.make_node("Add", ["mm", "bias"], ["logits"]))
    nodes.append(helper.make_node("Sigmoid", ["logits"], ["output"]))
    graph = helper.make_graph(nodes, "realistic", [helper.make_tensor_value_info(
        "input", TensorProto.FLOAT, ["batch", size, size, 3])], [helper.make_tensor_value_info(
            "output", TensorProto.FLOAT, ["batch", n_tags])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, folder / "model.onnx")
    with open(folder / "selected_tags.csv", "w", encoding="utf-8") as f:
        f.write("tag_id,name,category,count\n")
        for i, name in enumerate(["general", "sensitive", "questionable", "explicit"]):
            f.write(f"{i},{name},9,100\n")
        for i in range(4, n_tags):
            f.write(f"{i},tag_{i},{4 if i > n_tags - 2000 else 0},10\n")
    return folder


def make_tiny_model(folder: Path) -> Path:
    sys.path.insert(0, str(ROOT / "tests"))
    from tests.fixtures.wd_models import make_wd_model

    tags = [("general", 9), ("sensitive", 9), ("questionable", 9), ("explicit", 9)] + [
        (f"tag_{i}", 0) for i in range(200)]
    return make_wd_model(folder, tags, size=64)


def decode_bound(paths, size: int, workers: int, fast: bool = False) -> float:
    loader = SquareImageLoader(size, fast)
    start = time.perf_counter()
    with ProcessPoolExecutor(workers, mp_context=__import__("multiprocessing").get_context("spawn")) as ex:
        for _ in ex.map(loader, paths, chunksize=4):
            pass
    return len(paths) / (time.perf_counter() - start)


def model_only(tagger: WDTagger, batch: int, n: int) -> float:
    x = np.random.default_rng(0).integers(0, 255, (batch, tagger.image_size, tagger.image_size, 3), dtype=np.uint8)
    tagger.predict(x)
    start, done = time.perf_counter(), 0
    while done < n:
        tagger.predict(x)
        done += batch
    return done / (time.perf_counter() - start)


def end_to_end(data: Path, model_dir: Path, repo: str, batch: int, workers: int, out: Path, fast: bool) -> float:
    cfg = TaggerConfig(train_data_dir=data, repo_id=repo, model_dir=str(model_dir), batch_size=batch, fast_decode=fast,
                       workers=workers, output_dir=out, progress=False, device="cpu", tag_options=TagOptions())
    result = tag_images(cfg).summary
    assert result.failed == 0, result.lines()
    return result.done / result.seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=300, help="1024x768 JPEGs")
    ap.add_argument("--large", type=int, default=20, help="3000x2000 JPEGs")
    ap.add_argument("--workers", type=int, default=default_workers())
    ap.add_argument("--batch_size", type=int, default=16)
    ap.add_argument("--n_realistic", type=int, default=64, help="images for the realistic model's runs")
    ap.add_argument("--skip_realistic", action="store_true")
    ap.add_argument("--fast_decode", action="store_true", help="measure with reduced-scale JPEG decoding")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = tmp / "data"
        data.mkdir()
        t0 = time.perf_counter()
        paths = make_images(data, args.n, args.large)
        print(f"generated {len(paths)} JPEGs in {time.perf_counter() - t0:.1f} s; {os.cpu_count()} cores, "
              f"{args.workers} workers, batch {args.batch_size}")
        models = tmp / "models"
        rows = []
        kinds = [("tiny 64px", "org_tiny", make_tiny_model)]
        if not args.skip_realistic:
            kinds.append(("conv 448px, 10861 tags", "org_real", make_realistic_model))
        for label, name, build in kinds:
            build(models / name)
            tagger = WDTagger(ensure_tagger_files(locate_model(f"org/{name[4:]}", str(models))), device="cpu")
            subset = paths if name == "org_tiny" else paths[: args.n_realistic]
            folder = data if name == "org_tiny" else tmp / "subset"
            if folder != data:
                folder.mkdir(exist_ok=True)
                for p in subset:
                    os.link(p, folder / p.name)
            a = decode_bound(subset, tagger.image_size, args.workers, args.fast_decode)
            b = model_only(tagger, args.batch_size, len(subset) if name != "org_tiny" else 4096)
            c = end_to_end(folder, models, f"org/{name[4:]}", args.batch_size, args.workers, tmp / f"out_{name}",
                           args.fast_decode)
            rows.append((label, a, b, c))
        print(f"{'model':<24}{'(a) decode':>12}{'(b) model':>12}{'(c) e2e':>12}{'c/a':>8}{'c/b':>8}")
        for label, a, b, c in rows:
            print(f"{label:<24}{a:>10.1f}/s{b:>10.1f}/s{c:>10.1f}/s{c / a:>8.2f}{c / b:>8.2f}")
        self_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        child_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(f"peak memory: main process {self_mb:.0f} MiB, largest worker {child_mb:.0f} MiB")


if __name__ == "__main__":
    main()
