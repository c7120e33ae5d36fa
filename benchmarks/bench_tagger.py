"""Throughput benchmark: decode bound vs model-only vs end to end, for the tagger and a captioner, with peak memory.

Usage:
    python benchmarks/bench_tagger.py [--n 300] [--large 20] [--workers N] [--batch_size 16] [--fast_decode]

It generates N real-content 1024x768 JPEGs (plus some 3000x2000 ones) in a temporary folder and builds a tiny
pixel-dependent WD model (64 px), a realistic one (a random ViT-B/16 at 448 px with 10,861 outputs, the
architecture of wd-vit-tagger-v3) and a tiny BLIP captioner. For each it prints images/s for (a) decode + preprocess alone on all
cores, (b) the model alone on
pre-decoded batches, (c) the script's pipeline end to end, and the ratios (c)/(a) and (c)/(b). When decoding and
the model share the same CPU cores, neither bound is reachable alone: the column "shared" gives 1/(1/a + 1/b),
the rate if both kept every core busy in turn, and c/shared how close the pipeline gets to it.
Memory is sampled from /proc every 50 ms for the main process and each worker; the tiny tagger runs on N/4 and
on N images to show that memory does not grow with the dataset.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from library.run.runtime import limit_openmp_spinning  # noqa: E402

limit_openmp_spinning()  # as the scripts do, before torch is imported

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from library.captioners.job import CaptionRunConfig, caption_images  # noqa: E402
from library.backends.hub_files import locate_model  # noqa: E402
from library.run.pipeline import default_workers  # noqa: E402
from library.taggers.tag_rules import TagOptions  # noqa: E402
from library.taggers.job import TaggerConfig, tag_images  # noqa: E402
from library.taggers.wd import WDTagger, ensure_tagger_files  # noqa: E402

MIB = 1024 * 1024


class MemorySampler:
    """Peak resident memory of this process and of each of its descendants, sampled from /proc (Linux)."""

    def __init__(self, interval: float = 0.05):
        self.interval = interval
        self.main_peak = self.worker_peak = self.total_peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    @staticmethod
    def _rss(pid: int) -> int:
        try:
            with open(f"/proc/{pid}/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return 0

    @staticmethod
    def _children(pid: int) -> list[int]:
        kids = []
        try:
            for tid in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{tid}/children") as f:
                    kids += [int(k) for k in f.read().split()]
        except OSError:
            pass
        return kids

    def sample(self) -> None:
        me = os.getpid()
        main = self._rss(me)
        todo, workers = self._children(me), []
        while todo:
            pid = todo.pop()
            workers.append(self._rss(pid))
            todo += self._children(pid)
        self.main_peak = max(self.main_peak, main)
        self.worker_peak = max([self.worker_peak] + workers)
        self.total_peak = max(self.total_peak, main + sum(workers))

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> "MemorySampler":
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class Row:
    label: str
    decode: float
    model: float
    e2e: float
    memory: MemorySampler
    serial: float | None = None  # end to end with decoding in the main process (as sd-scripts does by default)
    runs: list[float] | None = None  # every end-to-end rate (e2e is their median)
    cpu: dict[str, float] | None = None  # main-process CPU ms per image by stage (median run)
    model_cpu: float = 0.0  # main-thread CPU ms per image of the model alone (its own compute on that thread)

    @property
    def overhead(self) -> float:
        """Main-process CPU ms per image beyond the model's own compute: receiving, the model call, writing."""
        cpu = self.cpu or {}
        return cpu.get("receive", 0.0) + cpu.get("write", 0.0) + max(0.0, cpu.get("model", 0.0) - self.model_cpu)

    @property
    def shared(self) -> float:
        return 1.0 / (1.0 / self.decode + 1.0 / self.model)


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


def write_selected_tags(path: Path, n_tags: int) -> None:
    """A selected_tags.csv for n_tags outputs: 4 ratings, then general tags, the last 2,000 characters."""
    with open(path, "w", encoding="utf-8") as f:
        f.write("tag_id,name,category,count\n")
        for i, name in enumerate(["general", "sensitive", "questionable", "explicit"]):
            f.write(f"{i},{name},9,100\n")
        for i in range(4, n_tags):
            f.write(f"{i},tag_{i},{4 if i > n_tags - 2000 else 0},10\n")


