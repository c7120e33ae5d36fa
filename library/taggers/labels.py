"""Tag label files of WD-style taggers: SmilingWolf's selected_tags.csv and cl_tagger's tag_mapping.json."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

CATEGORIES = ("rating", "general", "character", "copyright", "artist", "meta", "quality", "model")
# selected_tags.csv category numbers (Danbooru's): 9 rating, 0 general, 4 character; the rest for completeness
CSV_CATEGORIES = {"9": "rating", "0": "general", "4": "character", "1": "artist", "3": "copyright", "5": "meta"}


@dataclass
class TagLabels:
    """One name and one category per model output, in output order.

    Attributes:
        names: raw tag names as the model files spell them.
        categories: one of CATEGORIES per name.
        order_by_confidence: the tag_mapping.json layout lists tags by descending confidence
            (sd-scripts does so); the SmilingWolf layout keeps the CSV order.
    """

    names: list[str]
    categories: list[str]
    order_by_confidence: bool = False

    def __len__(self) -> int:
        return len(self.names)


def load_selected_tags_csv(path: str | Path) -> TagLabels:
    """Read SmilingWolf's `selected_tags.csv` (header tag_id,name,category,count)."""
    path = Path(path)
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if not rows or [h.strip() for h in rows[0][:3]] != ["tag_id", "name", "category"]:
        raise ValueError(f"{path}: unexpected header {rows[0] if rows else '(empty file)'}; "
                         "expected tag_id,name,category,count")
    names, categories = [], []
    for line_no, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) < 3:
            raise ValueError(f"{path}:{line_no}: expected at least 3 columns, got {row}")
        names.append(row[1])
        categories.append(CSV_CATEGORIES.get(row[2].strip(), "general"))
    return TagLabels(names, categories, order_by_confidence=False)


def load_tag_mapping_json(path: str | Path) -> TagLabels:
    """Read a cl_tagger-style `tag_mapping.json` in either of its two shapes."""
    path = Path(path)
    data = json.loads(path.read_text(encoding="utf-8"))
    if "idx_to_tag" in data:
        idx_to_tag = {int(k): v for k, v in data["idx_to_tag"].items()}
        tag_to_category = data.get("tag_to_category", {})
        entries = {i: (tag, tag_to_category.get(tag, "General")) for i, tag in idx_to_tag.items()}
    else:
        entries = {int(k): (v["tag"], v.get("category", "General")) for k, v in data.items()}
    if not entries:
        raise ValueError(f"{path}: no tags found")
    size = max(entries) + 1
    names = [""] * size
    categories = ["general"] * size
    for i, (tag, category) in entries.items():
        cat = str(category).strip().lower()
        if cat not in CATEGORIES:
            raise ValueError(f"{path}: tag {tag!r} has unknown category {category!r}")
        names[i] = tag
        categories[i] = cat
    return TagLabels(names, categories, order_by_confidence=True)
