"""merge_captions_to_metadata / merge_dd_tags_to_metadata: keys that name real files, collisions, missing captions."""

import json
import os
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from library.errors import FatalError
from library.dataset.metadata_merge import load_metadata, merge_sidecars_to_metadata, resolve_key
from tests.conftest import ROOT, run_script
from tests.fixtures.datasets import make_image, write_sidecar

pytestmark = pytest.mark.timeout(90)
CAPTIONS = ROOT / "finetune" / "merge_captions_to_metadata.py"
TAGS = ROOT / "finetune" / "merge_dd_tags_to_metadata.py"


def sd_scripts_jsonl(path: Path) -> dict:
    """sd-scripts' JSONL reader: image_path is the key; caption (default ''), tags and image_size are kept."""
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        entry = {"caption": row.get("caption", "")}
        entry.update({k: row[k] for k in ("tags", "image_size") if k in row})
        out[row["image_path"]] = entry
    return out


def sd_scripts_abs_path(key: str, image_dir: Path) -> Path:
    """How sd-scripts finds a key's file: an existing path as is (every version), else image_dir/key."""
    return Path(key) if os.path.exists(key) else image_dir / key


@pytest.fixture()
def data(tmp_path):
    d = tmp_path / "data"
    imgs = {n: make_image(d / n, 48, 32, seed=i) for i, n in enumerate(["a.png", "a.jpg", "b.webp", "c.png"])}
    imgs["deep"] = make_image(d / "sub" / "a.png", 32, 48)
    write_sidecar(imgs["a.png"], "a shared caption", ".caption")
    write_sidecar(imgs["b.webp"], "a photo of b", ".caption")
    write_sidecar(imgs["deep"], "a nested one", ".caption")
    for name, text in (("a.png", "1girl, solo"), ("b.webp", "cat"), ("c.png", "dog, outdoors")):
        write_sidecar(imgs[name], text, ".txt")
    return d, imgs


def test_keys_are_absolute_real_files_and_collisions_stay_apart(data, tmp_path):
    d, imgs = data
    result = merge_sidecars_to_metadata(d, tmp_path / "meta.json", "caption", ".caption", recursive=True)
    meta = json.loads((tmp_path / "meta.json").read_text(encoding="utf-8"))
    for key in meta:
        assert Path(key).is_absolute() and sd_scripts_abs_path(key, d).is_file()
    a_png, a_jpg = str(imgs["a.png"].resolve()), str(imgs["a.jpg"].resolve())
    assert meta[a_png] == meta[a_jpg] == {"caption": "a shared caption"}  # both kept, same sidecar
    assert meta[str(imgs["deep"].resolve())] == {"caption": "a nested one"}  # sub/a.png is its own entry
    assert any("a.caption is the caption of 2 images" in w for w in result.warning_lines())
    assert [p.name for p in result.missing] == ["c.png"]  # reported, not a crash, not an entry
    assert str(imgs["c.png"].resolve()) not in meta
    assert result.merged == 4 and result.entries == 4


def test_tags_merge_into_the_same_file_keeping_captions(data, tmp_path):
    d, imgs = data
    out = tmp_path / "meta.json"
    merge_sidecars_to_metadata(d, out, "caption", ".caption")
    merge_sidecars_to_metadata(d, out, "tags", ".txt")  # in_json defaults to out_json when it exists
    meta = load_metadata(out)
    assert meta[str(imgs["a.png"].resolve())] == {"caption": "a shared caption", "tags": "1girl, solo"}
    assert meta[str(imgs["c.png"].resolve())] == {"tags": "dog, outdoors"}


def test_jsonl_output_reads_back_like_sd_scripts(data, tmp_path):
    d, imgs = data
    out = tmp_path / "meta.jsonl"
    merge_sidecars_to_metadata(d, out, "tags", ".txt")
    rows = sd_scripts_jsonl(out)
    assert rows[str(imgs["b.webp"].resolve())] == {"caption": "", "tags": "cat"}
    assert all(Path(k).is_file() for k in rows)
    merge_sidecars_to_metadata(d, out, "caption", ".caption")
    assert load_metadata(out)[str(imgs["b.webp"].resolve())] == {"tags": "cat", "caption": "a photo of b"}


def test_legacy_stem_keys_are_rekeyed_not_duplicated(data, tmp_path):
    d, imgs = data
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"b": {"tags": "old tags", "train_resolution": [48, 32]},
                               "gone": {"caption": "no such image"}}), encoding="utf-8")
    result = merge_sidecars_to_metadata(d, tmp_path / "new.json", "caption", ".caption", in_path=old)
    meta = load_metadata(tmp_path / "new.json")
    key = str(imgs["b.webp"].resolve())
    assert "b" not in meta and meta[key] == {"tags": "old tags", "train_resolution": [48, 32],
                                             "caption": "a photo of b"}
    assert result.migrated == [("b", key)] and result.stale == ["gone"]
    assert resolve_key("a", d) == imgs["a.jpg"].resolve()  # sd-scripts' stem lookup takes the first sorted match


