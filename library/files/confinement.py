"""Keep file access inside a dataset: a path counts as inside only when its real path (links resolved) is."""

from __future__ import annotations

import os
from pathlib import Path


class Confinement:
    """The folders whose files may be read or written (the dataset root, a caption --output_dir).

    Args:
        roots: the allowed folders; each is compared by its real path.
    """

    def __init__(self, *roots: str | os.PathLike | None):
        self.roots = tuple(os.path.realpath(r) for r in roots if r is not None)

    def allows(self, path: str | os.PathLike) -> bool:
        """True when `path`, with every symlink on the way resolved, lies in one of the roots."""
        real = os.path.realpath(path)
        return any(real == root or real.startswith(root.rstrip(os.sep) + os.sep) for root in self.roots)

    def outside_reason(self, path: str | os.PathLike) -> str | None:
        """None when `path` is inside; else the one-line reason it is refused."""
        if self.allows(path):
            return None
        return f"{Path(path).name} links to {os.path.realpath(path)}, outside the dataset: not followed"
