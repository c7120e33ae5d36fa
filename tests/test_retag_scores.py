"""Scores kept by the tagger (--scores_file) and tags re-decided from them: byte-identical to a direct run, ensembles."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from finetune import cli
from finetune import retag_from_scores as retag_script
from finetune import tag_images_by_wd14_tagger as tagger_script
from library.errors import FatalError
from library.run.jobs import ItemResult
from library.outputs.writer import ResultRow
from library.taggers.labels import TagLabels
from library.taggers.scores import FORMAT, ScoresWriter, image_record, make_header, read_scores
from library.taggers.tag_rules import tag_key
from tests.conftest import CHARACTERS, GENERAL, ROOT, SCRIPT, run_script
from tests.fixtures.images import real_photos
from tests.fixtures.wd_models import make_pixai_model

pytestmark = pytest.mark.timeout(300)
RETAG = ROOT / "finetune" / "retag_from_scores.py"
WD = ["--repo_id", "org/tiny"]
CL = ["--repo_id", "org/cl/cl_v1"]
PIXAI = ["--repo_id", "org/pixai"]
PIXAI_TAGS = [(t, 0) for t in GENERAL] + [(c, 4) for c in CHARACTERS] + [("highres", 5), ("vocaloid", 3)]
PIXAI_SERIES = {"kagamine_rin": ["vocaloid"], "hatsune_miku_(vocaloid)": ["vocaloid"],
                "ganyu_(genshin_impact)": ["genshin_impact"]}


@pytest.fixture(scope="module")
def models(model_dir):
    """The session's WD and cl_tagger models plus a PixAI one (own thresholds, character -> series)."""
    if not (model_dir / "org_pixai").is_dir():
        make_pixai_model(model_dir / "org_pixai", PIXAI_TAGS, size=32, seed=3, series=PIXAI_SERIES)
    return model_dir


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    d = tmp_path_factory.mktemp("photos")
    real_photos(d, n=4)
    sub = real_photos(d / "sub", n=6)[4:]  # two more photos in a subfolder
    for p in sorted((d / "sub").iterdir()):
        if p not in sub:
            p.unlink()
    return d


def run(main_module, *argv) -> int:
    return cli.run_script(main_module.main, main_module.setup_parser(), argv=[str(a) for a in argv])


def captions(folder: Path, extension: str = ".txt") -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*" + extension))}


def tag_and_retag(tmp_path, photos, models, model, flags, tag_flags=(), beside=False, existing=None):
    """Tag with `flags` (writing --scores_file), retag the scores with the same flags; both caption trees."""
    data = tmp_path / "data"
    shutil.copytree(photos, data)
    ext = flags[flags.index("--caption_extension") + 1] if "--caption_extension" in flags else ".txt"
    for image, text in (existing or {}).items():
        (data / image).with_suffix(ext).write_text(text + "\n", encoding="utf-8")
    scores, direct, again = tmp_path / "scores.jsonl", tmp_path / "direct", tmp_path / "retagged"
    out = [] if beside else ["--output_dir", direct]
    assert run(tagger_script, data, *model, "--model_dir", models, "--recursive", "--max_data_loader_n_workers", "0",
               "--no_progress", "--scores_file", scores, *out, *tag_flags, *flags) == 0
    assert run(retag_script, scores, "--output_dir", again, *flags) == 0
    return captions(data if beside else direct, ext), captions(again, ext)


FLAG_CASES = [
    (WD, []),
    (WD, ["--thresh", "0.5"]),
    (WD, ["--general_threshold", "0.6", "--character_threshold", "0.2"]),
    (WD, ["--remove_underscore"]),
    (WD, ["--undesired_tags", "solo,long hair,white_background"]),
    (WD, ["--tag_replacement", "long_hair,long locks;1boy,man;sky,blue\\, sky"]),
    (WD, ["--character_tags_first", "--character_threshold", "0.1"]),
    (WD, ["--always_first_tags", "smile,1boy,cup"]),
    (WD, ["--use_rating_tags"]),
    (WD, ["--use_rating_tags_as_last_tag", "--caption_separator", " | "]),
    (WD, ["--character_tag_expand", "--remove_underscore", "--character_threshold", "0.1"]),
    (WD, ["--caption_separator", " "]),
    (WD, ["--caption_extension", ".caption"]),
    (WD, ["--frequency_tags", "--debug"]),
    (CL, ["--use_quality_tags", "--use_rating_tags"]),
    (CL, ["--use_quality_tags_as_last_tag", "--copyright_threshold", "0.2", "--artist_threshold", "0.3",
          "--meta_threshold", "0.4", "--model_threshold", "0.25"]),
    (PIXAI, []),  # the model's own thresholds (0.3 general, 0.85 character)
    (PIXAI, ["--character_tag_expand", "--character_threshold", "0.3"]),  # characters bring their series
]


