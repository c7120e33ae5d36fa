"""ONNX Runtime sessions: execution provider choice by device, GPU detection, and a loud warning on CPU fallback."""

from __future__ import annotations

import ctypes
import logging
import os
import sys
from pathlib import Path

import numpy as np

from library.errors import FatalError

logger = logging.getLogger(__name__)

TENSORRT_CACHE = "tensorrt_cache"  # folder beside the model for TensorRT engines

# preference order when --device auto
PROVIDER_ORDER = (
    "CUDAExecutionProvider",
    "ROCMExecutionProvider",
    "DmlExecutionProvider",
    "CoreMLExecutionProvider",
    "OpenVINOExecutionProvider",
    "CPUExecutionProvider",
)
DEVICE_PROVIDERS = {
    "cuda": "CUDAExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "dml": "DmlExecutionProvider",
    "directml": "DmlExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "cpu": "CPUExecutionProvider",
}


class ProviderError(FatalError):
    """The requested device cannot be used; the message says what to install or choose instead."""


def cuda_device_count() -> int:
    """Number of CUDA devices the NVIDIA driver reports (0 without a driver), without importing torch."""
    names = {"win32": ["nvcuda.dll"], "darwin": []}.get(sys.platform, ["libcuda.so.1", "libcuda.so"])
    for name in names:
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        count = ctypes.c_int(0)
        try:
            if lib.cuInit(0) != 0 or lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
                return 0
        except AttributeError:
            return 0
        return count.value
    return 0


def parse_device(device: str | None) -> tuple[str, int]:
    """'auto', 'cpu', 'cuda', 'cuda:1', 'rocm', 'dml:0', ... -> (kind, index)."""
    device = (device or "auto").strip().lower()
    kind, _, index = device.partition(":")
    if kind != "auto" and kind not in DEVICE_PROVIDERS:
        raise ProviderError(f"--device {device!r}: choose auto, cpu, cuda[:N], rocm[:N], dml[:N], coreml, openvino "
                            "or tensorrt[:N]")
    try:
        return kind, int(index) if index else 0
    except ValueError:
        raise ProviderError(f"--device {device!r}: the part after ':' must be a device number") from None


def choose_providers(device: str | None, available: list[str], cache_dir: str | os.PathLike | None = None,
                     fp16: bool = False) -> list:
    """Provider list for InferenceSession: the requested one (or the best present one) then CPU.

    Args:
        cache_dir: where TensorRT keeps its engine and timing caches (built once, reused by later runs).
        fp16: let TensorRT build float16 engines.
    """
    kind, index = parse_device(device)
    if kind == "auto":
        chosen = []
        for name in PROVIDER_ORDER:
            if name not in available:
                continue
            if name == "CUDAExecutionProvider" and cuda_device_count() == 0:
                continue  # GPU build installed on a machine without an NVIDIA GPU: plain CPU, no scary errors
            if name == "OpenVINOExecutionProvider":
                continue  # OpenVINO's CPU path brings no gain over ORT's own; ask for it with --device openvino
            chosen.append(name)
        return _with_options(chosen or ["CPUExecutionProvider"], 0, cache_dir, fp16)
    provider = DEVICE_PROVIDERS[kind]
    if provider not in available:
        raise ProviderError(
            f"--device {kind}: ONNX Runtime here has no {provider} (available: {', '.join(available)}). "
            + ("Install onnxruntime-gpu matching your CUDA version, or use --device cpu."
               if kind in ("cuda", "tensorrt") else "Install the ONNX Runtime build for that device, or use --device cpu."))
    names = [provider]
    if provider == "TensorrtExecutionProvider" and "CUDAExecutionProvider" in available:
        names.append("CUDAExecutionProvider")  # nodes TensorRT cannot take run on CUDA, not on the CPU
    if provider != "CPUExecutionProvider":
        names.append("CPUExecutionProvider")
    return _with_options(names, index, cache_dir, fp16)


def tensorrt_options(index: int, cache_dir: str | os.PathLike | None, fp16: bool) -> dict:
    """TensorRT provider options: engines and timing caches kept on disk, so only the first run builds them."""
    options = {"device_id": index, "trt_fp16_enable": bool(fp16)}
    if cache_dir is not None:
        cache = str(Path(cache_dir))
        options.update(trt_engine_cache_enable=True, trt_engine_cache_path=cache,
                       trt_timing_cache_enable=True, trt_timing_cache_path=cache)
    return options


def _with_options(names: list[str], index: int, cache_dir=None, fp16: bool = False) -> list:
    out = []
    for name in names:
        if name == "TensorrtExecutionProvider":
            out.append((name, tensorrt_options(index, cache_dir, fp16)))
        elif name in ("CUDAExecutionProvider", "ROCMExecutionProvider", "DmlExecutionProvider"):
            out.append((name, {"device_id": index}))
        else:
            out.append(name)
    return out


def _name(provider) -> str:
    return provider[0] if isinstance(provider, tuple) else provider


