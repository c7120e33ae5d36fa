"""Caption tools: every edit idempotent, separator-aware, dry-run writes nothing, no caption created unasked."""

from pathlib import Path

import pytest

from library.dataset.caption_edit import CaptionEdit, edit_captions, edit_tags, edit_text
from tests.conftest import ROOT, run_script
from tests.fixtures.datasets import make_image, write_sidecar

pytestmark = pytest.mark.timeout(60)
SCRIPT = ROOT / "finetune" / "caption_tools.py"
TAGS = ["1girl", "long_hair", "smile", "solo", "long hair", "blue eyes"]

EDITS = [
    (CaptionEdit("prefix", tags=["ohwx"]), ["ohwx", "1girl", "long_hair", "smile", "solo", "long hair", "blue eyes"]),
    (CaptionEdit("prefix", tags=["smile", "ohwx"]), ["smile", "ohwx", "1girl", "long_hair", "solo", "long hair",
                                                     "blue eyes"]),
    (CaptionEdit("suffix", tags=["blue_eyes"]), ["1girl", "long_hair", "smile", "solo", "long hair", "blue eyes"]),
    (CaptionEdit("suffix", tags=["1girl"]), ["long_hair", "smile", "solo", "long hair", "blue eyes", "1girl"]),
    (CaptionEdit("remove", tags=["long hair", "solo"]), ["1girl", "smile", "blue eyes"]),
    (CaptionEdit("remove", tags=["SMILE"], ignore_case=True), ["1girl", "long_hair", "solo", "long hair",
                                                               "blue eyes"]),
    (CaptionEdit("replace", replacements=[("1girl", "1woman"), ("solo", "")]),
     ["1woman", "long_hair", "smile", "long hair", "blue eyes"]),
    (CaptionEdit("replace", replacements=[("smile", "1girl")]), ["1girl", "long_hair", "solo", "long hair",
                                                                 "blue eyes"]),
    (CaptionEdit("dedupe"), ["1girl", "long_hair", "smile", "solo", "blue eyes"]),
    (CaptionEdit("sort", keep_first=1), ["1girl", "blue eyes", "long hair", "long_hair", "smile", "solo"]),
]


@pytest.mark.parametrize("edit,expected", EDITS, ids=[f"{e.op}{i}" for i, (e, _) in enumerate(EDITS)])
def test_each_edit_and_its_idempotence(edit, expected):
    once = edit_tags(list(TAGS), edit)
    assert once == expected
    assert edit_tags(once, edit) == once


def test_text_edits_keep_untouched_lines_byte_for_byte():
    dual = "ohwx,  1girl,solo\nA girl, smiling, in a park."
    prefixed = edit_text(dual, CaptionEdit("prefix", tags=["ohwx"]))
    assert prefixed == "ohwx,  1girl,solo\nohwx, A girl, smiling, in a park."
    assert edit_text(dual, CaptionEdit("sort")) == "1girl, ohwx, solo\nA girl, smiling, in a park."  # sort: first line
    assert edit_text(dual, CaptionEdit("remove", tags=["solo"], lines="first")) == "ohwx, 1girl\n" \
        "A girl, smiling, in a park."
    assert edit_text("a b c", CaptionEdit("prefix", tags=["x"]), separator=" ") == "x a b c"
    assert edit_text("a | b", CaptionEdit("suffix", tags=["c"]), separator=" | ") == "a | b | c"
    assert edit_text("a girl smiling", CaptionEdit("replace", replacements=[("girl", "woman")], substring=True)) \
        == "a woman smiling"
    with pytest.raises(ValueError):
        CaptionEdit("prefix")


@pytest.fixture()
def folder(tmp_path):
    d = tmp_path / "data"
    a = make_image(d / "a.png", 16, 16)
    write_sidecar(a, "1girl, solo")
    write_sidecar(make_image(d / "sub" / "b.jpg", 16, 16), "ohwx, cat")
    make_image(d / "nocap.png", 16, 16)
    make_image(d / "a.jpg", 16, 16)  # shares a.txt with a.png: edited once, not twice
    return d


def snapshot(d: Path) -> dict:
    return {p: p.read_bytes() for p in sorted(d.rglob("*.txt"))}


def test_dry_run_changes_nothing_and_shows_the_change(folder):
    before = snapshot(folder)
    outcome = edit_captions(folder, CaptionEdit("prefix", tags=["ohwx"]), recursive=True, dry_run=True)
    assert snapshot(folder) == before
    assert [p.name for p, _, _ in outcome.changed] == ["a.txt"]
    text = "\n".join(outcome.lines())
    assert "would change 1 of 2 caption files" in text and "  + ohwx, 1girl, solo" in text
    assert "1 images have no caption file" in text


def test_folder_edit_is_idempotent_and_never_creates_unasked(folder):
    edit = CaptionEdit("prefix", tags=["ohwx"])
    first = edit_captions(folder, edit, recursive=True)
    assert (folder / "a.txt").read_text(encoding="utf-8") == "ohwx, 1girl, solo\n"
    assert not (folder / "nocap.txt").exists() and len(first.changed) == 1
    after = snapshot(folder)
    second = edit_captions(folder, edit, recursive=True)
    assert not second.changed and snapshot(folder) == after
    created = edit_captions(folder, edit, recursive=True, create_missing=True)
    assert (folder / "nocap.txt").read_text(encoding="utf-8") == "ohwx\n" and len(created.created) == 1


def test_script_subcommands(folder, tmp_path):
    r = run_script(SCRIPT, "remove", folder, "solo, cat", "--recursive", "--dry_run", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "would change 2 of 2" in r.stdout and (folder / "a.txt").read_text() == "1girl, solo\n"
    r = run_script(SCRIPT, "replace", folder, "1girl", "1woman", "--recursive", cwd=tmp_path)
    assert r.returncode == 0 and (folder / "a.txt").read_text() == "1woman, solo\n"
    r = run_script(SCRIPT, "suffix", folder, "masterpiece", "--create_missing", cwd=tmp_path)
    assert r.returncode == 0 and (folder / "nocap.txt").read_text() == "masterpiece\n"
    assert (folder / "sub" / "b.txt").read_text() == "ohwx, cat\n"  # not recursive: untouched
    bad = run_script(SCRIPT, "replace", folder, "only_one", cwd=tmp_path)
    assert bad.returncode == 1 and "pairs" in bad.stderr
