"""Tagger models of every layout (WD, cl_tagger, PixAI, Camie v2) on ONNX Runtime: locate, download, load, predict."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from library.backends.hub_files import (ModelLocation, ModelNotAvailable, download_files, list_repo_files, locate_model,
                                        missing_files)
from library.backends.onnx_fp16 import float16_model
from library.backends.onnx_runtime import OnnxRunner
from library.backends.onnx_uint8 import InputSpec, uint8_model
from library.errors import FatalError
from library.taggers.labels import (TagLabels, load_camie_metadata, load_pixai_labels, load_selected_tags_csv,
                                    load_tag_mapping_json)
from library.taggers.layouts import (CL_ONNX_NAMES, CSV_FILE, JSON_FILE, LAYOUTS, PIXAI_PREPROCESS_NAMES,
                                     PIXAI_THRESHOLDS, SAVED_MODEL_FILES, WD_ONNX, camie_file_names, detect_layout,
                                     known_layouts_text, known_model)
from library.taggers.preprocess import (IMAGENET_TENSOR, FitPadImageLoader, SquareImageLoader, StagedImageLoader,
                                        cl_input, parse_preprocess_json, wd_input)

logger = logging.getLogger(__name__)

DEFAULT_REPO_ID = "SmilingWolf/wd-v1-4-convnext-tagger-v2"
DEFAULT_IMAGE_SIZE = 448
PIXAI_OUTPUT = "prediction"  # deepghs' export: outputs embedding, logits, prediction (sigmoid applied)
CAMIE_OUTPUT = "refined_predictions"  # else the second output: initial, then refined logits (no sigmoid)
NCHW_LAYOUTS = ("cl", "pixai", "camie")
LOGIT_LAYOUTS = ("cl", "camie")


@dataclass(frozen=True)
class TaggerFiles:
    """The files of one tagger on disk: its layout, model file, label file and the layout's extra files.

    Attributes:
        layout: 'wd', 'cl', 'pixai' or 'camie'.
        model: the .onnx file (the SavedModel folder for the TensorFlow backend).
        labels: selected_tags.csv, tag_mapping.json or Camie's metadata JSON.
        backend: 'onnx' or 'tensorflow'.
        preprocess: PixAI's preprocess.json.
        thresholds: PixAI's thresholds.csv (None when the model has none).
    """

    layout: str
    model: Path
    labels: Path
    backend: str = "onnx"
    preprocess: Path | None = None
    thresholds: Path | None = None


def _folder_files(folder: Path) -> list[str]:
    """Top-level file names of a model folder, plus a SavedModel's variables/ files."""
    names = []
    for sub in ("", "variables"):
        try:
            with os.scandir(folder / sub) as entries:
                names += [f"{sub}/{e.name}" if sub else e.name for e in entries
                          if e.is_file() and e.stat().st_size > 0]
        except OSError:
            continue
    return names


def _unknown_layout(folder: Path | str, names: list[str]) -> ModelNotAvailable:
    found = ", ".join(sorted(names)[:8]) + (", ..." if len(names) > 8 else "") if names else "no model files"
    return ModelNotAvailable(f"{folder}: not a tagger layout captionkit knows (found {found}). "
                             f"Known layouts and their files: {known_layouts_text()}")


def _hub_layout(location: ModelLocation) -> tuple[str, list[str] | None]:
    """Layout of a hub repo not on disk yet: the registry's, else from the repo's file list, else 'wd' (sd-scripts).

    Raises:
        ModelNotAvailable: the repo's file list matches no layout.
    """
    known = known_model(location.repo_id)
    if known:
        return known.layout, None
    listing = list_repo_files(location)
    if listing is None:  # offline or unreachable: the download reports it
        return "wd", None
    layout = detect_layout(listing)
    if layout is None:
        raise _unknown_layout(f"{location.repo_id} on the hub", listing)
    return layout, listing


