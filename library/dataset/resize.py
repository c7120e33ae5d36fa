"""Bucketing-friendly downscaling: shrink oversized images to the size training resizes them to, copy the rest."""

from __future__ import annotations

import functools
import logging
import os
import shutil
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from library.dataset.buckets import BucketPlanner, BucketSettings
from library.files.discovery import discover_images, image_extensions
from library.errors import FatalError
from library.files.image_io import ImageLoadError, failure_reason
from library.run.pipeline import LoadedItem, RunSummary, default_workers, run_batches
from library.files.sidecars import atomic_write, write_error

logger = logging.getLogger(__name__)

SKIP_SIDECARS = (".npz",)  # latent caches describe the old pixels: never carried over
_SAVE_AS = {"MPO": "JPEG"}  # multi-picture JPEGs from cameras are written as plain JPEG


@dataclass(frozen=True)
class ResizeOptions:
    """Where to write, how training will bucket, and how to encode."""

    in_root: Path
    out_root: Path
    settings: BucketSettings = BucketSettings()
    exif_transpose: bool = False
    quality: int = 95


@functools.lru_cache(maxsize=8)
def _planner(settings: BucketSettings) -> BucketPlanner:
    return BucketPlanner(settings)


def target_size(width: int, height: int, settings: BucketSettings) -> tuple[int, int] | None:
    """The smaller size to store an image at, or None when it should stay as it is.

    The target is the size sd-scripts resizes the image to before its centre crop; an image stored at that
    size lands in the same bucket and is only cropped at training time. Never larger than the original.
    """
    planner = _planner(settings)
    first = planner.assign(width, height)
    tw, th = first.resized
    if tw >= width or th >= height or tw < 1 or th < 1:
        return None
    # Rounding can tip an image sitting between two buckets' aspect ratios into the other one: try the
    # nearest sizes that keep its bucket and need no resampling at training time; else keep the original.
    candidates = sorted(((dx, dy) for dx in range(-2, 3) for dy in range(-2, 3)), key=lambda d: abs(d[0]) + abs(d[1]))
    for dx, dy in candidates:
        cw, ch = tw + dx, th + dy
        if not (0 < cw < width and 0 < ch < height):
            continue
        again = planner.assign(cw, ch)
        if again.bucket == first.bucket and again.resized == (cw, ch):
            return cw, ch
    return None


def output_path(image: Path, options: ResizeOptions) -> Path:
    try:
        rel = image.relative_to(options.in_root)
    except ValueError:
        rel = Path(image.name)
    return options.out_root / rel


def _save_kwargs(fmt: str, info: dict, quality: int, exif: bytes | None) -> dict:
    kwargs = {}
    if info.get("icc_profile"):
        kwargs["icc_profile"] = info["icc_profile"]
    if fmt in ("JPEG", "WEBP"):
        kwargs["quality"] = quality
        if exif:
            kwargs["exif"] = exif
    if fmt == "PNG" and exif:
        kwargs["exif"] = exif
    return kwargs


def _written(dest: Path, write) -> None:
    """atomic_write(dest, write); a file-system error (full disk, read-only folder) says so, not 'damaged image'."""
    try:
        atomic_write(dest, write)
    except OSError as exc:
        if exc.errno is None:  # Pillow's decoder and encoder errors carry no errno: the image itself is the problem
            raise
        raise ImageLoadError(write_error(dest, exc)) from None


def _atomic_save(img, dest: Path, fmt: str, kwargs: dict) -> None:
    _written(dest, lambda tmp: img.save(tmp, format=fmt, **kwargs))


def _atomic_copy(src: Path, dest: Path) -> None:
    _written(dest, lambda tmp: shutil.copy2(src, tmp))


def _resizable(img):
    """A mode Pillow resizes with LANCZOS (it falls back to nearest neighbour for palette and 1-bit)."""
    if img.mode == "P":
        return img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode == "1":
        return img.convert("L")
    if img.mode.startswith("I;16"):
        return img.convert("I")
    return img