def test_refusals(data, tmp_path):
    d, _ = data
    with pytest.raises(FatalError, match="none of the 4 images"):
        merge_sidecars_to_metadata(d, tmp_path / "m.json", "caption", ".nothing")
    with pytest.raises(FatalError, match="no such metadata file"):
        merge_sidecars_to_metadata(d, tmp_path / "m.json", "caption", ".caption", in_path=tmp_path / "x.json")
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(FatalError, match="not a readable metadata file"):
        merge_sidecars_to_metadata(d, bad, "caption", ".caption")
    assert not (tmp_path / "m.json").exists()


def test_scripts_with_sd_scripts_flags_and_a_dataset_config(data, tmp_path):
    d, imgs = data
    work = tmp_path / "elsewhere"
    work.mkdir()
    r = run_script(CAPTIONS, d, "meta_cap.json", "--full_path", "--recursive", "--debug", "--dataset_config",
                   "ds.toml", cwd=work)
    assert r.returncode == 0, r.stderr
    assert "merged 4 caption files" in r.stdout and "1 images have no caption file" in r.stdout
    r = run_script(TAGS, d, "meta_cap.json", "--in_json", "meta_cap.json", "--caption_extention", ".txt",
                   "--full_path", "--dataset_config", "ds.toml", cwd=work)
    assert r.returncode == 0, r.stderr
    meta = json.loads((work / "meta_cap.json").read_text(encoding="utf-8"))
    assert meta[str(d / "a.png")] == {"caption": "a shared caption", "tags": "1girl, solo"}  # sd-scripts' key
    config = tomllib.loads((work / "ds.toml").read_text(encoding="utf-8"))
    assert len(config["datasets"]) == 1 and len(config["datasets"][0]["subsets"]) == 1  # second run: no duplicate
    sub = config["datasets"][0]["subsets"][0]
    assert Path(sub["metadata_file"]) == (work / "meta_cap.json").resolve() and "caption_extension" not in sub
    assert config["datasets"][0]["resolution"] == 1024
    empty = run_script(TAGS, tmp_path / "nowhere", "m.json", cwd=work)
    assert empty.returncode == 1 and empty.stderr.startswith("error:")


def prepare_buckets_keys(train_data_dir: str, full_path: bool, cwd: Path) -> dict[str, str]:
    """sd-scripts' prepare_buckets_latents.py keying, written from its rule: glob train_data_dir as given, from its
    working folder (Path objects, symlinks not resolved), key = str(image_path) with --full_path else the file
    stem; key -> file."""
    exts = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
    images = sorted(Path(train_data_dir) / p.name for p in (cwd / train_data_dir).glob("*") if p.suffix.lower() in exts)
    return {(str(p) if full_path else os.path.splitext(p.name)[0]): str(p) for p in images}


@pytest.mark.parametrize("full_path", [True, False])
def test_merge_then_prepare_buckets_meet_under_one_key(tmp_path, full_path):
    """The GUI's finetune flow: merge captions, merge tags, then prepare_buckets_latents adds train_resolution to
    the same entries (never a second entry with an empty caption), from a relative folder reached via a symlink."""
    real = tmp_path / "real"
    for i, name in enumerate(["one.png", "two.jpg"]):
        img = make_image(real / name, 40, 30, seed=i)
        write_sidecar(img, f"caption {i}", ".caption")
        write_sidecar(img, f"tag{i}, solo", ".txt")
    work = tmp_path / "work"
    (work / "train").mkdir(parents=True)
    (work / "train" / "img").symlink_to(real, target_is_directory=True)
    flag = ["--full_path"] if full_path else []
    for script, ext in ((CAPTIONS, ".caption"), (TAGS, ".txt")):
        r = run_script(script, "train/img", "train/meta.json", "--caption_extension", ext, *flag, cwd=work)
        assert r.returncode == 0, r.stderr
    meta = json.loads((work / "train" / "meta.json").read_text(encoding="utf-8"))
    buckets = prepare_buckets_keys("train/img", full_path, work)
    assert set(meta) == set(buckets)  # the next step finds every entry under the key it computes
    for key, entry in meta.items():
        i = 0 if "one" in key else 1
        assert entry == {"caption": f"caption {i}", "tags": f"tag{i}, solo"}
    assert all(not os.path.isabs(k) and "real" not in k for k in meta)  # as given: relative, not resolved
    again = run_script(CAPTIONS, "train/img", "train/meta.json", "--caption_extension", ".caption",
                       *([] if full_path else ["--full_path"]), cwd=work)  # the other key form: re-keyed, no duplicate
    assert again.returncode == 0 and "re-keyed" in again.stdout
    assert len(json.loads((work / "train" / "meta.json").read_text(encoding="utf-8"))) == 2
