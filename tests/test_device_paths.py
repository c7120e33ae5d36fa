"""GPU-side options exercised on the CPU: float16 conversion, TensorRT options and engine cache, IO binding, batch sizing."""

import logging
import os
import shutil
import sys

import numpy as np
import pytest
from PIL import Image

from library.backends.gpu_memory import (CPU_BATCH, GPU_DEFAULT_BATCH, GPU_MAX_BATCH, free_gpu_memory,
                                         tagger_batch_size, visible_device)
from library.errors import FatalError
from library.backends.onnx_fp16 import float16_model, fp16_path
from library.backends.onnx_runtime import OnnxRunner, choose_providers, create_session, cuda_device_count
from library.taggers.wd import WDTagger
from tests.conftest import SCRIPT, run_script

pytest.importorskip("onnx")


@pytest.fixture()
def tiny_copy(tmp_path, model_dir):
    """A private copy of the tiny SmilingWolf-layout model (the fp16 copy and caches are written beside it)."""
    folder = tmp_path / "models" / "org_tiny"
    shutil.copytree(model_dir / "org_tiny", folder)
    return folder


def batch(n: int, size: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_fp16_conversion_is_cached_and_close_to_float32(tiny_copy):
    import onnx

    source = tiny_copy / "model.onnx"
    converted = float16_model(source)
    assert converted == fp16_path(source) == tiny_copy / "model_fp16.onnx"
    model = onnx.load(str(converted))
    # weights are float16, the graph's input and output stay float32
    assert any(init.data_type == onnx.TensorProto.FLOAT16 for init in model.graph.initializer)
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    stamp = converted.stat().st_mtime_ns
    assert float16_model(source) == converted and converted.stat().st_mtime_ns == stamp  # cached, not redone
    assert not [p.name for p in tiny_copy.iterdir() if p.name.endswith(".tmp")]

    from library.taggers.wd import ensure_tagger_files
    from library.backends.hub_files import locate_model
    files = ensure_tagger_files(locate_model(str(tiny_copy), "unused"))
    full, half = WDTagger(files, "cpu"), WDTagger(files, "cpu", fp16=True)
    x = batch(6)
    p32, p16 = full.predict(x), half.predict(x)
    assert p16.dtype == np.float32 and p16.shape == p32.shape
    assert np.abs(p16 - p32).max() < 5e-3
    assert not np.array_equal(p16, p32)  # the float16 model really ran


def test_fp16_redone_when_the_model_changes(tiny_copy):
    source = tiny_copy / "model.onnx"
    converted = float16_model(source)
    first = converted.stat()
    later = first.st_mtime + 10
    os.utime(source, (later, later))  # a re-downloaded model.onnx, newer than its float16 copy
    assert float16_model(source) == converted
    assert converted.stat().st_ino != first.st_ino  # converted again and renamed into place


def test_fp16_without_onnx_says_what_to_install(tiny_copy, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # as if the package were not installed
    with pytest.raises(FatalError, match="pip install onnx"):
        float16_model(tiny_copy / "model.onnx")


def test_tagger_script_fp16_writes_the_same_tags(tmp_path, tiny_copy):
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(3)
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (40 + i, 52, 3), dtype=np.uint8)).save(data / f"img{i}.png")
    models = tiny_copy.parent
    out32, out16 = tmp_path / "out32", tmp_path / "out16"
    common = ["--repo_id", "org/tiny", "--model_dir", models, "--device", "cpu", "--thresh", "0.5", "--no_progress"]
    r32 = run_script(SCRIPT, data, *common, "--output_dir", out32, cwd=tmp_path)
    r16 = run_script(SCRIPT, data, *common, "--output_dir", out16, "--fp16", cwd=tmp_path)
    assert r32.returncode == 0 and r16.returncode == 0, r16.stderr
    assert (tiny_copy / "model_fp16.onnx").is_file()
    for i in range(5):
        assert (out16 / f"img{i}.txt").read_text() == (out32 / f"img{i}.txt").read_text()