def make_vit_model(folder: Path, n_tags: int = 10861, size: int = 448, patch: int = 16, dim: int = 768,
                   depth: int = 12, heads: int = 12) -> Path:
    """A randomly initialised ViT-B/16 at 448 px (the architecture of wd-vit-tagger-v3) with the WD contract:
    NHWC BGR 0..255 in, 10,861 sigmoid probabilities out."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits = [], []

    def const(name: str, array) -> str:
        inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def weight(name: str, shape, std: float = 0.02) -> str:
        return const(name, rng.normal(0, std, shape).astype(np.float32))

    def node(op: str, inputs: list[str], out: str, **attrs) -> str:
        nodes.append(helper.make_node(op, inputs, [out], **attrs))
        return out

    def layer_norm(x: str, name: str) -> str:
        return node("LayerNormalization", [x, const(f"{name}_g", np.ones(dim, np.float32)),
                                           const(f"{name}_b", np.zeros(dim, np.float32))], f"{name}_out", axis=-1)

    def linear(x: str, name: str, n_in: int, n_out: int) -> str:
        mm = node("MatMul", [x, weight(f"{name}_w", (n_in, n_out))], f"{name}_mm")
        return node("Add", [mm, const(f"{name}_bias", np.zeros(n_out, np.float32))], f"{name}_out")

    tokens = (size // patch) ** 2
    head_dim = dim // heads
    x = node("Transpose", ["input"], "nchw", perm=[0, 3, 1, 2])
    x = node("Conv", [x, weight("patch_w", (dim, 3, patch, patch), 0.02 / 255), const("patch_b", np.zeros(dim, np.float32))],
             "patches", strides=[patch, patch])
    x = node("Reshape", [x, const("flat_shape", np.array([0, dim, -1], np.int64))], "patches_flat")
    x = node("Transpose", [x], "tokens", perm=[0, 2, 1])
    x = node("Add", [x, weight("pos", (1, tokens, dim))], "x_in")
    for i in range(depth):
        b = f"b{i}"
        qkv = linear(layer_norm(x, f"{b}_ln1"), f"{b}_qkv", dim, 3 * dim)
        qkv = node("Reshape", [qkv, const(f"{b}_qkv_shape", np.array([0, -1, 3, heads, head_dim], np.int64))], f"{b}_qkv5")
        qkv = node("Transpose", [qkv], f"{b}_qkvT", perm=[2, 0, 3, 1, 4])
        q, k, v = (node("Gather", [qkv, const(f"{b}_i{j}", np.array(j, np.int64))], f"{b}_{n}", axis=0)
                   for j, n in enumerate("qkv"))
        kt = node("Transpose", [k], f"{b}_kT", perm=[0, 1, 3, 2])
        scores = node("Mul", [node("MatMul", [q, kt], f"{b}_qk"), const(f"{b}_scale", np.float32(head_dim ** -0.5))],
                      f"{b}_scores")
        attn = node("MatMul", [node("Softmax", [scores], f"{b}_probs", axis=-1), v], f"{b}_attn")
        attn = node("Transpose", [attn], f"{b}_attnT", perm=[0, 2, 1, 3])
        attn = node("Reshape", [attn, const(f"{b}_merge", np.array([0, -1, dim], np.int64))], f"{b}_merged")
        x = node("Add", [x, linear(attn, f"{b}_proj", dim, dim)], f"{b}_res1")
        h = linear(layer_norm(x, f"{b}_ln2"), f"{b}_fc1", dim, 4 * dim)
        erf = node("Erf", [node("Div", [h, const(f"{b}_sqrt2", np.float32(2 ** 0.5))], f"{b}_hs")], f"{b}_erf")
        gelu = node("Mul", [node("Mul", [h, node("Add", [erf, const(f"{b}_one", np.float32(1))], f"{b}_erf1")],
                                 f"{b}_herf"), const(f"{b}_half", np.float32(0.5))], f"{b}_gelu")
        x = node("Add", [x, linear(gelu, f"{b}_fc2", 4 * dim, dim)], f"{b}_res2")
    pooled = node("ReduceMean", [layer_norm(x, "final_ln")], "pooled", axes=[1], keepdims=0)
    logits = node("MatMul", [pooled, weight("head_w", (dim, n_tags), 2.0 / dim ** 0.5)], "head_mm")
    bias = np.full(n_tags, -8.0, np.float32)  # like a real tagger: a few dozen tags pass the threshold
    bias[rng.choice(n_tags, 40, replace=False)] = 4.0
    x = node("Add", [logits, const("head_bias", bias)], "logits")
    node("Sigmoid", [x], "output")
    graph = helper.make_graph(nodes, "vit_b16_448", [helper.make_tensor_value_info(
        "input", TensorProto.FLOAT, ["batch", size, size, 3])], [helper.make_tensor_value_info(
            "output", TensorProto.FLOAT, ["batch", n_tags])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, folder / "model.onnx")
    write_selected_tags(folder / "selected_tags.csv", n_tags)
    return folder


def make_tiny_model(folder: Path, size: int = 64) -> Path:
    from tests.fixtures.wd_models import make_wd_model

    tags = [("general", 9), ("sensitive", 9), ("questionable", 9), ("explicit", 9)] + [
        (f"tag_{i}", 0) for i in range(200)]
    return make_wd_model(folder, tags, size=size)


def make_tiny_448(folder: Path) -> Path:
    """The WD data path at its real size: 448 px input, a model that costs almost nothing."""
    return make_tiny_model(folder, 448)


def decode_bound(paths, loader, workers: int) -> float:
    start = time.perf_counter()
    with ProcessPoolExecutor(workers, mp_context=__import__("multiprocessing").get_context("spawn")) as ex:
        for _ in ex.map(loader, paths, chunksize=4):
            pass
    return len(paths) / (time.perf_counter() - start)


def model_only(predict, sample: np.ndarray, batch: int, n: int, min_seconds: float = 2.0) -> tuple[float, float]:
    """(images/s, main-thread CPU ms per image) of `predict` on copies of one pre-decoded image, after a warm-up."""
    x = np.stack([sample] * batch)
    predict(x)  # warm-up
    start, cpu, done = time.perf_counter(), time.thread_time(), 0
    while done < n or time.perf_counter() - start < min_seconds:
        predict(x)
        done += batch
    return done / (time.perf_counter() - start), 1000 * (time.thread_time() - cpu) / done


def stage_cpu(summary) -> dict[str, float]:
    """Main-process CPU ms per image by stage, from the run's own clock (library.run.profiling)."""
    images = max(1, summary.done + summary.failed)
    return {stage: 1000 * summary.clock.cpu.get(stage, 0.0) / images for stage in ("receive", "model", "write")}


