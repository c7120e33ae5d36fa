"""Re-decide tags from stored scores (one tagger, or an ensemble of several) and write the sidecars, no model loaded."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from library.errors import FatalError
from library.run.jobs import ItemResult
from library.outputs.writer import ResultRow, ResultWriter
from library.taggers.labels import TagLabels
from library.taggers.scores import ScoresFile
from library.taggers.tag_rules import (DEFAULT_THRESHOLD, THRESHOLD_CATEGORIES, TagOptions, TagSelector, tag_key,
                                       threshold_for)

logger = logging.getLogger(__name__)

COMBINE = ("max", "mean")
STAGES = ("after", "before")  # thresholds applied to the combined scores (default), or to each model's first
BATCH = 256


@dataclass
class Ensemble:
    """Several scores files as one tagger: tags matched by tag_key, each file's indices mapped onto the union.

    Attributes:
        labels: the union of the files' tags (the first file's spelling, category and series win); a category
            no threshold flag is given for uses the lowest of the models' own defaults (0.35 for most models).
        maps: per file, its label index -> union index (-1 for a tag without a name).
    """

    files: list[ScoresFile]
    labels: TagLabels
    maps: list[np.ndarray]


def build_ensemble(files: list[ScoresFile]) -> Ensemble:
    index: dict[str, int] = {}
    names, categories, series = [], [], []
    maps = []
    for f in files:
        m = np.full(len(f.labels), -1, dtype=np.int64)
        for i, name in enumerate(f.labels.names):
            if not name:
                continue
            key = tag_key(name)
            if key not in index:
                index[key] = len(names)
                names.append(name)
                categories.append(f.labels.categories[i])
                series.append(tuple(f.labels.series[i]) if f.labels.series is not None else ())
            m[i] = index[key]
        maps.append(m)
    defaults = {c: min(f.labels.default_thresholds.get(c, DEFAULT_THRESHOLD) for f in files)
                for c in THRESHOLD_CATEGORIES}
    labels = TagLabels(names, categories, files[0].labels.order_by_confidence, defaults,
                       series if any(f.labels.series is not None for f in files) else None)
    return Ensemble(files, labels, maps)


def check_floor(scores: ScoresFile, labels: TagLabels, options: TagOptions) -> None:
    """Refuse a threshold below the file's floor: tags scored under it were not stored, so they cannot be decided."""
    present = set(labels.categories)
    for cat in THRESHOLD_CATEGORIES:
        if cat not in present:
            continue
        value = threshold_for(cat, options, labels)
        if value < scores.floor:
            source = (f"--{cat}_threshold/--thresh {value:g}" if cat in options.thresholds
                      else f"the model's own {cat} threshold {value:g} (give --{cat}_threshold)")
            raise FatalError(f"{scores.path}: {source} is below the file's --scores_floor {scores.floor:g}; "
                             "scores under the floor were not stored")


def mcut_exact(probs: np.ndarray, known: np.ndarray, indices: np.ndarray) -> bool:
    """MCut over the known scores of these outputs is the tagger's MCut over all of them.

    True when every score is known, or when the largest gap between known neighbours is at least the lowest known
    score: every gap the unknown scores (all under the floor) make is smaller, so the tagger's largest gap is there too.
    """
    if known[indices].all():
        return True
    stored = np.sort(probs[indices][known[indices]])[::-1]
    if stored.size < 2:
        return False
    return float(np.max(stored[:-1] - stored[1:])) >= float(stored[-1])


@dataclass
class RetagOutcome:
    """Captions written, images that failed, MCut warnings, and how often each tag was written."""

    written: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[tuple[str, str]] = field(default_factory=list)
    tag_frequency: Counter = field(default_factory=Counter)


