"""Write sd-scripts dataset configs (TOML) that load as is: a subset per captioned folder, added to existing files."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from library.dataset import toml_io
from library.dataset.buckets import (BUCKET_KEYS, DEFAULT_RESOLUTION, as_resolution, check_bucket_bounds,
                                     default_bucket_settings)
from library.dataset.scan import DatasetScan, scan_captions
from library.errors import FatalError, OptionError
from library.files.sidecars import atomic_write_text, normalize_extension, split_caption

logger = logging.getLogger(__name__)

HEADER = "sd-scripts dataset config written by captionkit.\nTrain with: --dataset_config <this file>."

# sd-scripts' config schema (library/config_util.py), by level. Value: the accepted Python types.
_NUM = (int, float)
DATASET_KEYS: dict[str, tuple] = {
    "resolution": (int, list), "batch_size": (int,), "enable_bucket": (bool,), "min_bucket_reso": (int,),
    "max_bucket_reso": (int,), "bucket_reso_steps": (int,), "bucket_no_upscale": (bool,),
    "network_multiplier": (float,), "validation_seed": (int,), "validation_split": (float,),
}
SUBSET_KEYS: dict[str, tuple] = {
    "num_repeats": (int,), "shuffle_caption": (bool,), "keep_tokens": (int,), "keep_tokens_separator": (str,),
    "secondary_separator": (str,), "caption_separator": (str,), "enable_wildcard": (bool,),
    "color_aug": (bool,), "flip_aug": (bool,), "random_crop": (bool,), "face_crop_aug_range": (list,),
    "token_warmup_min": (int,), "token_warmup_step": _NUM, "caption_prefix": (str,), "caption_suffix": (str,),
    "caption_dropout_rate": _NUM, "caption_dropout_every_n_epochs": (int,), "caption_tag_dropout_rate": _NUM,
    "custom_attributes": (dict,), "alpha_mask": (bool,),
}
DREAMBOOTH_ONLY_KEYS: dict[str, tuple] = {"caption_extension": (str,), "class_tokens": (str,),
                                          "cache_info": (bool,), "is_reg": (bool,)}
_SPECIAL = {"trigger", "caption_dir", "metadata_file"}
_OWNED = ("caption_extension", "enable_wildcard")  # always brought up to date on an existing subset
# sd-scripts' own defaults of the subset keys a new subset gets; written only where the user's file does not set
# the key for that dataset (a [general] shuffle_caption = true must not be overridden by a plain default)
_SUBSET_DEFAULTS = {"num_repeats": 1, "shuffle_caption": False, "keep_tokens": 0}


def _check_type(key: str, value: Any, types: tuple) -> Any:
    if float in types and isinstance(value, int) and not isinstance(value, bool):
        return float(value) if int not in types else value
    if isinstance(value, bool) and bool not in types:
        raise OptionError(f"dataset config option {key} must be {types[0].__name__}, got {value!r}")
    if not isinstance(value, types):
        raise OptionError(f"dataset config option {key} must be {types[0].__name__}, got {value!r}")
    return value


def _split_overrides(overrides: dict, dreambooth: bool) -> tuple[dict, dict, dict]:
    """Split keyword options into (dataset keys, subset keys, special keys); None means 'not given'."""
    dataset, subset, special = {}, {}, {}
    allowed_subset = dict(SUBSET_KEYS, **(DREAMBOOTH_ONLY_KEYS if dreambooth else {}))
    for key, value in overrides.items():
        if value is None:
            continue
        if key in _SPECIAL:
            special[key] = value
        elif key == "resolution":
            w, h = as_resolution(value)
            dataset[key] = w if w == h else [w, h]
        elif key in DATASET_KEYS:
            dataset[key] = _check_type(key, value, DATASET_KEYS[key])
        elif key in allowed_subset:
            subset[key] = _check_type(key, value, allowed_subset[key])
        elif key in DREAMBOOTH_ONLY_KEYS:
            raise OptionError(f"{key} is not allowed in a fine-tuning (metadata_file) subset")
        else:
            raise OptionError(f"unknown dataset config option {key!r} (sd-scripts would reject it)")
    return dataset, subset, special


def _separator_key(separator: str | None) -> str | None:
    """sd-scripts' caption_separator for the separator captions were written with (None: its ',' default)."""
    if separator is None:
        return None
    stripped = separator.strip()
    if stripped == ",":
        return None
    return stripped or " "


