"""Generated sd-scripts dataset configs: valid under sd-scripts' schema, complete, merged into existing files."""

import argparse
import json
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from finetune import dataset_args
from library.dataset import toml_io
from library.dataset.config import add_metadata_subset, write_dataset_config
from library.errors import FatalError, OptionError
from library.outputs.metadata import MetadataWriter
from tests.conftest import ROOT, run_script
from tests.fixtures.datasets import captioned_tree, make_image, write_sidecar

pytestmark = pytest.mark.timeout(90)
SCRIPT = ROOT / "finetune" / "make_dataset_config.py"

# sd-scripts' config schema (library/config_util.py ConfigSanitizer as train_network.py builds it: DreamBooth
# and fine-tuning datasets, dropout keys), written out independently. "num" = int or float.
SUBSET_COMMON = {
    "color_aug": bool, "face_crop_aug_range": "float2", "flip_aug": bool, "num_repeats": int, "random_crop": bool,
    "shuffle_caption": bool, "keep_tokens": int, "keep_tokens_separator": str, "secondary_separator": str,
    "caption_separator": str, "enable_wildcard": bool, "token_warmup_min": int, "token_warmup_step": "num",
    "caption_prefix": str, "caption_suffix": str, "custom_attributes": dict, "caption_dropout_every_n_epochs": int,
    "caption_dropout_rate": "num", "caption_tag_dropout_rate": "num"}
DB_ASCENDABLE = {"caption_extension": str, "class_tokens": str, "cache_info": bool}
DB_SUBSET = {**SUBSET_COMMON, **DB_ASCENDABLE, "image_dir": str, "is_reg": bool, "alpha_mask": bool}
FT_SUBSET = {**SUBSET_COMMON, "metadata_file": str, "image_dir": str, "alpha_mask": bool}
DATASET_ONLY = {"batch_size": int, "bucket_no_upscale": bool, "bucket_reso_steps": int, "enable_bucket": bool,
                "max_bucket_reso": int, "min_bucket_reso": int, "validation_seed": int, "validation_split": float,
                "resolution": "reso", "network_multiplier": float}
DB_DATASET = {**DATASET_ONLY, **SUBSET_COMMON, **DB_ASCENDABLE}
FT_DATASET = {**DATASET_ONLY, **SUBSET_COMMON}
GENERAL = {**DATASET_ONLY, **SUBSET_COMMON, **DB_ASCENDABLE}
REQUIRED = {"db": "image_dir", "ft": "metadata_file"}
# keys every sd-scripts release since 2023 knows: what captionkit writes unless asked for newer ones
CLASSIC = {"image_dir", "metadata_file", "caption_extension", "num_repeats", "shuffle_caption", "keep_tokens",
           "enable_wildcard", "class_tokens", "is_reg", "resolution", "enable_bucket", "min_bucket_reso",
           "max_bucket_reso", "bucket_reso_steps", "bucket_no_upscale", "batch_size"}
SD_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def check_type(where, key, value, kind):
    if kind == "num":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif kind == "float2":
        ok = isinstance(value, list) and len(value) == 2 and all(isinstance(v, float) for v in value)
    elif kind == "reso":
        ok = (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) for v in value))
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, kind)
    assert ok, f"{where}.{key} = {value!r} is not {kind}"


def validate(config: dict) -> None:
    """Accept exactly what sd-scripts' validator accepts (stricter on bool-as-int, which it lets through)."""
    assert set(config) <= {"general", "datasets"}, set(config)
    for key, value in config.get("general", {}).items():
        assert key in GENERAL, f"[general] {key} not allowed"
        check_type("general", key, value, GENERAL[key])
    for i, dataset in enumerate(config.get("datasets", [])):
        subsets = dataset.get("subsets", [])
        kinds = {"ft" if "metadata_file" in s else "db" for s in subsets}
        assert len(kinds) <= 1, "DreamBooth and fine-tuning subsets mixed in one dataset"
        kind = kinds.pop() if kinds else "db"
        schema, sub_schema = (FT_DATASET, FT_SUBSET) if kind == "ft" else (DB_DATASET, DB_SUBSET)
        for key, value in dataset.items():
            if key == "subsets":
                continue
            assert key in schema, f"datasets[{i}].{key} not allowed in a {kind} dataset"
            check_type(f"datasets[{i}]", key, value, schema[key])
        for j, sub in enumerate(subsets):
            assert REQUIRED[kind] in sub, f"datasets[{i}].subsets[{j}] lacks {REQUIRED[kind]}"
            for key, value in sub.items():
                assert key in sub_schema, f"datasets[{i}].subsets[{j}].{key} not allowed in a {kind} subset"
                check_type(f"datasets[{i}].subsets[{j}]", key, value, sub_schema[key])
        reso = dataset.get("resolution", config.get("general", {}).get("resolution"))
        if dataset.get("enable_bucket") and reso is not None:
            w, h = (reso, reso) if isinstance(reso, int) else reso
            assert dataset.get("min_bucket_reso", 256) <= min(w, h)
            assert dataset.get("max_bucket_reso", 1024) >= max(w, h)