def test_tensorrt_options_cache_engines_beside_the_model(tmp_path):
    available = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    providers = choose_providers("tensorrt:1", available, cache_dir=tmp_path / "tensorrt_cache", fp16=True)
    assert [p[0] if isinstance(p, tuple) else p for p in providers] == available
    name, options = providers[0]
    assert options["device_id"] == 1 and options["trt_fp16_enable"] is True
    assert options["trt_engine_cache_enable"] is True
    assert options["trt_engine_cache_path"] == options["trt_timing_cache_path"] == str(tmp_path / "tensorrt_cache")
    assert providers[1] == ("CUDAExecutionProvider", {"device_id": 1})
    # auto never picks TensorRT on its own: engine builds take minutes, so it is asked for by name
    auto = choose_providers("auto", ["TensorrtExecutionProvider", "CPUExecutionProvider"])
    assert auto == ["CPUExecutionProvider"]


def test_tensorrt_device_without_a_gpu_falls_back_loudly(tiny_copy, caplog):
    import onnxruntime as ort
    if "TensorrtExecutionProvider" not in ort.get_available_providers():
        pytest.skip("this ONNX Runtime build has no TensorRT provider")
    if cuda_device_count():
        pytest.skip("a GPU is present")
    with caplog.at_level(logging.WARNING):
        session = create_session(tiny_copy / "model.onnx", "tensorrt")
    assert session.get_providers() == ["CPUExecutionProvider"]
    assert "TensorrtExecutionProvider could not be loaded" in caplog.text
    assert (tiny_copy / "tensorrt_cache").is_dir()


def test_io_binding_gives_the_same_output(tiny_copy):
    plain = OnnxRunner(tiny_copy / "model.onnx", "cpu")
    bound = OnnxRunner(tiny_copy / "model.onnx", "cpu", io_binding=True)
    assert not plain.io_binding and bound.io_binding  # on by default only on a GPU provider
    x = np.random.default_rng(1).uniform(0, 255, (3, 64, 64, 3)).astype(np.float32)
    np.testing.assert_array_equal(bound.run(x), plain.run(x))
    # a non-contiguous batch (a BGR view) is bound correctly too
    view = x[..., ::-1]
    np.testing.assert_array_equal(bound.run(view), plain.run(np.ascontiguousarray(view)))


def test_padded_batches_keep_one_shape_and_the_same_results(tiny_copy):
    from library.backends.hub_files import locate_model
    from library.taggers.wd import ensure_tagger_files

    tagger = WDTagger(ensure_tagger_files(locate_model(str(tiny_copy), "unused")), "cpu")
    expected = tagger.predict(batch(7))
    shapes = []
    run = tagger.runner.run
    tagger.runner.run = lambda x: shapes.append(x.shape[0]) or run(x)
    tagger.pad_batches = True  # as under TensorRT
    x = batch(7)
    got = np.concatenate([tagger.predict(x[:4]), tagger.predict(x[4:])])
    assert shapes == [4, 4]
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("on_gpu, size, free, fp16, expected", [
    (False, 448, None, False, CPU_BATCH),
    (True, 448, None, False, GPU_DEFAULT_BATCH),
    (True, 448, 80 * 1024 ** 3, False, GPU_MAX_BATCH),  # an 80 GB card: capped
    (True, 448, 4 * 1024 ** 3, False, 8),  # 4 GiB * 0.6 / 160 MiB = 15.36 -> 8 (powers of two)
    (True, 448, 4 * 1024 ** 3, True, 16),  # float16 halves the activations
    (True, 448, 8 * 1024 ** 3, False, 16),
    (True, 384, 4 * 1024 ** 3, False, 16),  # 384 px needs 0.73x the memory of 448 px
    (True, 448, 100 * 1024 ** 2, False, 1),  # almost full: one image at a time, never zero
])
def test_batch_size_sized_to_the_device(on_gpu, size, free, fp16, expected):
    assert tagger_batch_size(on_gpu, size, free, fp16) == expected


def test_visible_device_follows_cuda_visible_devices():
    assert visible_device(0, None) == 0 and visible_device(1, "") == 1
    assert visible_device(0, "2,3") == 2 and visible_device(1, "2, 3") == 3
    assert visible_device(2, "2,3") is None  # no such device
    assert visible_device(0, "GPU-8a6f1c2e") == "GPU-8a6f1c2e"  # UUIDs (or a prefix of one) are passed on
    assert visible_device(1, "3,MIG-4f2a") == "MIG-4f2a"
    assert visible_device(1, "0,-1,1") is None and visible_device(0, "-1") is None  # CUDA stops at -1


