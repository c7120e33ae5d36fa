"""Edit caption sidecars in bulk: prefix/suffix (idempotent), remove, replace, dedupe, sort, with a dry run."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Callable
from pathlib import Path

from library.files.confinement import Confinement
from library.files.discovery import discover_images
from library.errors import OptionError
from library.files.sidecars import SidecarLayout, read_caption, split_caption, write_caption
from library.taggers.tag_rules import tag_key

logger = logging.getLogger(__name__)

OPERATIONS = ("prefix", "suffix", "remove", "replace", "dedupe", "sort", "shorten")


@dataclass
class CaptionEdit:
    """One edit. Tags match whatever their spelling of underscores/spaces ('long_hair' == 'long hair').

    Args:
        op: one of OPERATIONS.
        tags: the tags to put first (prefix), last (suffix) or remove.
        replacements: (old, new) pairs for replace; an empty new removes the tag.
        substring: replace plain text anywhere in the line instead of whole tags.
        keep_first: sort leaves the first N tags where they are (a trigger word).
        ignore_case: 'Smile' matches 'smile'.
        lines: which lines of a multi-line caption to edit: "all", "first", "last" or a 1-based number;
            None = "first" for sort (a description line must not be scrambled), else "all".
        max_tokens: shorten drops tags until a line has at most this many tokens of `count`.
        count: text -> tokens (library.dataset.tokens) for shorten.
        scores: image path -> {tag_key: stored score}: shorten drops the lowest-scored tag first (tags without a
            score, such as a trigger word, go last, from the end); without it, tags go from the end.
    """

    op: str
    tags: list[str] = field(default_factory=list)
    replacements: list[tuple[str, str]] = field(default_factory=list)
    substring: bool = False
    keep_first: int = 0
    ignore_case: bool = False
    lines: str | int | None = None
    max_tokens: int = 0
    count: Callable[[str], int] | None = None
    scores: Callable[[Path], dict[str, float]] | None = None

    def __post_init__(self):
        if self.op not in OPERATIONS:
            raise OptionError(f"unknown caption operation {self.op!r}; choose from {', '.join(OPERATIONS)}")
        if self.op in ("prefix", "suffix", "remove") and not self.tags:
            raise OptionError(f"{self.op} needs at least one tag")
        if self.op == "replace" and not self.replacements:
            raise OptionError("replace needs at least one OLD NEW pair")
        if self.op == "shorten" and (self.max_tokens < 1 or self.count is None):
            raise OptionError("shorten needs --max_tokens of at least 1 and a token counter")

    def key(self, tag: str) -> str:
        k = tag_key(tag)
        return k.lower() if self.ignore_case else k


def _put_at_end(tags: list[str], wanted: list[str], edit: CaptionEdit, front: bool) -> list[str]:
    keys = [edit.key(t) for t in wanted]
    existing = {}
    for t in tags:
        existing.setdefault(edit.key(t), t)  # keep the caption's own spelling of a tag it already has
    placed = [existing.get(k, w) for k, w in zip(keys, wanted)]
    rest = [t for t in tags if edit.key(t) not in set(keys)]
    return placed + rest if front else rest + placed


def _dedupe(tags: list[str], edit: CaptionEdit) -> list[str]:
    seen, out = set(), []
    for t in tags:
        k = edit.key(t)
        if k not in seen:
            seen.add(k)
            out.append(t)
    return out


def edit_tags(tags: list[str], edit: CaptionEdit) -> list[str]:
    """Apply one edit to a list of tags; idempotent for every operation."""
    if edit.op == "shorten":
        return shorten_tags(tags, edit, ", ")
    if edit.op == "prefix":
        return _put_at_end(tags, edit.tags, edit, front=True)
    if edit.op == "suffix":
        return _put_at_end(tags, edit.tags, edit, front=False)
    if edit.op == "remove":
        drop = {edit.key(t) for t in edit.tags}
        return [t for t in tags if edit.key(t) not in drop]
    if edit.op == "replace":
        table = {edit.key(old): new.strip() for old, new in edit.replacements}
        replaced = [table.get(edit.key(t), t) for t in tags]
        introduced = {edit.key(n) for n in table.values() if n}
        out, seen = [], set()
        for t in replaced:
            if not t:
                continue
            k = edit.key(t)
            if k in introduced and k in seen:
                continue  # the new tag was already there: no duplicate
            seen.add(k)
            out.append(t)
        return out
    if edit.op == "dedupe":
        return _dedupe(tags, edit)
    head, tail = tags[:edit.keep_first], tags[edit.keep_first:]
    return head + sorted(tail, key=lambda t: (edit.key(t).lower(), t))


def _selected(index: int, count: int, which) -> bool:
    if which in (None, "all"):
        return True
    if which == "first":
        return index == 0
    if which == "last":
        return index == count - 1
    return index == int(which) - 1


def shorten_tags(tags: list[str], edit: CaptionEdit, separator: str, scores: dict[str, float] | None = None
                 ) -> list[str]:
    """Drop the lowest-priority tags until the joined line fits edit.max_tokens; idempotent (a line that fits stays).

    The first edit.keep_first tags are never dropped. With scores (by tag_key), the lowest-scored tag goes first,
    then the tags without a score from the end; without scores, tags go from the end.
    """
    tags = list(tags)
    while len(tags) > edit.keep_first and edit.count(separator.join(tags)) > edit.max_tokens:
        candidates = range(edit.keep_first, len(tags))
        scored = [i for i in candidates if scores and tag_key(tags[i]) in scores]
        if scored:
            drop = min(reversed(scored), key=lambda i: scores[tag_key(tags[i])])  # ties: the later tag
        else:
            drop = len(tags) - 1
        del tags[drop]
    return tags


def edit_text(text: str, edit: CaptionEdit, separator: str = ", ", image: Path | None = None) -> str:
    """Edit a caption's text line by line; a line whose tags do not change is returned byte for byte.

    Args:
        image: the caption's image (shorten looks its stored scores up by it).
    """
    which = edit.lines if edit.lines is not None else ("first" if edit.op == "sort" else "all")
    raw_lines = text.split("\n")
    content = [i for i, line in enumerate(raw_lines) if line.strip()]
    if not content:
        content, raw_lines = [0], [""]
    out = list(raw_lines)
    for n, i in enumerate(content):
        if not _selected(n, len(content), which):
            continue
        line = raw_lines[i]
        if edit.op == "replace" and edit.substring:
            new = line
            for old, repl in edit.replacements:
                new = new.replace(old, repl)
            out[i] = new
            continue
        tags = split_caption(line, separator)
        if edit.op == "shorten":
            new_tags = shorten_tags(tags, edit, separator, edit.scores(image) if edit.scores and image else None)
        else:
            new_tags = edit_tags(tags, edit)
        if new_tags != tags:
            out[i] = separator.join(new_tags)
    return "\n".join(out)


@dataclass
class EditOutcome:
    """Files changed (or that would change), unchanged, images without a caption, failures."""

    dry_run: bool
    captions: int = 0
    changed: list[tuple[Path, str, str]] = field(default_factory=list)
    created: list[Path] = field(default_factory=list)
    no_caption: list[Path] = field(default_factory=list)
    failures: list[tuple[Path, str]] = field(default_factory=list)

    def lines(self, show: int = 50) -> list[str]:
        verb = "would change" if self.dry_run else "changed"
        unchanged = self.captions - len(self.changed) - len(self.failures)
        head = (f"{verb} {len(self.changed)} of {self.captions} caption files ({unchanged} unchanged"
                f"{', ' + str(len(self.created)) + ' new' if self.created else ''}); "
                f"{len(self.no_caption)} images have no caption file"
                f"{' (left alone; --create_missing makes one)' if self.no_caption and not self.created else ''}"
                f", failed {len(self.failures)}")
        out = [head]
        if self.dry_run:
            for path, old, new in self.changed[:show]:
                out.append(f"{path}:")
                out.extend(f"  - {line}" for line in (old.split("\n") if old else ["(no file)"]))
                out.extend(f"  + {line}" for line in new.split("\n"))
            if len(self.changed) > show:
                out.append(f"... and {len(self.changed) - show} more")
        out.extend(f"  failed: {path}: {reason}" for path, reason in self.failures)
        return out


def edit_captions(root: str | os.PathLike, edit: CaptionEdit, caption_extension: str = ".txt",
                  separator: str = ", ", recursive: bool = False, dry_run: bool = False,
                  create_missing: bool = False) -> EditOutcome:
    """Apply `edit` to the caption file of every image under root (each shared caption file once).

    Args:
        root: folder of images (or one image).
        caption_extension: the sidecars' extension.
        separator: what tags are joined with (split on its non-space part, like everywhere else).
        recursive: include subfolders.
        dry_run: change nothing; the outcome lists what would change.
        create_missing: prefix/suffix write a caption holding just those tags for images that have none.
    Raises:
        FatalError: root missing or without images.
    """
    layout = SidecarLayout(caption_extension)
    outcome = EditOutcome(dry_run)
    seen: set[Path] = set()
    root_folder = Path(root) if Path(root).is_dir() else Path(root).parent
    for image in discover_images(root, recursive):
        path = layout.path_for(image)
        if path in seen:
            continue
        seen.add(path)
        if path.is_symlink() and not Confinement(root_folder, path.parent).allows(path):
            outcome.failures.append((path, Confinement(root_folder).outside_reason(path)))  # its text stays there
            outcome.captions += 1
            continue
        try:
            old = read_caption(path)
        except (OSError, UnicodeDecodeError) as exc:
            outcome.failures.append((path, f"cannot read caption ({exc})"))
            outcome.captions += 1
            continue
        if old is None:
            if not (create_missing and edit.op in ("prefix", "suffix")):
                outcome.no_caption.append(image)
                continue
            new = separator.join(edit.tags)
            outcome.created.append(path)
        else:
            outcome.captions += 1
            new = edit_text(old, edit, separator, image)
            if new == old:
                continue
        outcome.changed.append((path, old or "", new))
        if old is None:
            outcome.captions += 1
        if dry_run:
            continue
        try:
            write_caption(path, new)
        except OSError as exc:
            outcome.changed.pop()
            outcome.failures.append((path, f"cannot write ({exc})"))
    return outcome
