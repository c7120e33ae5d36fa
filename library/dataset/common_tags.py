"""Tags most captions of a folder share (the traits a trigger word should absorb), for listing and pruning."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field

from library.files.discovery import discover_images
from library.files.sidecars import SidecarLayout, read_caption, split_caption
from library.taggers.tag_rules import tag_key


@dataclass
class CommonTags:
    """How many captions were read, and the tags in at least the asked share of them, most common first."""

    captions: int
    min_share: float
    tags: list[tuple[str, int]] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)

    def lines(self) -> list[str]:
        if not self.tags:
            return [f"no tag is in at least {self.min_share:.0%} of the {self.captions} captions"]
        out = [f"{len(self.tags)} tags are in at least {self.min_share:.0%} of the {self.captions} captions:"]
        out += [f"  {tag}: {n} ({n / self.captions:.0%})" for tag, n in self.tags]
        out += [f"  unreadable: {path}: {why}" for path, why in self.unreadable]
        return out


def _lines(text: str, which: str | int | None) -> list[str]:
    lines = [ln for ln in text.split("\n") if ln.strip()]
    if which in (None, "all"):
        return lines
    if which == "first":
        return lines[:1]
    if which == "last":
        return lines[-1:]
    return lines[int(which) - 1:int(which)]


def common_tags(root: str | os.PathLike, min_share: float, caption_extension: str = ".txt", separator: str = ", ",
                recursive: bool = False, lines: str | int | None = None) -> CommonTags:
    """The tags present in at least `min_share` of the captions under root (tags matched by tag_key).

    Args:
        min_share: 0 < share <= 1, e.g. 0.9.
        lines: which lines of multi-line captions count ("all", "first", "last", N; default all).
    """
    layout = SidecarLayout(caption_extension)
    counts: Counter = Counter()
    spelling: dict[str, str] = {}
    seen = set()
    result = CommonTags(0, min_share)
    for image in discover_images(root, recursive):
        path = layout.path_for(image)
        if path in seen:
            continue
        seen.add(path)
        try:
            text = read_caption(path)
        except (OSError, UnicodeDecodeError) as exc:
            result.unreadable.append((str(path), str(exc)))
            continue
        if text is None:
            continue
        result.captions += 1
        keys = set()
        for line in _lines(text, lines):
            for tag in split_caption(line, separator):
                key = tag_key(tag)
                spelling.setdefault(key, tag)
                keys.add(key)
        counts.update(keys)
    if result.captions:
        result.tags = [(spelling[k], n) for k, n in sorted(counts.items(), key=lambda kv: (-kv[1], spelling[kv[0]]))
                       if n / result.captions >= min_share]
    return result
