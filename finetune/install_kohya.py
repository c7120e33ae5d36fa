"""Make a kohya_ss GUI (or a bare sd-scripts checkout) run captionkit for its captioning and metadata scripts.

Writes small launcher files into <sd-scripts>/finetune/ for the scripts below; each runs captionkit's script of the
same name from this checkout with the same Python, arguments, working folder and environment, so sd-scripts' own
`library` package is never shadowed and its training scripts keep working. The originals are kept in
<sd-scripts>/finetune/.captionkit/ and `--uninstall` puts them back byte for byte. Running it twice is harmless.
Examples:
    python finetune/install_kohya.py ~/kohya_ss
    python finetune/install_kohya.py ~/kohya_ss --uninstall
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import _bootstrap  # noqa: F401  (this checkout's library first on sys.path)

from finetune import cli
from library.errors import FatalError
from library.files.sidecars import atomic_write_text

SCRIPTS = ("tag_images_by_wd14_tagger.py", "make_captions.py", "make_captions_by_git.py",
           "merge_captions_to_metadata.py", "merge_dd_tags_to_metadata.py")
BACKUP = ".captionkit"
MANIFEST = "manifest.json"
MARKER = "# captionkit launcher"
HERE = Path(__file__).resolve().parent

LAUNCHER = '''{marker} (written by {installer}; `--uninstall` restores sd-scripts' original)
"""Runs captionkit's {name} with this Python, these arguments, this folder and this environment."""
import os
import subprocess
import sys

SCRIPT = {script!r}
if not os.path.isfile(SCRIPT):
    sys.exit("captionkit is no longer at " + SCRIPT + ": run its finetune/install_kohya.py again, or --uninstall")
if os.name == "nt":  # Windows has no exec: run it and pass its exit code on
    sys.exit(subprocess.call([sys.executable, SCRIPT] + sys.argv[1:]))
os.execv(sys.executable, [sys.executable, SCRIPT] + sys.argv[1:])
'''


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def find_sd_scripts(path: Path) -> Path:
    """<kohya_ss>/sd-scripts, or `path` itself when it is an sd-scripts checkout."""
    for candidate in (path / "sd-scripts", path):
        if (candidate / "finetune").is_dir() and (candidate / "library").is_dir():
            return candidate
    raise FatalError(f"{path}: neither a kohya_ss folder (with sd-scripts/) nor an sd-scripts checkout (with "
                     "finetune/ and library/); give the folder the GUI was installed in")


def launcher_text(name: str) -> str:
    return LAUNCHER.format(marker=MARKER, installer=HERE / "install_kohya.py", name=name, script=str(HERE / name))


def read_manifest(backup: Path) -> dict:
    path = backup / MANIFEST
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def install(sd_scripts: Path) -> list[str]:
    """Write the launchers (keeping each original aside once); returns what changed."""
    finetune, backup = sd_scripts / "finetune", sd_scripts / "finetune" / BACKUP
    manifest, changes = read_manifest(backup), []
    for name in SCRIPTS:
        target, text = finetune / name, launcher_text(name)
        current = target.read_text(encoding="utf-8", errors="replace") if target.is_file() else None
        if current == text:
            continue
        if current is not None and not current.startswith(MARKER):  # sd-scripts' own file (new, or updated by git)
            backup.mkdir(exist_ok=True)
            shutil.copy2(target, backup / name)
            manifest[name] = {"original_sha256": sha256(target), "mode": target.stat().st_mode & 0o7777}
            changes.append(f"kept sd-scripts' {name} as {backup / name}")
        elif current is None and name not in manifest:
            manifest[name] = {"original_sha256": None}
        atomic_write_text(target, text)
        os.chmod(target, manifest.get(name, {}).get("mode", 0o644))
        changes.append(f"{target}: now runs {HERE / name}")
    if changes:
        backup.mkdir(exist_ok=True)
        atomic_write_text(backup / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return changes


def uninstall(sd_scripts: Path) -> list[str]:
    """Put sd-scripts' originals back (byte for byte) and remove the launchers and the backup folder."""
    finetune, backup = sd_scripts / "finetune", sd_scripts / "finetune" / BACKUP
    manifest, changes = read_manifest(backup), []
    for name in SCRIPTS:
        target = finetune / name
        is_launcher = target.is_file() and target.read_text(encoding="utf-8", errors="replace").startswith(MARKER)
        entry = manifest.get(name)
        if entry and entry.get("original_sha256") and (backup / name).is_file():
            if is_launcher or not target.exists():
                shutil.copy2(backup / name, target)
                changes.append(f"restored sd-scripts' {name}")
        elif is_launcher:
            target.unlink()
            changes.append(f"removed the launcher {name} (sd-scripts had no such file)")
    if backup.is_dir():
        shutil.rmtree(backup)
        changes.append(f"removed {backup}")
    return changes


def setup_parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("path", help="the kohya_ss folder (or its sd-scripts folder)")
    p.add_argument("--uninstall", action="store_true", help="restore sd-scripts' original scripts")
    return p


def main(args: argparse.Namespace) -> int:
    sd_scripts = find_sd_scripts(Path(args.path).expanduser().resolve())
    changes = uninstall(sd_scripts) if args.uninstall else install(sd_scripts)
    for line in changes:
        print(line)
    if not changes:
        print("nothing to do: " + ("no captionkit launchers found" if args.uninstall else "already installed"))
    elif not args.uninstall:
        print("The kohya_ss GUI's WD14, BLIP and GIT captioning tabs and the finetune tab's metadata merge now run "
              "captionkit. When the GUI updates sd-scripts (or `git submodule update` refuses because of these "
              "files), run this with --uninstall first and install again afterwards.")
    return cli.EXIT_OK


if __name__ == "__main__":
    sys.exit(cli.run_script(main, setup_parser()))
