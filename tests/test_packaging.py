"""`pip install .` and `pip install -e .` into a venv that holds sd-scripts' editable `library`: it stays sd-scripts'."""

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from captionkit import launcher
from tests.conftest import ROOT
from tests.fixtures.images import real_photos

SD_SETUP = 'from setuptools import setup, find_packages\n\nsetup(name="library", packages=find_packages())\n'  # sd-scripts'


def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def venv_command(venv: Path, name: str) -> Path:
    return venv / ("Scripts" if os.name == "nt" else "bin") / (name + (".exe" if os.name == "nt" else ""))


def make_venv(venv: Path) -> Path:
    """A bare venv that sees this interpreter's packages after its own (no download: pip and the dependencies)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv_python(venv)
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    ours = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
    Path(site, "zz_dependencies.pth").write_text("".join(f"{path}\n" for path in ours))
    return python


def pip_install(python: Path, *args) -> None:
    r = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-build-isolation",
                        "--disable-pip-version-check", *map(str, args)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr


def make_sd_scripts(folder: Path) -> Path:
    """An sd-scripts-like checkout: its own top-level `library` package (setup.py as sd-scripts') and a training script."""
    (folder / "library").mkdir(parents=True)
    (folder / "library" / "__init__.py").write_text("")
    (folder / "library" / "train_util.py").write_text("MARK = 'sd-scripts library'\n")
    (folder / "train_network.py").write_text("from library import train_util\nprint(train_util.MARK)\n")
    (folder / "setup.py").write_text(SD_SETUP)
    return folder


def run(command: list, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["HF_HUB_OFFLINE"] = "1"
    return subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True, timeout=180)


@pytest.mark.slow
@pytest.mark.parametrize("editable", [False, True], ids=["install", "editable"])
def test_install_beside_sd_scripts_keeps_its_library(tmp_path, model_dir, editable):
    setuptools = pytest.importorskip("setuptools")
    if int(setuptools.__version__.split(".")[0]) < 64:
        pytest.skip(f"setuptools {setuptools.__version__} builds no PEP 660 editable installs")
    source = tmp_path / "captionkit"  # a copy: the build writes build/ and *.egg-info beside setup.py
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", ".venv*", ".kohya_venv", "*.egg-info", "build",
                                                                "dist", "__pycache__", "wd14_tagger_model"))
    python = make_venv(tmp_path / "venv")
    sd = make_sd_scripts(tmp_path / "sd-scripts")
    pip_install(python, "-e", sd)  # what kohya_ss' requirements do (`-e .` in sd-scripts)
    pip_install(python, *(["-e"] if editable else []), source)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    probe = run([python, "-c", "import library, captionkit; print(library.__file__); print(captionkit.__file__); "
                 "import importlib.util as u; print(u.find_spec('finetune'))"], cwd=elsewhere)
    assert probe.returncode == 0, probe.stderr
    library_file, captionkit_file, finetune_spec = probe.stdout.splitlines()
    assert Path(library_file).parent == sd / "library"  # sd-scripts' `library`, not captionkit's
    assert finetune_spec == "None"  # no top-level `finetune` either
    if editable:
        assert Path(captionkit_file).parent == source / "captionkit"
    else:
        assert source not in Path(captionkit_file).parents
        installed = {line.split(",")[0].split("/")[0] for line in
                     Path(captionkit_file).parents[1].joinpath("captionkit-0.1.0.dist-info", "RECORD").read_text().splitlines()}
        assert installed <= {"captionkit", "captionkit-0.1.0.dist-info", "..", "__pycache__"}, installed
    train = run([python, sd / "train_network.py"], cwd=elsewhere)
    assert train.returncode == 0 and "sd-scripts library" in train.stdout, train.stderr

    data = tmp_path / "data"
    photos = real_photos(data, n=2)
    tag = run([venv_command(tmp_path / "venv", "captionkit"), "tag_images_by_wd14_tagger", data, "--repo_id",
               "org/tiny", "--model_dir", model_dir, "--batch_size", "2", "--no_progress"], cwd=elsewhere)
    assert tag.returncode == 0, tag.stderr[-3000:]
    assert "tagged 2, skipped 0, failed 0" in tag.stdout
    assert all(p.with_suffix(".txt").read_text().strip() for p in photos)
    merge = run([python, "-m", "captionkit", "merge_captions_to_metadata.py", data, tmp_path / "meta.json",
                 "--caption_extension", ".txt"], cwd=elsewhere)
    assert merge.returncode == 0, merge.stderr
    assert (tmp_path / "meta.json").read_text().count('"caption"') == 2
    unknown = run([python, "-m", "captionkit", "train_network"], cwd=elsewhere)
    assert unknown.returncode == 2 and "no script named 'train_network'" in unknown.stderr


def test_the_command_lists_every_script_and_no_module():
    names = set(launcher.scripts())
    assert {"tag_images_by_wd14_tagger", "make_captions", "make_captions_by_git", "dual_caption", "install_kohya",
            "merge_captions_to_metadata", "caption_report"} <= names
    assert not names & {"cli", "dataset_args", "tag_args", "_bootstrap", "__init__"}
    assert launcher.CODE_ROOT == ROOT  # a checkout (or an editable install): the code runs from the checkout
    assert launcher.main(["--help"]) == 0
