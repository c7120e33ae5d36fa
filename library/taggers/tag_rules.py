"""Turn tagger probabilities into an ordered tag list with every sd-scripts option, without its defects."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from library.errors import OptionError
from library.taggers.labels import TagLabels

# kaomoji whose underscores SmilingWolf's reference keeps (sd-scripts keeps tags of <= 3 characters)
KAOMOJI = frozenset(
    "0_0 (o)_(o) +_+ +_- ._. <o>_<o> <|>_<|> =_= >_< 3_3 6_9 >_o @_@ ^_^ o_o u_u x_x |_| ||_||".split()
)
THRESHOLD_CATEGORIES = ("general", "character", "copyright", "artist", "meta", "model")
DEFAULT_THRESHOLD = 0.35  # sd-scripts' --thresh default
CHARACTER_MCUT_FLOOR = 0.15


def tag_key(tag: str) -> str:
    """Comparison key: underscores and spaces are the same, surrounding blanks ignored."""
    return " ".join(tag.replace("_", " ").split())


def remove_underscore(tag: str) -> str:
    """'long_hair' -> 'long hair'; short tags and kaomoji keep their underscores."""
    if len(tag) <= 3 or tag in KAOMOJI:
        return tag
    return tag.replace("_", " ")


def expand_character_tag(tag: str, series: tuple[str, ...] = ()) -> list[str]:
    """'chara_(series)' -> ['chara', 'series']; 'chara_(costume)_(series)' -> ['chara_(costume)', 'series'].

    Args:
        series: the series the model maps the character to (PixAI's selected_tags.csv `ips`). When given,
            they are the series written: the name keeps its parenthesised suffix unless that suffix is one of
            them ('misaka_mikoto' + ['toaru_kagaku_no_railgun'] -> both; 'saber_(fate)' + ['fate/stay_night']
            -> both unchanged; 'hu_tao_(genshin_impact)' + ['genshin_impact'] -> ['hu_tao', 'genshin_impact']).
    """
    head, _, suffix = tag.rpartition("(")
    head = head[:-1] if head.endswith("_") else head
    suffix = suffix[:-1]
    split = tag.endswith(")") and "(" in tag and bool(head) and bool(suffix)
    if not series:
        return [head, suffix] if split else [tag]
    keys = {tag_key(s) for s in series}
    name = head if split and tag_key(suffix) in keys else tag
    return [name, *series]


def parse_tag_list(text: str | None, separator: str = ", ") -> list[str]:
    """A user's tag list: split on commas and on the caption separator (whitespace separators too)."""
    if not text:
        return []
    sep = separator.strip()
    if sep and sep != ",":
        text = text.replace(sep, ",")
    elif not sep and "," not in text:
        return [t for t in text.split() if t]
    return [t.strip() for t in text.split(",") if t.strip()]


def parse_tag_replacement(text: str | None) -> list[tuple[str, str]]:
    """'src1,dst1;src2,dst2' with '\\,' and '\\;' escapes -> [(src, dst), ...]; OptionError when malformed."""
    if not text:
        return []
    pairs = []
    for chunk in _split_escaped(text, ";"):
        if not chunk.strip():
            continue
        parts = _split_escaped(chunk, ",")
        if len(parts) != 2 or not parts[0].strip():
            raise OptionError(f"--tag_replacement: expected 'source,target' pairs separated by ';', got {chunk!r}")
        pairs.append((_unescape(parts[0]).strip(), _unescape(parts[1]).strip()))
    return pairs


def _split_escaped(text: str, sep: str) -> list[str]:
    parts, current, i = [], "", 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in ",;":
            current += text[i:i + 2]
            i += 2
            continue
        if text[i] == sep:
            parts.append(current)
            current = ""
        else:
            current += text[i]
        i += 1
    parts.append(current)
    return parts


def _unescape(text: str) -> str:
    return text.replace("\\,", ",").replace("\\;", ";")


def mcut_threshold(probs: np.ndarray) -> float:
    """Maximum Cut Thresholding: the midpoint of the largest gap between sorted neighbouring probabilities."""
    if probs.size < 2:
        return float(probs[0]) if probs.size else 1.0
    ordered = np.sort(probs)[::-1]
    gaps = ordered[:-1] - ordered[1:]
    t = int(np.argmax(gaps))
    return float((ordered[t] + ordered[t + 1]) / 2)


@dataclass
class TagOptions:
    """Every tag option of sd-scripts' tagger.

    Attributes:
        thresholds: the thresholds the user gave, by category (--<category>_threshold, else --thresh when
            given). A category not in it uses the model's own default (TagLabels.default_thresholds, e.g.
            PixAI's thresholds.csv), else DEFAULT_THRESHOLD (0.35, sd-scripts' --thresh default).
    """

    caption_separator: str = ", "
    thresholds: dict[str, float] = field(default_factory=dict)
    general_mcut: bool = False
    character_mcut: bool = False
    remove_underscore: bool = False
    undesired_tags: str = ""
    always_first_tags: str | None = None
    tag_replacement: str | None = None
    character_tag_expand: bool = False
    character_tags_first: bool = False
    use_rating_tags: bool = False
    use_rating_tags_as_last_tag: bool = False
    use_quality_tags: bool = False
    use_quality_tags_as_last_tag: bool = False


def threshold_for(category: str, options: TagOptions, labels: TagLabels) -> float:
    """The user's threshold for the category, else the model's default, else DEFAULT_THRESHOLD."""
    if category in options.thresholds:
        return options.thresholds[category]
    return labels.default_thresholds.get(category, DEFAULT_THRESHOLD)


@dataclass
class TagResult:
    """Tags of one image: the ordered list, each tag's confidence, and tags per category (for --debug)."""

    tags: list[str]
    scores: dict[str, float]
    by_category: dict[str, list[str]]


class TagSelector:
    """Precomputes per-label output tags once, then selects tags for each probability vector."""

    def __init__(self, labels: TagLabels, options: TagOptions):
        self.labels = labels
        self.options = options
        replacements = {tag_key(src): dst for src, dst in parse_tag_replacement(options.tag_replacement)}
        undesired = {tag_key(t) for t in parse_tag_list(options.undesired_tags, options.caption_separator)}
        self.always_first = [tag_key(t) for t in parse_tag_list(options.always_first_tags, options.caption_separator)]

        cats = np.array(labels.categories)
        self.outputs: list[list[str]] = []
        blocked = np.zeros(len(labels), dtype=bool)
        series = labels.series or [()] * len(labels)
        for i, (name, cat) in enumerate(zip(labels.names, labels.categories)):
            expand = cat == "character" and options.character_tag_expand
            pieces = expand_character_tag(name, series[i]) if expand else [name]
            if options.remove_underscore:
                pieces = [remove_underscore(p) for p in pieces]
            pieces = [replacements.get(tag_key(p), p) for p in pieces]
            pieces = [p for p in pieces if p and tag_key(p) not in undesired]
            self.outputs.append(pieces)
            blocked[i] = not name or not pieces or tag_key(name) in undesired

        self.thresholds = np.full(len(labels), np.inf, dtype=np.float32)
        for cat in THRESHOLD_CATEGORIES:
            self.thresholds[cats == cat] = threshold_for(cat, options, labels)
        self.thresholds[blocked] = np.inf
        self.blocked = blocked
        self.general_idx = np.nonzero((cats == "general") & ~blocked)[0]
        self.character_idx = np.nonzero((cats == "character") & ~blocked)[0]
        self.is_character = cats == "character"
        self.rating_idx = np.nonzero(cats == "rating")[0]
        self.quality_idx = np.nonzero(cats == "quality")[0]

    def _thresholds_for(self, probs: np.ndarray, known: np.ndarray | None = None) -> np.ndarray:
        """Per-output thresholds; MCut over the known scores only when `known` is given (stored scores)."""
        thr = self.thresholds

        def cut(idx: np.ndarray) -> float:
            return mcut_threshold(probs[idx] if known is None else probs[idx[known[idx]]])

        if self.options.general_mcut and self.general_idx.size:
            thr = thr.copy()
            thr[self.general_idx] = cut(self.general_idx)
        if self.options.character_mcut and self.character_idx.size:
            thr = thr.copy() if thr is self.thresholds else thr
            thr[self.character_idx] = max(cut(self.character_idx), CHARACTER_MCUT_FLOOR)
        return thr

    def passing(self, probs: np.ndarray) -> np.ndarray:
        """Which outputs reach their threshold (MCut included); rating and quality tags never do (picked by argmax)."""
        probs = np.asarray(probs, dtype=np.float32).reshape(-1)
        return probs >= self._thresholds_for(probs)

    def _pick_one(self, probs: np.ndarray, indices: np.ndarray) -> int | None:
        if not indices.size:
            return None
        best = int(indices[int(np.argmax(probs[indices]))])
        return None if self.blocked[best] else best

    def select(self, probs: np.ndarray, known: np.ndarray | None = None) -> TagResult:
        """Tags for one image's probability vector (sigmoid already applied).

        Args:
            known: outputs whose score is known (stored scores): the others are 0, never pass a threshold and are
                left out of MCut.
        """
        o = self.options
        probs = np.asarray(probs, dtype=np.float32).reshape(-1)
        if probs.size != len(self.labels):
            raise ValueError(f"model returned {probs.size} scores but the label file lists {len(self.labels)} tags")
        passing = probs >= self._thresholds_for(probs, known)
        hits = np.nonzero(passing if known is None else passing & known)[0]
        if self.labels.order_by_confidence:
            hits = hits[np.argsort(-probs[hits], kind="stable")]
        if o.character_tags_first:
            hits = np.concatenate([hits[self.is_character[hits]], hits[~self.is_character[hits]]])

        ordered: list[int] = [int(i) for i in hits]
        front: list[int] = []
        back: list[int] = []
        for wanted, first, last, idx in (
            (o.use_quality_tags or o.use_quality_tags_as_last_tag, o.use_quality_tags, o.use_quality_tags_as_last_tag,
             self.quality_idx),
            (o.use_rating_tags or o.use_rating_tags_as_last_tag, o.use_rating_tags, o.use_rating_tags_as_last_tag,
             self.rating_idx),
        ):
            if not wanted:
                continue
            best = self._pick_one(probs, idx)
            if best is None:
                continue
            if last and not first:  # both flags (the GUI's two checkboxes): first, as sd-scripts does
                back.append(best)
            else:
                front.insert(0, best)

        tags: list[str] = []
        scores: dict[str, float] = {}
        by_category: dict[str, list[str]] = {}
        seen: set[str] = set()
        for i in front + ordered + back:
            for tag in self.outputs[i]:
                key = tag_key(tag)
                if key in seen:
                    continue
                seen.add(key)
                tags.append(tag)
                scores[tag] = round(float(probs[i]), 4)
                by_category.setdefault(self.labels.categories[i], []).append(tag)

        if self.always_first:
            firsts = []
            for key in self.always_first:
                firsts.extend(t for t in tags if tag_key(t) == key and t not in firsts)
            tags = firsts + [t for t in tags if t not in firsts]
        return TagResult(tags, scores, by_category)
