"""WD tagger models (SmilingWolf layout and cl_tagger tag_mapping.json layout) on ONNX Runtime."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from library.errors import FatalError
from library.backends.hub_files import ModelLocation, ModelNotAvailable, download_files, locate_model, missing_files
from library.backends.onnx_fp16 import float16_model
from library.backends.onnx_runtime import OnnxRunner
from library.taggers.preprocess import cl_input, wd_input
from library.taggers.labels import TagLabels, load_selected_tags_csv, load_tag_mapping_json

logger = logging.getLogger(__name__)

DEFAULT_REPO_ID = "SmilingWolf/wd-v1-4-convnext-tagger-v2"
CSV_FILE = "selected_tags.csv"
JSON_FILE = "tag_mapping.json"
WD_ONNX = "model.onnx"
CL_ONNX_NAMES = ("model_optimized.onnx", "model.onnx")
SAVED_MODEL_FILES = ("saved_model.pb", "variables/variables.index", "variables/variables.data-00000-of-00001")
DEFAULT_IMAGE_SIZE = 448


@dataclass(frozen=True)
class TaggerFiles:
    """The files of one tagger on disk: its layout ('wd' or 'cl'), model file and label file."""

    layout: str
    model: Path
    labels: Path
    backend: str = "onnx"


def _is_cl_layout(location: ModelLocation) -> bool:
    if location.subfolder:
        return True
    return (location.folder / JSON_FILE).is_file() and not (location.folder / CSV_FILE).is_file()


def ensure_tagger_files(location: ModelLocation, force_download: bool = False, backend: str = "auto") -> TaggerFiles:
    """Make sure every file the tagger needs is present (checking files, not the folder), downloading what is not.

    Args:
        backend: 'onnx', 'tensorflow' (legacy v2 SavedModel), or 'auto': ONNX whenever model.onnx is there or
            can be downloaded, the SavedModel when the folder holds only that.
    """
    folder = location.folder
    if _is_cl_layout(location):
        onnx_name = next((n for n in CL_ONNX_NAMES if (folder / n).is_file()), None)
        if force_download or missing_files(folder, [JSON_FILE]):
            download_files(location, [JSON_FILE], force=force_download)
        if force_download or onnx_name is None:
            onnx_name = _download_first_available(location, CL_ONNX_NAMES, force_download)
        return TaggerFiles("cl", folder / onnx_name, folder / JSON_FILE)

    has_saved_model = not missing_files(folder, SAVED_MODEL_FILES)
    use_tf = backend == "tensorflow" or (
        backend == "auto" and has_saved_model and not (folder / WD_ONNX).is_file() and not force_download)
    wanted = [CSV_FILE] + (list(SAVED_MODEL_FILES) if use_tf else [WD_ONNX])
    todo = wanted if force_download else missing_files(folder, wanted)
    if todo and location.repo_id is None:
        hint = (" It holds a TensorFlow SavedModel: run with --backend tensorflow."
                if has_saved_model and not use_tf else "")
        raise ModelNotAvailable(f"{folder}: missing {', '.join(todo)}.{hint}")
    if todo:
        try:
            download_files(location, todo, force=force_download)
        except FileNotFoundError as exc:
            if use_tf or backend == "onnx":
                raise ModelNotAvailable(f"{exc}; choose another --repo_id or --backend") from None
            logger.warning("%s; falling back to its TensorFlow SavedModel", exc)
            return ensure_tagger_files(location, force_download, backend="tensorflow")
    if use_tf:
        return TaggerFiles("wd", folder, folder / CSV_FILE, backend="tensorflow")
    return TaggerFiles("wd", folder / WD_ONNX, folder / CSV_FILE)


def _download_first_available(location: ModelLocation, names, force: bool) -> str:
    for name in names:
        try:
            download_files(location, [name], force=force)
            return name
        except FileNotFoundError:
            continue
    raise ModelNotAvailable(f"{location.repo_id}/{location.subfolder}: none of {', '.join(names)} found on the hub")


class WDTagger:
    """A loaded tagger: input size and fixed batch read from the model, `predict` returns probabilities."""

    def __init__(self, files: TaggerFiles, device: str | None = "auto", fp16: bool = False):
        self.files = files
        self.fp16 = fp16
        self.layout = files.layout
        self.labels: TagLabels = (load_tag_mapping_json(files.labels) if self.layout == "cl"
                                  else load_selected_tags_csv(files.labels))
        if files.backend == "tensorflow":
            if fp16:
                raise FatalError("--fp16 needs an ONNX model; this one is a TensorFlow SavedModel "
                                 "(run without --fp16, or with --backend onnx)")
            from library.backends.tf_savedmodel import SavedModelRunner

            self.runner = SavedModelRunner(files.model)
        else:
            self.runner = OnnxRunner(float16_model(files.model) if fp16 else files.model, device, fp16=fp16)
        self.on_gpu = bool(getattr(self.runner, "on_gpu", False))
        # TensorRT builds one engine per input shape: keep every batch the shape of the first one
        self.pad_batches = getattr(self.runner, "provider", "") == "TensorrtExecutionProvider"
        self._largest_batch = 0
        shape = self.runner.input_shape
        if len(shape) != 4:
            raise ModelNotAvailable(f"{files.model}: expected a 4-D image input, got shape {shape}")
        self.image_size = (shape[2] if self.layout == "cl" else shape[1]) or DEFAULT_IMAGE_SIZE
        self.fixed_batch = shape[0]
        n_out = getattr(self.runner, "output_size", None)
        if n_out is not None and n_out != len(self.labels):
            raise ModelNotAvailable(f"{files.model}: the model has {n_out} outputs but {files.labels.name} lists "
                                    f"{len(self.labels)} tags; the two files do not belong together "
                                    "(re-download with --force_download)")

    @classmethod
    def from_repo(cls, repo_id: str, model_dir: str, force_download: bool = False,
                  device: str | None = "auto", backend: str = "auto", fp16: bool = False) -> "WDTagger":
        """Locate (and download if needed) the model named by --repo_id/--model_dir, then load it."""
        files = ensure_tagger_files(locate_model(repo_id, model_dir), force_download, backend)
        try:
            return cls(files, device, fp16)
        except FatalError:
            raise
        except Exception as exc:  # a damaged or truncated .onnx file
            if "onnxruntime" in type(exc).__module__ or "protobuf" in str(exc).lower():
                raise ModelNotAvailable(f"{files.model}: cannot be loaded ({exc}); the file may be damaged - "
                                        "run again with --force_download") from None
            raise

    def predict(self, batch_rgb: np.ndarray) -> np.ndarray:
        """NHWC uint8 RGB squares of the model's size -> (N, tags) float32 probabilities."""
        x = cl_input(batch_rgb) if self.layout == "cl" else wd_input(batch_rgb)
        n = x.shape[0]
        if self.fixed_batch and n != self.fixed_batch:
            outs = [self._run_fixed(x[i:i + self.fixed_batch]) for i in range(0, n, self.fixed_batch)]
            probs = np.concatenate(outs, axis=0)[:n]
        elif self.pad_batches:
            self._largest_batch = max(self._largest_batch, n)
            probs = self._run_padded(x, self._largest_batch)
        else:
            probs = self.runner.run(x)
        probs = np.asarray(probs, dtype=np.float32).reshape(n, -1)
        if self.layout == "cl":
            probs = 1.0 / (1.0 + np.exp(-probs))
        return probs

    def _run_fixed(self, x: np.ndarray) -> np.ndarray:
        return self._run_padded(x, self.fixed_batch)

    def _run_padded(self, x: np.ndarray, batch: int) -> np.ndarray:
        real = x.shape[0]
        if real < batch:
            pad = np.zeros((batch - real,) + x.shape[1:], dtype=x.dtype)
            x = np.concatenate([x, pad], axis=0)
        return self.runner.run(x)[:real]
