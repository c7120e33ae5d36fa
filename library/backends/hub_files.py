"""Resolve a tagger model to a local folder: kohya's <model_dir>/<org>_<name>[/subdir] layout, local folders, hub downloads."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

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


def locate_model(repo_id: str, model_dir: str | os.PathLike) -> ModelLocation:
    """Map --repo_id/--model_dir to a location exactly as sd-scripts and the kohya_ss GUI do.

    'org/name' -> <model_dir>/org_name; 'org/name/sub/dir' -> <model_dir>/org_name/sub/dir;
    an existing local folder is used as it is.
    """
    as_path = Path(repo_id).expanduser()
    if as_path.is_dir():
        return ModelLocation(as_path, None, None, None)
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
    from huggingface_hub import HfApi, constants

    if constants.HF_HUB_OFFLINE:
        return None
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
    from huggingface_hub import hf_hub_download

    errors = _hub_errors()
    location.download_root.mkdir(parents=True, exist_ok=True)
    for name in files:
        logger.info("downloading %s/%s%s", location.repo_id,
                    f"{location.subfolder}/" if location.subfolder else "", name)
        try:
            hf_hub_download(repo_id=location.repo_id, filename=name, subfolder=location.subfolder,
                            local_dir=str(location.download_root), force_download=force)
        except errors.RepositoryNotFoundError:
            raise ModelNotAvailable(
                f"repository {location.repo_id!r} was not found on the hub (or is private/gated). "
                f"Check --repo_id, or put the model files in {location.folder}") from None
        except errors.EntryNotFoundError as exc:
            if isinstance(exc, getattr(errors, "LocalEntryNotFoundError", ())):
                raise ModelNotAvailable(_offline_message(location, files)) from None
            raise FileNotFoundError(f"{location.repo_id}: no file {name!r} on the hub") from None
        except (OSError, ValueError) as exc:  # connection errors, offline mode, HTTP errors
            raise ModelNotAvailable(_offline_message(location, files, exc)) from None


def _offline_message(location: ModelLocation, files: Sequence[str], exc: BaseException | None = None) -> str:
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    why = "offline mode (HF_HUB_OFFLINE) is on" if offline else f"the hub could not be reached ({exc})"
    return (f"model {location.repo_id} is not available: {why}. Download it on a machine with network access "
            f"and copy these files into {location.folder}: {', '.join(files)}")
