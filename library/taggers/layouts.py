"""Tagger model layouts: which files make each one, detection from a folder's (or hub repo's) file names, known models."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

from library.backends.onnx_fp16 import FP16_SUFFIX
from library.backends.onnx_uint8 import UINT8_SUFFIX

CSV_FILE = "selected_tags.csv"
JSON_FILE = "tag_mapping.json"
WD_ONNX = "model.onnx"
CL_ONNX_NAMES = ("model_optimized.onnx", "model.onnx")
SAVED_MODEL_FILES = ("saved_model.pb", "variables/variables.index", "variables/variables.data-00000-of-00001")
PIXAI_PREPROCESS_NAMES = ("preprocess.json", "preprocessor.json")  # imgutils reads the first; its exporter wrote the second
PIXAI_THRESHOLDS = "thresholds.csv"
CAMIE_ONNX = "camie-tagger-v2.onnx"
CAMIE_METADATA = "camie-tagger-v2-metadata.json"
METADATA_SUFFIX = "metadata.json"


@dataclass(frozen=True)
class Layout:
    """A family of tagger files: its name, what it is, and the files it needs (for error messages and docs)."""

    name: str
    title: str
    files: str


LAYOUTS = {
    "wd": Layout("wd", "SmilingWolf WD v2/v3", f"{WD_ONNX} (or a TensorFlow SavedModel) + {CSV_FILE}"),
    "cl": Layout("cl", "cl_tagger (tag_mapping.json)", f"{' or '.join(CL_ONNX_NAMES)} + {JSON_FILE}"),
    "pixai": Layout("pixai", "PixAI (deepghs ONNX export)",
                    f"{WD_ONNX} + {CSV_FILE} + {PIXAI_PREPROCESS_NAMES[0]} (+ {PIXAI_THRESHOLDS}, optional)"),
    "camie": Layout("camie", "Camie tagger v2", f"{CAMIE_ONNX} (any *.onnx) + {CAMIE_METADATA} (any *{METADATA_SUFFIX})"),
}


def known_layouts_text() -> str:
    """One line per layout: 'name (title): files'."""
    return "; ".join(f"{lay.name} ({lay.title}): {lay.files}" for lay in LAYOUTS.values())


# float16 and uint8-input copies captionkit caches beside a model (model_fp16.onnx, model_u8_1a2b3c4d.onnx)
DERIVED_ONNX = re.compile(rf"({re.escape(FP16_SUFFIX)}|{re.escape(UINT8_SUFFIX)}_[0-9a-f]{{8}})+\.onnx$")


def _onnx_names(names: set[str]) -> list[str]:
    return sorted(n for n in names if n.endswith(".onnx") and "/" not in n and not DERIVED_ONNX.search(n))


def camie_file_names(names: Iterable[str]) -> tuple[str, str]:
    """(model, metadata) file names of a Camie folder or repo; the official names when the listing has none."""
    names = set(names)
    metadata = sorted(n for n in names if n.endswith(METADATA_SUFFIX) and "/" not in n)
    if not metadata:
        return CAMIE_ONNX, CAMIE_METADATA
    meta = CAMIE_METADATA if CAMIE_METADATA in metadata else metadata[0]
    stem = meta[: -len(METADATA_SUFFIX)].rstrip("-_")
    onnx = _onnx_names(names)
    model = f"{stem}.onnx" if f"{stem}.onnx" in onnx else (onnx[0] if len(onnx) == 1 else CAMIE_ONNX)
    return model, meta


def detect_layout(names: Iterable[str]) -> str | None:
    """The layout the file names (relative paths) belong to, or None when they match none."""
    names = set(names)
    has_onnx = bool(_onnx_names(names))
    if any(n.endswith(METADATA_SUFFIX) and "/" not in n for n in names) and has_onnx:
        return "camie"
    if CSV_FILE in names and (any(n in names for n in PIXAI_PREPROCESS_NAMES) or PIXAI_THRESHOLDS in names):
        return "pixai"
    if JSON_FILE in names and CSV_FILE not in names:
        return "cl"
    if CSV_FILE in names or WD_ONNX in names or SAVED_MODEL_FILES[0] in names:
        return "wd"
    return None


@dataclass(frozen=True)
class KnownModel:
    """A tagger people use, for --list_models and for the layout of a hub repo not downloaded yet."""

    repo_id: str
    layout: str
    size: str
    licence: str
    note: str = ""


KNOWN_MODELS = (
    KnownModel("SmilingWolf/wd-eva02-large-tagger-v3", "wd", "1.26 GB", "Apache-2.0",
               "most accurate WD tagger, 448 px, dynamic batch"),
    KnownModel("SmilingWolf/wd-vit-large-tagger-v3", "wd", "1.26 GB", "Apache-2.0"),
    KnownModel("SmilingWolf/wd-swinv2-tagger-v3", "wd", "467 MB", "Apache-2.0", "good speed/accuracy balance"),
    KnownModel("SmilingWolf/wd-convnext-tagger-v3", "wd", "?", "Apache-2.0"),
    KnownModel("SmilingWolf/wd-vit-tagger-v3", "wd", "?", "Apache-2.0"),
    KnownModel("SmilingWolf/wd-v1-4-convnext-tagger-v2", "wd", "?", "Apache-2.0", "sd-scripts' default"),
    KnownModel("SmilingWolf/wd-v1-4-convnextv2-tagger-v2", "wd", "?", "Apache-2.0", "kohya_ss GUI default"),
    KnownModel("SmilingWolf/wd-v1-4-swinv2-tagger-v2", "wd", "?", "Apache-2.0"),
    KnownModel("SmilingWolf/wd-v1-4-vit-tagger-v2", "wd", "?", "Apache-2.0"),
    KnownModel("SmilingWolf/wd-v1-4-moat-tagger-v2", "wd", "?", "Apache-2.0"),
    KnownModel("deepghs/pixai-tagger-v0.9-onnx", "pixai", "~1.3 GB", "MIT (card metadata; card text: TBD)",
               "13,461 tags; own thresholds (0.3 general, 0.85 character); maps characters to series"),
    KnownModel("Camais03/camie-tagger-v2", "camie", "789 MB", "GPL-3.0",
               "70,527 tags, 512 px; GPL-3.0: downloaded on request, never bundled"),
    KnownModel("cella110n/cl_tagger/cl_tagger_1_02", "cl", "?", "see the model card",
               "subfolder layout; quality and model tags"),
)


def known_model(repo_id: str) -> KnownModel | None:
    """The registry entry of an 'org/name[/subfolder]' id (case-insensitive), or None."""
    wanted = repo_id.strip("/").lower()
    return next((m for m in KNOWN_MODELS if m.repo_id.lower() == wanted), None)


def list_models_text() -> str:
    """The --list_models table: repo id, layout, download size, licence and a note per known model."""
    rows = [("repo id", "layout", "size", "licence", "note")]
    rows += [(m.repo_id, m.layout, m.size, m.licence, m.note) for m in KNOWN_MODELS]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r[:4], widths)) + ("  " + r[4] if r[4] else "") for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines += ["", "Layouts (detected from the files):"] + [f"  {lay.name:6} {lay.title}: {lay.files}"
                                                            for lay in LAYOUTS.values()]
    lines += ["", "size ?: not recorded here, see the model page. Camie tagger v2 is GPL-3.0: captionkit downloads "
                  "it only when you name it and never ships it."]
    return "\n".join(lines)
