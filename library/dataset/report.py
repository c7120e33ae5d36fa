"""A pre-training dataset report: images per bucket, upscaled images, lonely buckets, caption lengths, tag counts."""

from __future__ import annotations

import logging
import os
import statistics
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from library.dataset import toml_io
from library.dataset.buckets import (DEFAULT_BUCKET_RESO_STEPS, DEFAULT_MAX_BUCKET_RESO, DEFAULT_MIN_BUCKET_RESO, BucketPlanner,
                      BucketSettings, as_resolution)
from library.dataset.scan import scan_captions, trainer_loads_from_folder
from library.files.sidecars import split_caption
from library.errors import FatalError
from library.files.image_io import ImageLoadError
from library.dataset.metadata_merge import load_metadata, resolve_key
from library.dataset.tokens import TokenCounter

logger = logging.getLogger(__name__)



def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """Stored width and height from the file header (no decode, no EXIF turn: what sd-scripts buckets with).

    Raises:
        ImageLoadError: the file is not a readable image.
    """
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as img:
                return img.size
    except Exception as exc:  # noqa: BLE001 - any header failure is a per-image reason
        raise ImageLoadError(f"{exc.__class__.__name__}: {exc}") from None


@dataclass
class ReportItem:
    """One image as the trainer sees it: the caption it trains on and how often it repeats."""

    path: Path
    caption: str | None
    repeats: int = 1


def _named(items, limit: int) -> str:
    more = len(items) - limit
    return ", ".join(items[:limit]) + (f" and {more} more" if more > 0 else "")


def _stats(values: list[int]) -> str:
    if not values:
        return "none"
    return f"min {min(values)}, median {statistics.median(values):g}, max {max(values)}"


def report_lines(items: list[ReportItem], settings: BucketSettings, separator: str = ",", top_tags: int = 20,
                 max_list: int = 8, title: str = "dataset", tokens: TokenCounter | None = None) -> list[str]:
    """The report for these images under these bucket settings, as lines of text.

    Args:
        items: the images, captions and repeats.
        settings: the dataset's bucketing keys.
        separator: caption separator for tag counting.
        top_tags: how many of the most frequent tags to list (0: none).
        max_list: how many file names to name per finding.
        tokens: the token counters (default: CLIP and T5 estimates).
    """
    try:
        planner = BucketPlanner(settings)
    except ValueError as exc:
        return [f"{title}: {exc}"]
    buckets: Counter = Counter()
    members: dict[tuple[int, int], list[str]] = {}
    upscaled, broken, unreadable, errors = [], [], [], []
    for item in items:
        try:
            w, h = image_size(item.path)
        except ImageLoadError as exc:
            unreadable.append(f"{item.path.name} ({exc})")
            continue
        a = planner.assign(w, h)
        if min(a.bucket) < 1:
            broken.append(f"{item.path.name} {w}x{h}")
            continue
        buckets[a.bucket] += item.repeats
        members.setdefault(a.bucket, []).append(item.path.name)
        errors.append(abs(a.ar_error))
        if a.upscaled:
            upscaled.append((a.resized[0] / w, f"{item.path.name} {w}x{h} -> {a.resized[0]}x{a.resized[1]}"))
    captions = [i.caption for i in items if i.caption is not None]
    out = [f"{title}: {len(items)} images, {len(captions)} with a caption, {len(items) - len(captions)} without",
           f"  settings: {settings.describe()}"]
    out.append("  images per bucket (width x height: images with repeats):")
    for reso in sorted(buckets):
        out.append(f"    {reso[0]}x{reso[1]}: {buckets[reso]}")
    if errors:
        out.append(f"  mean aspect-ratio error: {statistics.fmean(errors):.4f}")
    lonely = [f"{r[0]}x{r[1]} ({m[0]})" for r, m in sorted(members.items()) if len(m) == 1]
    if lonely:
        out.append(f"  buckets with a single image ({len(lonely)}; with batch size > 1 each trains as a batch "
                   f"of its own): {_named(lonely, max_list)}")
    if upscaled:
        upscaled.sort(key=lambda t: -t[0])
        out.append(f"  images training will enlarge ({len(upscaled)}, up to {upscaled[0][0]:.2f}x; blurry input): "
                   f"{_named([t[1] for t in upscaled], max_list)}")
    if broken:
        out.append(f"  images too small for their bucket (sd-scripts fails on them): {_named(broken, max_list)}")
    if unreadable:
        out.append(f"  unreadable images ({len(unreadable)}): {_named(unreadable, max_list)}")
    if captions:
        longest = [max((ln for ln in c.split("\n") if ln.strip()), key=len, default="") for c in captions]
        out.append(f"  caption words: {_stats([len(ln.split()) for ln in longest])}; "
                   f"characters: {_stats([len(ln) for ln in longest])}")
        first_lines = [c.split("\n", 1)[0] for c in captions]
        out.append(f"  tags per caption: {_stats([len(split_caption(ln, separator)) for ln in first_lines])}")
        counter = tokens if tokens is not None else TokenCounter.estimates()
        named = [i for i in items if i.caption is not None]
        out += counter.report_lines([i.path.name for i in named], counter.measure_many(captions), max_list)
        empty = sum(1 for c in captions if not c.strip())
        if empty:
            out.append(f"  {empty} caption files are empty")
        if top_tags:
            freq = Counter(t for ln in first_lines for t in split_caption(ln, separator))
            common = ", ".join(f"{t} ({n})" for t, n in freq.most_common(top_tags))
            out.append(f"  {len(freq)} distinct tags; most frequent: {common}")
    return out


