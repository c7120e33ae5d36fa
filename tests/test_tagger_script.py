"""The WD14 tagger end to end: expected tags from an independent reference, every output mode, GUI command lines."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from library.taggers.tag_rules import TagOptions
from library.taggers.job import TaggerConfig, tag_images
from tests.conftest import CL_TAGS, SCRIPT, WD_TAGS, foreign_library, run_script
from tests.fixtures.images import awkward_images, bad_images, real_photos
from tests.fixtures.wd_models import cl_reference_logits, reference_preprocess, wd_reference_probs

EPS = 1e-4  # ONNX Runtime float32 vs the float64 reference: tags this close to the threshold may go either way


def expected_wd(model_folder: Path, image: Path, thresh=0.35):
    """Straightforward reference: CSV order, general then character, threshold inclusive."""
    p = wd_reference_probs(model_folder, reference_preprocess(image, 64)[None])[0]
    sure = [name for (name, cat), v in zip(WD_TAGS, p) if cat in (0, 4) and v >= thresh + EPS]
    unsure = {name for (name, cat), v in zip(WD_TAGS, p) if cat in (0, 4) and abs(v - thresh) < EPS}
    return sure, unsure


def assert_caption(path: Path, sure, unsure, sep=", "):
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n") and not text.endswith("\n\n")
    got = [t for t in text.rstrip("\n").split(sep) if t]
    assert [t for t in got if t not in unsure] == sure, path


@pytest.fixture()
def photos_dir(tmp_path):
    d = tmp_path / "data"
    real_photos(d, n=5)
    awkward_images(d)
    return d


def test_folder_of_photos_and_awkward_images_matches_reference(photos_dir, model_dir, tmp_path):
    r = run_script(SCRIPT, photos_dir, "--repo_id", "org/tiny", "--model_dir", model_dir, "--batch_size", "3",
                   "--max_data_loader_n_workers", "2", "--recursive", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    images = sorted(p for p in photos_dir.rglob("*") if p.suffix.lower() not in (".txt",) and p.is_file())
    assert len(images) >= 25
    stems = [p.with_suffix("") for p in images]
    for img in images:
        if stems.count(img.with_suffix("")) > 1:  # image.bmp/image.tif/image.webp share image.txt
            continue
        sure, unsure = expected_wd(model_dir / "org_tiny", img)
        assert_caption(img.with_name(img.stem + ".txt"), sure, unsure)
    assert "tagged %d, skipped 0, failed 0" % len(images) in r.stdout
    assert "is the caption file of 3 images" in r.stderr


def test_cl_tagger_layout_matches_reference(photos_dir, model_dir, tmp_path):
    r = run_script(SCRIPT, photos_dir, "--repo_id", "org/cl/cl_v1", "--model_dir", model_dir, "--thresh", "0.5",
                   "--use_rating_tags", "--use_quality_tags", "--max_data_loader_n_workers", "0", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    folder = model_dir / "org_cl" / "cl_v1"
    for img in sorted(photos_dir.glob("*.png"))[:6]:
        x = reference_preprocess(img, 64).transpose(2, 0, 1)[None] / 127.5 - 1.0
        p = 1 / (1 + np.exp(-cl_reference_logits(folder, x)[0]))
        cats = [c for _, c in CL_TAGS]
        names = [n for n, _ in CL_TAGS]
        rating = max((i for i, c in enumerate(cats) if c == "Rating"), key=lambda i: p[i])
        quality = max((i for i, c in enumerate(cats) if c == "Quality"), key=lambda i: p[i])
        rest = sorted((i for i, c in enumerate(cats) if c not in ("Rating", "Quality") and p[i] >= 0.5 + EPS),
                      key=lambda i: -p[i])
        unsure = {names[i] for i, c in enumerate(cats) if abs(p[i] - 0.5) < EPS}
        expected = [names[rating], names[quality]] + [names[i] for i in rest]
        assert_caption(img.with_name(img.stem + ".txt"), expected, unsure)


def test_bad_inputs_are_reported_and_the_run_finishes(tmp_path, model_dir):
    d = tmp_path / "data"
    bad = bad_images(d)
    good = real_photos(d, n=2)
    awk = awkward_images(tmp_path / "awk")
    for kind in ("tiny", "wide"):
        shutil.copy(awk[kind], d / awk[kind].name)
    # batch size 1 with the data loader: sd-scripts still crashes on an all-failed batch
    r = run_script(SCRIPT, d, "--repo_id", "org/tiny", "--model_dir", model_dir, "--batch_size", "1",
                   "--max_data_loader_n_workers", "2", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    for kind in ("zero_bytes", "truncated_jpeg", "truncated_png", "text_as_png", "decompression_bomb"):
        assert f"failed: {bad[kind]}" in r.stdout
        assert not bad[kind].with_suffix(".txt").exists()
    for p in good + [d / awk["tiny"].name, d / awk["wide"].name]:
        assert p.with_name(p.stem + ".txt").exists()
    assert "failed 5" in r.stdout
    assert not (d / "._photo.txt").exists() and not (d / ".hidden.txt").exists()


def test_gui_command_line_from_another_cwd_with_foreign_library(tmp_path, model_dir):
    d = tmp_path / "data"
    real_photos(d, n=2)
    foreign = foreign_library(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    r = run_script(SCRIPT, "--batch_size", "1.0", "--caption_extension", ".txt", "--caption_separator", ", ",
                   "--debug", "--frequency_tags", "--max_data_loader_n_workers", "2", "--onnx",
                   "--remove_underscore", "--repo_id", "org/tiny", "--model_dir", model_dir, d,
                   cwd=elsewhere, env={"PYTHONPATH": str(foreign)})
    assert r.returncode == 0, r.stderr
    assert "Tag frequencies:" in r.stdout
    assert (d / "astronaut.txt").exists()
    assert "Character tags" in r.stderr  # --debug logs each image


def test_older_gui_model_flag_and_both_rating_checkboxes(tmp_path, model_dir):
    """GUIs of 2023-05 to 2024-03 pass --model=ORG/NAME; both rating checkboxes put the rating first (sd-scripts)."""
    d = tmp_path / "data"
    real_photos(d, n=2)
    r = run_script(SCRIPT, "--batch_size=1", "--model=org/tiny", "--model_dir", model_dir, "--use_rating_tags",
                   "--use_rating_tags_as_last_tag", "--max_data_loader_n_workers", "0", d, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    for caption in d.glob("*.txt"):
        tags = caption.read_text(encoding="utf-8").strip().split(", ")
        assert tags[0] in ("general", "sensitive", "questionable", "explicit")
        assert sum(t in ("general", "sensitive", "questionable", "explicit") for t in tags) == 1


def test_fatal_errors_exit_nonzero_with_a_message(tmp_path, model_dir):
    empty = tmp_path / "empty"
    empty.mkdir()
    r = run_script(SCRIPT, empty, "--repo_id", "org/tiny", "--model_dir", model_dir, cwd=tmp_path)
    assert r.returncode == 1 and "no images found" in r.stderr
    real_photos(empty, n=1)
    r = run_script(SCRIPT, empty, "--repo_id", "nobody/nothing", "--model_dir", tmp_path / "m", cwd=tmp_path)
    assert r.returncode == 1 and "copy these files into" in r.stderr and "model.onnx" in r.stderr
    r = run_script(SCRIPT, empty, "--batch_size", "1.5", cwd=tmp_path)
    assert r.returncode == 2 and "whole number" in r.stderr
    r = run_script(SCRIPT, empty, "--repo_id", "org/tiny", "--model_dir", model_dir, "--tag_replacement", "a,b,c",
                   cwd=tmp_path)
    assert r.returncode == 1 and "tag_replacement" in r.stderr


def config(d, model_dir, **kw):
    return TaggerConfig(train_data_dir=d, repo_id="org/tiny", model_dir=str(model_dir), workers=0, progress=False,
                        **kw)


def test_skip_existing_resumes_and_output_dir_mirrors(tmp_path, model_dir):
    d = tmp_path / "data"
    photos = real_photos(d / "a", n=3)
    out = tmp_path / "captions"
    first = tag_images(config(d, model_dir, recursive=True, output_dir=out, caption_extension="caption"))
    assert first.summary.done == 3
    assert (out / "a" / "astronaut.caption").exists() and not (d / "a" / "astronaut.caption").exists()
    (out / "a" / "coffee.caption").unlink()
    again = tag_images(config(d, model_dir, recursive=True, output_dir=out, caption_extension=".caption",
                              skip_existing=True))
    assert again.summary.done == 1 and again.summary.skipped == 2
    assert len(photos) == 3


def test_append_tags_keeps_existing_first_without_duplicates(tmp_path, model_dir):
    d = tmp_path / "data"
    (img,) = real_photos(d, n=1)
    tag_images(config(d, model_dir))
    fresh = (d / "astronaut.txt").read_text().strip().split(", ")
    (d / "astronaut.txt").write_text(f"my_trigger, {fresh[0]}\n")
    tag_images(config(d, model_dir, append_tags=True))
    merged = (d / "astronaut.txt").read_text().strip().split(", ")
    assert merged[0] == "my_trigger" and merged[1] == fresh[0]
    assert sorted(merged[1:]) == sorted(fresh) and len(merged) == len(set(merged))


def test_output_path_json_and_jsonl_with_scores(tmp_path, model_dir):
    d = tmp_path / "data"
    photos = real_photos(d, n=2)
    tag_images(config(d, model_dir, output_path=tmp_path / "meta.json"))
    data = json.loads((tmp_path / "meta.json").read_text())
    key = str(photos[0].resolve())
    assert set(data) == {str(p.resolve()) for p in photos}
    assert data[key]["image_size"] == list(__import__("PIL.Image").Image.open(photos[0]).size)
    assert not (d / "astronaut.txt").exists()  # sd-scripts writes only the metadata file then
    tag_images(config(d, model_dir, output_path=tmp_path / "meta.jsonl",
                      tag_options=TagOptions(remove_underscore=True)))
    rows = [json.loads(line) for line in (tmp_path / "meta.jsonl").read_text().splitlines()]
    assert {r["image_path"] for r in rows} == set(data)
    for row in rows:
        assert set(row["scores"]) == set(row["caption"].split(", "))
        assert all(0.35 <= s <= 1 for s in row["scores"].values())


def test_fixed_batch_model_overrides_batch_size(tmp_path):
    from tests.fixtures.wd_models import make_wd_model
    models = tmp_path / "models"
    make_wd_model(models / "org_fixed", WD_TAGS, size=64, fixed_batch=4, seed=1)
    d = tmp_path / "data"
    photos = real_photos(d, n=5)
    out = tag_images(TaggerConfig(train_data_dir=d, repo_id="org/fixed", model_dir=str(models), batch_size=3,
                                  workers=0, progress=False))
    assert out.summary.done == 5
    shutil.copytree(models / "org_fixed", models / "org_tiny")
    for p in photos:
        sure, unsure = expected_wd(models / "org_fixed", p)
        assert_caption(p.with_suffix(".txt"), sure, unsure)


def test_only_rank_zero_writes_under_accelerate(tmp_path, model_dir):
    d = tmp_path / "data"
    real_photos(d, n=1)
    r = run_script(SCRIPT, d, "--repo_id", "org/tiny", "--model_dir", model_dir, cwd=tmp_path,
                   env={"RANK": "1", "LOCAL_RANK": "1"})
    assert r.returncode == 0 and not list(d.glob("*.txt"))
    r = run_script(SCRIPT, d, "--repo_id", "org/tiny", "--model_dir", model_dir, cwd=tmp_path,
                   env={"RANK": "0", "LOCAL_RANK": "0"})
    assert r.returncode == 0 and list(d.glob("*.txt"))


def test_dataset_config_written_after_a_recursive_run(tmp_path, model_dir):
    import tomllib
    d = tmp_path / "data"
    real_photos(d / "a", n=1)
    real_photos(d / "b" / "c", n=1)
    toml_path = tmp_path / "dataset.toml"
    r = run_script(SCRIPT, d, "--recursive", "--repo_id", "org/tiny", "--model_dir", model_dir, "--dataset_config",
                   toml_path, "--bucket_report", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    config = tomllib.loads(toml_path.read_text())
    subsets = [s for ds in config["datasets"] for s in ds["subsets"]]
    assert sorted(Path(s["image_dir"]).resolve() for s in subsets) == sorted(
        [(d / "a").resolve(), (d / "b" / "c").resolve()])
    assert all(s["caption_extension"] == ".txt" for s in subsets)
