"""Before any download: does a model name mean a local folder, and can the Hugging Face Hub be reached at all?"""

from __future__ import annotations

import logging
import os
import re
import socket
import threading
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

PROBE_TIMEOUT_S = 3.0
_DRIVE = re.compile(r"^[A-Za-z]:[\\/]")
_probed: dict[tuple[str, str], str | None] = {}
_probe_lock = threading.Lock()


def looks_like_path(name: str) -> bool:
    """True for '/x', './x', '../x', '~/x', '.', '..', 'C:\\x', '\\\\server\\x', or any name that exists on disk."""
    name = str(name)
    return (name.startswith(("/", "./", "../", "~", "\\", ".\\", "..\\")) or name in (".", "..")
            or bool(_DRIVE.match(name)) or os.path.exists(name))


def local_model_folder(name: str) -> Path | None:
    """The folder a path-like model name means (it may not exist), or None for a hub id."""
    return Path(name).expanduser() if looks_like_path(name) else None


def folder_problem(folder: Path) -> str | None:
    """'no such folder: /abs/path' or 'not a folder: /abs/path' (a file), or None for an existing folder."""
    if folder.is_dir():
        return None
    return f"{'not a folder' if folder.exists() else 'no such folder'}: {os.path.abspath(folder)}"


def hub_unreachable() -> str | None:
    """Why the hub cannot be used right now ('HF_HUB_OFFLINE is set', 'cannot resolve host ...'), or None.

    One TCP connection to the hub endpoint (or to the proxy that serves it), at most a few seconds, remembered for
    the process, so a machine without network fails at once instead of after the client's five retries.
    """
    from huggingface_hub import constants

    quiet_duplicate_hub_logging()
    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    endpoint = constants.ENDPOINT
    proxy = _proxy_for(endpoint)
    with _probe_lock:
        key = (endpoint, proxy or "")
        if key not in _probed:
            _probed[key] = _probe(proxy or endpoint, "proxy " if proxy else "")
        return _probed[key]


def _proxy_for(url: str) -> str | None:
    parts = urlsplit(url)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if not proxy or urllib.request.proxy_bypass(parts.hostname or ""):
        return None
    return proxy if "://" in proxy else f"http://{proxy}"


def _probe(url: str, what: str) -> str | None:
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    outcome: list[str | None] = []

    def connect() -> None:
        try:
            addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            outcome.append(f"cannot resolve {what}host {host} ({exc.strerror or exc})")
            return
        error: OSError | None = None
        for family, kind, proto, _, address in addresses[:4]:
            try:
                with socket.socket(family, kind, proto) as sock:
                    sock.settimeout(PROBE_TIMEOUT_S)
                    sock.connect(address)
                outcome.append(None)
                return
            except OSError as exc:
                error = exc
        outcome.append(f"cannot connect to {what}{host}:{port} ({getattr(error, 'strerror', None) or error})")

    worker = threading.Thread(target=connect, daemon=True)  # name resolution itself can hang
    worker.start()
    worker.join(PROBE_TIMEOUT_S * 2)
    return outcome[0] if outcome else f"no answer from {what}{host}:{port} within {PROBE_TIMEOUT_S * 2:.0f} s"


def quiet_duplicate_hub_logging() -> None:
    """huggingface_hub adds its own stderr handler and still propagates to ours: keep one copy of each warning."""
    import huggingface_hub.utils.logging  # noqa: F401 - adds that handler on import

    if not logging.getLogger().handlers:
        return  # no handler of ours (library use): leave the hub's
    hub = logging.getLogger("huggingface_hub")
    for handler in list(hub.handlers):
        if type(handler) is logging.StreamHandler:
            hub.removeHandler(handler)


def download_hint(repo_id: str, files: list[str] | None, pass_folder: str) -> str:
    """What to do, as commands: download where there is network, bring the folder here, pass it."""
    names = "".join(f" {f}" for f in files or [])
    return (f"To fix: where there is network, run `hf download {repo_id}{names} --local-dir /path/to/folder` "
            f"(`huggingface-cli download` with huggingface_hub < 1.0), bring that folder here and pass {pass_folder}")


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its class name when it has none (never 'None')."""
    text = str(exc).strip()
    return text.splitlines()[0] if text and text != "None" else type(exc).__name__
