"""Execution providers, sidecar files, the worker pipeline and Ctrl-C handling."""

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from library.files.image_io import ImageLoadError
from library.backends.onnx_runtime import ProviderError, choose_providers, create_session, parse_device
from library.run.pipeline import RunSummary, iter_loaded, run_batches
from library.files.sidecars import SidecarLayout, atomic_write_text, normalize_extension, shared_sidecars, split_caption
from tests.conftest import ROOT, SCRIPT


def names(providers):
    return [p[0] if isinstance(p, tuple) else p for p in providers]


def test_provider_choice():
    assert names(choose_providers("cpu", ["CUDAExecutionProvider", "CPUExecutionProvider"])) == ["CPUExecutionProvider"]
    assert choose_providers("cuda:1", ["CUDAExecutionProvider", "CPUExecutionProvider"])[0] == (
        "CUDAExecutionProvider", {"device_id": 1})
    auto = names(choose_providers("auto", ["DmlExecutionProvider", "CPUExecutionProvider"]))
    assert auto == ["DmlExecutionProvider", "CPUExecutionProvider"]
    with pytest.raises(ProviderError, match="no ROCMExecutionProvider"):
        choose_providers("rocm", ["CPUExecutionProvider"])
    with pytest.raises(ProviderError):
        parse_device("tpu")


def test_auto_skips_cuda_without_a_gpu():
    from library.backends.onnx_runtime import cuda_device_count
    if cuda_device_count():
        pytest.skip("a CUDA GPU is present")
    auto = names(choose_providers("auto", ["CUDAExecutionProvider", "CPUExecutionProvider"]))
    assert auto == ["CPUExecutionProvider"]


def test_loud_warning_when_the_gpu_provider_falls_back_to_cpu(model_dir, caplog):
    import onnxruntime as ort
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("this ONNX Runtime build has no CUDA provider")
    from library.backends.onnx_runtime import cuda_device_count
    if cuda_device_count():
        pytest.skip("a working GPU would not fall back")
    with caplog.at_level(logging.WARNING):
        session = create_session(model_dir / "org_tiny" / "model.onnx", "cuda")
    assert session.get_providers() == ["CPUExecutionProvider"]
    assert "running on the CPU" in caplog.text


def test_sidecar_layout_and_extensions(tmp_path):
    assert normalize_extension("txt") == ".txt" and normalize_extension(".caption") == ".caption"
    with pytest.raises(ValueError):
        normalize_extension("")
    layout = SidecarLayout("txt")
    assert layout.path_for(tmp_path / "a.b.png") == tmp_path / "a.b.txt"
    mirrored = SidecarLayout(".txt", tmp_path / "in", tmp_path / "out")
    assert mirrored.path_for(tmp_path / "in" / "x" / "y.jpg") == tmp_path / "out" / "x" / "y.txt"
    clashes = shared_sidecars([tmp_path / "a.png", tmp_path / "a.jpg", tmp_path / "b.png"], layout)
    assert list(clashes) == [tmp_path / "a.txt"]


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    target = tmp_path / "c.txt"
    atomic_write_text(target, "old\n")

    with pytest.raises(TypeError):
        atomic_write_text(target, 123)  # write fails midway
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["c.txt"]  # no temp file left behind


def test_atomic_write_gives_normal_permissions(tmp_path):
    old_umask = os.umask(0o022)
    try:
        import importlib

        import library.files.sidecars as sidecars
        importlib.reload(sidecars)  # the umask is read once at import
        new = tmp_path / "new.txt"
        sidecars.atomic_write_text(new, "x\n")
        assert new.stat().st_mode & 0o777 == 0o644  # as open() would make it, not mkstemp's 0o600
        kept = tmp_path / "kept.txt"
        kept.write_text("old\n")
        kept.chmod(0o664)
        sidecars.atomic_write_text(kept, "new\n")
        assert kept.stat().st_mode & 0o777 == 0o664  # a replaced file keeps its permissions
    finally:
        os.umask(old_umask)


def test_split_caption():
    assert split_caption("a, b ,c\n", ", ") == ["a", "b", "c"]
    assert split_caption("a b  c", " ") == ["a", "b", "c"]


class SlowSquare:
    """Picklable loader that fails on names containing 'bad'."""

    def __call__(self, path):
        if "bad" in path.name:
            raise ImageLoadError("broken on purpose")
        return np.full((2, 2, 3), len(path.name), np.uint8), (2, 2)


