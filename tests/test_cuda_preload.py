"""CUDA libraries for onnxruntime-gpu builds without preload_dlls() (the kohya_ss GUI's 1.19): torch, or the wheels."""

import logging
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from library.backends.onnx_runtime import nvidia_wheel_libraries, preload_cuda_libraries

OLD_ORT = SimpleNamespace(__version__="1.19.2")  # what matters of onnxruntime 1.19: no preload_dlls attribute


def test_new_onnxruntime_uses_its_own_preload():
    calls = []
    assert preload_cuda_libraries(SimpleNamespace(__version__="1.31", preload_dlls=lambda: calls.append(1))) \
        == "onnxruntime.preload_dlls()" and calls == [1]


def test_old_onnxruntime_loads_them_through_torch(caplog):
    pytest.importorskip("torch")
    with caplog.at_level(logging.INFO):
        assert preload_cuda_libraries(OLD_ORT) == "torch"
    assert "onnxruntime 1.19.2 has no preload_dlls(): CUDA libraries loaded through torch" in caplog.text


def test_without_torch_the_wheel_libraries_are_loaded_by_path(tmp_path, caplog):
    real = next((p for p in Path("/usr/lib/x86_64-linux-gnu").glob("libz.so.1*") if p.is_file()), None) \
        or next((p for p in Path("/lib").rglob("libz.so.1*") if p.is_file()), None)
    if real is None:
        pytest.skip("no libz to stand in for a CUDA library")
    for name, files in (("cudnn", ["libcudnn.so.9"]), ("cublas", ["libcublasLt.so.12", "libcublas.so.12"]),
                        ("cuda_runtime", ["libcudart.so.12"])):
        lib = tmp_path / "nvidia" / name / "lib"
        lib.mkdir(parents=True)
        for f in files:
            shutil.copy(real, lib / f)
    (tmp_path / "nvidia" / "cublas" / "lib" / "README").write_text("not a library")
    found = nvidia_wheel_libraries([str(tmp_path)])
    assert [p.name for p in found] == ["libcudart.so.12", "libcublas.so.12", "libcublasLt.so.12", "libcudnn.so.9"]
    with caplog.at_level(logging.INFO):
        assert preload_cuda_libraries(OLD_ORT, [str(tmp_path)], use_torch=False) == "nvidia wheels (4 loaded)"
    assert "loaded 4 CUDA libraries of the nvidia-* wheels by path" in caplog.text
