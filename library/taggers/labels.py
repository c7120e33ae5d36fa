"""Tag label files of the tagger layouts: selected_tags.csv (+ PixAI's thresholds.csv), tag_mapping.json, Camie's metadata."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

CATEGORIES = ("rating", "general", "character", "copyright", "artist", "meta", "quality", "model")
# selected_tags.csv category numbers (Danbooru's): 9 rating, 0 general, 4 character; the rest for completeness
CSV_CATEGORIES = {"9": "rating", "0": "general", "4": "character", "1": "artist", "3": "copyright", "5": "meta"}
# Camie's metadata names seven categories; its 'year' tags (year_2021, ...) are meta tags here
CAMIE_CATEGORIES = {"year": "meta"}
# imgutils' PixAI reader: a category in selected_tags.csv without a row in thresholds.csv uses 0.4
PIXAI_FALLBACK_THRESHOLD = 0.4


@dataclass
class TagLabels:
    """One name and one category per model output, in output order.

    Attributes:
        names: raw tag names as the model files spell them.
        categories: one of CATEGORIES per name.
        order_by_confidence: the tag_mapping.json and Camie layouts list tags by descending confidence
            (sd-scripts does so for tag_mapping.json); the SmilingWolf layout keeps the CSV order.
        default_thresholds: the model's own threshold per category (PixAI's thresholds.csv); a category
            not listed falls back to --thresh's default.
        series: per output, the series a character tag belongs to (PixAI's `ips` column), or None when
            the label file has no such mapping.
    """

    names: list[str]
    categories: list[str]
    order_by_confidence: bool = False
    default_thresholds: dict[str, float] = field(default_factory=dict)
    series: list[tuple[str, ...]] | None = None

    def __len__(self) -> int:
        return len(self.names)


def _read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="", encoding="utf-8") as f:
        rows = [row for row in csv.reader(f) if row]
    if not rows:
        raise ValueError(f"{path}: empty file")
    return [h.strip() for h in rows[0]], rows[1:]


def _columns(path: Path, header: list[str], expected: str, *names: str) -> list[int]:
    """The index of each named column; a header without one of them is an error that says what was expected."""
    missing = [name for name in names if name not in header]
    if missing:
        raise ValueError(f"{path}: unexpected header {','.join(header)}; expected {expected}")
    return [header.index(name) for name in names]


def _series(path: Path, line_no: int, text: str) -> tuple[str, ...]:
    """PixAI's `ips` cell: a JSON list of series names ('[]' or empty for none)."""
    if not text.strip():
        return ()
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{path}:{line_no}: the ips column must be a JSON list of names, got {text!r}")
    return tuple(value)


def load_selected_tags_csv(path: str | Path) -> TagLabels:
    """Read a `selected_tags.csv`: SmilingWolf's (tag_id,name,category,count) or deepghs' PixAI one (with `ips`)."""
    path = Path(path)
    header, rows = _read_csv(path)
    name_col, cat_col = _columns(path, header, "tag_id,name,category,count (or PixAI's id,tag_id,name,category,count,ips)",
                                 "name", "category")
    ips_col = header.index("ips") if "ips" in header else None
    names, categories, series = [], [], []
    for line_no, row in enumerate(rows, start=2):
        if len(row) <= max(name_col, cat_col):
            raise ValueError(f"{path}:{line_no}: expected at least {max(name_col, cat_col) + 1} columns, got {row}")
        names.append(row[name_col])
        categories.append(CSV_CATEGORIES.get(row[cat_col].strip(), "general"))
        if ips_col is not None:
            series.append(_series(path, line_no, row[ips_col] if ips_col < len(row) else ""))
    if not names:
        raise ValueError(f"{path}: no tags found")
    return TagLabels(names, categories, order_by_confidence=False, series=series if ips_col is not None else None)


def pixai_default_thresholds(path: str | Path | None, categories: list[str]) -> dict[str, float]:
    """PixAI's per-category thresholds from its `thresholds.csv` (category,name,threshold), as imgutils reads them.

    The first row of a category wins; a category of `categories` (the label file's) without a row, or every
    category when there is no thresholds.csv (`path` None), gets 0.4.
    """
    out: dict[str, float] = {}
    if path is not None:
        path = Path(path)
        header, rows = _read_csv(path)
        cat_col, thr_col = _columns(path, header, "category,name,threshold", "category", "threshold")
        name_col = header.index("name") if "name" in header else None
        for line_no, row in enumerate(rows, start=2):
            try:
                value = float(row[thr_col])
            except (IndexError, ValueError):
                raise ValueError(f"{path}:{line_no}: expected a number in the threshold column, got {row}") from None
            number = row[cat_col].strip() if cat_col < len(row) else ""
            name = row[name_col].strip().lower() if name_col is not None and name_col < len(row) else ""
            category = CSV_CATEGORIES.get(number) or (name if name in CATEGORIES else None)
            if category is None:
                raise ValueError(f"{path}:{line_no}: unknown category {number!r} ({name or 'no name'})")
            out.setdefault(category, value)
    for category in categories:
        if category != "rating":
            out.setdefault(category, PIXAI_FALLBACK_THRESHOLD)
    return out


def load_pixai_labels(csv_path: str | Path, thresholds_path: str | Path | None) -> TagLabels:
    """deepghs' PixAI label files: selected_tags.csv (with the character -> series `ips` column) and thresholds.csv."""
    labels = load_selected_tags_csv(csv_path)
    labels.default_thresholds = pixai_default_thresholds(thresholds_path, labels.categories)
    return labels


def _category(path: Path, tag: str, category) -> str:
    cat = str(category).strip().lower()
    cat = CAMIE_CATEGORIES.get(cat, cat)
    if cat not in CATEGORIES:
        raise ValueError(f"{path}: tag {tag!r} has unknown category {category!r}")
    return cat


def _indexed_labels(path: Path, entries: dict[int, tuple[str, str]]) -> TagLabels:
    if not entries:
        raise ValueError(f"{path}: no tags found")
    size = max(entries) + 1
    names = [""] * size
    categories = ["general"] * size
    for i, (tag, category) in entries.items():
        names[i] = tag
        categories[i] = _category(path, tag, category)
    return TagLabels(names, categories, order_by_confidence=True)


def _idx_to_tag_entries(path: Path, mapping: dict) -> dict[int, tuple[str, str]]:
    try:
        idx_to_tag = {int(k): v for k, v in mapping["idx_to_tag"].items()}
    except (AttributeError, TypeError, ValueError):
        raise ValueError(f"{path}: idx_to_tag must map output indices to tag names") from None
    tag_to_category = mapping.get("tag_to_category") or {}
    return {i: (tag, tag_to_category.get(tag, "General")) for i, tag in idx_to_tag.items()}


def _load_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None


def load_tag_mapping_json(path: str | Path) -> TagLabels:
    """Read a cl_tagger-style `tag_mapping.json` in either of its two shapes."""
    path = Path(path)
    data = _load_json(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    if "idx_to_tag" in data:
        entries = _idx_to_tag_entries(path, data)
    else:
        entries = {int(k): (v["tag"], v.get("category", "General")) for k, v in data.items()}
    return _indexed_labels(path, entries)


def load_camie_metadata(path: str | Path) -> tuple[TagLabels, int | None]:
    """Read Camie v2's metadata JSON: dataset_info.tag_mapping.{idx_to_tag, tag_to_category}, model_info.img_size.

    Returns:
        The labels and the image size the metadata names (None when absent).
    """
    path = Path(path)
    data = _load_json(path)
    mapping = (data.get("dataset_info") or {}).get("tag_mapping") if isinstance(data, dict) else None
    if not isinstance(mapping, dict) or "idx_to_tag" not in mapping:
        raise ValueError(f"{path}: no dataset_info.tag_mapping.idx_to_tag (not a Camie metadata file)")
    labels = _indexed_labels(path, _idx_to_tag_entries(path, mapping))
    size = (data.get("model_info") or {}).get("img_size")
    return labels, int(size) if isinstance(size, (int, float)) and size > 0 else None