@pytest.mark.parametrize("workers", [0, 2])
def test_pipeline_order_errors_and_batches(workers):
    paths = [Path(f"img{i:02d}{'bad' if i % 7 == 3 else ''}.png") for i in range(23)]
    loaded = list(iter_loaded(paths, SlowSquare(), workers=workers, prefetch=3))
    assert [i.path for i in loaded] == paths
    assert [i.error for i in loaded if i.error] == ["broken on purpose"] * 3  # img03, img10, img17
    seen = []

    def process(batch):
        seen.append(len(batch))
        return [None if i % 2 else "write failed" for i in range(len(batch))]

    summary = run_batches(paths, SlowSquare(), process, batch_size=5, workers=workers, summary=RunSummary(),
                          progress=False)
    assert seen == [5, 5, 5, 5] and summary.done + summary.failed == 23
    assert summary.failed == 3 + 4 * 3  # 3 unreadable, and 3 of every 5 written "failed"
    assert "failed 15" in summary.lines()[0] and "broken on purpose" in "\n".join(summary.lines())


def test_ctrl_c_stops_cleanly_without_half_written_files(tmp_path, model_dir):
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    base = Image.fromarray(rng.integers(0, 255, (600, 800, 3), dtype=np.uint8))
    for i in range(80):
        base.save(data / f"img{i:03d}.png", compress_level=1)
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.Popen([sys.executable, str(SCRIPT), str(data), "--repo_id", "org/tiny", "--model_dir",
                             str(model_dir), "--max_data_loader_n_workers", "1"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and not list(data.glob("*.txt")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in out
    written = list(data.glob("*.txt"))
    assert 0 < len(written) < 80
    assert not [p for p in data.iterdir() if p.name.startswith(".")]  # no temp files
    for p in written:
        assert p.read_text().endswith("\n")


def _fresh_python(code: str, **env) -> list[str]:
    """Run `code` in a new interpreter without OpenMP settings (plus `env`); its stdout split into words."""
    clean = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "KMP_BLOCKTIME")}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**clean, **env}, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def test_openmp_spinning_is_limited_before_torch_loads():
    probe = ("import os\n{pre}\nfrom library.run.runtime import limit_openmp_spinning\n"
             "print(limit_openmp_spinning(), os.environ.get('GOMP_SPINCOUNT'), os.environ.get('KMP_BLOCKTIME'))\n")
    assert _fresh_python(probe.format(pre="")) == ["True", "1000", "1"]
    assert _fresh_python(probe.format(pre=""), GOMP_SPINCOUNT="50000") == ["True", "50000", "1"]  # the user's wins
    assert _fresh_python(probe.format(pre="import torch")) == ["False", "None", "None"]  # too late: left alone
    # every script goes through cli.run_script, which sets them before any model library loads
    script = ("import argparse, os, sys\nfrom finetune import cli\n"
              "main = lambda args: print(os.environ.get('GOMP_SPINCOUNT'), 'torch' in sys.modules) or 0\n"
              "sys.exit(cli.run_script(main, argparse.ArgumentParser(), argv=[]))\n")
    assert _fresh_python(script) == ["1000", "False"]


def test_write_captions_in_parallel_keeps_order_and_reports_each_failure(tmp_path):
    from library.files.sidecars import write_captions

    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")
    items = [(tmp_path / f"c{i}.txt", f"caption {i}") for i in range(20)]
    items.insert(7, (blocker / "bad.txt", "never written"))  # its parent is a file: this one fails
    errors = write_captions(items)
    assert len(errors) == 21 and errors[:7] == [None] * 7 and errors[8:] == [None] * 13
    assert errors[7].startswith(f"cannot write {blocker / 'bad.txt'}: ")
    for i in range(20):
        assert (tmp_path / f"c{i}.txt").read_text() == f"caption {i}\n"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_write_captions_shared_target_last_one_wins(tmp_path):
    from library.files.sidecars import write_captions

    target = tmp_path / "a.txt"  # a.png and a.jpg share it
    items = [(tmp_path / f"x{i}.txt", "x") for i in range(6)] + [(target, "from a.png"), (target, "from a.jpg")]
    for _ in range(5):
        assert write_captions(items) == [None] * 8
        assert target.read_text() == "from a.jpg\n"