def create_session(model_path: str | os.PathLike, device: str | None = "auto", fp16: bool = False):
    """An InferenceSession on the best or requested device; warns loudly when a GPU was wanted but CPU runs.

    Args:
        model_path: the .onnx file.
        device: auto, cpu, cuda[:N], rocm[:N], dml[:N], coreml, openvino, tensorrt[:N].
        fp16: TensorRT builds float16 engines (other providers run the model as it is).
    """
    import onnxruntime as ort

    available = ort.get_available_providers()
    engine_cache = Path(model_path).parent / TENSORRT_CACHE
    providers = choose_providers(device, available, engine_cache, fp16)
    if any(_name(p) == "TensorrtExecutionProvider" for p in providers):
        engine_cache.mkdir(exist_ok=True)
        logger.info("TensorRT: the first run builds an engine for each batch shape (minutes); later runs load it "
                    "from %s", engine_cache)
    wanted_gpu = [_name(p) for p in providers if _name(p) != "CPUExecutionProvider"]
    if "CUDAExecutionProvider" in wanted_gpu:
        preload_cuda_libraries(ort)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    # idle ONNX Runtime threads would spin between batches, taking CPU from the decode workers
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(model_path), sess_options=options, providers=providers)
    active = session.get_providers()
    if wanted_gpu and wanted_gpu[0] not in active:
        logger.warning(
            "\n" + "!" * 78 + "\n"
            f"  {wanted_gpu[0]} could not be loaded: ONNX Runtime is running on the CPU (much slower).\n"
            "  Usual cause: onnxruntime-gpu built for another CUDA/cuDNN major version\n"
            f"  (onnxruntime {ort.__version__}). Install the matching CUDA and cuDNN, or `pip install torch` with\n"
            "  the same CUDA major version, or pass --device cpu to silence this warning.\n" + "!" * 78)
    else:
        logger.info("ONNX Runtime providers: %s", ", ".join(active))
    return session


NVIDIA_LIBRARIES = ("cuda_runtime", "cublas", "cufft", "curand", "cudnn", "nvjitlink")  # load order matters


def nvidia_wheel_libraries(site_dirs: list[str] | None = None) -> list[Path]:
    """The shared libraries of the nvidia-* pip wheels (site-packages/nvidia/<name>/lib), in dependency order."""
    import site
    import sysconfig

    dirs = site_dirs if site_dirs is not None else [sysconfig.get_paths()["purelib"], *site.getsitepackages()]
    found: list[Path] = []
    for name in NVIDIA_LIBRARIES:
        for base in dict.fromkeys(dirs):
            lib = Path(base) / "nvidia" / name / "lib"
            found += sorted(p for p in lib.glob("*.so*") if p.is_file()) if lib.is_dir() else []
    return found


def preload_cuda_libraries(ort, site_dirs: list[str] | None = None, use_torch: bool = True) -> str:
    """Make CUDA/cuDNN loadable for the CUDA provider before the session is created; returns how.

    onnxruntime-gpu >= 1.21 has preload_dlls() (the nvidia-* wheels torch installs). Older builds, such as the
    kohya_ss GUI's 1.19, do not: then torch is imported when it is installed (it loads those libraries, as
    sd-scripts' tagger does by importing torch first), else the wheels' libraries are loaded by path.
    """
    if hasattr(ort, "preload_dlls"):
        try:
            ort.preload_dlls()
            return "onnxruntime.preload_dlls()"
        except Exception:  # noqa: BLE001 - best effort; the fallback check reports the outcome
            return "preload_dlls() failed"
    import importlib.util

    if use_torch and importlib.util.find_spec("torch") is not None:
        try:
            import torch  # noqa: F401 - loads the CUDA libraries of its nvidia-* wheels into the process
            logger.info("onnxruntime %s has no preload_dlls(): CUDA libraries loaded through torch", ort.__version__)
            return "torch"
        except Exception as exc:  # noqa: BLE001
            logger.info("importing torch to load the CUDA libraries failed: %s", exc)
    loaded = 0
    for lib in nvidia_wheel_libraries(site_dirs):
        try:
            ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
            loaded += 1
        except OSError as exc:
            logger.debug("could not load %s: %s", lib, exc)
    logger.info("onnxruntime %s has no preload_dlls(): loaded %d CUDA libraries of the nvidia-* wheels by path",
                ort.__version__, loaded)
    return f"nvidia wheels ({loaded} loaded)"


class OnnxRunner:
    """A session plus its input name and shape (None for symbolic dimensions); `run` returns one output.

    That output is the first one unless `select_output` names another (PixAI's 'prediction', Camie's refined logits).

    On a GPU provider the batch goes through IO binding: the input is copied to the device once and only the
    first output comes back, instead of every output the graph declares.
    """

    def __init__(self, model_path: str | os.PathLike, device: str | None = "auto", fp16: bool = False,
                 io_binding: bool | None = None):
        self.session = create_session(model_path, device, fp16)
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.input_shape = [d if isinstance(d, int) and d > 0 else None for d in inp.shape]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.select_output(0)
        self.provider = self.session.get_providers()[0]
        self.on_gpu = self.provider != "CPUExecutionProvider"
        self.io_binding = self.on_gpu if io_binding is None else io_binding

    def select_output(self, which: int | str) -> None:
        """Make `run` return the output of this index or name."""
        output = self.session.get_outputs()[which if isinstance(which, int) else self.output_names.index(which)]
        self.output_name = output.name
        self.output_size = output.shape[-1] if output.shape and isinstance(output.shape[-1], int) else None

    def run(self, x: np.ndarray) -> np.ndarray:
        if not self.io_binding:
            return self.session.run([self.output_name], {self.input_name: x})[0]
        binding = self.session.io_binding()
        binding.bind_cpu_input(self.input_name, np.ascontiguousarray(x))
        binding.bind_output(self.output_name, "cpu")
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]