def ensure_tagger_files(location: ModelLocation, force_download: bool = False, backend: str = "auto") -> TaggerFiles:
    """Make sure every file the tagger needs is present (checking files, not the folder), downloading what is not.

    The layout is detected from the folder's files; for a hub repo not downloaded yet, from the repo's file list
    (or the known-model registry). A local folder matching no layout gets one error listing the known layouts.

    Args:
        backend: 'onnx', 'tensorflow' (legacy v2 SavedModel), or 'auto': ONNX whenever model.onnx is there or
            can be downloaded, the SavedModel when the folder holds only that.
    """
    force_download = force_download and location.repo_id is not None  # a local folder has nothing to re-download
    if location.subfolder:
        return _ensure_cl(location, force_download)
    names = _folder_files(location.folder)
    layout, listing = detect_layout(names), None
    if layout is None and location.repo_id is None:
        raise _unknown_layout(location.folder, names)
    if layout is None:
        layout, listing = _hub_layout(location)
    if layout != "wd" and backend == "tensorflow":
        raise ModelNotAvailable(f"{location.folder}: --backend tensorflow runs only SmilingWolf's v2 SavedModels; "
                                f"this is a {LAYOUTS[layout].title} model")
    if layout == "cl":
        return _ensure_cl(location, force_download)
    if layout == "pixai":
        return _ensure_pixai(location, force_download)
    if layout == "camie":
        return _ensure_camie(location, force_download, listing or names)
    return _ensure_wd(location, force_download, backend)


def _fetch(location: ModelLocation, wanted: list[str], force_download: bool, layout: str) -> list[str]:
    """Download the `wanted` files that are missing (all of them with force_download); returns those fetched."""
    todo = wanted if force_download else missing_files(location.folder, wanted)
    if not todo:
        return []
    if location.repo_id is None:
        raise ModelNotAvailable(f"{location.folder}: missing {', '.join(todo)} (the {LAYOUTS[layout].title} layout "
                                f"needs {LAYOUTS[layout].files})")
    try:
        download_files(location, todo, force=force_download)
    except FileNotFoundError as exc:
        raise ModelNotAvailable(f"{exc}; the {LAYOUTS[layout].title} layout needs {LAYOUTS[layout].files}") from None
    return todo


def _ensure_cl(location: ModelLocation, force_download: bool) -> TaggerFiles:
    folder = location.folder
    onnx_name = next((n for n in CL_ONNX_NAMES if (folder / n).is_file()), None)
    if force_download or missing_files(folder, [JSON_FILE]):
        _fetch(location, [JSON_FILE], force_download, "cl")
    if force_download or onnx_name is None:
        onnx_name = _download_first_available(location, CL_ONNX_NAMES, force_download)
    return TaggerFiles("cl", folder / onnx_name, folder / JSON_FILE)


def _ensure_pixai(location: ModelLocation, force_download: bool) -> TaggerFiles:
    folder = location.folder
    fetched = _fetch(location, [WD_ONNX, CSV_FILE], force_download, "pixai")
    preprocess = next((n for n in PIXAI_PREPROCESS_NAMES if not missing_files(folder, [n])), None)
    if force_download or preprocess is None:
        preprocess = _download_first_available(location, PIXAI_PREPROCESS_NAMES, force_download, "pixai")
        fetched.append(preprocess)
    thresholds = folder / PIXAI_THRESHOLDS
    # optional: asked for along with the other files only, so a complete folder runs offline without it
    if force_download or (fetched and missing_files(folder, [PIXAI_THRESHOLDS])):
        try:
            download_files(location, [PIXAI_THRESHOLDS], force=force_download)
        except FileNotFoundError:
            logger.info("%s has no %s: per-category thresholds fall back to 0.4", location.repo_id, PIXAI_THRESHOLDS)
    return TaggerFiles("pixai", folder / WD_ONNX, folder / CSV_FILE, preprocess=folder / preprocess,
                       thresholds=thresholds if thresholds.is_file() else None)


def _ensure_camie(location: ModelLocation, force_download: bool, names: list[str]) -> TaggerFiles:
    model, metadata = camie_file_names(names)
    _fetch(location, [model, metadata], force_download, "camie")
    logger.info("Camie tagger v2 is licensed GPL-3.0 (https://huggingface.co/Camais03/camie-tagger-v2)")
    return TaggerFiles("camie", location.folder / model, location.folder / metadata)


