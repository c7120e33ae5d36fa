"""Run one of captionkit's scripts by path: `captionkit tag_images_by_wd14_tagger DIR --repo_id ...`.

`pip install .` puts captionkit's code under the single import name `captionkit` (captionkit/library/,
captionkit/finetune/), so a venv that also holds sd-scripts (whose editable package is the top-level `library`) keeps
sd-scripts' `library`. The scripts import `library` absolutely, so they run as they do in a checkout: by path, in a
process of their own whose sys.path starts at captionkit's code. With `pip install -e .` the code stays in the
checkout and runs from there.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
# installed: captionkit/{library,finetune} beside this file; editable or a checkout: the checkout root above it
CODE_ROOT = PACKAGE if (PACKAGE / "finetune").is_dir() else PACKAGE.parent
USAGE = """usage: captionkit SCRIPT [ARGS...]   (python -m captionkit SCRIPT [ARGS...] is the same)

Runs captionkit's finetune/SCRIPT.py with ARGS; `captionkit SCRIPT --help` shows its options.
The scripts:
"""


def scripts() -> dict[str, Path]:
    """Script name (the file stem) -> path, for every runnable script under finetune/."""
    found = {}
    for path in sorted((CODE_ROOT / "finetune").glob("*.py")):
        if not path.stem.startswith("_") and 'if __name__ == "__main__":' in path.read_text(encoding="utf-8"):
            found[path.stem] = path
    return found


def main(argv: list[str] | None = None) -> int:
    """Replace this process with `python finetune/SCRIPT.py ARGS` (on Windows: run it and return its exit code)."""
    argv = sys.argv[1:] if argv is None else argv
    known = scripts()
    listing = USAGE + "".join(f"  {name}\n" for name in known)
    if not argv or argv[0] in ("-h", "--help"):
        print(listing, end="", file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    name = argv[0].removesuffix(".py")
    if name not in known:
        print(listing + f"captionkit: error: no script named {argv[0]!r}", file=sys.stderr)
        return 2
    command = [sys.executable, str(known[name]), *argv[1:]]
    if os.name == "nt":  # Windows has no exec
        return subprocess.call(command)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, command)
    return 1  # not reached