def trained_images(config: dict) -> dict[Path, str]:
    """What sd-scripts loads from the config: {image: caption} (folder subsets: top level only, its extensions)."""
    out = {}
    general = config.get("general", {})
    for dataset in config.get("datasets", []):
        for sub in dataset.get("subsets", []):
            chain = [sub, dataset, general]
            wildcard = next((t["enable_wildcard"] for t in chain if "enable_wildcard" in t), False)
            if "metadata_file" in sub:
                for key, entry in json.loads(Path(sub["metadata_file"]).read_text("utf-8")).items():
                    path = Path(key) if Path(key).is_absolute() else Path(sub["image_dir"]) / key
                    assert path.is_file(), key
                    out[path] = entry.get("caption") or entry.get("tags")
                continue
            ext = next((t["caption_extension"] for t in chain if "caption_extension" in t), ".caption")
            for img in Path(sub["image_dir"]).iterdir():
                if img.suffix in SD_EXTS + tuple(e.upper() for e in SD_EXTS):
                    cap = img.with_name(img.stem + ext)
                    lines = cap.read_text("utf-8").splitlines() if cap.is_file() else []
                    out[img] = ("\n".join(lines) if wildcard else lines[0]) if lines else ""
    return out


def load(path) -> dict:
    config = tomllib.loads(Path(path).read_text("utf-8"))
    validate(config)
    return config


def test_recursive_run_gives_one_subset_per_captioned_folder(tmp_path):
    tree = captioned_tree(tmp_path / "data")
    update = write_dataset_config(tmp_path / "ds.toml", tmp_path / "data", ".txt", recursive=True)
    config = load(tmp_path / "ds.toml")
    subsets = config["datasets"][0]["subsets"]
    root = (tmp_path / "data").resolve()
    assert [s["image_dir"] for s in subsets] == [root.as_posix(), (root / "sub").as_posix(),
                                                 (root / "sub" / "deeper").as_posix()]
    assert all(s["caption_extension"] == ".txt" for s in subsets)
    assert set(k for s in subsets for k in s) | set(config["datasets"][0]) <= CLASSIC | {"subsets"}
    trained = trained_images(config)
    for name in ("top1", "top2", "sub1", "deep1"):
        assert trained[tree[name].resolve()] == tree[name].with_suffix(".txt").read_text().strip()
    assert trained[tree["top_uncaptioned"].resolve()] == ""
    assert any("1 images have no .txt caption" in w for w in update.warnings)
    assert tree["nocap_folder"].resolve() not in trained
    flat = write_dataset_config(tmp_path / "flat.toml", tmp_path / "data", ".txt", recursive=False)
    assert [s["image_dir"] for s in load(tmp_path / "flat.toml")["datasets"][0]["subsets"]] == [root.as_posix()]
    assert flat.added == [root.as_posix()]


def test_every_option_round_trips(tmp_path):
    captioned_tree(tmp_path / "data", extension=".caption")
    subset_opts = dict(num_repeats=7, shuffle_caption=True, keep_tokens=2, keep_tokens_separator="|||",
                       secondary_separator=";;;", caption_separator=" | ", enable_wildcard=True, color_aug=True,
                       flip_aug=True, random_crop=True, face_crop_aug_range=[2.0, 4.0], token_warmup_min=1,
                       token_warmup_step=0.5, caption_prefix="masterpiece", caption_suffix="best quality",
                       caption_dropout_rate=0.1, caption_dropout_every_n_epochs=3, caption_tag_dropout_rate=0.2,
                       custom_attributes={"lora": "x", "w": 1.5}, alpha_mask=True, class_tokens="ohwx person",
                       cache_info=True, is_reg=False)
    dataset_opts = dict(resolution=[1216, 832], enable_bucket=True, min_bucket_reso=320, max_bucket_reso=2560,
                        bucket_reso_steps=32, bucket_no_upscale=True, batch_size=4, network_multiplier=1,
                        validation_seed=3, validation_split=0.1)
    write_dataset_config(tmp_path / "ds.toml", tmp_path / "data", "caption", **subset_opts, **dataset_opts)
    config = load(tmp_path / "ds.toml")
    dataset, sub = config["datasets"][0], config["datasets"][0]["subsets"][0]
    expected_sub = dict(subset_opts, caption_separator="|", caption_extension=".caption")
    for key, value in expected_sub.items():
        assert sub[key] == value, key
    for key, value in dataset_opts.items():
        assert dataset[key] == value, key
    assert isinstance(dataset["network_multiplier"], float)  # sd-scripts' schema wants a float here


