"""Resolve a tagger model to a local folder: kohya's <model_dir>/<org>_<name>[/subdir] layout, local folders, hub downloads."""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from library.backends.hub_access import (download_hint, first_line, folder_problem, hub_unreachable,
                                          local_model_folder)
from library.errors import FatalError

logger = logging.getLogger(__name__)


class ModelNotAvailable(FatalError):
    """The model's files are not on disk and could not be downloaded; the message says what to do."""


@dataclass(frozen=True)
class ModelLocation:
    """Where a model lives locally and where it comes from on the hub.

    Attributes:
        folder: the local folder that holds (or will hold) the model files.
        repo_id: hub repository 'org/name', or None for a plain local folder.
        subfolder: folder inside the repository ('cl_tagger_1_02'), or None.
        download_root: the `local_dir` handed to the hub client (folder minus subfolder).
    """

    folder: Path
    repo_id: str | None
    subfolder: str | None
    download_root: Path | None


def path_like_folder(name: str, what: str, hint: str) -> Path | None:
    """The existing folder a path-like model name means, None for a hub id; ModelNotAvailable('WHAT: no such
    folder: ... (HINT)') when the name looks like a path but is not a folder."""
    local = local_model_folder(name)
    if local is not None:
        problem = folder_problem(local)
        if problem:
            raise ModelNotAvailable(f"{what}: {problem} ({hint})")
    return local


def locate_model(repo_id: str, model_dir: str | os.PathLike) -> ModelLocation:
    """Map --repo_id/--model_dir to a location exactly as sd-scripts and the kohya_ss GUI do.

    'org/name' -> <model_dir>/org_name; 'org/name/sub/dir' -> <model_dir>/org_name/sub/dir; a name that looks like
    a path ('/x', './x', '../x', '~/x', 'C:\\x', or anything that exists) is a local folder, used as it is.

    Raises:
        ModelNotAvailable: a path-like name that is not an existing folder, or a name that is neither.
    """
    local = path_like_folder(repo_id, f"--repo_id {repo_id}", "a --repo_id that looks like a path is a local model "
                             "folder; hub ids look like 'SmilingWolf/wd-swinv2-tagger-v3'")
    if local is not None:
        return ModelLocation(local, None, None, None)
    tokens = [t for t in repo_id.strip("/").split("/") if t]
    if len(tokens) < 2:
        raise ModelNotAvailable(
            f"--repo_id {repo_id!r} is neither a local folder nor a hub id like 'SmilingWolf/wd-swinv2-tagger-v3'")
    repo = "/".join(tokens[:2])
    subfolder = "/".join(tokens[2:]) or None
    root = Path(model_dir).expanduser() / repo.replace("/", "_")
    folder = root / subfolder if subfolder else root
    return ModelLocation(folder, repo, subfolder, root)


def _hub_errors():
    try:
        from huggingface_hub import errors
    except ImportError:  # older huggingface_hub
        from huggingface_hub import utils as errors
    return errors


def missing_files(folder: Path, files: Sequence[str]) -> list[str]:
    """Files of `files` that are absent or empty in `folder` (a partial download leaves such gaps)."""
    return [f for f in files if not (folder / f).is_file() or (folder / f).stat().st_size == 0]


def list_repo_files(location: ModelLocation) -> list[str] | None:
    """Paths of the files in the location's hub repository (relative to its subfolder), or None when the hub
    cannot tell: a local folder, offline mode, no network, no such repository."""
    if location.repo_id is None:
        return None
    if hub_unreachable():  # offline or no network: at once, not after the client's retries
        return None
    from huggingface_hub import HfApi

    try:
        files = HfApi().list_repo_files(location.repo_id)
    except Exception as exc:  # noqa: BLE001 - a listing only guides the download; its failure is reported there
        logger.debug("cannot list %s on the hub: %s", location.repo_id, exc)
        return None
    prefix = f"{location.subfolder}/" if location.subfolder else ""
    return [f[len(prefix):] for f in files if f.startswith(prefix)]


def download_files(location: ModelLocation, files: Sequence[str], force: bool = False) -> None:
    """Fetch `files` of the location's repository into its folder with the real huggingface_hub client.

    Raises:
        ModelNotAvailable: offline, unreachable, no such repository or file; the message names the
            folder and the files to put there by hand.
        FileNotFoundError: (subclass of the hub's EntryNotFoundError) when only this file is missing
            on the hub, so callers can try an alternative name.
    """
    if location.repo_id is None:
        raise ModelNotAvailable(f"{location.folder}: missing {', '.join(files)} (local folder, nothing to download)")
    why = hub_unreachable()
    if why:  # fail at once, before any folder is made
        raise ModelNotAvailable(_unavailable_message(location, files, why))
    from huggingface_hub import hf_hub_download

    errors = _hub_errors()
    made = _make_dirs(location.download_root)
    try:
        for name in files:
            logger.info("downloading %s/%s%s", location.repo_id,
                        f"{location.subfolder}/" if location.subfolder else "", name)
            hf_hub_download(repo_id=location.repo_id, filename=name, subfolder=location.subfolder,
                            local_dir=str(location.download_root), force_download=force)
    except errors.RepositoryNotFoundError:
        raise ModelNotAvailable(
            f"repository {location.repo_id!r} was not found on the hub (or is private/gated). "
            f"Check --repo_id, or put the model files in {location.folder}") from None
    except errors.EntryNotFoundError as exc:
        if isinstance(exc, getattr(errors, "LocalEntryNotFoundError", ())):
            raise ModelNotAvailable(_unavailable_message(location, files, first_line(exc))) from None
        raise FileNotFoundError(f"{location.repo_id}: no file {name!r} on the hub") from None
    except (OSError, ValueError) as exc:  # connection errors, offline mode, HTTP errors
        raise ModelNotAvailable(_unavailable_message(location, files, first_line(exc))) from None
    finally:
        _tidy(location.download_root, made)


def _make_dirs(folder: Path) -> list[Path]:
    """mkdir -p, returning the folders it made (deepest first) so a failed download can take them away again."""
    made = []
    for parent in [folder, *folder.parents]:
        if parent.exists():
            break
        made.append(parent)
    folder.mkdir(parents=True, exist_ok=True)
    return made


def _tidy(root: Path, made: list[Path]) -> None:
    """Remove the hub client's bookkeeping (<root>/.cache/huggingface) unless it holds a resumable partial download,
    then the folders this download made if they are empty again: a failed run leaves no junk behind."""
    cache = root / ".cache" / "huggingface"
    if cache.is_dir() and not any(p.suffix == ".incomplete" for p in cache.rglob("*")):
        shutil.rmtree(cache, ignore_errors=True)
        if not any(cache.parent.iterdir()):
            cache.parent.rmdir()
    for folder in made:
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def _unavailable_message(location: ModelLocation, files: Sequence[str], why: str) -> str:
    sub = f"{location.subfolder}/" if location.subfolder else ""
    return (f"model {location.repo_id} is not available: offline or hub unreachable ({why}). It needs "
            f"{', '.join(files)}. "
            + download_hint(location.repo_id, [sub + f for f in files], f"--repo_id /path/to/folder/{sub}".rstrip("/"))
            + f" (or copy these files into {location.folder}, where this script looks for them)")
