"""caption_tools shorten (token budget, by stored score), common and prune (trigger-word traits), prefix without duplicates."""

import shutil

import numpy as np
import pytest

from library.dataset.caption_edit import CaptionEdit, edit_text, shorten_tags
from library.dataset.tokens import estimate_count
from library.taggers.labels import TagLabels
from library.taggers.scores import ScoresWriter, image_record, make_header
from library.run.jobs import ItemResult
from library.outputs.writer import ResultRow
from tests.conftest import ROOT, run_script
from tests.fixtures.datasets import make_image, write_sidecar
from tests.fixtures.tokenizers import make_clip_tokenizer

pytestmark = pytest.mark.timeout(300)
TOOLS = ROOT / "finetune" / "caption_tools.py"
LONG = ["ohwx"] + [f"tag number {i}" for i in range(30)]


def test_shorten_drops_from_the_end_or_by_score_and_is_idempotent():
    edit = CaptionEdit("shorten", max_tokens=20, count=estimate_count, keep_first=1)
    short = shorten_tags(LONG, edit, ", ")
    assert short == LONG[:len(short)] and estimate_count(", ".join(short)) <= 20 < estimate_count(
        ", ".join(LONG[:len(short) + 1]))
    assert shorten_tags(short, edit, ", ") == short  # idempotent
    scores = {f"tag number {i}": 1 - i / 100 for i in range(30)}
    scores["tag number 0"] = 0.01  # the weakest tag goes first although it is near the front
    by_score = shorten_tags(LONG, edit, ", ", scores)
    assert by_score[0] == "ohwx" and "tag number 0" not in by_score and "tag number 1" in by_score
    assert shorten_tags(["ohwx", "a b c d e f g h"], CaptionEdit("shorten", max_tokens=2, count=estimate_count,
                                                                 keep_first=1), ", ") == ["ohwx"]
    text = ", ".join(LONG) + "\nA short description."
    once = edit_text(text, edit)
    assert once.split("\n")[1] == "A short description." and edit_text(once, edit) == once


def _scores_file(path, images, labels, floor=0.05):
    w = ScoresWriter(path)
    header = make_header(labels, "org/m", "h", floor, images[0].parent)
    for n, image in enumerate(images):
        probs = np.linspace(0.9, 0.1, len(labels)).astype(np.float32)
        probs[-1] = 0.95  # the last tag of the caption is the most certain one
        w.write([ResultRow(image, (8, 8), ItemResult("x", details={"raw_scores": image_record(labels, probs, floor),
                                                                   **({"scores_header": header} if n == 0 else {})}))])
    w.close()


def test_shorten_command_with_a_real_clip_tokenizer_and_scores(tmp_path):
    clip = make_clip_tokenizer(tmp_path / "clip")
    if clip is None:
        pytest.skip("CLIP's BPE vocabulary comes with the openai-clip package (requirements-test.txt)")
    ds = tmp_path / "ds"
    tags = [f"tag_{chr(97 + i)}{chr(97 + i)}" for i in range(26)] + ["tag_last"]
    a = make_image(ds / "a.png", 8, 8)
    b = make_image(ds / "b.png", 8, 8)
    for img in (a, b):
        write_sidecar(img, "ohwx, " + ", ".join(t.replace("_", " ") for t in tags))
    _scores_file(tmp_path / "s.jsonl", [a], TagLabels(tags, ["general"] * len(tags)))
    args = ["shorten", ds, "--max_tokens", "40", "--tokenizer", f"clip={clip}", "--keep_first", "1",
            "--scores", tmp_path / "s.jsonl"]
    r = run_script(TOOLS, *args, cwd=tmp_path)
    assert r.returncode == 0 and "changed 2 of 2" in r.stdout, r.stdout + r.stderr
    from library.dataset.tokens import RealTokenizer

    tok = RealTokenizer(clip)
    got_a = (ds / "a.txt").read_text().strip()
    got_b = (ds / "b.txt").read_text().strip()
    assert tok.count(got_a) <= 40 and tok.count(got_b) <= 40
    assert got_a.startswith("ohwx, tag aa") and got_a.endswith("tag last")  # a: the lowest scores went first
    assert got_b.startswith("ohwx, tag aa") and "tag last" not in got_b  # b (no scores): from the end
    r = run_script(TOOLS, *args, cwd=tmp_path)
    assert "changed 0 of 2" in r.stdout  # idempotent