def test_script_round_trip_and_report(tmp_path):
    captioned_tree(tmp_path / "data", extension=".caption")
    out = tmp_path / "cfg" / "train.toml"
    r = run_script(SCRIPT, tmp_path / "data", "--out", out, "--recursive", "--resolution", "768",
                   "--min_bucket_reso", "320", "--max_bucket_reso", "1536", "--bucket_reso_steps", "64",
                   "--no-bucket_no_upscale", "--batch_size", "2", "--num_repeats", "10", "--shuffle_caption",
                   "--keep_tokens", "3", "--trigger", "1girl", "--class_tokens", "person", "--bucket_report",
                   cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    config = load(out)
    dataset = config["datasets"][0]
    assert {k: dataset[k] for k in ("resolution", "min_bucket_reso", "max_bucket_reso", "bucket_reso_steps",
                                    "bucket_no_upscale", "enable_bucket", "batch_size")} == {
        "resolution": 768, "min_bucket_reso": 320, "max_bucket_reso": 1536, "bucket_reso_steps": 64,
        "bucket_no_upscale": False, "enable_bucket": True, "batch_size": 2}
    for sub in dataset["subsets"]:
        assert (sub["caption_extension"], sub["num_repeats"], sub["shuffle_caption"], sub["keep_tokens"],
                sub["class_tokens"]) == (".caption", 10, True, 3, "person")
    assert "captions do not start with '1girl'" in r.stdout  # 3 of 4 captions start with something else
    assert "dataset 1 (3 subsets)" in r.stdout and "images per bucket" in r.stdout
    bad = run_script(SCRIPT, tmp_path / "data", "--out", tmp_path / "x.toml", "--resolution", "512",
                     "--min_bucket_reso", "768", cwd=tmp_path)
    assert bad.returncode == 1 and "min_bucket_reso" in bad.stderr and not (tmp_path / "x.toml").exists()


EXISTING = """# my hand-written config
[general]
shuffle_caption = true
caption_extension = ".caption"

[[datasets]]
resolution = 512
batch_size = 2

  [[datasets.subsets]]
  image_dir = "other"   # relative, as people write them
  num_repeats = 5
  flip_aug = true
"""


def test_merging_into_an_existing_config(tmp_path):
    captioned_tree(tmp_path / "data")
    (tmp_path / "other").mkdir()
    path = tmp_path / "ds.toml"
    path.write_text(EXISTING, encoding="utf-8")
    write_dataset_config(path, tmp_path / "data", ".txt")
    config = load(path)
    assert config["general"] == {"shuffle_caption": True, "caption_extension": ".caption"}
    assert len(config["datasets"]) == 1  # no dataset keys asked for: the user's dataset takes the new subset
    old, new = config["datasets"][0]["subsets"]
    assert old == {"image_dir": "other", "num_repeats": 5, "flip_aug": True}
    assert new["caption_extension"] == ".txt" and new["image_dir"].endswith("/data")
    assert path.read_text(encoding="utf-8").startswith(EXISTING)  # the user's comments and layout are kept
    assert not (tmp_path / "ds.toml.bak").exists()
    write_dataset_config(path, tmp_path / "data", ".txt")  # the same folder again: not duplicated
    assert len(load(path)["datasets"][0]["subsets"]) == 2
    for cap in (tmp_path / "data").glob("*.txt"):  # the folder re-captioned with another extension
        cap.rename(cap.with_suffix(".caption"))
    upd = write_dataset_config(path, tmp_path / "data", ".caption", num_repeats=4)  # explicit: updates in place
    subs = load(path)["datasets"][0]["subsets"]
    assert len(subs) == 2 and subs[1]["num_repeats"] == 4 and subs[1]["caption_extension"] == ".caption"
    assert subs[0]["num_repeats"] == 5 and upd.updated and not upd.added
    write_dataset_config(path, tmp_path / "data" / "sub", ".txt", resolution=1024)  # other resolution: new dataset
    config = load(path)
    assert [d["resolution"] for d in config["datasets"]] == [512, 1024]
    assert config["datasets"][1]["subsets"][0]["image_dir"].endswith("/data/sub")
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps({str(tmp_path / "data" / "top1.png"): {"caption": "x"}}), encoding="utf-8")
    add_metadata_subset(path, meta)
    config = load(path)  # validate() refuses fine-tuning and folder subsets in one dataset
    assert len(config["datasets"]) == 3 and "metadata_file" in config["datasets"][2]["subsets"][0]


