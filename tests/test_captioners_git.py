"""GIT captioner: --remove_words, batch invariance, CLIP-style preprocessing, GUI command line, safe loading."""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from library.captioners.git import DEFAULT_GIT_MODEL_ID, GitCaptioner, remove_words
from library.captioners.hf_models import GenerationSettings
from library.captioners.image_transform import ImageTransform, center_crop
from tests.conftest import ROOT, foreign_library, run_script
from tests.fixtures.captioner_models import make_git
from tests.fixtures.images import bad_images, real_photos

pytestmark = pytest.mark.timeout(120)
SCRIPT = ROOT / "finetune" / "make_captions_by_git.py"


@pytest.fixture(scope="module")
def git_model(tmp_path_factory):
    return make_git(tmp_path_factory.mktemp("git_models") / "git")


@pytest.fixture(scope="module")
def photo_paths(tmp_path_factory):
    return real_photos(tmp_path_factory.mktemp("photos"), n=6)


@pytest.mark.parametrize("caption, expected", [
    ("a sign that says hello on it", "a sign"),
    ("a red sign with the words stop on it", "a red sign"),
    ('a man with the words "hot dog" on his shirt', "a man shirt"),  # sd-scripts keeps the noun after 'his'
    ("a bottle with the number 5 on it", "a bottle"),
    ("a book that says 'i'm here' on it", "a book"),
    ("a box and the letters abc in the corner", "a box"),
    ("a poster with a sign that says \"open now\" on it", "a poster"),
    ("a dog sitting on the beach", "a dog sitting on the beach"),
    ("a cat with the name tom", "a cat"),
])
def test_remove_words_drops_the_phrases_sd_scripts_drops(caption, expected):
    assert remove_words(caption) == expected


def test_default_model_is_sd_scripts_one():
    assert DEFAULT_GIT_MODEL_ID == "microsoft/git-large-textcaps"


def test_clip_style_preprocessing_matches_the_transformers_processor(git_model):
    from transformers import AutoImageProcessor
    from transformers.image_transforms import center_crop as hf_center_crop

    processor = AutoImageProcessor.from_pretrained(git_model)  # legacy CLIPFeatureExtractor config, int sizes
    transform = ImageTransform.from_image_processor(processor)
    assert transform.shortest_edge == 32 and transform.crop == (32, 32) and transform.resize is None
    rng = np.random.default_rng(1)
    for w, h in [(50, 40), (33, 97), (200, 31), (32, 32), (31, 31), (640, 480), (3, 90)]:
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        expected = processor(img, return_tensors="np").pixel_values
        got = transform.to_pixel_values([transform.apply(img)]).numpy()
        np.testing.assert_allclose(got, expected, atol=1e-5)
    for h, w in [(20, 40), (40, 25), (19, 21), (50, 50)]:  # crops larger than the image pad with zeros
        arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        ref = hf_center_crop(arr, (32, 32), input_data_format="channels_last")
        np.testing.assert_array_equal(center_crop(arr, (32, 32)), ref)


@pytest.mark.parametrize("num_beams", [1, 3])
def test_batched_generation_equals_one_image_at_a_time(git_model, photo_paths, num_beams):
    captioner = GitCaptioner(str(git_model), GenerationSettings(num_beams=num_beams, max_length=16), device="cpu")
    arrays = [captioner.preprocess(p)[0] for p in photo_paths]
    batched = captioner.generate(arrays)
    single = [captioner.generate([a])[0] for a in arrays]
    assert batched == single
    assert all(batched) and len(set(batched)) >= 3
    lengths = {len(c.split()) for c in batched}
    assert len(lengths) >= 2  # rows stop at different steps: finished rows are padded, not cut


def test_kohya_gui_command_line_with_workers_from_another_cwd(git_model, tmp_path):
    """The GUI's argv (gr.Number values as '1.0', '2.0', '75.0'), sd-scripts' library on PYTHONPATH."""
    data = tmp_path / "data"
    photos = real_photos(data, n=4)
    broken = bad_images(data)
    cwd = tmp_path / "sd-scripts-cwd"
    cwd.mkdir()
    env = {"PYTHONPATH": str(foreign_library(tmp_path)), "HF_HOME": str(tmp_path / "hf")}
    r = run_script(SCRIPT, "--model_id", git_model, "--batch_size", "2.0", "--max_data_loader_n_workers", "2.0",
                   "--max_length", "75.0", "--caption_extension", ".txt", data, cwd=cwd, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "captioned 4, skipped 0, failed 5" in r.stdout
    assert str(broken["truncated_jpeg"]) in r.stdout and "truncated" in r.stdout
    captions = {p.name: p.with_suffix(".txt").read_text(encoding="utf-8") for p in photos}
    assert all(c.endswith("\n") and c.strip() for c in captions.values())
    # the same captions in-process with batch size 1: the script's batching and workers change nothing
    single = GitCaptioner(str(git_model), GenerationSettings(max_length=75), device="cpu")
    for p in photos:
        assert captions[p.name].strip() == single.generate([single.preprocess(p)[0]])[0]
    assert not list(cwd.iterdir())


def test_remove_words_flag_post_processes_every_caption(git_model, tmp_path):
    data = tmp_path / "data"
    photos = real_photos(data, n=3)
    common = ("--model_id", git_model, "--max_length", "20", "--max_data_loader_n_workers", "0")
    r = run_script(SCRIPT, data, *common, "--caption_extension", ".raw", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    r = run_script(SCRIPT, data, *common, "--remove_words", "--caption_extention", ".txt", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    for p in photos:
        raw = p.with_suffix(".raw").read_text(encoding="utf-8").strip()
        assert p.with_suffix(".txt").read_text(encoding="utf-8").strip() == remove_words(raw)


class _TouchOnUnpickle:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (Path(self.marker),)


def test_pickled_code_in_pytorch_model_bin_is_refused(git_model, tmp_path):
    """Old repos ship pytorch_model.bin: it is read with weights_only=True, so pickled code never runs."""
    evil = tmp_path / "evil"
    shutil.copytree(git_model, evil)
    marker = tmp_path / "pwned"
    import torch

    state = torch.load(evil / "pytorch_model.bin", weights_only=True)
    state["output.bias"] = _TouchOnUnpickle(marker)  # an object torch.load would only build by running code
    with open(evil / "pytorch_model.bin", "wb") as f:
        torch.save(state, f, pickle_module=pickle)
    data = tmp_path / "data"
    real_photos(data, n=1)
    r = run_script(SCRIPT, data, "--model_id", evil, cwd=tmp_path)
    assert r.returncode == 1
    assert "cannot load the model weights" in r.stderr
    assert not marker.exists()
    assert not list(data.glob("*.caption"))


def test_blip_folder_is_refused_with_a_hint(tmp_path):
    from tests.fixtures.captioner_models import make_blip

    data = tmp_path / "data"
    real_photos(data, n=1)
    r = run_script(SCRIPT, data, "--model_id", make_blip(tmp_path / "blip"), cwd=tmp_path,
                   env={"HF_HOME": str(tmp_path / "hf"), "PYTHONPATH": os.environ.get("PYTHONPATH", "")})
    assert r.returncode == 1 and "is not GIT (use make_captions.py" in r.stderr
