"""The tag-scores file (JSON Lines, docs/scores.md): a tagger's raw scores kept so tags can be re-decided later."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from library.errors import FatalError
from library.outputs.writer import ResultRow, ResultWriter
from library.files.sidecars import atomic_write_text
from library.taggers.labels import CATEGORIES, TagLabels

logger = logging.getLogger(__name__)

FORMAT = "captionkit-tag-scores"
VERSION = 1
DEFAULT_FLOOR = 0.05
ALWAYS_KEPT = ("rating", "quality")  # one of them is picked by argmax: their scores are stored whatever the floor
RECORD_KEY = "raw_scores"  # the key of ItemResult.details that carries an image's record from the model to the writer
_SURROGATE = re.compile("[\ud800-\udfff]")


def json_line(value) -> str:
    """One JSON line, UTF-8 text kept as is; lone surrogates (non-UTF-8 file names) escaped as \\udcXX."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _score(value: float) -> float:
    """A float32 score as the shortest decimal that reads back as the same float32 (0.35, not 0.3499999940395355)."""
    exact = np.float32(value)
    short = float(str(exact))
    return short if np.float32(short) == exact else float(exact)


def make_header(labels: TagLabels, model_id: str, labels_sha256: str, floor: float, root: str | os.PathLike,
                layout: str = "wd") -> dict:
    """The first line of a scores file: what model made the scores and every tag of it, once."""
    return {
        "format": FORMAT, "version": VERSION,
        "model": {"id": model_id, "layout": layout, "labels_sha256": labels_sha256},
        "floor": float(floor),
        "root": os.path.abspath(root),
        "tags": {"names": list(labels.names), "categories": list(labels.categories)},
        "order_by_confidence": labels.order_by_confidence,
        "default_thresholds": dict(labels.default_thresholds),
        "series": [list(s) for s in labels.series] if labels.series is not None else None,
    }


_KEPT: dict[int, tuple[list, np.ndarray]] = {}


def _always_kept(labels: TagLabels) -> np.ndarray:
    """The rating/quality mask of these labels, computed once per label list (10,000+ names per image otherwise)."""
    cached = _KEPT.get(id(labels))
    if cached is None or cached[0] is not labels.categories:
        cached = _KEPT[id(labels)] = (labels.categories, np.isin(np.array(labels.categories), ALWAYS_KEPT))
    return cached[1]


def image_record(labels: TagLabels, probs: np.ndarray, floor: float) -> dict:
    """One image's stored scores: every tag at or above `floor` (rating and quality tags always), by label index.

    Args:
        labels: the model's tags (only their categories are used).
        probs: the model's probability vector for the image (sigmoid applied).
        floor: the lowest score kept.
    Returns:
        {"tags": [label index, ...] ascending, "scores": [score, ...]} (the writer adds path and size).
    """
    probs = np.asarray(probs, dtype=np.float32).reshape(-1)
    if probs.size != len(labels):
        raise ValueError(f"{probs.size} scores for {len(labels)} tags")
    keep = (probs >= np.float32(floor)) | _always_kept(labels)
    idx = np.nonzero(keep)[0]
    return {"tags": [int(i) for i in idx], "scores": [_score(probs[i]) for i in idx]}


@dataclass
class ScoresFile:
    """A read scores file: its header, the labels it describes, and one record per image by path."""

    path: Path
    header: dict
    labels: TagLabels
    records: dict[str, dict] = field(default_factory=dict)

    @property
    def floor(self) -> float:
        return float(self.header["floor"])

    @property
    def root(self) -> Path:
        return Path(self.header["root"])

    def probs(self, record: dict) -> np.ndarray:
        """The probability vector of one record: stored scores in place, every other tag 0."""
        out = np.zeros(len(self.labels), dtype=np.float32)
        out[np.asarray(record["tags"], dtype=np.int64)] = np.asarray(record["scores"], dtype=np.float32)
        return out

    def known(self, record: dict) -> np.ndarray:
        """Which tags of the record have a stored score."""
        out = np.zeros(len(self.labels), dtype=bool)
        out[np.asarray(record["tags"], dtype=np.int64)] = True
        return out


def _bad(path: Path, line_no: int, why: str) -> FatalError:
    return FatalError(f"{path}:{line_no}: {why}")


def labels_from_header(path: Path, header: dict) -> TagLabels:
    try:
        names, categories = header["tags"]["names"], header["tags"]["categories"]
        series = header.get("series")
        if len(names) != len(categories) or (series is not None and len(series) != len(names)):
            raise ValueError("tag names, categories and series differ in length")
        unknown = sorted(set(categories) - set(CATEGORIES))
        if unknown:
            raise ValueError(f"unknown tag categories {', '.join(map(str, unknown))}")
        return TagLabels(list(names), list(categories), bool(header.get("order_by_confidence", False)),
                         {str(k): float(v) for k, v in (header.get("default_thresholds") or {}).items()},
                         [tuple(s) for s in series] if series is not None else None)
    except (KeyError, TypeError, ValueError) as exc:
        raise _bad(path, 1, f"not a valid {FORMAT} header ({exc})") from None