def test_multiline_captions_switch_on_wildcards_per_folder(tmp_path):
    a = make_image(tmp_path / "data" / "dual" / "a.png", 64, 64)
    write_sidecar(a, "1girl, solo\nA girl standing alone.")
    b = make_image(tmp_path / "data" / "tags" / "b.png", 64, 64)
    write_sidecar(b, "1boy")
    write_dataset_config(tmp_path / "ds.toml", tmp_path / "data", ".txt", recursive=True)
    config = load(tmp_path / "ds.toml")
    flags = {Path(s["image_dir"]).name: s.get("enable_wildcard", False) for s in config["datasets"][0]["subsets"]}
    assert flags == {"dual": True, "tags": False}
    assert trained_images(config)[a.resolve()] == "1girl, solo\nA girl standing alone."
    write_dataset_config(tmp_path / "forced.toml", tmp_path / "data" / "tags", ".txt", multiline=True)
    assert load(tmp_path / "forced.toml")["datasets"][0]["subsets"][0]["enable_wildcard"] is True


def test_trigger_sets_keep_tokens_and_separator(tmp_path):
    for i, text in enumerate(["ohwx | style | 1girl", "ohwx | style | cat", "cat | ohwx"]):
        write_sidecar(make_image(tmp_path / "d" / f"{i}.png", 32, 32), text)
    upd = write_dataset_config(tmp_path / "ds.toml", tmp_path / "d", ".txt", trigger="ohwx | style",
                               caption_separator=" | ")
    sub = load(tmp_path / "ds.toml")["datasets"][0]["subsets"][0]
    assert (sub["keep_tokens"], sub["caption_separator"]) == (2, "|")
    assert any("1 captions do not start with" in w and "2.png" in w for w in upd.warnings)
    write_dataset_config(tmp_path / "k.toml", tmp_path / "d", ".txt", trigger=["ohwx"], keep_tokens=0)
    assert load(tmp_path / "k.toml")["datasets"][0]["subsets"][0]["keep_tokens"] == 0


def test_captions_in_a_separate_folder_become_a_metadata_subset(tmp_path):
    tree = captioned_tree(tmp_path / "images")
    caps = tmp_path / "captions"
    for name in ("top1", "sub1"):
        rel = tree[name].relative_to(tmp_path / "images")
        (caps / rel).parent.mkdir(parents=True, exist_ok=True)
        (caps / rel).with_suffix(".txt").write_text(f"caption of {name}\n", encoding="utf-8")
    write_dataset_config(tmp_path / "ds.toml", tmp_path / "images", ".txt", recursive=True, caption_dir=caps)
    config = load(tmp_path / "ds.toml")
    sub = config["datasets"][0]["subsets"][0]
    assert "caption_extension" not in sub and Path(sub["metadata_file"]).is_file()
    trained = trained_images(config)
    assert trained == {tree["top1"].resolve(): "caption of top1", tree["sub1"].resolve(): "caption of sub1"}


def test_refusals_leave_files_alone(tmp_path):
    captioned_tree(tmp_path / "data")
    broken = tmp_path / "broken.toml"
    broken.write_text("[[datasets]\nresolution = ", encoding="utf-8")
    with pytest.raises(FatalError, match="not valid TOML"):
        write_dataset_config(broken, tmp_path / "data", ".txt")
    assert broken.read_text(encoding="utf-8") == "[[datasets]\nresolution = "
    with pytest.raises(FatalError, match="unknown dataset config option"):
        write_dataset_config(tmp_path / "a.toml", tmp_path / "data", ".txt", num_repeat=3)
    with pytest.raises(FatalError, match="must be int"):
        write_dataset_config(tmp_path / "a.toml", tmp_path / "data", ".txt", num_repeats="3")
    with pytest.raises(FatalError, match="no caption files"):
        write_dataset_config(tmp_path / "a.toml", tmp_path / "data", ".caption")
    assert not (tmp_path / "a.toml").exists()


