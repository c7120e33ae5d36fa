"""install_kohya.py on a kohya_ss-like tree: the GUI's tab command lines run captionkit, sd-scripts stays intact,
--uninstall restores the tree byte for byte."""

import hashlib
import json
from pathlib import Path

from tests.conftest import run_script
from tests.fixtures.images import real_photos

ROOT = Path(__file__).resolve().parents[1]
INSTALLER = ROOT / "finetune" / "install_kohya.py"
ORIGINALS = ("tag_images_by_wd14_tagger.py", "make_captions.py", "make_captions_by_git.py",
             "merge_captions_to_metadata.py", "merge_dd_tags_to_metadata.py")


def make_kohya_tree(root: Path) -> Path:
    """kohya_ss/ with an sd-scripts/ holding its own `library` package, a training script and the five originals."""
    sd = root / "sd-scripts"
    (sd / "library").mkdir(parents=True)
    (sd / "library" / "__init__.py").write_text("")
    (sd / "library" / "train_util.py").write_text("MARK = 'sd-scripts library'\n")
    (sd / "train_network.py").write_text("from library import train_util\nprint(train_util.MARK)\n")
    (sd / "finetune").mkdir()
    for name in ORIGINALS:
        (sd / "finetune" / name).write_text(f"print('sd-scripts original {name}')\nraise SystemExit(7)\n")
    (sd / "finetune" / "prepare_buckets_latents.py").write_text("print('buckets')\n")
    (root / "kohya_gui").mkdir()
    (root / "kohya_gui" / "__init__.py").write_text("")
    return sd


def tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() + oct(p.stat().st_mode)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def gui(script: str, args: list, kohya: Path, cwd: Path):
    """Run a tab's command the way the GUI does: its python, an argv list, its cwd and PYTHONPATH."""
    env = {"PYTHONPATH": f"{kohya}:{kohya / 'sd-scripts'}:"}
    return run_script(kohya / "sd-scripts" / "finetune" / script, *args, cwd=cwd, env=env)


def test_install_run_the_gui_tabs_and_uninstall_byte_for_byte(tmp_path, model_dir):
    from tests.fixtures.captioner_models import make_git

    kohya = tmp_path / "kohya_ss"
    sd = make_kohya_tree(kohya)
    before = tree_digest(sd)
    (kohya / "wd14_tagger_model").symlink_to(model_dir, target_is_directory=True)  # the GUI's default model dir
    data = tmp_path / "train" / "img"
    real_photos(data, n=2)

    r = run_script(INSTALLER, kohya, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("now runs") == 5 and r.stdout.count("kept sd-scripts'") == 5
    again = run_script(INSTALLER, kohya, cwd=tmp_path)
    assert again.returncode == 0 and "already installed" in again.stdout

    # WD14 tab: cwd = kohya root, fixed flag order, --batch_size as an int, --repo_id
    r = gui("tag_images_by_wd14_tagger.py", ["--batch_size", "1", "--caption_extension", ".txt",
                                             "--caption_separator", ", ", "--max_data_loader_n_workers", "2", "--onnx",
                                             "--remove_underscore", "--repo_id", "org/tiny", data], kohya, cwd=kohya)
    assert r.returncode == 0, r.stderr
    assert "tagged 2, skipped 0, failed 0" in r.stdout
    assert all((data / f"{stem}.txt").read_text().strip() for stem in ("astronaut", "coffee"))
    # GIT tab: the GUI's own cwd, --model_id only because the box is filled
    git_model = make_git(tmp_path / "git")
    r = gui("make_captions_by_git.py", ["--model_id", git_model, "--batch_size", "2", "--max_data_loader_n_workers",
                                        "0", "--max_length", "12", "--caption_extension", ".caption", data],
            kohya, cwd=kohya / "kohya_gui")
    assert r.returncode == 0, r.stderr
    assert (data / "coffee.caption").read_text().strip()
    # finetune tab: merge the captions into metadata (use full path on)
    meta = tmp_path / "train" / "meta_cap.json"
    r = gui("merge_captions_to_metadata.py", ["--caption_extension", ".caption", data, meta, "--full_path"],
            kohya, cwd=kohya)
    assert r.returncode == 0, r.stderr
    assert len(json.loads(meta.read_text())) == 2
    # sd-scripts' own library and training scripts are untouched and still import their library
    train = run_script(sd / "train_network.py", cwd=kohya, env={"PYTHONPATH": f"{kohya}:{sd}:"})
    assert train.returncode == 0 and "sd-scripts library" in train.stdout
    now = tree_digest(sd)
    untouched = {k: v for k, v in before.items() if not k.startswith("finetune/") or "prepare_buckets" in k}
    assert all(now[k] == v for k, v in untouched.items())

    r = run_script(INSTALLER, kohya, "--uninstall", cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.count("restored sd-scripts'") == 5
    assert tree_digest(sd) == before  # byte for byte, modes included, no backup folder left
    assert "nothing to do" in run_script(INSTALLER, kohya, "--uninstall", cwd=tmp_path).stdout


def test_reinstall_after_the_gui_updated_sd_scripts_and_a_bad_path(tmp_path):
    kohya = tmp_path / "kohya_ss"
    sd = make_kohya_tree(kohya)
    assert run_script(INSTALLER, sd, cwd=tmp_path).returncode == 0  # the sd-scripts folder itself works too
    updated = sd / "finetune" / "make_captions.py"
    updated.write_text("print('sd-scripts, newer')\n")  # what a submodule update leaves
    r = run_script(INSTALLER, kohya, cwd=tmp_path)
    assert r.returncode == 0 and "kept sd-scripts' make_captions.py" in r.stdout
    assert run_script(INSTALLER, kohya, "--uninstall", cwd=tmp_path).returncode == 0
    assert updated.read_text() == "print('sd-scripts, newer')\n"  # the newest original comes back
    r = run_script(INSTALLER, tmp_path / "nowhere", cwd=tmp_path)
    assert r.returncode == 1 and "neither a kohya_ss folder" in r.stderr