@pytest.fixture()
def trait_folder(tmp_path):
    ds = tmp_path / "ds"
    for i in range(10):
        tags = ["1girl", "red_hair" if i < 9 else "blue hair", "green eyes", f"pose {i}"]
        if i < 9:
            tags.append("freckles")
        write_sidecar(make_image(ds / f"{i}.png", 8, 8), ", ".join(tags) + ("\nA girl." if i == 0 else ""))
    make_image(ds / "uncaptioned.png", 8, 8)
    return ds


def test_common_lists_tags_in_the_share_of_captions(trait_folder, tmp_path):
    r = run_script(TOOLS, "common", trait_folder, "--min_share", "0.9", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["4 tags are in at least 90% of the 10 captions:", "  1girl: 10 (100%)",
                                     "  green eyes: 10 (100%)", "  freckles: 9 (90%)", "  red_hair: 9 (90%)"]
    r = run_script(TOOLS, "common", trait_folder, "--min_share", "1", cwd=tmp_path)
    assert "2 tags are in at least 100%" in r.stdout
    r = run_script(TOOLS, "common", trait_folder, "--min_share", "1.5", cwd=tmp_path)
    assert r.returncode == 2 and "between 0 and 1" in r.stderr


def test_prune_is_a_dry_run_until_apply_and_idempotent(trait_folder, tmp_path):
    before = {p.name: p.read_bytes() for p in trait_folder.glob("*.txt")}
    r = run_script(TOOLS, "prune", trait_folder, "--min_share", "0.9", "--keep", "1girl", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "pruning green eyes, freckles, red_hair (in at least 90% of 10 captions); dry run" in r.stdout
    assert "would change 10 of 10" in r.stdout and "  - 1girl, red_hair, green eyes, pose 1, freckles" in r.stdout
    assert "  + 1girl, pose 1" in r.stdout
    assert {p.name: p.read_bytes() for p in trait_folder.glob("*.txt")} == before
    r = run_script(TOOLS, "prune", trait_folder, "--min_share", "0.9", "--keep", "1girl", "--apply", cwd=tmp_path)
    assert "changed 10 of 10" in r.stdout
    assert (trait_folder / "1.txt").read_text() == "1girl, pose 1\n"
    assert (trait_folder / "9.txt").read_text() == "1girl, blue hair, pose 9\n"
    assert (trait_folder / "0.txt").read_text() == "1girl, pose 0\nA girl.\n"
    after = {p.name: p.read_bytes() for p in trait_folder.glob("*.txt")}
    r = run_script(TOOLS, "prune", trait_folder, "--min_share", "0.9", "--keep", "1girl", "--apply", cwd=tmp_path)
    assert "nothing to prune" in r.stdout
    assert {p.name: p.read_bytes() for p in trait_folder.glob("*.txt")} == after


def test_prefix_never_duplicates_a_trigger_already_there(tmp_path):
    ds = tmp_path / "ds"
    texts = {"a": "ohwx, 1girl", "b": "1girl, ohwx", "c": "1girl, Ohwx", "d": "1girl", "e": "ohwx_woman, smile"}
    for stem, text in texts.items():
        write_sidecar(make_image(ds / f"{stem}.png", 8, 8), text)
    r = run_script(TOOLS, "prefix", ds, "ohwx", "--ignore_case", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = run_script(TOOLS, "prefix", ds, "ohwx woman", cwd=tmp_path)
    got = {stem: (ds / f"{stem}.txt").read_text().strip() for stem in texts}
    assert got == {"a": "ohwx woman, ohwx, 1girl", "b": "ohwx woman, ohwx, 1girl", "c": "ohwx woman, Ohwx, 1girl",
                   "d": "ohwx woman, ohwx, 1girl", "e": "ohwx_woman, ohwx, smile"}  # the caption's spelling kept
    snapshot = {p: p.read_bytes() for p in ds.glob("*.txt")}
    r = run_script(TOOLS, "prefix", ds, "ohwx woman", cwd=tmp_path)
    assert "changed 0 of 5" in r.stdout and {p: p.read_bytes() for p in ds.glob("*.txt")} == snapshot
    shutil.rmtree(ds)