def test_toml_writer_escapes_and_round_trips():
    data = {"general": {"caption_prefix": 'say "hi" \\ C:\\data\\set', "t": "tab\there\nnew\u0001line é 漢字"},
            "odd key": 1.5, "flag": False, "n": -3, "big": 1e20, "list": [1, 2], "inl": {"a": "b", "c": [1.0]},
            "datasets": [{"resolution": [1216, 832], "subsets": [{"image_dir": "/x/y"}, {"image_dir": "z"}]},
                         {"subsets": [{"metadata_file": "m.json"}]}]}
    text = toml_io.dumps(data, header="hello\nworld")
    assert text.startswith("# hello\n# world\n")
    assert tomllib.loads(text) == data
    legacy = pytest.importorskip("toml")  # the parser sd-scripts itself uses, when installed
    assert legacy.loads(text)["datasets"] == data["datasets"]


def test_captioning_scripts_wiring(tmp_path):
    tree = captioned_tree(tmp_path / "data")
    parser = argparse.ArgumentParser()
    dataset_args.add_dataset_config_args(parser)
    args = parser.parse_args(["--dataset_config", str(tmp_path / "run.toml"), "--bucket_report"])
    args.recursive, args.output_dir, args.caption_separator = True, None, ", "
    lines = dataset_args.after_run(args, tmp_path / "data", ".txt")
    assert "3 subsets added" in lines[0] and any("images per bucket" in ln for ln in lines)
    assert len(load(tmp_path / "run.toml")["datasets"][0]["subsets"]) == 3
    writer = MetadataWriter(tmp_path / "tags.json")  # the tagger's --output_path mode
    writer.add(tree["top1"], "1girl, solo", (640, 480))
    writer.close()
    args = argparse.Namespace(dataset_config=str(tmp_path / "meta.toml"), bucket_report=False, recursive=False,
                              output_path=str(tmp_path / "tags.json"), caption_separator=", ")
    dataset_args.after_run(args, tmp_path / "data", ".txt")
    config = load(tmp_path / "meta.toml")
    assert trained_images(config) == {tree["top1"].resolve(): "1girl, solo"}


COMMENTED = """# my hand-written config: keep these notes
[general]
shuffle_caption = true   # every step
keep_tokens = 1          # the trigger
num_repeats = 3
caption_extension = ".caption"
resolution = 768         # SD 1.5 upscaled
min_bucket_reso = 320

# faces
[[datasets]]
batch_size = 2

  [[datasets.subsets]]
  image_dir = "other"   # relative, as people write them
  flip_aug = true
"""


def sd_scripts_reads(path) -> dict:
    """The config as sd-scripts' own parser (toml 0.10) reads it; it must agree with tomllib."""
    legacy = pytest.importorskip("toml")
    text = Path(path).read_text("utf-8")
    assert legacy.loads(text) == tomllib.loads(text)
    return load(path)


def effective(config: dict, dataset: dict, sub: dict, key: str, default=None):
    """A subset key as sd-scripts resolves it: subset, then dataset, then [general], then its default."""
    return next((t[key] for t in (sub, dataset, config.get("general", {})) if key in t), default)


def test_comments_survive_every_run_and_no_backup_is_needed(tmp_path):
    captioned_tree(tmp_path / "data")
    path = tmp_path / "ds.toml"
    path.write_text(COMMENTED, encoding="utf-8")
    write_dataset_config(path, tmp_path / "data", ".txt")  # run 1: a subset added
    write_dataset_config(path, tmp_path / "data" / "sub", ".txt", num_repeats=4)  # run 2: another one
    write_dataset_config(path, tmp_path / "data", ".txt", num_repeats=2)  # run 3: run 1's subset updated
    text = path.read_text(encoding="utf-8")
    assert text.startswith(COMMENTED)  # every comment, blank line and indentation of the user's file
    assert list(tmp_path.glob("*.bak")) == [] and list(tmp_path.glob("*.tmp")) == []
    config = sd_scripts_reads(path)
    subs = config["datasets"][0]["subsets"]
    assert [Path(s["image_dir"]).name for s in subs] == ["other", "data", "sub"]
    assert (subs[1]["num_repeats"], subs[2]["num_repeats"]) == (2, 4)
    assert "\n\n  [[datasets.subsets]]\n  image_dir = " in text[len(COMMENTED):]  # laid out like the user's own