def _ensure_wd(location: ModelLocation, force_download: bool, backend: str) -> TaggerFiles:
    folder = location.folder
    has_saved_model = not missing_files(folder, SAVED_MODEL_FILES)
    use_tf = backend == "tensorflow" or (
        backend == "auto" and has_saved_model and not (folder / WD_ONNX).is_file() and not force_download)
    wanted = [CSV_FILE] + (list(SAVED_MODEL_FILES) if use_tf else [WD_ONNX])
    todo = wanted if force_download else missing_files(folder, wanted)
    if todo and location.repo_id is None:
        hint = (" It holds a TensorFlow SavedModel: run with --backend tensorflow."
                if has_saved_model and not use_tf else f" Known layouts and their files: {known_layouts_text()}")
        raise ModelNotAvailable(f"{folder}: missing {', '.join(todo)}.{hint}")
    if todo:
        try:
            download_files(location, todo, force=force_download)
        except FileNotFoundError as exc:
            if use_tf or backend == "onnx":
                raise ModelNotAvailable(f"{exc}; choose another --repo_id or --backend") from None
            logger.warning("%s; falling back to its TensorFlow SavedModel", exc)
            return _ensure_wd(location, force_download, backend="tensorflow")
    if use_tf:
        return TaggerFiles("wd", folder, folder / CSV_FILE, backend="tensorflow")
    return TaggerFiles("wd", folder / WD_ONNX, folder / CSV_FILE)


def _download_first_available(location: ModelLocation, names, force: bool, layout: str = "cl") -> str:
    if location.repo_id is None:
        raise ModelNotAvailable(f"{location.folder}: missing {' or '.join(names)} (the {LAYOUTS[layout].title} "
                                f"layout needs {LAYOUTS[layout].files})")
    for name in names:
        try:
            download_files(location, [name], force=force)
            return name
        except FileNotFoundError:
            continue
    where = f"{location.repo_id}/{location.subfolder}" if location.subfolder else location.repo_id
    raise ModelNotAvailable(f"{where}: none of {', '.join(names)} found on the hub")


def _load_labels(files: TaggerFiles) -> tuple[TagLabels, int | None]:
    """The tag labels of the model, and the image size its label file names (Camie), else None."""
    try:
        if files.layout == "cl":
            return load_tag_mapping_json(files.labels), None
        if files.layout == "camie":
            return load_camie_metadata(files.labels)
        if files.layout == "pixai":
            return load_pixai_labels(files.labels, files.thresholds), None
        return load_selected_tags_csv(files.labels), None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelNotAvailable(f"{exc}" if str(files.labels) in str(exc) else f"{files.labels}: {exc}") from None