def _dataset_settings(explicit: dict, general: dict) -> dict:
    """The keys of a new [[datasets]]: the explicit ones, and captionkit's bucket defaults where [general] sets none.

    Raises:
        OptionError: settings sd-scripts would refuse (min_bucket_reso above the resolution's short side, ...).
    """
    inherited = {k: general[k] for k in BUCKET_KEYS if k in general}
    effective = default_bucket_settings({**inherited, **explicit})
    if effective.enable_bucket:
        check_bucket_bounds(effective.resolution, effective.min_bucket_reso, effective.max_bucket_reso)
    settings = {"resolution": explicit.get("resolution", DEFAULT_RESOLUTION), "enable_bucket": True,
                "min_bucket_reso": effective.min_bucket_reso, "max_bucket_reso": effective.max_bucket_reso,
                "bucket_reso_steps": effective.bucket_reso_steps, "bucket_no_upscale": False}
    settings.update(explicit)
    return {k: v for k, v in settings.items() if k in explicit or k not in inherited}


def _subset_defaults(subset_explicit: dict, trigger_tokens: int, multiline: bool) -> dict:
    sub = dict(_SUBSET_DEFAULTS, keep_tokens=trigger_tokens)
    if multiline:
        sub["enable_wildcard"] = True  # sd-scripts otherwise trains on the first line only
    sub.update(subset_explicit)
    return sub


def _resolve(path_text: str, base: Path) -> Path:
    p = Path(os.path.expanduser(path_text))
    return (p if p.is_absolute() else base / p).resolve()


def _same_path(a: str, b: str, base: Path) -> bool:
    pa, pb = _resolve(a, base), _resolve(b, base)
    return os.path.normcase(str(pa)) == os.path.normcase(str(pb))


def _kind(subset: dict) -> str:
    if "metadata_file" in subset:
        return "finetune"
    return "controlnet" if "conditioning_data_dir" in subset else "dreambooth"


def _dataset_kind(dataset: dict) -> str | None:
    kinds = {_kind(s) for s in dataset.get("subsets", []) if isinstance(s, dict)}
    return kinds.pop() if len(kinds) == 1 else None


@dataclass
class ConfigUpdate:
    """What writing a dataset config did: subsets added or brought up to date, and things the user should know."""

    path: Path
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    created: bool = False

    def lines(self) -> list[str]:
        verb = "wrote" if self.created else "updated"
        out = [f"dataset config: {verb} {self.path} ({len(self.added)} subsets added, {len(self.updated)} kept "
               f"up to date); train with --dataset_config {self.path}"]
        out += [f"  added subset: {name}" for name in self.added]
        out += [f"  warning: {w}" for w in self.warnings]
        return out


_OLD_HEADER_LINE = "# Train with: --dataset_config <this file>. Comments are not kept when captionkit adds subsets.\n"


def _read_existing(path: Path):
    """The config at `path` as an editable tomlkit document (comments kept); an empty one when there is none."""
    if not path.is_file():
        return toml_io.new_document(HEADER)
    try:
        text = toml_io.read_text(path)
        config = toml_io.loads(text)
        doc = toml_io.parse_document(text.replace(_OLD_HEADER_LINE, "# Train with: --dataset_config <this file>.\n", 1))
    except (toml_io.TomlError, UnicodeDecodeError) as exc:
        raise FatalError(f"{path} exists but is not valid TOML ({exc}); it was left unchanged") from None
    datasets = config.get("datasets", [])
    if not isinstance(datasets, list) or not all(isinstance(d, dict) for d in datasets):
        raise FatalError(f"{path}: 'datasets' must be an array of tables ([[datasets]]); it was left unchanged")
    for d in datasets:
        if not isinstance(d.get("subsets", []), list):
            raise FatalError(f"{path}: 'subsets' must be an array of tables ([[datasets.subsets]])")
    return doc


def _pick_dataset(config: dict, kind: str, explicit_dataset: dict) -> dict | None:
    """The first dataset of the same kind whose explicitly requested settings match (its own settings win)."""
    general = config.get("general", {})
    for dataset in config.get("datasets", []):
        existing_kind = _dataset_kind(dataset) if dataset.get("subsets") else "dreambooth"  # empty: sd-scripts' view
        if existing_kind != kind:
            continue
        matches = True
        for key, wanted in explicit_dataset.items():
            have = dataset.get(key, general.get(key))
            if key == "resolution" and have is not None:
                try:
                    matches &= as_resolution(have) == as_resolution(wanted)
                except ValueError:
                    matches = False
            else:
                matches &= have == wanted
        if matches:
            return dataset
    return None