def tagger_end_to_end(data: Path, model_dir: Path, repo: str, batch: int, workers: int, out: Path,
                      fast: bool) -> tuple[float, MemorySampler, dict[str, float]]:
    cfg = TaggerConfig(train_data_dir=data, repo_id=repo, model_dir=str(model_dir), batch_size=batch, fast_decode=fast,
                       workers=workers, output_dir=out, progress=False, device="cpu", tag_options=TagOptions())
    with MemorySampler() as memory:
        result = tag_images(cfg).summary
    assert result.failed == 0, result.lines()
    return result.done / result.seconds, memory, stage_cpu(result)


def linked_subset(paths: list[Path], folder: Path) -> Path:
    folder.mkdir(exist_ok=True)
    for p in paths:
        os.link(p, folder / p.name)
    return folder


def bench_tagger(label: str, name: str, build, paths: list[Path], tmp: Path, args, key: str = "") -> Row:
    models = tmp / "models"
    if not (models / name).is_dir():
        build(models / name)
    repo = f"org/{name[4:]}"
    tagger = WDTagger(ensure_tagger_files(locate_model(repo, str(models))), device="cpu")
    loader = tagger.image_loader(args.fast_decode)
    folder = linked_subset(paths, tmp / f"in_{name}{key}")
    a = decode_bound(paths, loader, args.workers)
    b, model_cpu = model_only(tagger.predict, loader(paths[0])[0], args.batch_size, len(paths))
    runs = []
    for i in range(max(1, args.repeat)):
        out = tmp / f"out_{name}{key}_{i}"
        runs.append(tagger_end_to_end(folder, models, repo, args.batch_size, args.workers, out, args.fast_decode))
    runs.sort(key=lambda run: run[0])
    c, memory, cpu = runs[len(runs) // 2]
    return Row(label, a, b, c, memory, runs=[run[0] for run in runs], cpu=cpu, model_cpu=model_cpu)


def bench_captioner(paths: list[Path], tmp: Path, args) -> Row:
    from library.captioners.blip import BlipCaptioner
    from library.captioners.hf_models import GenerationSettings
    from tests.fixtures.captioner_models import make_blip

    model = make_blip(tmp / "blip")
    settings = GenerationSettings(max_length=20, min_length=5)
    captioner = BlipCaptioner(str(model), settings, device="cpu", dtype="fp32")
    folder = linked_subset(paths, tmp / "in_blip")
    a = decode_bound(paths, captioner.preprocess, args.workers)
    b, model_cpu = model_only(captioner.generate, captioner.preprocess(paths[0])[0], args.batch_size, len(paths))
    rates = {}
    for workers in (args.workers, 0):
        cfg = CaptionRunConfig(train_data_dir=folder, output_dir=tmp / f"out_blip{workers}", batch_size=args.batch_size,
                               workers=workers, progress=False)
        with MemorySampler() as memory:
            result = caption_images(lambda: captioner, cfg)
        assert result.failed == 0, result.lines()
        rates[workers] = (result.done / result.seconds, memory, stage_cpu(result))
    return Row("BLIP tiny (captioner)", a, b, rates[args.workers][0], rates[args.workers][1], serial=rates[0][0],
               cpu=rates[args.workers][2], model_cpu=model_cpu)


def rate(value: float) -> str:
    """Images/s with three significant figures or one decimal, whichever is finer."""
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=300, help="1024x768 JPEGs")
    ap.add_argument("--large", type=int, default=20, help="3000x2000 JPEGs")
    ap.add_argument("--workers", type=int, default=default_workers())
    ap.add_argument("--batch_size", type=int, default=16)
    ap.add_argument("--n_realistic", type=int, default=64, help="images for the realistic model's runs")
    ap.add_argument("--n_captioner", type=int, default=320, help="images for the captioner's runs")
    ap.add_argument("--skip_realistic", action="store_true")
    ap.add_argument("--skip_captioner", action="store_true")
    ap.add_argument("--fast_decode", action="store_true", help="measure the tagger with reduced-scale JPEG decoding")
    ap.add_argument("--repeat", type=int, default=3, help="end-to-end runs per tagger row (the median is shown)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = tmp / "data"
        data.mkdir()
        t0 = time.perf_counter()
        paths = make_images(data, args.n, args.large)
        print(f"generated {len(paths)} JPEGs in {time.perf_counter() - t0:.1f} s; {os.cpu_count()} cores, "
              f"{args.workers} workers, batch {args.batch_size}" + (", --fast_decode" if args.fast_decode else ""))
        # the large files are spread through each subset, as in a real dataset
        mixed = sorted(paths, key=lambda p: (int(p.stem.split("_")[1]) % max(1, args.n // max(1, args.large))))
        rows = []
        quarter = bench_tagger("tiny 64px, N/4 images", "org_tiny", make_tiny_model, paths[: len(paths) // 4], tmp,
                               args, key="_quarter")
        rows.append(bench_tagger("tiny 64px (tagger)", "org_tiny", make_tiny_model, paths, tmp, args))
        rows.append(bench_tagger("WD data path, 448px input", "org_tiny448", make_tiny_448, paths, tmp, args))
        if not args.skip_realistic:
            rows.append(bench_tagger("ViT-B/16 448px, 10861 tags", "org_vit", make_vit_model,
                                     mixed[: args.n_realistic], tmp, args))
        if not args.skip_captioner:
            rows.append(bench_captioner(mixed[: args.n_captioner], tmp, args))
        print()
        print(f"{'':<27}{'(a) decode':>11}{'(b) model':>11}{'shared':>9}{'(c) e2e':>10}{'c/a':>7}{'c/b':>7}"
              f"{'c/shared':>10}{'peak main':>11}{'worker':>10}{'all':>10}")
        for r in rows:
            m = r.memory
            print(f"{r.label:<27}{rate(r.decode):>9}/s{rate(r.model):>9}/s{rate(r.shared):>7}/s{rate(r.e2e):>8}/s"
                  f"{r.e2e / r.decode:>7.2f}{r.e2e / r.model:>7.2f}{r.e2e / r.shared:>10.2f}"
                  f"{m.main_peak / MIB:>7.0f} MiB{m.worker_peak / MIB:>6.0f} MiB{m.total_peak / MIB:>6.0f} MiB")
        print()
        print(f"{'main-process CPU, ms/image':<27}{'receive':>9}{'model call':>12}{'(model alone)':>15}{'write':>8}"
              f"{'overhead':>10}   e2e runs (img/s)")
        for r in rows:
            cpu = r.cpu or {}
            spread = ", ".join(rate(x) for x in r.runs) if r.runs else ""
            print(f"{r.label:<27}{cpu.get('receive', 0):>9.2f}{cpu.get('model', 0):>12.2f}{r.model_cpu:>15.2f}"
                  f"{cpu.get('write', 0):>8.2f}{r.overhead:>10.2f}   {spread}")
        print("overhead = receive + write + (model call - model alone): the main process's own work per image; the "
              "write column is the writer thread's CPU, which overlaps the model")
        for r in rows:
            if r.serial:
                print(f"{r.label}: {r.e2e:.1f}/s with {args.workers} decode workers vs {r.serial:.1f}/s decoding in "
                      f"the main process ({r.e2e / r.serial:.2f}x)")
        q, f = quarter.memory, rows[0].memory
        print(f"memory flat in N (tiny tagger): main process {q.main_peak / MIB:.0f} MiB for {len(paths) // 4} images, "
              f"{f.main_peak / MIB:.0f} MiB for {len(paths)}; largest worker {q.worker_peak / MIB:.0f} and "
              f"{f.worker_peak / MIB:.0f} MiB")


if __name__ == "__main__":
    main()
