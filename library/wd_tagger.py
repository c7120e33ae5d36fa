"""WD tagger models (SmilingWolf layout and cl_tagger tag_mapping.json layout) on ONNX Runtime."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .model_files import ModelLocation, ModelNotAvailable, download_files, locate_model, missing_files
from .onnx_runtime import create_session
from .preprocess import cl_input, wd_input
from .tag_labels import TagLabels, load_selected_tags_csv, load_tag_mapping_json

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


def _is_cl_layout(location: ModelLocation) -> bool:
    if location.subfolder:
        return True
    return (location.folder / JSON_FILE).is_file() and not (location.folder / CSV_FILE).is_file()


def ensure_tagger_files(location: ModelLocation, force_download: bool = False) -> TaggerFiles:
    """Make sure every file the tagger needs is present (checking files, not the folder), downloading what is not."""
    folder = location.folder
    if _is_cl_layout(location):
        onnx_name = next((n for n in CL_ONNX_NAMES if (folder / n).is_file()), None)
        if force_download or missing_files(folder, [JSON_FILE]):
            download_files(location, [JSON_FILE], force=force_download)
        if force_download or onnx_name is None:
            onnx_name = _download_first_available(location, CL_ONNX_NAMES, force_download)
        return TaggerFiles("cl", folder / onnx_name, folder / JSON_FILE)

    wanted = [WD_ONNX, CSV_FILE]
    todo = wanted if force_download else missing_files(folder, wanted)
    if todo and location.repo_id is None:
        has_saved_model = not missing_files(folder, SAVED_MODEL_FILES)
        hint = (" It holds a TensorFlow SavedModel only: convert it or download model.onnx from the same repository."
                if has_saved_model else "")
        raise ModelNotAvailable(f"{folder}: missing {', '.join(todo)}.{hint}")
    if todo:
        try:
            download_files(location, todo, force=force_download)
        except FileNotFoundError as exc:
            raise ModelNotAvailable(f"{exc}; this repository has no ONNX model. Use a repository with model.onnx "
                                    "(e.g. SmilingWolf/wd-swinv2-tagger-v3)") from None
    return TaggerFiles("wd", folder / WD_ONNX, folder / CSV_FILE)


def _download_first_available(location: ModelLocation, names, force: bool) -> str:
    for name in names:
        try:
            download_files(location, [name], force=force)
            return name
        except FileNotFoundError:
            continue
    raise ModelNotAvailable(f"{location.repo_id}/{location.subfolder}: none of {', '.join(names)} found on the hub")


def _static_dim(value) -> int | None:
    return value if isinstance(value, int) and value > 0 else None


class WDTagger:
    """A loaded tagger: input size and fixed batch read from the model, `predict` returns probabilities."""

    def __init__(self, files: TaggerFiles, device: str | None = "auto"):
        self.files = files
        self.layout = files.layout
        self.labels: TagLabels = (load_tag_mapping_json(files.labels) if self.layout == "cl"
                                  else load_selected_tags_csv(files.labels))
        self.session = create_session(files.model, device)
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        shape = list(inp.shape)
        if len(shape) != 4:
            raise ModelNotAvailable(f"{files.model}: expected a 4-D image input, got shape {shape}")
        size_dim = shape[2] if self.layout == "cl" else shape[1]
        self.image_size = _static_dim(size_dim) or DEFAULT_IMAGE_SIZE
        self.fixed_batch = _static_dim(shape[0])
        outputs = self.session.get_outputs()
        n_out = outputs[0].shape[-1] if outputs and outputs[0].shape else None
        if isinstance(n_out, int) and n_out != len(self.labels):
            raise ModelNotAvailable(f"{files.model}: the model has {n_out} outputs but {files.labels.name} lists "
                                    f"{len(self.labels)} tags; the two files do not belong together "
                                    "(re-download with --force_download)")

    @classmethod
    def from_repo(cls, repo_id: str, model_dir: str, force_download: bool = False,
                  device: str | None = "auto") -> "WDTagger":
        """Locate (and download if needed) the model named by --repo_id/--model_dir, then load it."""
        files = ensure_tagger_files(locate_model(repo_id, model_dir), force_download)
        try:
            return cls(files, device)
        except ModelNotAvailable:
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
        else:
            probs = self.session.run(None, {self.input_name: x})[0]
        probs = np.asarray(probs, dtype=np.float32).reshape(n, -1)
        if self.layout == "cl":
            probs = 1.0 / (1.0 + np.exp(-probs))
        return probs

    def _run_fixed(self, x: np.ndarray) -> np.ndarray:
        real = x.shape[0]
        if real < self.fixed_batch:
            pad = np.zeros((self.fixed_batch - real,) + x.shape[1:], dtype=x.dtype)
            x = np.concatenate([x, pad], axis=0)
        return self.session.run(None, {self.input_name: x})[0][:real]