class Retagger:
    """Tags per image from one scores file, or from several combined (max|mean, thresholds before|after combining).

    Args:
        files: the read scores files (the first one's root and image order lead).
        options: the tag-shaping flags, exactly as the tagger takes them.
        combine: 'max' or 'mean' (several files only).
        stage: 'after' (default): combine the raw scores, then apply the thresholds; 'before': each model's own
            thresholds first zero its scores below them, then the scores are combined and a tag is kept when its
            combined score reaches the lowest threshold of the models (max: the union of the models' picks).
    Raises:
        FatalError: a threshold below a file's floor, an unknown combine or stage.
    """

    def __init__(self, files: list[ScoresFile], options: TagOptions, combine: str = "max", stage: str = "after"):
        if combine not in COMBINE or stage not in STAGES:
            raise FatalError(f"--combine must be one of {', '.join(COMBINE)} and --threshold_stage one of "
                             f"{', '.join(STAGES)}")
        self.files, self.options, self.combine, self.stage = files, options, combine, stage
        if len(files) == 1:
            self.ensemble = None
            self.labels = files[0].labels
        else:
            self.ensemble = build_ensemble(files)
            self.labels = self.ensemble.labels
        for f in files:
            check_floor(f, f.labels, options)
            if self.ensemble is not None and stage == "after":
                check_floor(f, self.labels, options)
        self.selector = TagSelector(self.labels, options)
        self.own = [TagSelector(f.labels, options) for f in files] if self.ensemble and stage == "before" else []
        self.argmax_only = [np.isin(np.array(f.labels.categories), ("rating", "quality")) for f in files]

    def paths(self) -> list[str]:
        seen: dict[str, None] = {}
        for f in self.files:
            seen.update(dict.fromkeys(f.records))
        return list(seen)

    def size(self, path: str):
        for f in self.files:
            if path in f.records and f.records[path].get("size"):
                return tuple(f.records[path]["size"])
        return None

    def probs(self, path: str) -> tuple[np.ndarray, np.ndarray]:
        """The probability vector the selector sees for one image, and which of its scores are known."""
        if self.ensemble is None:
            record = self.files[0].records[path]
            return self.files[0].probs(record), self.files[0].known(record)
        rows, known = [], np.zeros(len(self.labels), dtype=bool)
        for n, f in enumerate(self.files):
            if path not in f.records:
                continue
            p, stored = f.probs(f.records[path]), f.known(f.records[path])
            if self.own:
                p = np.where(self.own[n].passing(p) | self.argmax_only[n], p, np.float32(0))
            where = self.ensemble.maps[n]
            row = np.full(len(self.labels), np.nan, dtype=np.float32)
            row[where[where >= 0]] = p[where >= 0]
            known[where[(where >= 0) & stored]] = True
            rows.append(row)
        stack = np.stack(rows)
        has = ~np.isnan(stack)
        if self.combine == "max":
            out = np.where(has, stack, -np.inf).max(axis=0)
        else:
            out = np.where(has, stack, 0).sum(axis=0) / np.maximum(has.sum(axis=0), 1)
        return np.where(has.any(axis=0), out, 0).astype(np.float32), known

    def tag(self, path: str) -> tuple[ItemResult, str | None]:
        """One image's result, and a warning when its MCut threshold may differ from the tagger's."""
        p, known = self.probs(path)
        warning = None
        if self.ensemble is None:
            o, s = self.options, self.selector
            inexact = [name for on, idx, name in ((o.general_mcut, s.general_idx, "general"),
                                                  (o.character_mcut, s.character_idx, "character"))
                       if on and idx.size and not mcut_exact(p, known, idx)]
            if inexact:
                warning = (f"the {' and '.join(inexact)} MCut threshold may differ from the tagger's: it is taken "
                           "over the stored scores, and the largest gap may lie under the floor (tag with a lower "
                           "--scores_floor)")
        result = self.selector.select(p, known)
        return ItemResult(self.options.caption_separator.join(result.tags), tags=result.tags, scores=result.scores,
                          details={"by_category": result.by_category}), warning


def retag(retagger: Retagger, writer: ResultWriter, debug: bool = False) -> RetagOutcome:
    """Write every image's caption through `writer` (images no longer on disk are failures); closes the writer."""
    outcome = RetagOutcome()
    batch: list[ResultRow] = []

    def flush() -> None:
        for row, error in zip(batch, writer.write(batch)):
            if error is not None:
                outcome.failures.append((str(row.path), error))
                logger.error("%s: %s", row.path, error)
                continue
            outcome.written += 1
            outcome.tag_frequency.update(row.result.tags or [])
            if debug:
                logger.info("%s: %s", row.path, row.result.caption)
        batch.clear()

    try:
        for path in retagger.paths():
            if not Path(path).is_file():
                outcome.failures.append((path, "the image is no longer there"))
                logger.error("%s: the image is no longer there", path)
                continue
            result, warning = retagger.tag(path)
            if warning:
                outcome.warnings.append((path, warning))
                logger.warning("%s: %s", path, warning)
            batch.append(ResultRow(Path(path), retagger.size(path), result))
            if len(batch) >= BATCH:
                flush()
        flush()
    finally:
        writer.close()
    return outcome
