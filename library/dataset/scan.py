"""Look over a captioned folder as a trainer will: which images have captions, per folder, and what sd-scripts skips."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from library.files.discovery import find_images, image_extensions
from library.errors import FatalError
from library.files.sidecars import CaptionReadError, SidecarLayout, read_caption, split_caption

logger = logging.getLogger(__name__)

# What sd-scripts' folder (DreamBooth) loader globs for: these, in lower and upper case only
# (plus .avif/.jxl when their Pillow plugins are installed). Anything else is silently not trained.
SD_SCRIPTS_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
_MAX_NAMED = 5


def trainer_loads_from_folder(path: Path) -> bool:
    """True when sd-scripts' image_dir loader picks this file up (its extension list is case-sensitive on POSIX)."""
    suffix = path.suffix
    known = SD_SCRIPTS_EXTENSIONS + tuple(e for e in image_extensions() if e in (".avif", ".jxl"))
    if os.name == "nt":
        return suffix.lower() in known
    return suffix in known or suffix in tuple(e.upper() for e in known)


def _named(paths, root: Path) -> str:
    names = []
    for p in list(paths)[:_MAX_NAMED]:
        try:
            names.append(str(Path(p).relative_to(root)))
        except ValueError:
            names.append(str(p))
    more = len(paths) - _MAX_NAMED
    return ", ".join(names) + (f" and {more} more" if more > 0 else "")


@dataclass
class DatasetScan:
    """Images under a root and their caption text (None: no caption file; '' : empty)."""

    root: Path
    captions: dict[Path, str | None] = field(default_factory=dict)
    unreadable: list[Path] = field(default_factory=list)
    shared: dict[Path, list[Path]] = field(default_factory=dict)
    multiline_images: list[Path] = field(default_factory=list)
    trigger_missing: list[Path] = field(default_factory=list)
    trigger: list[str] = field(default_factory=list)

    @property
    def multiline(self) -> int:
        """Captions with more than one non-empty line (tags + description)."""
        return len(self.multiline_images)

    @property
    def images(self) -> list[Path]:
        return list(self.captions)

    @property
    def captioned(self) -> list[Path]:
        return [p for p, c in self.captions.items() if c is not None]

    def captioned_folders(self) -> list[Path]:
        """Folders holding at least one captioned image, sorted; each becomes one sd-scripts subset."""
        return sorted({p.parent for p in self.captioned}, key=lambda f: (len(f.parts), str(f)))

    def warnings(self, extension: str, folder_subsets: bool = True) -> list[str]:
        """Things that would make training differ from what the user expects, as sentences."""
        out = []
        folders = set(self.captioned_folders())
        missing = [p for p, c in self.captions.items() if c is None and p.parent in folders]
        if missing:
            out.append(f"{len(missing)} images have no {extension} caption and will be trained with an empty "
                       f"caption: {_named(missing, self.root)}")
        if self.unreadable:
            out.append(f"{len(self.unreadable)} caption files are not UTF-8 text (sd-scripts stops on them): "
                       f"{_named(self.unreadable, self.root)}")
        hidden = [p for p in self.captioned if not trainer_loads_from_folder(p)]
        if folder_subsets and hidden:
            out.append(f"{len(hidden)} captioned images have an extension sd-scripts' image_dir loader skips "
                       f"({', '.join(sorted({p.suffix for p in hidden}))}): convert them, or train from a "
                       f"metadata file (merge_captions_to_metadata.py), which loads any format: "
                       f"{_named(hidden, self.root)}")
        for caption, owners in self.shared.items():
            out.append(f"{caption.name} is the caption of {len(owners)} images "
                       f"({_named(owners, self.root)}); they are trained with the same text")
        if self.trigger and self.trigger_missing:
            out.append(f"{len(self.trigger_missing)} captions do not start with {', '.join(self.trigger)!r}, so "
                       f"keep_tokens keeps another tag there (fix: caption_tools.py prefix): "
                       f"{_named(self.trigger_missing, self.root)}")
        return out


def scan_captions(image_root: str | os.PathLike, caption_extension: str, recursive: bool = False,
                  caption_dir: str | os.PathLike | None = None, trigger: list[str] | None = None,
                  separator: str = ",") -> DatasetScan:
    """Find the images under image_root and read each one's caption.

    Args:
        image_root: folder of images (a single image means its folder).
        caption_extension: caption files' extension.
        recursive: include subfolders.
        caption_dir: captions mirrored under this folder instead of next to the images.
        trigger: leading tokens every caption's first line should start with (checked, never changed).
        separator: the caption separator, for the trigger check.
    Raises:
        FatalError: image_root does not exist.
    """
    root = Path(image_root)
    if not root.exists():
        raise FatalError(f"{root}: no such file or folder")
    root = root.resolve()
    folder = root.parent if root.is_file() else root
    layout = SidecarLayout(caption_extension, folder, Path(caption_dir).resolve() if caption_dir else None)
    scan = DatasetScan(folder, trigger=list(trigger or []))
    owners: dict[Path, list[Path]] = {}
    for image in find_images(root, recursive):
        image = image.resolve() if not image.is_absolute() else image
        caption_path = layout.path_for(image)
        owners.setdefault(caption_path, []).append(image)
        try:
            text = read_caption(caption_path)
        except CaptionReadError:
            scan.unreadable.append(caption_path)
            text = None
        except OSError as exc:
            logger.warning("%s: cannot read caption (%s)", caption_path, exc)
            text = None
        scan.captions[image] = text
        if text is None:
            continue
        lines = [line for line in text.splitlines() if line.strip()]
        if len(lines) > 1:
            scan.multiline_images.append(image)
        if scan.trigger:
            first = split_caption(lines[0], separator) if lines else []
            if first[:len(scan.trigger)] != scan.trigger:
                scan.trigger_missing.append(image)
    scan.shared = {c: imgs for c, imgs in owners.items() if len(imgs) > 1 and scan.captions[imgs[0]] is not None}
    return scan


def detect_caption_extension(image_root: str | os.PathLike, recursive: bool = False,
                             caption_dir: str | os.PathLike | None = None,
                             candidates: tuple[str, ...] = (".txt", ".caption")) -> str:
    """The caption extension most of the images have a file for (taggers write .txt, BLIP/GIT .caption).

    Args:
        image_root: folder of images.
        recursive: include subfolders.
        caption_dir: captions mirrored under this folder instead of next to the images.
    Raises:
        FatalError: no image has a caption file with any of the candidate extensions.
    """
    root = Path(image_root)
    images = find_images(root, recursive) if root.exists() else []
    folder = root.parent if root.is_file() else root
    counts = {ext: sum(SidecarLayout(ext, folder, caption_dir).exists_for(p) for p in images) for ext in candidates}
    best = max(candidates, key=lambda ext: counts[ext])
    if counts[best] == 0:
        raise FatalError(f"no caption files ({', '.join(candidates)}) next to the images in {root}; "
                         "pass --caption_extension")
    others = [f"{ext} ({n})" for ext, n in counts.items() if n and ext != best]
    if others:
        logger.warning("captions with several extensions: using %s (%d files), not %s", best, counts[best],
                       ", ".join(others))
    return best