@pytest.mark.parametrize("model,flags", FLAG_CASES, ids=[f"{m[1]}:{' '.join(f) or 'defaults'}" for m, f in FLAG_CASES])
def test_retag_is_byte_identical_to_the_tagger(tmp_path, photos, models, model, flags):
    direct, again = tag_and_retag(tmp_path, photos, models, model, flags)
    assert len(direct) == 6 and any(v.strip() for v in direct.values())
    assert again == direct


def test_mcut_retag_is_byte_identical(tmp_path, photos, models):
    # the default floor keeps ~all scores of this tiny model's 30 general tags; floor 0 keeps every one
    for floor in ("0.05", "0"):
        case = tmp_path / floor
        direct, again = tag_and_retag(case, photos, models, WD, ["--general_mcut", "--character_mcut"],
                                      tag_flags=["--scores_floor", floor])
        assert again == direct


def test_append_tags_and_captions_beside_the_images(tmp_path, photos, models):
    existing = {"astronaut.png": "ohwx, my own tag, 1boy", "sub/camera.jpg": "ohwx"}
    direct, again = tag_and_retag(tmp_path / "a", photos, models, WD, ["--append_tags"], existing=existing)
    assert again == direct and direct["astronaut.txt"].startswith(b"ohwx, my own tag, 1boy")
    direct, again = tag_and_retag(tmp_path / "b", photos, models, WD, ["--thresh", "0.4"], beside=True)
    assert again == direct


def test_flags_change_the_output(tmp_path, photos, models):
    """The identity above is not vacuous: the flags change what is written."""
    plain, _ = tag_and_retag(tmp_path / "a", photos, models, WD, [])
    scores = tmp_path / "a" / "scores.jsonl"
    for flags in (["--thresh", "0.6"], ["--remove_underscore"], ["--use_rating_tags"], ["--character_tags_first",
                                                                                          "--character_threshold",
                                                                                          "0.05"]):
        out = tmp_path / ("x" + "".join(flags))
        assert run(retag_script, scores, "--output_dir", out, *flags) == 0
        assert captions(out) != plain, flags


def test_threshold_below_the_floor_is_refused(tmp_path, photos, models, capsys):
    tag_and_retag(tmp_path, photos, models, WD, [], tag_flags=["--scores_floor", "0.2"])
    scores = tmp_path / "scores.jsonl"
    assert read_scores(scores).floor == 0.2
    capsys.readouterr()
    assert run(retag_script, scores, "--output_dir", tmp_path / "o", "--thresh", "0.1") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {scores}: --general_threshold/--thresh 0.1 is below the file's --scores_floor 0.2; "
                   "scores under the floor were not stored"]
    assert not (tmp_path / "o").exists()
    assert run(retag_script, scores, "--output_dir", tmp_path / "o", "--character_threshold", "0.15") == 1
    assert "character" in capsys.readouterr().err


# ---------- the file format ----------

LABELS = TagLabels(["general", "explicit", "cat", "dog", "miku"], ["rating", "rating", "general", "general",
                                                                    "character"])


def test_image_record_keeps_scores_at_the_floor_and_every_rating():
    probs = np.array([0.01, 0.02, 0.05, 0.0499, 0.35], np.float32)
    record = image_record(LABELS, probs, 0.05)
    assert record["tags"] == [0, 1, 2, 4]
    assert record["scores"] == [0.01, 0.02, 0.05, 0.35]  # shortest text that reads back as the same float32
    assert np.float32(record["scores"][3]) == probs[4]
    with pytest.raises(ValueError):
        image_record(LABELS, probs[:3], 0.05)


def _row(path, probs, header=None, size=(3, 2)):
    details = {"raw_scores": image_record(LABELS, np.array(probs, np.float32), 0.05)}
    if header:
        details["scores_header"] = header
    return ResultRow(Path(path), size, ItemResult("x", details=details))