def test_added_subsets_inherit_what_the_users_file_sets(tmp_path):
    captioned_tree(tmp_path / "data")
    path = tmp_path / "ds.toml"
    path.write_text(COMMENTED, encoding="utf-8")
    write_dataset_config(path, tmp_path / "data", ".txt", recursive=True)
    config = sd_scripts_reads(path)
    dataset = config["datasets"][0]
    for sub in dataset["subsets"][1:]:
        assert not {"shuffle_caption", "keep_tokens", "num_repeats"} & set(sub), sub  # no plain defaults written
        assert sub["caption_extension"] == ".txt"  # what the run wrote is always named
        assert (effective(config, dataset, sub, "shuffle_caption"), effective(config, dataset, sub, "keep_tokens"),
                effective(config, dataset, sub, "num_repeats")) == (True, 1, 3)
    # what the user asks for, or what --trigger implies, is written even where [general] has a value
    write_dataset_config(path, tmp_path / "data" / "sub", ".txt", shuffle_caption=False, trigger="a, b")
    sub = next(s for s in sd_scripts_reads(path)["datasets"][0]["subsets"] if s["image_dir"].endswith("/sub"))
    assert sub["shuffle_caption"] is False


def test_a_new_dataset_inherits_the_bucket_settings_of_general(tmp_path):
    captioned_tree(tmp_path / "data")
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps({str(tmp_path / "data" / "top1.png"): {"caption": "x"}}), encoding="utf-8")
    path = tmp_path / "ds.toml"
    path.write_text(COMMENTED, encoding="utf-8")
    add_metadata_subset(path, meta)  # fine-tuning subsets need a dataset of their own
    config = sd_scripts_reads(path)
    new = config["datasets"][1]
    assert "resolution" not in new and "min_bucket_reso" not in new  # [general]'s 768 and 320 apply
    assert (new["max_bucket_reso"], new["enable_bucket"]) == (1536, True)  # twice the inherited resolution
    assert not {"shuffle_caption", "keep_tokens", "num_repeats"} & set(new["subsets"][0])
    other = tmp_path / "other.json"
    other.write_text(meta.read_text(encoding="utf-8"), encoding="utf-8")
    with pytest.raises(OptionError, match="min_bucket_reso 320 is larger"):  # checked against [general]
        add_metadata_subset(path, other, resolution=256)
    assert sd_scripts_reads(path) == config  # refused: the file is unchanged


def test_old_captionkit_header_and_inline_tables(tmp_path):
    captioned_tree(tmp_path / "data")
    path = tmp_path / "ds.toml"
    path.write_text("# sd-scripts dataset config written by captionkit.\n"
                    "# Train with: --dataset_config <this file>. Comments are not kept when captionkit adds subsets.\n"
                    "datasets = [{ resolution = 512, subsets = [{ image_dir = \"other\" }] }]  # inline\n",
                    encoding="utf-8")
    write_dataset_config(path, tmp_path / "data", ".txt", custom_attributes={"w": 1.5})
    text = path.read_text(encoding="utf-8")
    assert "Comments are not kept" not in text and "  # inline\n" in text
    subs = sd_scripts_reads(path)["datasets"][0]["subsets"]
    assert subs[1]["custom_attributes"] == {"w": 1.5} and subs[1]["caption_extension"] == ".txt"


def test_a_fresh_config_is_laid_out_as_before(tmp_path):
    root = captioned_tree(tmp_path / "data")["top1"].parent.resolve().as_posix()
    write_dataset_config(tmp_path / "ds.toml", tmp_path / "data", ".txt", num_repeats=10)
    assert (tmp_path / "ds.toml").read_text(encoding="utf-8") == (
        "# sd-scripts dataset config written by captionkit.\n# Train with: --dataset_config <this file>.\n\n"
        "[[datasets]]\nresolution = 1024\nenable_bucket = true\nmin_bucket_reso = 256\nmax_bucket_reso = 2048\n"
        "bucket_reso_steps = 64\nbucket_no_upscale = false\n\n"
        f"[[datasets.subsets]]\nimage_dir = \"{root}\"\ncaption_extension = \".txt\"\nnum_repeats = 10\n"
        "shuffle_caption = false\nkeep_tokens = 0\n")