def _overlap_warnings(config: dict, base: Path) -> list[str]:
    """Folders trained twice: an image_dir subset and a metadata file naming images in that folder."""
    from library.dataset.metadata_merge import load_metadata, resolve_key

    folders = {_resolve(str(s["image_dir"]), base) for d in config.get("datasets", []) for s in d.get("subsets", [])
               if isinstance(s, dict) and _kind(s) == "dreambooth" and "image_dir" in s}
    out = []
    for dataset in config.get("datasets", []):
        for sub in dataset.get("subsets", []):
            if not isinstance(sub, dict) or _kind(sub) != "finetune" or not folders:
                continue
            try:
                entries = load_metadata(_resolve(str(sub["metadata_file"]), base))
            except (FatalError, OSError):
                continue
            image_dir = _resolve(str(sub["image_dir"]), base) if sub.get("image_dir") else None
            both = {p.parent for p in (resolve_key(k, image_dir) for k in entries) if p is not None} & folders
            if both:
                out.append(f"{sub['metadata_file']} names images that the image_dir subset(s) "
                           f"{', '.join(sorted(f.as_posix() for f in both))} also load: they are trained twice")
    return out


def merge_subsets(path: str | os.PathLike, kind: str, subsets: list[dict], explicit_dataset: dict,
                  explicit_subset: dict, update: ConfigUpdate) -> ConfigUpdate:
    """Add subsets to the TOML at `path` (created when missing), never duplicating an image_dir/metadata_file.

    Args:
        kind: "dreambooth" (image_dir subsets) or "finetune" (metadata_file subsets); sd-scripts does not
            allow both in one dataset, so each goes to a dataset of its own kind.
        subsets: complete subset tables to add.
        explicit_dataset: dataset keys the caller asked for; a new [[datasets]] is made when no existing one
            of the same kind has these values.
        explicit_subset: subset keys the caller asked for; they overwrite an existing subset's values.
    """
    path = Path(path)
    base = path.resolve().parent
    created = not path.is_file()
    config = _read_existing(path)  # a tomlkit document: the user's comments and layout survive the edits below
    identity = "metadata_file" if kind == "finetune" else "image_dir"
    pending = []
    for sub in subsets:
        match = None
        for dataset in config.get("datasets", []):
            for old in dataset.get("subsets", []):
                if isinstance(old, dict) and _kind(old) == kind and identity in old and \
                        _same_path(str(old[identity]), sub[identity], base):
                    match = old
        if match is None:
            pending.append(sub)
            continue
        for key in _OWNED:
            if key in sub and (key != "enable_wildcard" or sub[key]):
                toml_io.set_value(match, key, sub[key])
        for key, value in explicit_subset.items():
            toml_io.set_value(match, key, value)
        update.updated.append(str(sub[identity]))
    if pending:
        _add_subsets(config, kind, pending, explicit_dataset, explicit_subset)
        update.added.extend(str(s[identity]) for s in pending)
    update.created = created
    update.warnings.extend(_overlap_warnings(config.unwrap(), base))
    atomic_write_text(path, toml_io.dumps(config))
    return update


def _add_subsets(config, kind: str, subsets: list[dict], explicit_dataset: dict, explicit_subset: dict) -> None:
    """Put new subsets into the first fitting dataset (or a new one), leaving out plain defaults the file sets."""
    general = config.get("general", {})
    target = _pick_dataset(config, kind, explicit_dataset)
    inherited = set(general) | set(target or {})

    def plain_default(key: str, value) -> bool:  # not asked for, sd-scripts' default, and the file sets the key
        return key not in explicit_subset and key in inherited and key in _SUBSET_DEFAULTS and \
            value == _SUBSET_DEFAULTS[key]

    subsets = [{k: v for k, v in sub.items() if not plain_default(k, v)} for sub in subsets]
    if target is None:
        if "datasets" not in config:
            config.append("datasets", toml_io.new_table_array())
        toml_io.append_table(config["datasets"], dict(_dataset_settings(explicit_dataset, general), subsets=subsets))
        return
    if "subsets" not in target:
        target.append("subsets", toml_io.new_table_array())
    for sub in subsets:
        toml_io.append_table(target["subsets"], sub)


