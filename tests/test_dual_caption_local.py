"""dual_caption.py with a local transformers LLaVA: a tiny random JoyCaption stand-in loaded like the real repo."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from finetune import cli  # noqa: E402
from finetune.dual_caption import main, setup_parser  # noqa: E402
from library.joycaption.generation import Sampling  # noqa: E402
from library.files.sidecars import one_line  # noqa: E402
from library.joycaption.job import CaptionTask, caption_batch  # noqa: E402
from library.errors import FatalError  # noqa: E402
from library.files.image_io import open_image  # noqa: E402
from library.joycaption.local import (  # noqa: E402
    LocalJoyCaption, SquashLoader, check_rows, image_token_count, kv_bytes_per_token, multi_modal_projector,
    vision_tower)
from library.joycaption.prompts import build_prompt  # noqa: E402
from library.run.pipeline import LoadedItem  # noqa: E402
from tests.fixtures.images import bad_images, real_photos  # noqa: E402
from tests.fixtures.llava_model import BOS_ID, IMAGE_TOKEN_ID, IMAGE_TOKENS, PAD_ID, make_llava_model  # noqa: E402

pytestmark = pytest.mark.timeout(120)
SCRIPT = Path(__file__).resolve().parents[1] / "finetune" / "dual_caption.py"
TAGS = build_prompt("Booru-like tag list", "50")
DESC = build_prompt("Straightforward", "160")
GREEDY = Sampling(do_sample=False)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_llava_model(tmp_path_factory.mktemp("joycaption-tiny"))


@pytest.fixture(scope="module")
def jc(model_dir):
    return LocalJoyCaption(str(model_dir), device="cpu")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return real_photos(tmp_path_factory.mktemp("photos"), 4)


@pytest.fixture(scope="module")
def pixels(photos):
    return np.stack([SquashLoader(384)(p)[0] for p in photos[:3]])


def test_each_row_has_one_bos_and_729_image_tokens_left_padded(jc):
    assert IMAGE_TOKENS == 729 and image_token_count(jc.model.config) == 729 and jc.image_tokens == 729
    ids, mask = jc.pack([TAGS, DESC, TAGS])
    lengths = mask.sum(dim=1).tolist()
    assert lengths[1] > lengths[0] == lengths[2]  # the description prompt is longer: the others are padded
    for row, m in zip(ids.tolist(), mask.tolist()):
        pad = len(m) - sum(m)
        assert m == [0] * pad + [1] * sum(m)  # left padding
        assert row[:pad] == [PAD_ID] * pad
        real = row[pad:]
        assert real[0] == BOS_ID and real.count(BOS_ID) == 1
        assert real.count(IMAGE_TOKEN_ID) == 729
        start = real.index(IMAGE_TOKEN_ID)
        assert real[start:start + 729] == [IMAGE_TOKEN_ID] * 729  # one contiguous block
    # the trap the check exists for: tokenizing the templated text with special tokens doubles the bos
    text = jc._template(TAGS)
    doubled = jc.tokenizer(text)["input_ids"]
    assert doubled[:2] == [BOS_ID, BOS_ID]
    at = doubled.index(IMAGE_TOKEN_ID)
    doubled = doubled[:at] + [IMAGE_TOKEN_ID] * 729 + doubled[at + 1:]
    with pytest.raises(FatalError, match="2 bos tokens"):
        check_rows(torch.tensor([doubled]), torch.ones(1, len(doubled), dtype=torch.long), BOS_ID,
                   IMAGE_TOKEN_ID, 729)
    with pytest.raises(FatalError, match="728 image tokens"):
        short = [t for t in ids[0].tolist() if t != PAD_ID][:-1]
        short.remove(IMAGE_TOKEN_ID)
        check_rows(torch.tensor([short]), torch.ones(1, len(short), dtype=torch.long), BOS_ID, IMAGE_TOKEN_ID, 729)


def test_greedy_batch_equals_one_at_a_time(jc, pixels):
    jc.batch_size = 3
    prompts = [TAGS, DESC, TAGS]
    batch = jc.generate(jc.encode_images(pixels), prompts, 24, GREEDY)
    jc.batch_size = 1
    single = [jc.generate(jc.encode_images(pixels[i:i + 1]), [prompts[i]], 24, GREEDY)[0] for i in range(3)]
    assert [g.tokens for g in batch] == [g.tokens for g in single]
    assert [g.text for g in batch] == [g.text for g in single]
    assert any(not g.hit_limit for g in batch) and all(g.text for g in batch)
    jc.batch_size = 4


def test_features_once_path_equals_the_plain_generate_path(jc, pixels):
    prompts = [TAGS, DESC, TAGS]
    ours = jc.generate(jc.encode_images(pixels), prompts, 20, GREEDY)
    ids, mask = jc.pack(prompts)
    with torch.inference_mode():
        plain = jc.model.generate(input_ids=ids, attention_mask=mask, pixel_values=jc.pixel_values(pixels),
                                  max_new_tokens=20, do_sample=False, temperature=None, top_p=None, top_k=None,
                                  eos_token_id=jc.eos_ids, pad_token_id=jc.pad_id)
    for gen, row in zip(ours, plain[:, ids.shape[1]:].tolist()):
        stop = next((i for i, t in enumerate(row) if t in jc.eos_ids), len(row))
        assert list(gen.tokens) == row[:stop]
        assert gen.hit_limit == (stop == len(row))
    # and the projected features are the ones the model itself merges into the prompt
    assert vision_tower(jc.model) is not None and multi_modal_projector(jc.model) is not None


def test_vision_tower_runs_once_per_image_for_both_captions_and_retries(jc, photos):
    items = [LoadedItem(p, SquashLoader(384)(p)[0]) for p in photos[:3]]
    seen: list[int] = []
    handle = vision_tower(jc.model).register_forward_hook(lambda m, args, out: seen.append(args[0].shape[0]))
    try:
        tasks = [CaptionTask("tags", TAGS, 6), CaptionTask("description", DESC, 6)]  # tiny limits: retries
        results = caption_batch(jc, items, tasks, GREEDY, max_retries=1)
    finally:
        handle.remove()
    assert sum(seen) == 3  # one vision pass per image, shared by 2 captions and their retries
    assert len(results) == 3
    warned = [w for _, _, ws in results for w in ws]
    assert warned and all("cut off at the token limit after 2 attempts" in w for w in warned)
    for captions, error, _ in results:
        assert error is None and len(captions) == 2 and all(captions)


def test_out_of_memory_halves_the_batch(jc):
    calls = []

    def run(s: slice):
        calls.append(s.stop - s.start)
        if s.stop - s.start > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return torch.arange(s.start, s.stop)

    jc.batch_size = 8
    try:
        assert jc._chunked(7, run, cat=True).tolist() == list(range(7))
        assert calls == [7, 4, 2, 2, 2, 1] and jc.batch_size == 2
        with pytest.raises(ValueError):
            jc._chunked(3, lambda s: (_ for _ in ()).throw(ValueError("not an OOM")))
    finally:
        jc.batch_size = 4


def test_memory_estimate_and_loader(photos):
    from transformers import LlamaConfig

    llama_8b = LlamaConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                           num_key_value_heads=8, vocab_size=128256)
    assert kv_bytes_per_token(llama_8b, 2) == 128 * 1024
    arr, size = SquashLoader(384)(photos[0])
    img, original = open_image(photos[0])
    assert size == original and arr.shape == (384, 384, 3) and arr.dtype == np.uint8
    assert np.array_equal(arr, np.asarray(img.resize((384, 384), 1)))  # LANCZOS squash, no padding


def test_pixel_values_scale_to_minus_one_one(jc):
    x = np.zeros((1, 384, 384, 3), np.uint8)
    x[0, :, :192] = 255
    pv = jc.pixel_values(x)
    assert pv.shape == (1, 3, 384, 384)
    assert pv[0, :, :, :192].eq(1).all() and pv[0, :, :, 192:].eq(-1).all()


def expected_lines(jc, image: Path, tasks) -> list[str]:
    feats = jc.encode_images(SquashLoader(384)(image)[0][None])
    return [one_line(jc.generate(feats, [t.prompt], t.max_new_tokens, GREEDY)[0].text) for t in tasks]


def test_script_end_to_end_subprocess(jc, model_dir, photos, tmp_path):
    ds = tmp_path / "ds"
    (ds / "sub").mkdir(parents=True)
    images = []
    for p in photos[:2]:
        images.append(ds / p.name)
        images[-1].write_bytes(p.read_bytes())
    nested = ds / "sub" / photos[2].name
    nested.write_bytes(photos[2].read_bytes())
    bad = bad_images(tmp_path / "bad")
    (ds / "zero.png").write_bytes(b"")
    (ds / "text.png").write_bytes(bad["text_as_png"].read_bytes())
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, str(SCRIPT), str(ds), "--model", str(model_dir), "--greedy", "--recursive",
           "--tags-max-new-tokens", "12", "--desc_max_new_tokens", "16", "--max-retries", "0", "--num-workers", "2",
           "--device", "cpu", "--no-progress"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=110)
    assert proc.returncode == 0, proc.stderr
    assert "captioned 3, skipped 0, failed 2" in proc.stdout
    assert "zero.png: empty file (0 bytes)" in proc.stdout
    tasks = [CaptionTask("tags", TAGS, 12), CaptionTask("description", DESC, 16)]
    for image in images + [nested]:
        text = image.with_suffix(".txt").read_text(encoding="utf-8")
        assert text == "\n".join(expected_lines(jc, image, tasks)) + "\n"
        assert len(text.splitlines()) == 2
    assert not (ds / "zero.txt").exists()

    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=110)
    assert proc.returncode == 3 and "captioned 0, skipped 3, failed 2" in proc.stdout  # every image it tried failed


def test_single_file_tags_mode_overwrite_and_fatal_errors(jc, model_dir, photos, tmp_path, capsys):
    image = tmp_path / photos[3].name
    image.write_bytes(photos[3].read_bytes())
    image.with_suffix(".txt").write_text("old\nold\n", encoding="utf-8")
    base = [str(image), "--model", str(model_dir), "--greedy", "--num-workers", "0", "--max-retries", "0",
            "--device", "cpu", "--no-progress", "--tags-max-new-tokens", "10"]
    assert cli.run_script(main, setup_parser(), argv=base + ["--mode", "tags"]) == 0
    assert "skipped 1" in capsys.readouterr().out
    assert image.with_suffix(".txt").read_text(encoding="utf-8") == "old\nold\n"
    assert cli.run_script(main, setup_parser(), argv=base + ["--mode", "tags", "--overwrite"]) == 0
    expected = expected_lines(jc, image, [CaptionTask("tags", TAGS, 10)])
    assert image.with_suffix(".txt").read_text(encoding="utf-8") == expected[0] + "\n"

    assert cli.run_script(main, setup_parser(), argv=base + ["--overwrite", "--quantization", "8bit"]) == 1
    assert "needs a CUDA GPU" in capsys.readouterr().err
    assert cli.run_script(main, setup_parser(), argv=[str(image), "--overwrite", "--model",
                                                      str(tmp_path / "no-such-model")]) == 1
    assert "is not available" in capsys.readouterr().err


def test_sampled_captions_do_not_depend_on_the_batch_or_order(jc, photos, tmp_path):
    """--seed with sampling: each image samples from its own seed (its path and the caption), whatever its batch."""
    sampling = Sampling(do_sample=True, temperature=1.0, top_p=0.95, top_k=50, seed=7)
    tasks = [CaptionTask("tags", TAGS, 12), CaptionTask("description", DESC, 12)]
    root = photos[0].parent
    items = [LoadedItem(p, SquashLoader(384)(p)[0]) for p in photos[:3]]

    def captions(batch):
        return {item.path.name: res[0] for item, res in zip(batch, caption_batch(jc, batch, tasks, sampling, 0, root))}

    together = captions(items)
    alone = {}
    for item in reversed(items):
        alone.update(captions([item]))
    assert together == alone and all(c and all(c) for c in together.values())
    other = caption_batch(jc, items, tasks, Sampling(do_sample=True, temperature=1.0, top_p=0.95, top_k=50, seed=8),
                          0, root)
    assert [c for c, _, _ in other] != list(together.values())  # the seed matters
