"""Shared pytest fixtures: a tiny tag vocabulary, tiny tagger models on disk, and a script runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.fixtures.wd_models import make_cl_tagger_model, make_wd_model  # noqa: E402

RATINGS = [("general", 9), ("sensitive", 9), ("questionable", 9), ("explicit", 9)]
GENERAL = ["1girl", "1boy", "solo", "long_hair", "short_hair", "blue_eyes", "smile", "^_^", "o_o", "outdoors",
           "sky", "cloud", "tree", "white_background", "simple_background", "hat", "dress", "school_uniform",
           "holding", "looking_at_viewer", "open_mouth", "cat", "food", "cup", "no_humans", "scenery", "red_theme",
           "blue_theme", "monochrome", "greyscale"]
CHARACTERS = ["hatsune_miku_(vocaloid)", "kagamine_rin", "ganyu_(genshin_impact)", "vocaloid_(vocaloid)"]
WD_TAGS = RATINGS + [(t, 0) for t in GENERAL] + [(t, 4) for t in CHARACTERS]
CL_TAGS = ([("rating_general", "Rating"), ("rating_sensitive", "Rating"), ("rating_explicit", "Rating")]
           + [(t, "General") for t in GENERAL[:20]] + [(t, "Character") for t in CHARACTERS]
           + [("vocaloid", "Copyright"), ("some_artist", "Artist"), ("highres", "Meta"),
              ("best_quality", "Quality"), ("normal_quality", "Quality"), ("bad_quality", "Quality"),
              ("model_x", "Model")])
SCRIPT = ROOT / "finetune" / "tag_images_by_wd14_tagger.py"


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    """A --model_dir holding org_tiny (SmilingWolf layout, 64 px) and org_cl/cl_v1 (tag_mapping.json layout)."""
    root = tmp_path_factory.mktemp("models")
    make_wd_model(root / "org_tiny", WD_TAGS, size=64, seed=1)
    make_cl_tagger_model(root / "org_cl" / "cl_v1", CL_TAGS, size=64, seed=2)
    return root


def run_script(script: Path, *args, cwd: Path, env: dict | None = None, timeout: int = 180):
    """Run a captionkit script as the GUI would: a subprocess with an argv list, offline by default."""
    full_env = dict(os.environ)
    full_env.setdefault("HF_HUB_OFFLINE", "1")
    full_env["PYTHONIOENCODING"] = "utf-8"
    if env:
        full_env.update(env)
    return subprocess.run([sys.executable, str(script), *map(str, args)], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def foreign_library(tmp_path: Path) -> Path:
    """A folder holding a `library` package like sd-scripts' one, to put on PYTHONPATH: importing it fails."""
    fake = tmp_path / "sd-scripts"
    (fake / "library").mkdir(parents=True, exist_ok=True)
    (fake / "library" / "__init__.py").write_text("raise ImportError('sd-scripts library imported')\n")
    return fake