def write_dataset_config(path: str | os.PathLike, image_root: str | os.PathLike, caption_extension: str,
                         recursive: bool = False, multiline: bool = False, **overrides) -> ConfigUpdate:
    """Write (or extend) an sd-scripts dataset config so every captioned image under image_root is trained.

    Args:
        path: the .toml to write; an existing one gets new subsets instead of being replaced.
        image_root: the captioned folder (or one image: its folder is used).
        caption_extension: the extension the captions were written with (sd-scripts' own default is .caption).
        recursive: the run descended into subfolders; each folder with captioned images becomes a subset,
            because sd-scripts reads one folder per subset, never its subfolders.
        multiline: the captions have several lines (tags + description): sets enable_wildcard = true.
            Also switched on when any caption found has more than one line.
        **overrides: any sd-scripts dataset or subset key (resolution, num_repeats, keep_tokens,
            shuffle_caption, min_bucket_reso, class_tokens, ...; None = default), plus
            trigger (str or list: the leading tag(s); keep_tokens defaults to their count),
            caption_dir (captions were written to a separate folder: a metadata file is written and a
            fine-tuning subset added, since sd-scripts looks for captions next to the images), and
            metadata_file (where that metadata goes; default next to the .toml).
    Raises:
        FatalError: no captioned image, bad option values, or an existing file that is not valid TOML.
    """
    extension = normalize_extension(caption_extension)
    separator = overrides.pop("caption_separator", None)
    overrides["caption_separator"] = _separator_key(separator)
    caption_dir = overrides.get("caption_dir")
    dreambooth = caption_dir is None or Path(caption_dir).resolve() == Path(image_root).resolve()
    dataset_explicit, subset_explicit, special = _split_overrides(overrides, dreambooth)
    triggers = special.get("trigger") or []
    triggers = [triggers] if isinstance(triggers, str) else list(triggers)
    trigger_tokens = [t for trig in triggers for t in split_caption(trig, separator or ",")]
    scan = scan_captions(image_root, extension, recursive, caption_dir=None if dreambooth else caption_dir,
                         trigger=trigger_tokens, separator=separator or ",")
    if not scan.captioned:
        raise FatalError(f"no caption files ({extension}) found for the images in {image_root}; "
                         "nothing to put in a dataset config")
    update = ConfigUpdate(Path(path), warnings=scan.warnings(extension, dreambooth))
    if dreambooth:
        wildcard_folders = {p.parent for p in scan.multiline_images}
        subsets = [{"image_dir": folder.as_posix(), "caption_extension": extension,
                    **_subset_defaults(subset_explicit, len(trigger_tokens), multiline or folder in wildcard_folders)}
                   for folder in scan.captioned_folders()]
        return merge_subsets(path, "dreambooth", subsets, dataset_explicit, subset_explicit, update)
    defaults = _subset_defaults(subset_explicit, len(trigger_tokens), multiline or scan.multiline > 0)
    from library.dataset.metadata_merge import merge_sidecars_to_metadata

    metadata = Path(special.get("metadata_file") or Path(path).with_name(
        f"{Path(path).stem}_{scan.root.name or 'images'}_metadata.json"))
    merged = merge_sidecars_to_metadata(scan.root, metadata, "caption", extension, recursive=recursive,
                                        caption_dir=caption_dir)
    update.warnings.extend(merged.warning_lines())
    subset = {"metadata_file": metadata.resolve().as_posix(), "image_dir": scan.root.as_posix(), **defaults}
    return merge_subsets(path, "finetune", [subset], dataset_explicit, subset_explicit, update)


def add_metadata_subset(path: str | os.PathLike, metadata_file: str | os.PathLike,
                        image_dir: str | os.PathLike | None = None, multiline: bool = False,
                        **overrides) -> ConfigUpdate:
    """Add a fine-tuning subset (metadata_file = a JSON/JSONL of captions or tags) to the TOML at `path`.

    Args:
        metadata_file: the metadata written by merge_*_to_metadata.py or the tagger's --output_path.
        image_dir: where relative keys of that file live (absolute keys need none).
        multiline: some captions have several lines: sets enable_wildcard = true.
        **overrides: as for write_dataset_config (DreamBooth-only keys such as caption_extension are refused).
    """
    metadata = Path(metadata_file)
    if not metadata.is_file():
        raise FatalError(f"{metadata}: no such metadata file")
    separator = overrides.pop("caption_separator", None)
    overrides["caption_separator"] = _separator_key(separator)
    dataset_explicit, subset_explicit, special = _split_overrides(overrides, dreambooth=False)
    triggers = special.get("trigger") or []
    triggers = [triggers] if isinstance(triggers, str) else list(triggers)
    tokens = [t for trig in triggers for t in split_caption(trig, separator or ",")]
    subset = {"metadata_file": metadata.resolve().as_posix()}
    if image_dir is not None:
        subset["image_dir"] = Path(image_dir).resolve().as_posix()
    subset.update(_subset_defaults(subset_explicit, len(tokens), multiline))
    return merge_subsets(path, "finetune", [subset], dataset_explicit, subset_explicit, ConfigUpdate(Path(path)))


__all__ = ["ConfigUpdate", "DatasetScan", "add_metadata_subset", "merge_subsets", "write_dataset_config"]