class WDTagger:
    """A loaded tagger of any layout: input size and fixed batch read from the model, `predict` returns probabilities.

    Attributes:
        layout: 'wd', 'cl', 'pixai' or 'camie'.
        labels: the tags, with `labels.default_thresholds` (the model's own per-category thresholds, PixAI) that
            TagSelector applies to every category the user gave no threshold for.
        image_size: the side of the square the model takes.
        fixed_batch: the model's fixed batch size, or None when dynamic.
    """

    def __init__(self, files: TaggerFiles, device: str | None = "auto", fp16: bool = False,
                 uint8_input: bool = True):
        self.files = files
        self.fp16 = fp16
        self.takes_uint8 = False  # the session's model takes the workers' uint8 RGB as is (no float32 on the CPU)
        self.layout = files.layout
        self.labels, label_size = _load_labels(files)
        self._staged = parse_preprocess_json_or_fail(files.preprocess) if files.preprocess else None
        if files.backend == "tensorflow":
            if fp16:
                raise FatalError("--fp16 needs an ONNX model; this one is a TensorFlow SavedModel "
                                 "(run without --fp16, or with --backend onnx)")
            from library.backends.tf_savedmodel import SavedModelRunner

            self.runner = SavedModelRunner(files.model)
        else:
            model = float16_model(files.model) if fp16 else files.model
            converted = uint8_model(model, self.input_spec) if uint8_input else None
            self.takes_uint8 = converted is not None
            self.runner = OnnxRunner(converted or model, device, fp16=fp16)
            self._select_output()
        self.on_gpu = bool(getattr(self.runner, "on_gpu", False))
        # TensorRT builds one engine per input shape: keep every batch the shape of the first one
        self.pad_batches = getattr(self.runner, "provider", "") == "TensorrtExecutionProvider"
        self._largest_batch = 0
        self.image_size, self.fixed_batch = self._input_geometry(label_size)
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

    @property
    def default_thresholds(self) -> dict[str, float]:
        """The model's own threshold per category (empty: --thresh's default 0.35 applies)."""
        return dict(self.labels.default_thresholds)

    def _select_output(self) -> None:
        names = self.runner.output_names
        if self.layout == "pixai":
            if PIXAI_OUTPUT not in names:
                raise ModelNotAvailable(f"{self.files.model}: no '{PIXAI_OUTPUT}' output (outputs: {', '.join(names)}); "
                                        "not a deepghs PixAI export")
            self.runner.select_output(PIXAI_OUTPUT)
        elif self.layout == "camie":
            self.runner.select_output(CAMIE_OUTPUT if CAMIE_OUTPUT in names else min(1, len(names) - 1))

    def _input_geometry(self, label_size: int | None) -> tuple[int, int | None]:
        shape = self.runner.input_shape
        if len(shape) != 4:
            raise ModelNotAvailable(f"{self.files.model}: expected a 4-D image input, got shape {shape}")
        nchw = self.layout in NCHW_LAYOUTS and not self.takes_uint8
        channels = shape[1] if nchw else shape[3]
        if channels not in (3, None):
            raise ModelNotAvailable(f"{self.files.model}: expected 3 colour channels "
                                    f"({'NCHW' if nchw else 'NHWC'}, the {LAYOUTS[self.layout].title} layout), "
                                    f"got input shape {shape}")
        size = (shape[2] if nchw else shape[1]) or label_size or DEFAULT_IMAGE_SIZE
        if self._staged is not None:
            if self._staged.output_size is None or self._staged.output_size != (size, size):
                made = "x".join(map(str, self._staged.output_size)) if self._staged.output_size else "variable-size"
                raise ModelNotAvailable(f"{self.files.preprocess}: its stages make {made} images but the model takes "
                                        f"{size}x{size}")
        return size, shape[0]

    def image_loader(self, fast_decode: bool = False):
        """The picklable per-image loader of this layout: path -> (uint8 RGB array of the model's size, file size)."""
        if self.layout == "camie":
            return FitPadImageLoader(self.image_size, fast_decode=fast_decode)
        if self._staged is not None:
            return StagedImageLoader(self._staged.geometry, self.image_size, fast_decode)
        return SquareImageLoader(self.image_size, fast_decode)

    @property
    def input_spec(self) -> InputSpec:
        """`_model_input` as the ops of a uint8-input model copy (library.backends.onnx_uint8), step for step."""
        if self.layout in ("wd", "cl"):
            return InputSpec(bgr=True, nchw=self.layout == "cl",
                             ops=(("div", 127.5), ("sub", 1.0)) if self.layout == "cl" else ())
        tensor = IMAGENET_TENSOR if self.layout == "camie" else self._staged.tensor
        return InputSpec(nchw=True, ops=tensor.onnx_ops())

    def _model_input(self, batch_rgb: np.ndarray) -> np.ndarray:
        if self.layout == "cl":
            return cl_input(batch_rgb)
        if self.layout == "camie":
            return IMAGENET_TENSOR(batch_rgb)
        if self._staged is not None:
            return self._staged.tensor(batch_rgb)
        return wd_input(batch_rgb)

    def predict(self, batch_rgb: np.ndarray) -> np.ndarray:
        """NHWC uint8 RGB images from `image_loader` -> (N, tags) float32 probabilities."""
        x = batch_rgb if self.takes_uint8 else self._model_input(batch_rgb)
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
        if self.layout in LOGIT_LAYOUTS:
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


def parse_preprocess_json_or_fail(path: Path):
    """parse_preprocess_json with its ValueError turned into a one-line ModelNotAvailable."""
    try:
        return parse_preprocess_json(path)
    except (OSError, ValueError) as exc:
        raise ModelNotAvailable(str(exc)) from None
