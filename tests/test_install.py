"""What a newcomer runs: README's commands are CI's, requirement sets, the light tagger install, docs links."""

import json
import os
import re
import shutil
import subprocess
import tarfile
import sys
import time

import pytest

from tests.conftest import ROOT, SCRIPT
from tests.fixtures.browser import missing_browser
from tests.fixtures.images import real_photos

README = (ROOT / "README.md").read_text(encoding="utf-8")


def ci_commands() -> list[str]:
    """The install and test commands .ci/run runs in its virtual environment (pip's `-q` taken out)."""
    lines = (ROOT / ".ci" / "run").read_text().split(". .venv/bin/activate", 1)[1].splitlines()
    return [line.replace("pip install -q ", "pip install ").strip() for line in lines
            if line.strip() and not line.lstrip().startswith("#")]


def test_ci_runs_the_readme_commands():
    commands = ci_commands()
    assert commands[0] == "pip install torch==2.13.0"  # the CPU build on CI's package source (see .ci/run)
    assert "pip install torch --index-url https://download.pytorch.org/whl/cpu" in README
    assert commands[1:] == ["pip install -r requirements.txt", "pip install -r requirements-test.txt", "ruff check .",
                            "HF_HUB_OFFLINE=1 python -m pytest -q tests", "bash tools/kohya_venv.sh .kohya_venv"]
    for command in commands[1:]:
        assert command in README, command
    assert "pip install torch\n" in README and "pip install -r requirements-tagger.txt" in README
    assert "apt-get install chromium chromium-driver" in README


def requirement_names(name: str) -> list[str]:
    script = ("import json, setuptools; setuptools.setup = lambda **kw: print(json.dumps(kw)); "
              "import runpy; runpy.run_path('setup.py')")
    r = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    kwargs = json.loads(r.stdout)
    reqs = kwargs["install_requires"] if name == "install" else kwargs["extras_require"][name]
    return [re.split(r"[<>=;\[ ]", req, maxsplit=1)[0] for req in reqs]


def test_requirement_sets():
    tagger = requirement_names("install")
    assert set(tagger) == {"numpy", "pillow", "tqdm", "huggingface_hub", "tomli", "tomlkit", "onnxruntime-gpu",
                           "onnxruntime"}
    assert requirement_names("captioners") == ["torch", "transformers", "safetensors", "tokenizers"]
    assert (ROOT / "requirements.txt").read_text().splitlines().count("-r requirements-tagger.txt") == 1
    assert "torch>=2.1" in (ROOT / "requirements.txt").read_text().splitlines()  # a range: the user's build stays
    test_reqs = (ROOT / "requirements-test.txt").read_text()
    assert "ray[data]" in test_reqs and "\nruff" in test_reqs


def test_sdist_holds_what_setup_py_reads(tmp_path):
    pytest.importorskip("setuptools")
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".venv", ".git", "*.egg-info", "build", "dist",
                                                             "__pycache__", "wd14_tagger_model"))
    r = subprocess.run([sys.executable, "setup.py", "-q", "sdist", "-d", str(tmp_path / "dist")], cwd=src,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    (tarball,) = (tmp_path / "dist").glob("captionkit-*.tar.gz")
    with tarfile.open(tarball) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
        tar.extractall(tmp_path / "unpacked", **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    for name in ("README.md", "requirements.txt", "requirements-tagger.txt", "library/data/joycaption_prompts.json",
                 "library/data/caption_report.html", "library/data/caption_report.js", "finetune/cli.py",
                 "captionkit/launcher.py"):
        assert name in names, name
    (unpacked,) = (tmp_path / "unpacked").iterdir()  # setup.py runs from the sdist alone (pip does this)
    r = subprocess.run([sys.executable, "setup.py", "-q", "egg_info"], cwd=unpacked, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    requires = (unpacked / "captionkit.egg-info" / "requires.txt").read_text()
    assert "onnxruntime-gpu" in requires and "[captioners]" in requires and "torch>=2.1" in requires


def test_browser_skip_reason_names_what_is_missing(tmp_path):
    present = tmp_path / "present"
    present.write_text("")
    assert missing_browser(str(present), str(present)) is None
    only_driver = missing_browser(str(present), str(tmp_path / "chromedriver"))
    assert "chromedriver (Debian package chromium-driver)" in only_driver and "apt-get install chromium-driver" in only_driver
    assert "(Debian package chromium)" not in only_driver
    both = missing_browser(str(tmp_path / "chromium"), str(tmp_path / "chromedriver"))
    assert both.endswith("apt-get install chromium chromium-driver")


def test_every_script_has_a_page_and_every_link_resolves():
    helpers = {"__init__", "_bootstrap", "cli", "dataset_args", "tag_args", "prompted_args"}
    shared_pages = {"merge_dd_tags_to_metadata": "merge_captions_to_metadata", "retag_from_scores": "scores",
                    "install_kohya": "kohya_ss"}
    for stem in {p.stem for p in (ROOT / "finetune").glob("*.py")} - helpers:
        page = shared_pages.get(stem, stem)
        assert (ROOT / "docs" / f"{page}.md").is_file(), stem
        assert f"docs/{page}.md" in README, stem
    for page in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text(encoding="utf-8")):
            if "://" not in target:
                assert (page.parent / target).exists(), f"{page.name}: {target}"
    for path in (ROOT / "finetune").glob("*.py"):  # --help texts point at pages that exist
        for name in re.findall(r"docs/[\w.-]+\.md", path.read_text()):
            assert (ROOT / name).is_file(), f"{path.name}: {name}"


@pytest.mark.slow
@pytest.mark.timeout(600)  # a fresh download of ONNX Runtime; usually under a minute
def test_light_tagger_install_runs_without_torch_or_transformers(tmp_path, model_dir):
    """A venv with requirements-tagger.txt only (no system site packages) tags images."""
    venv = tmp_path / "venv"
    start = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    r = subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "-r",
                        str(ROOT / "requirements-tagger.txt")], capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        out = r.stdout + r.stderr
        if re.search(r"NewConnectionError|Temporary failure in name resolution|Name or service not known|"
                     r"Network is unreachable|No matching distribution found|Could not find a version", out):
            pytest.skip(f"no package index reachable: {out.strip().splitlines()[-1]}")
        pytest.fail(out)
    installed = time.monotonic() - start
    data = tmp_path / "data"
    photos = real_photos(data, n=2)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["HF_HUB_OFFLINE"] = "1"
    r = subprocess.run([str(python), "-X", "importtime", str(SCRIPT), str(data), "--repo_id", "org/tiny",
                        "--model_dir", str(model_dir), "--batch_size", "2", "--no_progress"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert all(p.with_suffix(".txt").read_text().strip() for p in photos)
    imported = {line.split("|")[-1].strip().split(".")[0] for line in r.stderr.splitlines()
                if line.startswith("import time:")}
    assert "onnxruntime" in imported and not imported & {"torch", "transformers", "tensorflow"}
    r = subprocess.run([str(python), "-c", "import torch"], capture_output=True, text=True, env=env)
    assert r.returncode != 0  # absent from the venv, not merely unused
    print(f"light tagger install: {installed:.0f} s, tagging: {time.monotonic() - start - installed:.0f} s")