def resize_one(path: Path, options: ResizeOptions) -> tuple[str, tuple[int, int]]:
    """Write one image's bucketing-friendly copy; returns (what happened, original size).

    Raises:
        ImageLoadError: the image cannot be read or written (a per-image failure).
    """
    from PIL import Image, ImageOps

    dest = output_path(path, options)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as img:
                fmt = _SAVE_AS.get(img.format, img.format) or "PNG"
                size = img.size
                rotated = options.exif_transpose and img.getexif().get(0x0112, 1) in range(2, 9)
                turned = ImageOps.exif_transpose(img) if rotated else img
                target = target_size(*turned.size, options.settings)
                if target is None and not rotated:
                    img.load()  # a damaged file is reported, not copied into the training set
                    _atomic_copy(path, dest)
                    return "copied", size
                info = dict(img.info)
                exif = turned.getexif().tobytes() if rotated else info.get("exif")
                out = turned
                if target is not None:
                    out = _resizable(turned).resize(target, Image.LANCZOS)
                    if turned.mode.startswith("I;16"):
                        out = out.convert(turned.mode)  # back to 16 bits: PNG cannot store 32-bit "I"
                    if fmt == "JPEG" and out.mode not in ("RGB", "L", "CMYK"):
                        out = out.convert("RGB")
                _atomic_save(out, dest, fmt, _save_kwargs(fmt, info, options.quality, exif))
                w, h = out.size
                what = f"resized {size[0]}x{size[1]} -> {w}x{h}" if target else "EXIF orientation applied"
                return what, size
    except ImageLoadError:
        raise
    except Exception as exc:  # noqa: BLE001 - a per-image failure is data
        raise ImageLoadError(failure_reason(exc, path)) from None


def _sidecars(images: list[Path]) -> dict[Path, list[Path]]:
    """Non-image files sharing each image's stem in its folder (captions, tag files, masks' JSON, ...)."""
    image_exts = image_extensions()
    by_folder: dict[Path, dict[str, list[Path]]] = {}
    out: dict[Path, list[Path]] = {}
    for image in images:
        folder = image.parent
        if folder not in by_folder:
            table: dict[str, list[Path]] = {}
            for entry in os.scandir(folder):
                p = Path(entry.path)
                if entry.is_file() and not entry.name.startswith(".") and p.suffix.lower() not in image_exts \
                        and p.suffix.lower() not in SKIP_SIDECARS:
                    table.setdefault(p.stem, []).append(p)
            by_folder[folder] = table
        out[image] = by_folder[folder].get(image.stem, [])
    return out


@dataclass
class ResizeOutcome:
    summary: RunSummary
    actions: Counter = field(default_factory=Counter)
    sidecars: int = 0

    def lines(self) -> list[str]:
        extra = (f"  resized {self.actions['resized']}, copied unchanged {self.actions['copied']}, "
                 f"EXIF-rotated only {self.actions['EXIF orientation applied']}, sidecars copied {self.sidecars}")
        lines = self.summary.lines()
        return lines[:1] + [extra] + lines[1:]


def resize_images(in_root: str | os.PathLike, out_root: str | os.PathLike, settings: BucketSettings,
                  recursive: bool = False, exif_transpose: bool = False, quality: int = 95,
                  workers: int | None = None, progress: bool = True) -> ResizeOutcome:
    """Write a bucketing-friendly copy of every image (and its sidecars) under in_root into out_root.

    Args:
        in_root: the dataset folder.
        out_root: a different folder; the input tree is mirrored there.
        settings: the training's bucket settings (the size each image is stored at depends on them).
        recursive: include subfolders.
        exif_transpose: bake EXIF orientation into the pixels (sd-scripts ignores the EXIF tag).
        quality: JPEG/WebP quality of re-encoded images.
        workers: decode/encode processes (None: one per core).
    Raises:
        FatalError: bad folders, or settings sd-scripts would refuse.
    """
    in_root, out_root = Path(in_root).resolve(), Path(out_root).resolve()
    if in_root == out_root:
        raise FatalError("the output folder must differ from the input folder (originals are never overwritten)")
    if recursive and in_root in out_root.parents:
        raise FatalError("with --recursive the output folder must not be inside the input folder")
    _planner(settings)  # OptionError where sd-scripts would refuse the settings
    images = discover_images(in_root, recursive)
    root = in_root.parent if in_root.is_file() else in_root
    options = ResizeOptions(root, out_root, settings, exif_transpose, quality)
    sidecars = _sidecars(images)
    outcome = ResizeOutcome(RunSummary(verb="processed"))

    def process(batch: list[LoadedItem]) -> list[str | None]:
        errors = []
        for item in batch:
            outcome.actions[item.data.split(" ", 1)[0] if item.data.startswith("resized") else item.data] += 1
            logger.debug("%s: %s", item.path, item.data)
            try:
                for car in sidecars.get(item.path, []):
                    _atomic_copy(car, output_path(car, options))
                    outcome.sidecars += 1
                errors.append(None)
            except (OSError, ImageLoadError) as exc:
                errors.append(f"image written, sidecar copy failed: {exc}")
        return errors

    loader = functools.partial(resize_one, options=options)
    n_workers = default_workers() if workers is None else workers
    run_batches(images, loader, process, batch_size=16, workers=n_workers, summary=outcome.summary,
                desc="resizing", progress=progress)
    return outcome