def test_writer_round_trip_resume_and_non_utf8_names(tmp_path):
    header = make_header(LABELS, "org/m", "abc", 0.05, tmp_path)
    odd = os.path.join(str(tmp_path), os.fsdecode(b"caf\xe9 \xff.png"))  # a Latin-1 name on a UTF-8 system
    path = tmp_path / "s.jsonl"
    w = ScoresWriter(path)
    assert w.write([_row(tmp_path / "a.png", [0.9, 0.1, 0.5, 0.01, 0.7], header), _row(odd, [0.2] * 5)]) == [None] * 2
    w.close()
    text = path.read_bytes().decode("utf-8")  # valid UTF-8 although a name is not
    assert json.loads(text.splitlines()[0])["format"] == FORMAT and "\\udce9" in text
    back = read_scores(path)
    assert set(back.records) == {str(tmp_path / "a.png"), odd}
    assert back.records[odd]["size"] == [3, 2]
    assert back.probs(back.records[str(tmp_path / "a.png")]).tolist() == pytest.approx([0.9, 0.1, 0.5, 0, 0.7])
    # resume keeps the earlier records and skips their images
    w = ScoresWriter(path, resume=True)
    assert w.done(tmp_path / "a.png") and not w.done(tmp_path / "b.png")
    w.write([_row(tmp_path / "b.png", [0.3] * 5, header)])
    w.close()
    assert len(read_scores(path).records) == 3
    # another model's header is refused instead of mixing scores
    w = ScoresWriter(path, resume=True)
    with pytest.raises(FatalError, match="another model"):
        w.write([_row(tmp_path / "c.png", [0.3] * 5, make_header(LABELS, "org/m", "other", 0.05, tmp_path))])


def test_reader_names_the_file_and_line_of_a_problem(tmp_path):
    header = make_header(LABELS, "org/m", "abc", 0.05, tmp_path)
    bad = tmp_path / "bad.jsonl"
    cases = [
        ("", "empty file"),
        ('{"format": "other"}\n', "1: not a captionkit-tag-scores file"),
        (json.dumps({**header, "version": 99}) + "\n", "1: captionkit-tag-scores version 99"),
        (json.dumps(header) + '\n{"path": "a", "tags": [0], "scores": [0.1]}\n{oops\n', "3: not JSON"),
        (json.dumps(header) + '\n{"path": "a", "tags": [9], "scores": [0.1]}\n', "2: a tag index outside 0..4"),
    ]
    for text, message in cases:
        bad.write_text(text, encoding="utf-8")
        with pytest.raises(FatalError) as info:
            read_scores(bad)
        assert str(info.value).startswith(str(bad)) and message in str(info.value), text


# ---------- ensembles ----------

def tag_one_folder_twice(tmp_path, photos, models, runs: dict) -> dict[str, Path]:
    """Tag one copy of the photos with each model: name -> its scores file (captions in NAME_direct/)."""
    data = tmp_path / "data"
    shutil.copytree(photos, data)
    files = {}
    for name, (model, flags) in runs.items():
        files[name] = tmp_path / f"{name}.jsonl"
        assert run(tagger_script, data, *model, "--model_dir", models, "--recursive", "--no_progress",
                   "--max_data_loader_n_workers", "0", "--scores_file", files[name], "--output_dir",
                   tmp_path / f"{name}_direct", *flags) == 0
    return files


def _scores_by_key(path: Path) -> tuple[dict, dict]:
    """Per image: tag_key -> score (0 when known to the model but under its floor); and tag_key -> category."""
    f = read_scores(path)
    cats = {tag_key(n): c for n, c in zip(f.labels.names, f.labels.categories)}
    out = {}
    for image, record in f.records.items():
        known = {tag_key(n): 0.0 for n in f.labels.names}
        known.update({tag_key(f.labels.names[i]): float(np.float32(s)) for i, s in zip(record["tags"],
                                                                                        record["scores"])})
        out[image] = known
    return out, cats


def _written(folder: Path) -> dict[str, set[str]]:
    return {k: {tag_key(t) for t in v.decode().strip().split(", ") if t} for k, v in captions(folder).items()}