def nvidia_gpu_present() -> bool:
    pynvml = pytest.importorskip("pynvml")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return False
    count = pynvml.nvmlDeviceGetCount()
    pynvml.nvmlShutdown()
    return count > 0


def test_free_gpu_memory_without_nvidia_driver():
    if nvidia_gpu_present():
        pytest.skip("an NVIDIA GPU is present")
    assert free_gpu_memory(0) is None  # the real NVML binding, finding no driver


class StandInNVML:
    """Two GPUs as NVML reports them: only the NVML calls are stood in, for machines without an NVIDIA GPU."""

    class NVMLError(Exception):
        pass

    GPUS = [("GPU-8a6f1c2e-0000-1111-2222-333344445555", 10 * 1024 ** 3),
            ("GPU-9b70d3f4-6666-7777-8888-999900001111", 30 * 1024 ** 3)]

    def __init__(self):
        self.open = 0

    def nvmlInit(self):
        self.open += 1

    def nvmlShutdown(self):
        self.open -= 1

    def nvmlDeviceGetCount(self):
        return len(self.GPUS)

    def nvmlDeviceGetHandleByIndex(self, index):
        if not 0 <= index < len(self.GPUS):
            raise self.NVMLError("Invalid Argument")
        return index

    def nvmlDeviceGetHandleByUUID(self, uuid):
        for index, (known, _) in enumerate(self.GPUS):
            if known == uuid:
                return index
        raise self.NVMLError("Not Found")

    def nvmlDeviceGetUUID(self, handle):
        return self.GPUS[handle][0].encode()  # older nvidia-ml-py releases return bytes

    def nvmlDeviceGetMemoryInfo(self, handle):
        return type("Memory", (), {"free": self.GPUS[handle][1], "total": 80 * 1024 ** 3})()


@pytest.mark.parametrize("visible,index,expected", [
    (None, 1, 30), ("1,0", 0, 30), ("1,0", 1, 10),
    ("GPU-9b70d3f4-6666-7777-8888-999900001111", 0, 30),  # a full UUID
    ("GPU-8a6f1c2e", 0, 10), ("GPU-9b70,GPU-8a6f", 1, 10),  # unique prefixes, as CUDA accepts them
    ("GPU-", 0, None),  # a prefix of both GPUs: unknown
    ("GPU-ffff", 0, None), ("5", 0, None), ("0", 1, None),  # no such GPU
])
def test_uuids_in_cuda_visible_devices_find_their_gpu(monkeypatch, visible, index, expected):
    if nvidia_gpu_present():
        pytest.skip("an NVIDIA GPU is present: test_free_gpu_memory_by_uuid_on_a_real_gpu checks the real thing")
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    nvml = StandInNVML()
    free = free_gpu_memory(index, nvml=nvml)
    assert free == (expected * 1024 ** 3 if expected else None) and nvml.open == 0


def test_free_gpu_memory_by_uuid_on_a_real_gpu(monkeypatch):
    if not nvidia_gpu_present():
        pytest.skip("no NVIDIA GPU")
    import pynvml

    pynvml.nvmlInit()
    uuid = pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetHandleByIndex(0))
    pynvml.nvmlShutdown()
    uuid = uuid.decode() if isinstance(uuid, bytes) else uuid
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    by_index = free_gpu_memory(0)
    for visible in (uuid, uuid[:12]):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
        free = free_gpu_memory(0)
        assert free is not None and abs(free - by_index) < 512 * 1024 ** 2, visible


def test_script_sizes_the_batch_when_omitted(tmp_path, model_dir):
    data = tmp_path / "data"
    data.mkdir()
    for i in range(3):
        Image.new("RGB", (30, 20), (i * 40, 90, 200)).save(data / f"a{i}.png")
    r = run_script(SCRIPT, data, "--repo_id", "org/tiny", "--model_dir", model_dir, "--device", "cpu",
                   "--no_progress", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"batch size {CPU_BATCH} (CPU; --batch_size sets it)" in r.stderr
    assert len(list(data.glob("*.txt"))) == 3
    r = run_script(SCRIPT, data, "--repo_id", "org/tiny", "--model_dir", model_dir, "--device", "cpu",
                   "--batch_size", "2", "--no_progress", cwd=tmp_path)
    assert r.returncode == 0 and "batch size" not in r.stderr
