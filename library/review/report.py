"""The caption review page: every image beside its caption, tag frequencies, buckets and failures, as one HTML file."""

from __future__ import annotations

import json
import logging
import os
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import quote

from library.files.confinement import Confinement
from library.dataset.buckets import BucketPlanner, BucketSettings, default_bucket_settings
from library.files.discovery import discover_images
from library.errors import FatalError
from library.outputs import json_text
from library.dataset.metadata_merge import load_metadata, resolve_key
from library.dataset.tokens import ENCODERS, TokenCounter
from library.files.sidecars import CaptionReadError, SidecarLayout, atomic_write_text, read_caption
from library.review.thumbnails import ThumbInfo, absolute, build_thumbnails, relative_key

logger = logging.getLogger(__name__)

DEFAULT_PAGE_NAME = "caption_report.html"
ASSETS = Path(__file__).resolve().parents[1] / "data"  # caption_report.html (with its styles) and caption_report.js
_DATA_MARK, _SCRIPT_MARK, _TITLE_MARK = "{{DATA}}", "{{SCRIPT}}", "{{TITLE}}"
_MARKS = re.compile(r"\{\{(?:DATA|SCRIPT|TITLE)\}\}")


@dataclass
class ReportOptions:
    """How to find the dataset's captions and how to draw the page.

    Args:
        caption_extension: the sidecars' extension.
        recursive: include subfolders.
        output_dir: sidecars mirrored under this folder instead of next to the images.
        separator: caption separator (tags of line 1 are split on its non-space part).
        settings: bucket settings for the bucket distribution (default: make_dataset_config.py's).
        thumb_size: longest side of a thumbnail in pixels.
        workers: thumbnail processes (None: one per core).
        metadata_path: read captions from this sd-scripts metadata file (.json/.jsonl) instead of sidecars.
        progress: show a progress bar while making thumbnails.
        tokens: token counters per text encoder for the token badges and cut warnings (default: estimates).
    """

    caption_extension: str = ".txt"
    recursive: bool = False
    output_dir: str | os.PathLike | None = None
    separator: str = ", "
    settings: BucketSettings = field(default_factory=default_bucket_settings)
    thumb_size: int = 256
    workers: int | None = None
    metadata_path: str | os.PathLike | None = None
    progress: bool = True
    tokens: TokenCounter = field(default_factory=TokenCounter.estimates)


@dataclass
class ReportResult:
    """What write_report made: the page, how many images and failures, how long it took, how big it is."""

    path: Path
    images: int
    failures: int
    without_caption: int
    seconds: float
    page_bytes: int

    def lines(self) -> list[str]:
        size = f"{self.page_bytes / 1e6:.1f} MB" if self.page_bytes >= 1e6 else f"{self.page_bytes / 1e3:.0f} kB"
        return [f"caption report: {self.path} ({self.images} images, {self.without_caption} without a caption, "
                f"{self.failures} failed; {size}, {self.seconds:.1f} s)"]


def thumbs_dir_for(page: str | os.PathLike) -> Path:
    """The thumbnail folder beside a page: hidden, so captioners and trainers never take thumbnails for images."""
    page = Path(page)
    return page.parent / f".{page.stem}_thumbs"


def default_page_path(root: str | os.PathLike, output_dir: str | os.PathLike | None = None) -> Path:
    """Where the page goes when the user names none: in the caption folder (the dataset may be read-only)."""
    base = Path(output_dir) if output_dir else Path(root)
    if base.is_file():
        base = base.parent
    return base / DEFAULT_PAGE_NAME


def dataset_root(root: str | os.PathLike) -> Path:
    """The folder image ids are relative to (a single image means its folder)."""
    root = absolute(root)
    return root.parent if root.is_file() else root


def _metadata_captions(path, folder: Path) -> dict[Path, str]:
    captions = {}
    for key, entry in load_metadata(path).items():
        image = resolve_key(key, folder)
        parts = [str(entry[k]) for k in ("caption", "tags") if entry.get(k)]
        if image is not None and parts:
            captions[image] = "\n".join(parts)
    return captions


def _url_prefix(target: Path, page_dir: Path) -> str:
    """A relative URL from the page's folder to `target` (a file URL when no relative path exists)."""
    try:
        rel = os.path.relpath(target, page_dir)
    except ValueError:  # another drive on Windows
        return target.as_uri().rstrip("/") + "/"
    if rel == ".":
        return ""
    return "/".join(quote(os.fsencode(part)) for part in Path(rel).parts) + "/"  # a name's own bytes


