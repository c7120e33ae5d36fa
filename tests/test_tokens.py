"""Token counts per text encoder: CLIP's real BPE, the estimate's stated error bound, cut captions, tokenizer lookup."""

import shutil

import pytest

from library.dataset.report import report_lines
from library.dataset.buckets import BucketSettings
from library.dataset.report import ReportItem
from library.dataset.tokens import (ESTIMATE_CAPTION_ERROR, ESTIMATE_TOTAL_ERROR, ENCODERS, RealTokenizer,
                                    TokenCounter, Tokenizer, estimate_count, load_tokenizer, parse_tokenizer_spec)
from library.errors import FatalError
from tests.conftest import ROOT, run_script
from tests.fixtures.captions_corpus import BOTH, CAPTIONS, SENTENCES, TAGS
from tests.fixtures.datasets import make_image, write_sidecar
from tests.fixtures.tokenizers import make_clip_tokenizer, make_t5_style_tokenizer

pytestmark = pytest.mark.timeout(300)
REPORT = ROOT / "finetune" / "dataset_report.py"
LONG = ", ".join(f"tag number {i}" for i in range(30))  # 30 x ("tag", "number", digits, ",") > 75 tokens


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    folder = make_clip_tokenizer(tmp_path_factory.mktemp("clip") / "clip-vit-large-patch14")
    if folder is None:
        pytest.skip("CLIP's BPE vocabulary comes with the openai-clip package (requirements-test.txt)")
    return folder


@pytest.fixture(scope="module")
def clip(clip_dir):
    return RealTokenizer(clip_dir)


def test_real_clip_tokenizer_gives_clip_ids(clip):
    assert clip.tok("a photo of a cat", add_special_tokens=False)["input_ids"] == [320, 1125, 539, 320, 2368]
    assert clip.count("1girl, long_hair, hatsune_miku_(vocaloid)") == 15  # 1 girl , long _ hair , hat sune _ miku _( vocal oid )
    assert clip.count_many(["a photo of a cat", ""]) == [5, 0]


def test_estimate_stays_within_its_stated_error_of_clip(clip):
    real = clip.count_many(CAPTIONS)
    estimated = [estimate_count(c) for c in CAPTIONS]
    errors = [abs(e - r) / r for e, r in zip(estimated, real)]
    print(f"\nestimate vs CLIP on {len(CAPTIONS)} captions: worst {max(errors):.1%}, "
          f"mean {sum(errors) / len(errors):.1%}, total {abs(sum(estimated) - sum(real)) / sum(real):.1%}")
    assert max(errors) <= ESTIMATE_CAPTION_ERROR
    assert abs(sum(estimated) - sum(real)) / sum(real) <= ESTIMATE_TOTAL_ERROR
    for part in (TAGS, SENTENCES):  # neither kind of caption is systematically off
        r, e = sum(clip.count_many(part)), sum(estimate_count(c) for c in part)
        assert abs(e - r) / r <= 2 * ESTIMATE_TOTAL_ERROR


def test_cut_captions_and_the_words_they_lose(clip):
    counter = TokenCounter({"clip": clip, "t5": Tokenizer("t5")})
    short, long_, dual = counter.measure_many(["1girl, solo", LONG, "1girl\n" + LONG])
    assert short.lost == {} and short.counts["clip"] == 4
    assert long_.counts["clip"] == clip.count(LONG) > 75 and "t5" not in long_.lost
    lost = long_.lost["clip"]
    assert LONG.endswith(lost) and lost.startswith("tag number")
    kept = LONG[:len(LONG) - len(lost)]
    assert clip.count(kept) <= 75 < clip.count(kept + lost.split()[0])  # the cut falls at a whole word
    assert dual.counts == long_.counts  # a multi-line caption is measured by its longest line
    counter = TokenCounter({"clip": clip}, {"clip": 150})
    assert counter.measure_many([LONG])[0].lost == {}  # --max_token_length 150 reads it all
    lines = TokenCounter({"clip": clip}).report_lines(["a.png", "b.png"], counter.measure_many(["x", LONG]))
    assert lines[0].startswith(f"  {ENCODERS['clip'].title} tokens (tokenizer ") and "over 75 (SD 1.5 and SDXL): 1" in lines[0]


def test_estimates_are_labelled_as_such():
    counter = TokenCounter.estimates()
    items = [ReportItem(ROOT / "a.png", LONG), ReportItem(ROOT / "b.png", "1girl")]
    lines = counter.report_lines(["a.png", "b.png"], counter.measure_many([i.caption for i in items]))
    assert "ESTIMATED" in lines[0] and "20% off per caption" in lines[0]
    assert "ESTIMATED" in lines[-1] and "not checked against T5" in lines[-1]
    assert lines[1].startswith("  1 caption is cut at 75 clip tokens: a.png")
    settings = BucketSettings((512, 512), False)
    assert any("ESTIMATED" in line for line in report_lines(items, settings))


def test_tokenizer_flag_and_lookup(tmp_path, clip_dir):
    assert parse_tokenizer_spec("clip=/a, t5=~/b") == {"clip": ROOT.__class__("/a"),
                                                       "t5": ROOT.__class__("~/b").expanduser()}
    for bad in ("clip", "bert=/x", "clip="):
        with pytest.raises(FatalError, match="--tokenizer"):
            parse_tokenizer_spec(bad)
    with pytest.raises(FatalError, match="no clip tokenizer there"):
        load_tokenizer(ENCODERS["clip"], tmp_path)
    assert load_tokenizer(ENCODERS["clip"], clip_dir / "vocab.json").count("a photo") == 2  # a file in the folder
    t5 = load_tokenizer(ENCODERS["t5"], make_t5_style_tokenizer(tmp_path / "t5", CAPTIONS + BOTH))
    assert not t5.estimate and t5.count("a photo of a cat") > 0


def test_dataset_report_uses_the_tokenizer_given_or_found_in_the_hf_cache(tmp_path, clip_dir):
    ds = tmp_path / "ds"
    write_sidecar(make_image(ds / "long.png", 64, 64), LONG)
    write_sidecar(make_image(ds / "short.png", 64, 64), "1girl, solo")
    real = RealTokenizer(clip_dir).count(LONG)
    r = run_script(REPORT, ds, "--tokenizer", f"clip={clip_dir}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"tokens (tokenizer {clip_dir}): min 4, median" in r.stdout and f"max {real};" in r.stdout
    assert f"1 caption is cut at 75 clip tokens: long.png ({real}): loses \"" in r.stdout
    # --max_token_length 150: nothing cut; the T5 counts are still estimates
    r = run_script(REPORT, ds, "--tokenizer", f"clip={clip_dir}", "--max_token_length", "150", cwd=tmp_path)
    assert "cut at" not in r.stdout and "T5-XXL tokens (ESTIMATED" in r.stdout
    # a tokenizer downloaded before, as huggingface_hub keeps it
    snap = tmp_path / "hub" / "models--openai--clip-vit-large-patch14" / "snapshots" / "0123abcd"
    shutil.copytree(clip_dir, snap)
    (snap.parents[1] / "refs").mkdir()
    (snap.parents[1] / "refs" / "main").write_text("0123abcd")
    r = run_script(REPORT, ds, cwd=tmp_path, env={"HF_HUB_CACHE": str(tmp_path / "hub")})
    assert r.returncode == 0 and f"(tokenizer {snap})" in r.stdout, r.stdout + r.stderr
    r = run_script(REPORT, ds, "--tokenizer", f"clip={tmp_path / 'nothing'}", cwd=tmp_path)
    assert r.returncode == 1 and r.stderr.strip().startswith("error:") and "nothing" in r.stderr
