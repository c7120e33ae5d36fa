"""Merge caption or tag sidecars into sd-scripts fine-tuning metadata (JSON or JSONL) whose keys name real files."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from library.dataset.scan import SD_SCRIPTS_EXTENSIONS, scan_captions
from library.errors import FatalError
from library.outputs import json_text
from library.files.sidecars import SidecarLayout, atomic_write_text, normalize_extension

logger = logging.getLogger(__name__)

FIELDS = ("caption", "tags")
_MAX_NAMED = 5


def is_jsonl(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() == ".jsonl"


def load_metadata(path: str | os.PathLike) -> dict[str, dict]:
    """Entries of a metadata file: JSON {key: {...}} or JSON Lines {"image_path": key, ...} per line.

    Raises:
        FatalError: the file is not valid JSON/JSONL of that shape.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
        if not is_jsonl(path):
            data = json.loads(text or "{}")
            if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
                raise ValueError("expected an object of {image key: {...}}")
            return data
        entries: dict[str, dict] = {}
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            row = json.loads(line)
            if not isinstance(row, dict) or "image_path" not in row:
                raise ValueError(f"line {number} has no image_path")
            entries[str(row["image_path"])] = {k: v for k, v in row.items() if k != "image_path"}
        return entries
    except (ValueError, UnicodeDecodeError) as exc:
        raise FatalError(f"{path}: not a readable metadata file ({exc})") from None


def dump_metadata(path: str | os.PathLike, entries: dict[str, dict]) -> None:
    """Write entries atomically: JSON Lines when the name ends in .jsonl, else indented JSON.

    Raises:
        FatalError: the file cannot be written (full disk, read-only folder); an existing file is left as it was.
    """
    if is_jsonl(path):
        lines = [json_text.dumps({"image_path": key, **entry}) for key, entry in entries.items()]
        text = "".join(line + "\n" for line in lines)
    else:
        text = json_text.dumps(entries, indent=2) + "\n"
    try:
        atomic_write_text(path, text)
    except OSError as exc:
        raise FatalError(f"{path}: cannot write the metadata file ({exc.strerror or exc}); "
                         "an existing file is unchanged") from None


def resolve_key(key: str, image_dir: str | os.PathLike | None) -> Path | None:
    """The file sd-scripts trains for a metadata key, or None.

    Absolute keys are used as they are, relative ones are joined to image_dir, and a key without an
    extension (sd-scripts' stem-only keys) takes the first image named stem.<ext> in sorted order.
    """
    p = Path(key)
    if not p.is_absolute():
        if image_dir is None:
            return None
        p = Path(image_dir) / p
    if p.suffix and p.is_file():
        return p.resolve()
    exts = SD_SCRIPTS_EXTENSIONS + tuple(e.upper() for e in SD_SCRIPTS_EXTENSIONS)
    found = sorted(str(p.parent / (p.name + e)) for e in exts if (p.parent / (p.name + e)).is_file())
    return Path(found[0]).resolve() if found else None


def image_key(image: Path) -> str:
    """The absolute-path key (the library default; every sd-scripts version uses an absolute key as is)."""
    return str(image.resolve())


def sd_scripts_key(image: Path, folder: Path, train_data_dir: str | os.PathLike, full_path: bool) -> str:
    """sd-scripts' key for an image, as its merge scripts and prepare_buckets_latents.py write it.

    `image_path if full_path else splitext(basename(image_path))[0]`, where image_path is the image as globbed
    from train_data_dir as the user gave it (a relative folder stays relative, symlinks are not resolved).
    """
    if not full_path:
        return os.path.splitext(image.name)[0]
    try:
        rel = image.relative_to(folder)
    except ValueError:
        rel = Path(image.name)
    return str(Path(train_data_dir) / rel)


@dataclass
class MergeResult:
    """What a merge wrote and what needs the user's attention."""

    out_path: Path
    field: str
    merged: int = 0
    entries: int = 0
    missing: list[Path] = field(default_factory=list)
    unreadable: list[Path] = field(default_factory=list)
    shared: dict[Path, list[Path]] = field(default_factory=dict)
    migrated: list[tuple[str, str]] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)
    multiline: int = 0
    key_collisions: dict[str, list[Path]] = field(default_factory=dict)

    def warning_lines(self) -> list[str]:
        out = []
        if self.missing:
            named = ", ".join(p.name for p in self.missing[:_MAX_NAMED])
            more = f" and {len(self.missing) - _MAX_NAMED} more" if len(self.missing) > _MAX_NAMED else ""
            out.append(f"{len(self.missing)} images have no caption file and were left out: {named}{more}")
        if self.unreadable:
            named = ", ".join(p.name for p in self.unreadable[:_MAX_NAMED])
            more = f" and {len(self.unreadable) - _MAX_NAMED} more" if len(self.unreadable) > _MAX_NAMED else ""
            out.append(f"{len(self.unreadable)} caption files are not UTF-8 text and were left out (save them as "
                       f"UTF-8): {named}{more}")
        for caption, owners in self.shared.items():
            out.append(f"{caption.name} is the caption of {len(owners)} images "
                       f"({', '.join(p.name for p in owners)}); each keeps its own entry with that text")
        for key, images in self.key_collisions.items():
            out.append(f"{', '.join(p.name for p in images)} share the key {key!r}: sd-scripts trains only one of "
                       "them (use --full_path, or rename)")
        if self.stale:
            named = ", ".join(self.stale[:_MAX_NAMED])
            out.append(f"{len(self.stale)} existing entries name no image file (sd-scripts stops with "
                       f"'no image' on them): {named}")
        return out

    def lines(self) -> list[str]:
        head = (f"merged {self.merged} {self.field} files into {self.out_path} ({self.entries} entries, "
                f"{len(self.missing)} images without a caption file)")
        out = [head]
        if self.migrated:
            out.append(f"  {len(self.migrated)} old entries re-keyed "
                       f"(e.g. {self.migrated[0][0]!r} -> {self.migrated[0][1]!r})")
        return out + [f"  warning: {w}" for w in self.warning_lines()]