def collect_report(root: str | os.PathLike, options: ReportOptions, thumbs_dir: Path,
                   run_failures=(), confinement: Confinement | None = None) -> dict:
    """Everything the page shows, as one JSON-ready dict (images, captions, thumbnails, buckets, failures).

    Args:
        root: the dataset folder (or one image).
        options: where captions are and how to draw them.
        thumbs_dir: the thumbnail cache folder.
        run_failures: (path, reason) pairs of a captioning run, shown with the images that failed here.
        confinement: when given (the edit server), images and captions whose real path is outside it are not
            read: they are listed as failures instead.
    Raises:
        FatalError: no images, or the thumbnail folder cannot be written.
    """
    folder = dataset_root(root)
    images = [absolute(p) for p in discover_images(root, options.recursive)]
    layout = SidecarLayout(options.caption_extension, folder,
                           absolute(options.output_dir) if options.output_dir else None)
    failures: dict[str, str] = {}
    outside = {}
    if confinement is not None:
        outside = {image: reason for image in images if (reason := confinement.outside_reason(image))}
    try:
        thumbs = build_thumbnails([p for p in images if p not in outside], folder, thumbs_dir, options.thumb_size,
                                  options.workers, options.progress)
    except OSError as exc:
        raise FatalError(f"{thumbs_dir}: cannot write thumbnails ({exc.strerror or exc}); "
                         "give the page a writable place with --out PATH.html") from None
    planner = BucketPlanner(options.settings)
    metadata = _metadata_captions(options.metadata_path, folder) if options.metadata_path else None
    bucket_ids: dict[tuple[int, int], int] = {}
    rows = []
    for image in images:
        rel = relative_key(image, folder)
        info = thumbs.get(image) or ThumbInfo(None, None, outside.get(image))
        caption_path = layout.path_for(image)
        if confinement is not None and not confinement.allows(caption_path):
            caption = None
            failures[rel] = confinement.outside_reason(caption_path)
        elif metadata is not None:
            caption = metadata.get(image.resolve())  # metadata keys resolve symlinks
        else:
            try:
                caption = read_caption(caption_path)
            except CaptionReadError:
                caption = None
                failures[rel] = f"caption file {caption_path.name} is not UTF-8 text"
            except OSError as exc:
                caption = None
                failures[rel] = f"cannot read caption file ({exc.strerror or exc})"
        if caption is not None:
            caption = caption.replace("\r\n", "\n")
        bucket = -1
        if info.size and info.error is None:
            reso = planner.assign(*info.size).bucket
            bucket = bucket_ids.setdefault(reso, len(bucket_ids))
        if info.error:
            failures[rel] = info.error
        row = {"p": rel, "t": info.name, "c": caption, "b": bucket}
        if info.size:
            row["w"], row["h"] = info.size
        rows.append(row)
    for path, reason in run_failures:
        rel = relative_key(absolute(path), folder)
        failures.setdefault(rel, str(reason))
    tokens = token_data(rows, options.tokens)
    return {
        "version": 1,
        "title": folder.name or str(folder),
        "root": str(folder),
        "generated": datetime.now(timezone.utc).astimezone().strftime("%Y-%m-%d %H:%M"),
        "caption_extension": layout.extension,
        "caption_dir": str(layout.output_dir) if layout.output_dir else None,
        "separator": options.separator,
        "settings": options.settings.describe(),
        "buckets": [list(reso) for reso in bucket_ids],
        "images": rows,
        "failures": sorted(failures.items()),
        "tokens": tokens,
        "mode": "static",
        "token": "",
        "editable": False,
        "image_base": "",
        "thumb_base": "",
    }


def token_data(rows: list[dict], counter: TokenCounter) -> list[dict]:
    """Per row "k": the token count per encoder (in the order returned) and "x": {encoder: words lost} when cut.

    Returns the encoders: key, title, the limit cuts are shown for, every limit and whether counts are estimated.
    """
    captioned = [row for row in rows if row["c"]]
    keys = list(counter.tokenizers)
    for row, measured in zip(captioned, counter.measure_many([row["c"] for row in captioned])):
        row["k"] = [measured.counts[k] for k in keys]
        if measured.lost:
            row["x"] = measured.lost
    return [{"key": k, "title": ENCODERS[k].title, "limit": counter.limits[k], "limits": ENCODERS[k].limits,
             "estimate": counter.tokenizers[k].estimate, "label": counter.tokenizers[k].label()} for k in keys]


def _asset(name: str) -> str:
    return (ASSETS / name).read_text(encoding="utf-8")


def render_page(data: dict) -> str:
    """The self-contained page for `data` (no network: styles, script and data are inline)."""
    from html import escape

    blob = json_text.dumps(data, separators=(",", ":"))
    # inside <script type="application/json"> only "</" (and "<!--") could end the element early
    blob = blob.replace("<", "\\u003c").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    parts = {_TITLE_MARK: escape(f"captions: {json_text.printable(data['title'])}"), _SCRIPT_MARK: _asset("caption_report.js"),
             _DATA_MARK: blob}
    return _MARKS.sub(lambda m: parts[m.group(0)], _asset("caption_report.html"))  # one pass: no value is rescanned


def read_report_data(page: str | os.PathLike) -> dict:
    """The data a written page embeds (for tools and tests)."""
    text = Path(page).read_text(encoding="utf-8")
    start = text.index('<script type="application/json" id="report-data">') + len(
        '<script type="application/json" id="report-data">')
    return json.loads(text[start:text.index("</script>", start)])


def write_report(root: str | os.PathLike, page: str | os.PathLike | None, options: ReportOptions,
                 run_failures=()) -> ReportResult:
    """Write the static review page (and its thumbnail folder beside it) for a captioned dataset.

    Args:
        root: the dataset folder (or one image).
        page: the .html to write (None: caption_report.html in the caption folder).
        options: where captions are and how to draw them.
        run_failures: (path, reason) pairs of the captioning run that preceded the report.
    Raises:
        FatalError: no images, or the page or its thumbnails cannot be written.
    """
    start = time.perf_counter()
    page = Path(page) if page else default_page_path(root, options.output_dir)
    page = absolute(page)
    data = collect_report(root, options, thumbs_dir_for(page), run_failures)
    folder = Path(data["root"])
    data["image_base"] = _url_prefix(folder, page.parent)
    data["thumb_base"] = quote(os.fsencode(thumbs_dir_for(page).name)) + "/"
    html = render_page(data)
    try:
        atomic_write_text(page, html)
    except OSError as exc:
        raise FatalError(f"{page}: cannot write the report ({exc.strerror or exc})") from None
    without = sum(1 for row in data["images"] if row["c"] is None)
    return ReportResult(page, len(data["images"]), len(data["failures"]), without, time.perf_counter() - start,
                        len(html.encode("utf-8")))