def _check_header(path: Path, header) -> None:
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise _bad(path, 1, f"not a {FORMAT} file (its first line names no such format)")
    version = header.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise _bad(path, 1, f"{FORMAT} version {version!r}; this captionkit reads version {VERSION} and older")
    for key in ("floor", "root", "tags", "model"):
        if key not in header:
            raise _bad(path, 1, f"the header has no {key!r}")


def _check_record(path: Path, line_no: int, record, n_tags: int) -> None:
    if not isinstance(record, dict) or not isinstance(record.get("path"), str):
        raise _bad(path, line_no, "expected an object with a 'path'")
    tags, scores = record.get("tags"), record.get("scores")
    if not isinstance(tags, list) or not isinstance(scores, list) or len(tags) != len(scores):
        raise _bad(path, line_no, "'tags' and 'scores' must be lists of equal length")
    if any(not isinstance(i, int) or not 0 <= i < n_tags for i in tags):
        raise _bad(path, line_no, f"a tag index outside 0..{n_tags - 1}")


def read_scores(path: str | os.PathLike) -> ScoresFile:
    """Read and check a scores file; the last record of an image wins.

    Raises:
        FatalError: unreadable file, not this format, a newer version, or a malformed line (named by number).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise FatalError(f"{path}: cannot read the scores file ({getattr(exc, 'strerror', None) or exc})") from None
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise FatalError(f"{path}: empty file, not a {FORMAT} file")
    try:
        header = json.loads(lines[0])
    except json.JSONDecodeError as exc:
        raise _bad(path, 1, f"not JSON ({exc.msg})") from None
    _check_header(path, header)
    scores = ScoresFile(path, header, labels_from_header(path, header))
    for line_no, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise _bad(path, line_no, f"not JSON ({exc.msg})") from None
        _check_record(path, line_no, record, len(scores.labels))
        scores.records[record["path"]] = record
    return scores


def record_key(image_path: str | os.PathLike) -> str:
    """Records are keyed by absolute path (symlinks kept, as the sidecar layout sees them)."""
    return os.path.abspath(image_path)


def tag_scores(files: list[ScoresFile]):
    """image path -> {tag_key: score} over these files (the highest where several know a tag); {} when none has it."""
    from library.taggers.tag_rules import tag_key

    keys = [[tag_key(n) for n in f.labels.names] for f in files]

    def lookup(image_path) -> dict[str, float]:
        out: dict[str, float] = {}
        for f, names in zip(files, keys):
            record = f.records.get(record_key(image_path))
            for i, score in zip(record["tags"], record["scores"]) if record else ():
                out[names[i]] = max(score, out.get(names[i], 0.0))
        return out

    return lookup


class ScoresWriter(ResultWriter):
    """Collects each image's record (ItemResult.details["raw_scores"]) and writes the scores file atomically on close.

    The header comes with the first result that carries one (details["scores_header"], sent once per loaded model).

    Args:
        path: the .jsonl to write.
        resume: keep the records of an existing file (its model and floor must match this run's).
    """

    def __init__(self, path: str | os.PathLike, resume: bool = False):
        self.path = Path(path)
        self.header: dict | None = None
        self.records: dict[str, dict] = {}
        self.old_header: dict | None = None
        if resume and self.path.is_file():
            old = read_scores(self.path)
            self.old_header, self.records = old.header, old.records

    def done(self, image_path) -> bool:
        return record_key(image_path) in self.records

    def _take_header(self, header: dict) -> None:
        if self.header is None:
            old = self.old_header
            if old is not None and (old["model"].get("labels_sha256") != header["model"].get("labels_sha256")
                                    or old["floor"] != header["floor"]):
                raise FatalError(f"{self.path} holds scores of another model or --scores_floor "
                                 f"({old['model'].get('id')}, floor {old['floor']}): name a new --scores_file")
            self.header = header

    def write(self, rows: list[ResultRow]) -> list[str | None]:
        errors: list[str | None] = []
        for row in rows:
            details = row.result.details or {}
            if details.get("scores_header") is not None:
                self._take_header(details["scores_header"])
            record = details.get(RECORD_KEY)
            if record is None:
                errors.append(None if row.result.error else "the model gave no scores for the scores file")
                continue
            entry = {"path": record_key(row.path), "size": list(row.size) if row.size else None}
            entry.update(record)
            self.records[entry["path"]] = entry
            errors.append(None)
        return errors

    def close(self) -> None:
        header = self.header or self.old_header
        if header is None:
            return  # nothing tagged and no earlier file: nothing to write
        lines = [json_line(header)] + [json_line(r) for r in self.records.values()]
        atomic_write_text(self.path, "\n".join(lines) + "\n")
        logger.info("scores of %d images saved to %s", len(self.records), self.path)
