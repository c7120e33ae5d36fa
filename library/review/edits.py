"""Caption edits from the review page: write one caption, add or remove tags across images, sidecars only."""

from __future__ import annotations

import os
import re
import threading
from collections import Counter
from pathlib import Path

from library.files.confinement import Confinement
from library.dataset.caption_edit import CaptionEdit, edit_tags
from library.files.discovery import discover_images
from library.files.sidecars import CaptionReadError, SidecarLayout, read_caption, split_caption, write_caption
from library.taggers.tag_rules import tag_key
from library.review.thumbnails import absolute, relative_key

MAX_CAPTION_CHARS = 100_000
NO_BASE = object()  # a save without "base" (scripts, curl): written whatever the file holds now


class EditRefused(Exception):
    """A request the store will not carry out; `status` is the HTTP status that says why."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def line_separator(line: str, separator: str) -> str:
    """The separator this line actually uses ('a,b' keeps ',' even when the option says ', ')."""
    core = separator.strip()
    if not core or core not in line:
        return separator
    forms = Counter(re.findall(r"\s*" + re.escape(core) + r"\s*", line))
    return forms.most_common(1)[0][0] if forms else separator


def change_tags(text: str | None, op: str, tags: list[str], separator: str) -> str | None:
    """Add tags to (at the end) or remove tags from the first line of a caption; the other lines stay as they are.

    Tags match whatever their underscores ('long_hair' is 'long hair'); adding a tag the line already has
    changes nothing. Returns the new text, or None when there is no caption and nothing to add.
    """
    if op not in ("add", "remove"):
        raise ValueError(f"unknown tag operation {op!r} (add or remove)")
    if text is None:
        return separator.join(tags) if op == "add" and tags else None
    lines = text.split("\n")
    first = next((i for i, line in enumerate(lines) if line.strip()), 0)
    sep = line_separator(lines[first], separator)
    current = split_caption(lines[first], sep)
    if op == "add":
        have = {tag_key(t) for t in current}
        new = current + [t for t in dict.fromkeys(tags) if tag_key(t) not in have]
    else:
        new = edit_tags(current, CaptionEdit("remove", tags=list(tags)))
    if new != current:
        lines[first] = sep.join(new)
    return "\n".join(lines)


class CaptionStore:
    """The dataset's images by id (path relative to the root) and their caption sidecars; the only files it writes.

    Args:
        root: the dataset folder (or one image).
        layout: where each image's sidecar is.
        recursive: include subfolders.
        separator: caption separator for tag edits.
    """

    def __init__(self, root: str | os.PathLike, layout: SidecarLayout, recursive: bool = False,
                 separator: str = ", "):
        self.root = absolute(root)
        self.folder = self.root.parent if self.root.is_file() else self.root
        self.layout = layout
        self.recursive = recursive
        self.separator = separator
        self.confinement = Confinement(self.folder, layout.output_dir)
        self._lock = threading.Lock()
        self.images: dict[str, Path] = {}
        self._owners: dict[Path, list[str]] = {}
        self.refresh()

    def refresh(self) -> None:
        """Look for the dataset's images again (new files become editable)."""
        images = discover_images(self.root, self.recursive)
        table = {relative_key(absolute(p), self.folder): absolute(p) for p in images}
        owners: dict[Path, list[str]] = {}
        for rel, path in table.items():
            owners.setdefault(self.layout.path_for(path), []).append(rel)
        with self._lock:
            self.images, self._owners = table, owners

    def image(self, rel) -> Path:
        """The image with this id; anything else (a raw path, '../x', a sidecar's name) is refused."""
        if not isinstance(rel, str) or rel not in self.images:
            raise EditRefused(404, f"not an image of this dataset: {rel!r}")
        return self.images[rel]

    def image_file(self, rel) -> Path:
        """The image to serve for this id; one whose real path is outside the dataset (a symlink out) is refused."""
        image = self.image(rel)
        reason = self.confinement.outside_reason(image)
        if reason:
            raise EditRefused(403, reason)
        return image

    def _sharing(self, caption_path: Path) -> list[str]:
        return self._owners.get(caption_path, [])

    def _confined(self, caption_path: Path) -> Path:
        reason = self.confinement.outside_reason(caption_path)
        if reason:
            raise EditRefused(403, reason)
        return caption_path

    def _read(self, caption_path: Path) -> str | None:
        self._confined(caption_path)
        try:
            text = read_caption(caption_path)
        except CaptionReadError:
            raise EditRefused(409, f"{caption_path.name} is not UTF-8 text; fix it in an editor") from None
        return text.replace("\r\n", "\n") if text is not None else None

    def set_caption(self, rel, text, base=NO_BASE) -> dict[str, str]:
        """Write one caption; returns {image id: new caption} for every image sharing that sidecar.

        Args:
            rel: the image id.
            text: the new caption (a trailing newline is added on disk).
            base: the caption the editor started from, None when the image had no caption file; when the file
                changed since (or was created since), the write is refused (409). NO_BASE: no check.
        """
        image = self.image(rel)
        if not isinstance(text, str) or len(text) > MAX_CAPTION_CHARS:
            raise EditRefused(400, f"caption must be text of at most {MAX_CAPTION_CHARS} characters")
        if base is not NO_BASE and base is not None and not isinstance(base, str):
            raise EditRefused(400, "base must be the caption text the edit started from, or null")
        text = text.replace("\r\n", "\n").replace("\r", "\n").strip("\n")
        path = self.layout.path_for(image)
        with self._lock:
            current = self._read(path)
            stale = (current is not None if base is None
                     else base is not NO_BASE and (current or "") != base.replace("\r\n", "\n").strip("\n"))
            if stale:
                raise EditRefused(409, f"{path.name} changed on disk since the page was loaded; reload the page")
            if current != text:
                write_caption(self._confined(path), text)
            return {r: text for r in self._sharing(path)}

    def change_tags(self, rels, op: str, tags) -> tuple[dict[str, str], int, list[str]]:
        """Add or remove tags on the first line of several images' captions (each sidecar once).

        Returns:
            ({image id: new caption} for every image whose caption file was written, files written,
            one line per caption file that could not be edited).
        """
        if not isinstance(rels, list) or not rels:
            raise EditRefused(400, "no images selected")
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise EditRefused(400, "tags must be a list of text")
        tags = [t.strip() for t in tags if t.strip()]
        if not tags:
            raise EditRefused(400, "no tags given")
        if any("\n" in t or "\r" in t for t in tags):
            raise EditRefused(400, "a tag must not contain a line break")
        if sum(len(t) for t in tags) > MAX_CAPTION_CHARS:
            raise EditRefused(400, f"tags must be at most {MAX_CAPTION_CHARS} characters together")
        if op not in ("add", "remove"):
            raise EditRefused(400, f"unknown tag operation {op!r} (add or remove)")
        images = [self.image(r) for r in rels]  # every id is checked before anything is written
        updated: dict[str, str] = {}
        problems: list[str] = []
        written = 0
        with self._lock:
            done: set[Path] = set()
            for image in images:
                path = self.layout.path_for(image)
                if path in done:
                    continue
                done.add(path)
                try:
                    old = self._read(path)
                    new = change_tags(old, op, tags, self.separator)
                    if new is None or new == old:
                        continue
                    if len(new) > MAX_CAPTION_CHARS:
                        raise EditRefused(400, f"the caption would exceed {MAX_CAPTION_CHARS} characters")
                    write_caption(self._confined(path), new)
                except (EditRefused, OSError) as exc:
                    problems.append(f"{path.name}: {exc}")
                    continue
                written += 1
                for r in self._sharing(path):
                    updated[r] = new
        return updated, written, problems