def test_ensembles_combine_by_tag_name_with_thresholds_before_or_after(tmp_path, photos, models):
    files = tag_one_folder_twice(tmp_path, photos, models, {"wd": (WD, ()), "pixai": (PIXAI, ())})
    wd, wd_cats = _scores_by_key(files["wd"])
    px, px_cats = _scores_by_key(files["pixai"])
    own = {"wd": {"general": 0.35, "character": 0.35}, "pixai": {"general": 0.3, "character": 0.85}}
    lowest = {"general": 0.3, "character": 0.35, "copyright": 0.35, "meta": 0.35}  # PixAI: 0.4 for these; WD: 0.35
    cats = {**px_cats, **wd_cats}
    root = read_scores(files["wd"]).root
    results = {}
    for combine in ("max", "mean"):
        for stage in ("after", "before"):
            out = tmp_path / f"{combine}-{stage}"
            assert run(retag_script, files["wd"], files["pixai"], "--combine", combine, "--threshold_stage", stage,
                       "--output_dir", out) == 0
            got = results[combine, stage] = _written(out)
            for image in wd:
                per_model = []
                for name, scores, model_cats in (("wd", wd, wd_cats), ("pixai", px, px_cats)):
                    s = dict(scores[image])
                    if stage == "before":  # each model's own thresholds first
                        s = {k: v if model_cats[k] == "rating" or v >= own[name].get(model_cats[k], 0.4) else 0.0
                             for k, v in s.items()}
                    per_model.append(s)
                keys = set(per_model[0]) | set(per_model[1])
                combined = {k: (max if combine == "max" else np.mean)([s[k] for s in per_model if k in s])
                            for k in keys}
                expected = {k for k, v in combined.items() if cats[k] in lowest and v >= lowest[cats[k]] + 1e-6}
                unsure = {k for k, v in combined.items() if cats[k] in lowest and abs(v - lowest[cats[k]]) <= 1e-6}
                key = str(Path(image).relative_to(root).with_suffix(".txt"))
                assert got[key] - unsure == expected - unsure, (combine, stage, image)
    # before + max is the union of what each model picks alone
    alone = [_written(tmp_path / f"{name}_direct") for name in ("wd", "pixai")]
    assert results["max", "before"] == {k: alone[0][k] | alone[1][k] for k in alone[0]}
    assert results["max", "before"] != results["max", "after"]  # PixAI's characters under 0.85 pass only after
    assert results["mean", "before"] != results["mean", "after"]


def test_ensemble_refuses_a_threshold_under_any_floor(tmp_path, photos, models, capsys):
    files = tag_one_folder_twice(tmp_path, photos, models, {"a": (WD, ("--scores_floor", "0.3")), "b": (CL, ())})
    a, b = files["a"], files["b"]
    capsys.readouterr()
    assert run(retag_script, b, a, "--output_dir", tmp_path / "o") == 0  # 0.35 >= both floors
    assert run(retag_script, b, a, "--thresh", "0.2", "--output_dir", tmp_path / "o") == 1
    assert "below the file's --scores_floor 0.3" in capsys.readouterr().err


# ---------- the scripts as commands ----------

def test_script_flags_end_to_end_with_resume(tmp_path, photos, models):
    data = tmp_path / "data"
    shutil.copytree(photos, data)
    scores = tmp_path / "scores.jsonl"
    (data / "sub").rename(tmp_path / "later")  # tagged in a second, resumed run
    r = run_script(SCRIPT, data, *WD, "--model_dir", models, "--scores_file", scores, "--remove_underscore",
                   "--recursive", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert len(read_scores(scores).records) == 4
    (tmp_path / "later").rename(data / "sub")
    r = run_script(SCRIPT, data, *WD, "--model_dir", models, "--scores_file", scores, "--remove_underscore",
                   "--recursive", "--skip_existing", cwd=tmp_path)
    assert r.returncode == 0 and "tagged 2, skipped 4" in r.stdout, r.stdout + r.stderr
    assert len(read_scores(scores).records) == 6
    r = run_script(RETAG, scores, "--remove_underscore", "--output_dir", tmp_path / "again", cwd=tmp_path)
    assert r.returncode == 0 and "retagged 6, failed 0" in r.stdout, r.stderr
    assert captions(tmp_path / "again") == captions(data)
    r = run_script(RETAG, tmp_path / "missing.jsonl", cwd=tmp_path)
    assert r.returncode == 1 and r.stderr.strip().startswith("error:") and "missing.jsonl" in r.stderr
