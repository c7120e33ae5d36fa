"""Throughput benchmark: decode bound vs model-only vs end to end, for the tagger and a captioner, with peak memory.

Usage:
    python benchmarks/bench_tagger.py [--n 300] [--large 20] [--workers N] [--batch_size 16] [--fast_decode]

It generates N real-content 1024x768 JPEGs (plus some 3000x2000 ones) in a temporary folder and builds a tiny
pixel-dependent WD model (64 px), a realistic-size one (448 px, 10,861 outputs, a conv net) and a tiny BLIP
captioner. For each it prints images/s for (a) decode + preprocess alone on all cores, (b) the model alone on
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

from library.runtime import limit_openmp_spinning  # noqa: E402

limit_openmp_spinning()  # as the scripts do, before torch is imported

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from library.captioning import CaptionRunConfig, caption_images  # noqa: E402
from library.model_files import locate_model  # noqa: E402
from library.pipeline import default_workers  # noqa: E402
from library.preprocess import SquareImageLoader  # noqa: E402
from library.tag_processing import TagOptions  # noqa: E402
from library.tagging import TaggerConfig, tag_images  # noqa: E402
from library.wd_tagger import WDTagger, ensure_tagger_files  # noqa: E402

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
    from tests.fixtures.wd_models import make_wd_model

    tags = [("general", 9), ("sensitive", 9), ("questionable", 9), ("explicit", 9)] + [
        (f"tag_{i}", 0) for i in range(200)]
    return make_wd_model(folder, tags, size=64)


def decode_bound(paths, loader, workers: int) -> float:
    start = time.perf_counter()
    with ProcessPoolExecutor(workers, mp_context=__import__("multiprocessing").get_context("spawn")) as ex:
        for _ in ex.map(loader, paths, chunksize=4):
            pass
    return len(paths) / (time.perf_counter() - start)


def model_only(predict, sample: np.ndarray, batch: int, n: int) -> float:
    x = np.stack([sample] * batch)
    predict(x)  # warm-up
    start, done = time.perf_counter(), 0
    while done < n:
        predict(x)
        done += batch
    return done / (time.perf_counter() - start)


def tagger_end_to_end(data: Path, model_dir: Path, repo: str, batch: int, workers: int, out: Path,
                      fast: bool) -> tuple[float, MemorySampler]:
    cfg = TaggerConfig(train_data_dir=data, repo_id=repo, model_dir=str(model_dir), batch_size=batch, fast_decode=fast,
                       workers=workers, output_dir=out, progress=False, device="cpu", tag_options=TagOptions())
    with MemorySampler() as memory:
        result = tag_images(cfg).summary
    assert result.failed == 0, result.lines()
    return result.done / result.seconds, memory


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
    loader = SquareImageLoader(tagger.image_size, args.fast_decode)
    folder = linked_subset(paths, tmp / f"in_{name}{key}")
    a = decode_bound(paths, loader, args.workers)
    b = model_only(tagger.predict, loader(paths[0])[0], args.batch_size, max(len(paths), 2048 if a > 100 else 0))
    c, memory = tagger_end_to_end(folder, models, repo, args.batch_size, args.workers, tmp / f"out_{name}{key}",
                                  args.fast_decode)
    return Row(label, a, b, c, memory)


def bench_captioner(paths: list[Path], tmp: Path, args) -> Row:
    from library.blip_captioner import BlipCaptioner
    from library.hf_models import GenerationSettings
    from tests.fixtures.captioner_models import make_blip

    model = make_blip(tmp / "blip")
    settings = GenerationSettings(max_length=20, min_length=5)
    captioner = BlipCaptioner(str(model), settings, device="cpu", dtype="fp32")
    folder = linked_subset(paths, tmp / "in_blip")
    a = decode_bound(paths, captioner.preprocess, args.workers)
    b = model_only(captioner.generate, captioner.preprocess(paths[0])[0], args.batch_size, len(paths))
    rates = {}
    for workers in (args.workers, 0):
        cfg = CaptionRunConfig(train_data_dir=folder, output_dir=tmp / f"out_blip{workers}", batch_size=args.batch_size,
                               workers=workers, progress=False)
        with MemorySampler() as memory:
            result = caption_images(lambda: captioner, cfg)
        assert result.failed == 0, result.lines()
        rates[workers] = (result.done / result.seconds, memory)
    return Row("BLIP tiny (captioner)", a, b, rates[args.workers][0], rates[args.workers][1], serial=rates[0][0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=300, help="1024x768 JPEGs")
    ap.add_argument("--large", type=int, default=20, help="3000x2000 JPEGs")
    ap.add_argument("--workers", type=int, default=default_workers())
    ap.add_argument("--batch_size", type=int, default=16)
    ap.add_argument("--n_realistic", type=int, default=160, help="images for the realistic model's runs")
    ap.add_argument("--n_captioner", type=int, default=320, help="images for the captioner's runs")
    ap.add_argument("--skip_realistic", action="store_true")
    ap.add_argument("--skip_captioner", action="store_true")
    ap.add_argument("--fast_decode", action="store_true", help="measure the tagger with reduced-scale JPEG decoding")
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
        if not args.skip_realistic:
            rows.append(bench_tagger("conv 448px, 10861 tags", "org_real", make_realistic_model,
                                     mixed[: args.n_realistic], tmp, args))
        if not args.skip_captioner:
            rows.append(bench_captioner(mixed[: args.n_captioner], tmp, args))
        print()
        print(f"{'':<24}{'(a) decode':>11}{'(b) model':>11}{'shared':>9}{'(c) e2e':>10}{'c/a':>7}{'c/b':>7}"
              f"{'c/shared':>10}{'peak main':>11}{'worker':>8}{'all':>8}")
        for r in rows:
            m = r.memory
            print(f"{r.label:<24}{r.decode:>9.1f}/s{r.model:>9.1f}/s{r.shared:>7.1f}/s{r.e2e:>8.1f}/s"
                  f"{r.e2e / r.decode:>7.2f}{r.e2e / r.model:>7.2f}{r.e2e / r.shared:>10.2f}"
                  f"{m.main_peak / MIB:>7.0f} MiB{m.worker_peak / MIB:>4.0f} MiB{m.total_peak / MIB:>4.0f} MiB")
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