def folder_report(root: str | os.PathLike, caption_extension: str, settings: BucketSettings,
                  recursive: bool = False, separator: str = ",", top_tags: int = 20,
                  tokens: TokenCounter | None = None) -> list[str]:
    """Report a captioned folder (recursively when asked) under the given bucket settings."""
    scan = scan_captions(root, caption_extension, recursive)
    if not scan.captions:
        raise FatalError(f"no images found in {root}" + ("" if recursive else " (add --recursive?)"))
    items = [ReportItem(p, c) for p, c in scan.captions.items()]
    lines = report_lines(items, settings, separator, top_tags, title=str(scan.root), tokens=tokens)
    return lines + [f"  warning: {w}" for w in scan.warnings(caption_extension)]


def _value(key: str, tables: list[dict], default):
    for table in tables:
        if table.get(key) is not None:
            return table[key]
    return default


def _dir(text: str, config_dir: Path) -> Path:
    p = Path(os.path.expanduser(text))
    if p.is_absolute() or p.exists():
        return p.resolve()
    return (config_dir / p).resolve()


def _subset_items(subset: dict, chain: list[dict], config_dir: Path, problems: list[str]) -> list[ReportItem]:
    repeats = int(_value("num_repeats", chain, 1))
    wildcard = bool(_value("enable_wildcard", chain, False))
    items = []
    if "metadata_file" in subset:
        image_dir = _dir(subset["image_dir"], config_dir) if subset.get("image_dir") else None
        try:
            entries = load_metadata(_dir(subset["metadata_file"], config_dir))
        except (FatalError, OSError) as exc:
            problems.append(str(exc))
            return []
        for key, entry in entries.items():
            path = resolve_key(key, image_dir)
            if path is None:
                problems.append(f"{subset['metadata_file']}: no image for key {key!r}")
                continue
            parts = [entry.get(k) for k in ("caption", "tags") if entry.get(k)]
            items.append(ReportItem(path, ", ".join(parts) if parts else None, repeats))
        return items
    folder = _dir(str(subset.get("image_dir", "")), config_dir)
    if not folder.is_dir():
        problems.append(f"image_dir {subset.get('image_dir')!r} is not a folder (sd-scripts skips the subset)")
        return []
    extension = str(_value("caption_extension", chain, ".caption"))
    extension = extension if extension.startswith(".") else "." + extension
    for path in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                       and trainer_loads_from_folder(p)):
        caption_path = path.with_name(path.stem + extension)
        caption = None
        if caption_path.is_file():
            text = caption_path.read_text(encoding="utf-8", errors="replace").strip()
            lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
            caption = "\n".join(lines) if wildcard else (lines[0] if lines else "")
        items.append(ReportItem(path, caption, repeats))
    return items


def config_report(config_path: str | os.PathLike, top_tags: int = 20,
                  default_resolution: int | tuple[int, int] | None = None,
                  tokens: TokenCounter | None = None) -> list[str]:
    """Report every dataset of an sd-scripts TOML config the way sd-scripts would load it.

    Args:
        config_path: the .toml.
        top_tags: most frequent tags to list per dataset.
        default_resolution: the trainer's --resolution, for datasets that leave `resolution` out.
        tokens: the token counters (default: CLIP and T5 estimates).
    """
    config_path = Path(config_path)
    try:
        config = toml_io.load(config_path)
    except (OSError, toml_io.TomlError) as exc:
        raise FatalError(f"{config_path}: cannot read dataset config ({exc})") from None
    general = config.get("general", {})
    out: list[str] = []
    for number, dataset in enumerate(config.get("datasets", []), 1):
        chain = [dataset, general]
        resolution = _value("resolution", chain, default_resolution)
        if resolution is None:
            out.append(f"dataset {number}: no resolution in the config; pass the trainer's --resolution here")
            continue
        settings = BucketSettings(
            as_resolution(resolution), bool(_value("enable_bucket", chain, False)),
            int(_value("min_bucket_reso", chain, DEFAULT_MIN_BUCKET_RESO)),
            int(_value("max_bucket_reso", chain, DEFAULT_MAX_BUCKET_RESO)),
            int(_value("bucket_reso_steps", chain, DEFAULT_BUCKET_RESO_STEPS)),
            bool(_value("bucket_no_upscale", chain, False)))
        problems: list[str] = []
        items: list[ReportItem] = []
        for subset in dataset.get("subsets", []):
            items += _subset_items(subset, [subset, dataset, general], config_path.resolve().parent, problems)
        separator = str(_value("caption_separator", chain, ","))
        title = f"dataset {number} ({len(dataset.get('subsets', []))} subsets)"
        out += report_lines(items, settings, separator, top_tags, title=title, tokens=tokens)
        out += [f"  problem: {p}" for p in problems[:20]]
        if len(problems) > 20:
            out.append(f"  ... and {len(problems) - 20} more problems")
    return out or [f"{config_path}: no [[datasets]] in this config"]
