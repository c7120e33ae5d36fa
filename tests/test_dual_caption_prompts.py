"""JoyCaption prompts are built byte-exactly from the packaged prompt file; glitch detection picks the right retries."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from library.joycaption.generation import Generation, Sampling, glitch_reason, repeated_tags, trailing_loop
from library.files.sidecars import one_line
from library.joycaption.job import pick_attempt
from library.errors import FatalError
from library.joycaption.prompts import (
    PROMPTS_FILE, PromptSpec, build_prompt, caption_lengths, caption_types, describe_prompts, extra_options,
    resolve_extra_option)

pytestmark = pytest.mark.timeout(30)
ROOT = Path(__file__).resolve().parents[1]
SHARED_COPY = ROOT.parent / "shared" / "joycaption_prompts.json"


def raw() -> dict:
    return json.loads(PROMPTS_FILE.read_bytes().decode("utf-8"))


def test_prompt_file_is_package_data_and_complete():
    assert PROMPTS_FILE == ROOT / "library" / "data" / "joycaption_prompts.json"
    setup = (ROOT / "setup.py").read_text(encoding="utf-8")
    assert '"data/*.json"' in setup  # shipped with the library package
    if SHARED_COPY.is_file():
        assert PROMPTS_FILE.read_bytes() == SHARED_COPY.read_bytes()
    assert len(caption_types()) == 12 and "Booru-like tag list" in caption_types()
    assert caption_lengths()[:6] == ["any", "very short", "short", "medium-length", "long", "very long"]
    assert [int(x) for x in caption_lengths()[6:]] == list(range(20, 261, 10))
    assert len(extra_options()) == 27
    for forms in raw()["caption_types"].values():
        assert set(forms) == {"any", "word_count", "length"}
        assert "{word_count}" in forms["word_count"] and "{length}" in forms["length"]


@pytest.mark.parametrize("caption_type", list(raw()["caption_types"]))
def test_every_type_and_form_is_byte_exact(caption_type):
    forms = raw()["caption_types"][caption_type]
    assert build_prompt(caption_type, "any") == forms["any"]
    assert build_prompt(caption_type, None) == forms["any"]
    for words in ("20", "160", 260):
        assert build_prompt(caption_type, words) == forms["word_count"].replace("{word_count}", str(words))
    for word in ("very short", "medium-length", "very long"):
        assert build_prompt(caption_type, word) == forms["length"].replace("{length}", word)


def test_defaults_and_exact_strings():
    assert build_prompt("Booru-like tag list", "50") == \
        "Write a list of Booru-like tags for this image within 50 words."
    desc = build_prompt("Straightforward", "160")
    assert desc.startswith("Write a straightforward caption for this image within 160 words. Begin with")
    assert "elements\u2014people, objects, scenery\u2014using" in desc  # em dashes kept
    assert desc.endswith("without starting with \u201cThis image is\u2026\u201d or similar phrasing.")
    assert PromptSpec("Straightforward", "160").build() == desc


def test_extra_options_name_and_forgiving_names():
    opts = extra_options()
    base = raw()["caption_types"]["Descriptive"]["length"].replace("{length}", "long")
    built = build_prompt("descriptive", "Long", ["3", opts[8]])
    assert built == base + " " + opts[2] + " " + opts[8]
    named = build_prompt("Descriptive", "long", ["1"], name="Alice")
    assert named == base + " " + opts[0].replace("{name}", "Alice")
    assert resolve_extra_option("include information about lighting") == opts[2]
    with pytest.raises(FatalError, match="--name"):
        build_prompt("Descriptive", "long", ["1"])
    with pytest.raises(FatalError, match="28"):
        resolve_extra_option("28")
    with pytest.raises(FatalError, match="unknown caption type"):
        build_prompt("Descriptiv", "any")
    with pytest.raises(FatalError, match="unknown caption length"):
        build_prompt("Descriptive", "huge")
    assert build_prompt("booru_like_tag_list", "any") == "Write a list of Booru-like tags for this image."


def test_list_prompts_from_any_directory(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "finetune" / "dual_caption.py"), "--list_prompts"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == describe_prompts()
    assert "27. Your response will be used by a text-to-image model" in proc.stdout


def test_loop_and_glitch_detection():
    assert trailing_loop([1, 2, 3] + [7] * 16) == (1, 16)
    assert trailing_loop([9] + [4, 5, 6, 7] * 4) == (4, 4)
    assert trailing_loop([4, 5, 6, 7] * 3) is None  # too short to call it a loop
    assert trailing_loop(list(range(40))) is None
    assert repeated_tags("1girl, solo, red, red, red, red") == "red"
    assert repeated_tags("1girl, solo, long hair, smile") is None
    ok = "A woman in a red coat stands on a bridge at dusk, holding an umbrella."
    assert glitch_reason(Generation(ok)) is None
    assert glitch_reason(Generation(ok, hit_limit=True)) == "limit"
    assert glitch_reason(Generation("  ")) == "empty"
    assert glitch_reason(Generation("I'm sorry, but I can't describe this image.")) == "refusal"
    assert glitch_reason(Generation("Sorry-looking dog on a porch.")) is None
    assert glitch_reason(Generation("the cat " * 12, hit_limit=True)) == "loop"
    assert glitch_reason(Generation("x", tokens=[5] * 20)) == "loop"
    assert one_line("tags,\n more  tags\r\n") == "tags, more tags"


def test_retry_sampling_changes_seed_and_temperature():
    base = Sampling(temperature=0.6, top_p=0.9, seed=42)
    first, second = base.for_retry(1), base.for_retry(2)
    assert first.seed != base.seed != second.seed and first.seed != second.seed
    assert base.temperature < first.temperature < second.temperature <= 1.0
    greedy = Sampling(do_sample=False, seed=1)
    assert greedy.greedy and not greedy.for_retry(1).greedy  # greedy would repeat the same loop


def test_pick_attempt_prefers_a_clean_caption_then_a_cut_off_one():
    loop = Generation("red, " * 20, hit_limit=True)
    cut = Generation("a woman in a long red coat standing on", hit_limit=True)
    ok = Generation("A woman in a red coat.")
    assert pick_attempt([loop, ok]) == (ok, None, None)
    chosen, error, warning = pick_attempt([cut, loop, loop])
    assert chosen is cut and error is None and "cut off at the token limit after 3 attempts" in warning
    assert pick_attempt([loop, Generation("")]) == (None, "came back empty after 2 attempts", None)
    assert pick_attempt([loop]) == (None, "kept repeating itself after 1 attempt", None)
    assert pick_attempt(["HTTP 500: boom"]) == (None, "HTTP 500: boom", None)