def _migrate_legacy_keys(entries: dict[str, dict], image_dir: Path, key_of: dict[Path, str],
                         result: MergeResult) -> dict[str, dict]:
    """Re-key entries whose key is another form (stem, relative, absolute, unnormalised) of one of our images."""
    out: dict[str, dict] = {}
    ours = set(key_of.values())
    for key, entry in entries.items():
        if key in ours:
            out.setdefault(key, {}).update(entry)
            continue
        as_given = Path(key)  # sd-scripts tries a key as a path from the working folder first (os.path.exists)
        target = as_given.resolve() if as_given.suffix and as_given.is_file() else resolve_key(key, image_dir)
        new_key = key_of.get(target) if target is not None else None
        if new_key in ours:
            merged = dict(entry)
            merged.update(out.get(new_key, {}))
            out[new_key] = merged
            result.migrated.append((key, new_key))
        else:
            out[key] = entry
            if target is None:
                result.stale.append(key)
    return out


def merge_sidecars_to_metadata(train_data_dir: str | os.PathLike, out_path: str | os.PathLike, field: str,
                               caption_extension: str, in_path: str | os.PathLike | None = None,
                               recursive: bool = False, caption_dir: str | os.PathLike | None = None,
                               debug: bool = False, full_path: bool | None = None) -> MergeResult:
    """Read each image's sidecar into metadata[absolute image path][field] and write the file.

    Args:
        train_data_dir: folder of images.
        out_path: metadata to write (.json, or .jsonl for JSON Lines).
        field: "caption" (merge_captions_to_metadata) or "tags" (merge_dd_tags_to_metadata).
        caption_extension: the sidecars' extension.
        in_path: metadata to start from; default: out_path when it exists. Its other fields are kept,
            and stem-only or relative keys of our images are re-keyed to absolute paths.
        recursive: include subfolders.
        caption_dir: sidecars mirrored under this folder instead of next to the images.
        debug: log every key and text.
        full_path: sd-scripts' key rule (the merge scripts): True = the image path as globbed from train_data_dir,
            False = the file stem; None = absolute paths. Entries under another key of the same image are re-keyed.
    Raises:
        FatalError: no images, no sidecar at all, or an unreadable in_path.
    """
    if field not in FIELDS:
        raise ValueError(f"field must be one of {FIELDS}")
    extension = normalize_extension(caption_extension)
    out_path = Path(out_path)
    scan = scan_captions(train_data_dir, extension, recursive, caption_dir=caption_dir)
    if not scan.captions:
        raise FatalError(f"no images found in {train_data_dir}" + ("" if recursive else " (add --recursive?)"))
    result = MergeResult(out_path, field)
    if not scan.captioned:
        if scan.unreadable:
            raise FatalError(f"none of the {len(scan.captions)} images in {train_data_dir} has a readable {extension} "
                             f"file: {len(scan.unreadable)} are not UTF-8 text (save them as UTF-8)")
        raise FatalError(f"none of the {len(scan.captions)} images in {train_data_dir} has a {extension} file "
                         "(sd-scripts' captioners write .caption, taggers .txt: check --caption_extension)")
    source = Path(in_path) if in_path else (out_path if out_path.is_file() else None)
    if in_path and not source.is_file():
        raise FatalError(f"{source}: no such metadata file (--in_json)")
    entries = load_metadata(source) if source else {}
    folder = scan.root.parent if scan.root.is_file() else scan.root
    key_of = {p.resolve(): (image_key(p) if full_path is None else sd_scripts_key(p, folder, train_data_dir, full_path))
              for p in scan.captions}
    owners: dict[str, list[Path]] = {}
    for p in scan.captions:
        owners.setdefault(key_of[p.resolve()], []).append(p)
    result.key_collisions = {k: v for k, v in owners.items() if len(v) > 1}
    unreadable = set(scan.unreadable)
    layout = SidecarLayout(extension, scan.root, Path(caption_dir).resolve() if caption_dir else None)
    entries = _migrate_legacy_keys(entries, folder, key_of, result)
    for image, text in scan.captions.items():
        if text is None and layout.path_for(image) in unreadable:
            result.unreadable.append(layout.path_for(image))
            logger.warning("%s: caption file %s is not UTF-8", image, layout.path_for(image).name)
            continue
        if text is None:
            result.missing.append(image)
            logger.warning("%s: no caption file %s", image, image.stem + extension)
            continue
        key = key_of[image.resolve()]
        entries.setdefault(key, {})[field] = text.strip()
        result.merged += 1
        if debug:
            logger.debug("%s: %s", key, text.strip())
    result.shared = scan.shared
    result.multiline = scan.multiline
    result.entries = len(entries)
    dump_metadata(out_path, entries)
    return result
