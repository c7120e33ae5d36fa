"""BLIP and BLIP-2 (OPT, T5): batch invariance, prompts, processor parity, caption_weights URLs, GUI command line."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
from PIL import Image

from library.captioners.blip import (DEFAULT_MODEL_ID, SD_SCRIPTS_CAPTION_WEIGHTS, BlipCaptioner,
                                    model_id_for_caption_weights, resolve_model_id)
from library.errors import FatalError
from library.captioners.hf_models import GenerationSettings
from library.captioners.image_transform import ImageTransform
from tests.conftest import ROOT, foreign_library, run_script
from tests.fixtures.captioner_models import make_blip, make_blip2_opt, make_blip2_t5
from tests.fixtures.hub_server import serve_repos
from tests.fixtures.images import bad_images, real_photos

pytestmark = pytest.mark.timeout(120)
SCRIPT = ROOT / "finetune" / "make_captions.py"
BASE_URL = "https://storage.googleapis.com/sfr-vision-language-research/BLIP/models/"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("blip_models")
    return {"blip": make_blip(root / "blip"), "blip2-opt": make_blip2_opt(root / "opt"),
            "blip2-t5": make_blip2_t5(root / "t5")}


@pytest.fixture(scope="module")
def photo_paths(tmp_path_factory):
    return real_photos(tmp_path_factory.mktemp("photos"), n=6)


class _TouchOnUnpickle:
    """A pickle payload that creates a file when unpickled (what a malicious checkpoint would do)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        from pathlib import Path

        return Path.touch, (Path(self.marker),)


# ------------------------------------------------------------------------------------------ URL mapping

def test_caption_weights_urls_map_to_the_same_weights_on_the_hub():
    assert model_id_for_caption_weights(SD_SCRIPTS_CAPTION_WEIGHTS) == "Salesforce/blip-image-captioning-large"
    assert model_id_for_caption_weights(BASE_URL + "model_base_caption_capfilt_large.pth") == \
        "Salesforce/blip-image-captioning-base"
    assert model_id_for_caption_weights("http://mirror.example/BLIP/model_large_caption.pth") == DEFAULT_MODEL_ID
    with pytest.raises(FatalError, match="not a known BLIP captioning checkpoint.*--model_id"):
        model_id_for_caption_weights(BASE_URL + "model_base_retrieval_coco.pth")
    # precedence: --model_id > --caption_weights > default
    assert resolve_model_id(None, None) == DEFAULT_MODEL_ID
    assert resolve_model_id(None, SD_SCRIPTS_CAPTION_WEIGHTS) == DEFAULT_MODEL_ID
    assert resolve_model_id("Salesforce/blip2-opt-2.7b", SD_SCRIPTS_CAPTION_WEIGHTS) == "Salesforce/blip2-opt-2.7b"


def test_local_pth_is_refused_with_advice_and_never_unpickled(tmp_path, models):
    import pickle

    marker = tmp_path / "pwned"
    pth = tmp_path / "model_large_caption.pth"
    pth.write_bytes(pickle.dumps({"model": _TouchOnUnpickle(marker)}))
    with pytest.raises(FatalError, match=r"\.pth checkpoints are not loaded.*--model_id"):
        model_id_for_caption_weights(str(pth))
    assert model_id_for_caption_weights(str(models["blip"])) == str(models["blip"])  # a transformers folder is fine
    images = tmp_path / "img"
    images.mkdir()
    Image.new("RGB", (40, 30), (10, 120, 200)).save(images / "a.png")
    r = run_script(SCRIPT, images, "--caption_weights", pth, cwd=tmp_path)
    assert r.returncode == 1
    assert "error: --caption_weights" in r.stderr and "--model_id" in r.stderr
    assert not marker.exists() and not (images / "a.caption").exists()


def test_generation_settings_follow_sd_scripts_length_meaning():
    s = GenerationSettings(sample=True, num_beams=4, top_p=0.9, max_length=75, min_length=5)
    kw = s.kwargs(prompt_tokens=4)  # BLIP: [DEC] a picture of
    assert kw == {"do_sample": True, "num_beams": 1, "num_return_sequences": 1, "top_p": 0.9,
                  "max_new_tokens": 71, "min_new_tokens": 1}
    beam = GenerationSettings(sample=False, num_beams=16, repetition_penalty=1.5, length_penalty=1.2,
                              max_length=75, min_length=5, max_new_tokens=40, min_new_tokens=20)
    kw = beam.kwargs(prompt_tokens=1)
    assert kw["num_beams"] == 16 and kw["max_new_tokens"] == 40 and kw["min_new_tokens"] == 20
    assert kw["repetition_penalty"] == 1.5 and kw["length_penalty"] == 1.2 and "top_p" not in kw
    assert GenerationSettings(max_length=75).kwargs(4, max_positions=40)["max_new_tokens"] == 36
    with pytest.raises(FatalError):
        GenerationSettings(top_p=0.0).validate()


# --------------------------------------------------------------------------- preprocessing == processor

@pytest.mark.parametrize("family", ["blip", "blip2-opt"])
def test_worker_preprocessing_matches_the_transformers_processor(models, family, tmp_path):
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(models[family])
    transform = ImageTransform.from_image_processor(processor)
    rng = np.random.default_rng(0)
    for w, h in [(50, 40), (33, 97), (200, 31), (32, 32), (7, 300)]:
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        expected = processor(img, return_tensors="np").pixel_values
        got = transform.to_pixel_values([transform.apply(img)]).numpy()
        assert got.shape == expected.shape == (1, 3, 32, 32)
        np.testing.assert_allclose(got, expected, atol=1e-5)


def test_folder_saved_by_transformers_itself_loads_the_same(models, photo_paths, tmp_path):
    """A fine-tuned model saved with save_pretrained (processor_config.json holds the image settings)."""
    from transformers import AutoImageProcessor, AutoTokenizer, BlipForConditionalGeneration, BlipProcessor

    saved = tmp_path / "my-finetuned-blip"
    BlipForConditionalGeneration.from_pretrained(models["blip"]).save_pretrained(saved)
    BlipProcessor(image_processor=AutoImageProcessor.from_pretrained(models["blip"]),
                  tokenizer=AutoTokenizer.from_pretrained(models["blip"])).save_pretrained(saved)
    import transformers

    if int(transformers.__version__.split(".")[0]) >= 5:  # 4.x still writes preprocessor_config.json as well
        assert not (saved / "preprocessor_config.json").exists()
    settings = GenerationSettings(sample=False, num_beams=2, max_length=12)
    original = BlipCaptioner(str(models["blip"]), settings, device="cpu")
    resaved = BlipCaptioner(str(saved), settings, device="cpu")
    assert resaved.preprocess == original.preprocess
    arrays = [original.preprocess(p)[0] for p in photo_paths[:3]]
    assert resaved.generate(arrays) == original.generate(arrays)


def test_resample_filters_of_every_processor_flavour_map_to_pil():
    from library.captioners.image_transform import _pil_filter

    class Interpolation:  # torchvision's InterpolationMode enum carries strings
        value = "bicubic"

    assert _pil_filter(None) == _pil_filter(3) == _pil_filter(Interpolation()) == Image.BICUBIC
    assert _pil_filter("bilinear") == Image.BILINEAR and _pil_filter(1) == Image.LANCZOS


# ------------------------------------------------------------------------------- batch == one at a time

@pytest.mark.parametrize("family", ["blip", "blip2-opt", "blip2-t5"])
@pytest.mark.parametrize("num_beams", [1, 3])
def test_batched_generation_equals_one_image_at_a_time(models, photo_paths, family, num_beams):
    settings = GenerationSettings(sample=False, num_beams=num_beams, max_length=14, min_length=5)
    captioner = BlipCaptioner(str(models[family]), settings, device="cpu")
    arrays = [captioner.preprocess(p)[0] for p in photo_paths]
    batched = captioner.generate(arrays)
    single = [captioner.generate([a])[0] for a in arrays]
    assert batched == single
    assert all(batched) and len(set(batched)) >= 3  # real, image-dependent captions, not one constant string
    assert captioner.family == ("blip" if family == "blip" else "blip-2")


def test_prompt_conditions_the_caption_and_is_cut_from_it(models, photo_paths):
    settings = GenerationSettings(sample=False, num_beams=1, max_length=14, min_length=5)
    blip = BlipCaptioner(str(models["blip"]), settings, device="cpu")
    assert blip.prompt == "a picture of "  # sd-scripts' BLIP decoder prompt
    arrays = [blip.preprocess(p)[0] for p in photo_paths[:3]]
    default = blip.generate(arrays)
    other = BlipCaptioner(str(models["blip"]), GenerationSettings(max_length=14, min_length=5),
                          prompt="a photo of", device="cpu").generate(arrays)
    assert default != other
    for caption in default + other:
        assert not caption.startswith(("a picture of", "a photo of"))
    question = "Question: what is in the picture? Answer:"
    opt = BlipCaptioner(str(models["blip2-opt"]), GenerationSettings(max_length=14), prompt=question, device="cpu")
    plain = BlipCaptioner(str(models["blip2-opt"]), GenerationSettings(max_length=14), device="cpu")
    answers, captions = opt.generate(arrays), plain.generate(arrays)
    assert answers != captions and not any(a.startswith("Question") for a in answers)


# -------------------------------------------------------------------------------------- the script

def test_kohya_gui_command_line_downloads_blip_large_through_the_hub(models, tmp_path):
    """The GUI's exact argv (folder before --caption_weights, --batch_size 1.0), run from another cwd."""
    data = tmp_path / "data"
    photos = real_photos(data, n=3)
    broken = bad_images(data)
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    repo = tmp_path / "hub_repo"
    shutil.copytree(models["blip"], repo)
    with serve_repos({"Salesforce/blip-image-captioning-large": repo}) as hub:
        env = {"HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "HF_HOME": str(tmp_path / "hf"),
               "HF_HUB_DISABLE_TELEMETRY": "1",
               "PYTHONPATH": os.pathsep.join([str(foreign_library(tmp_path)), str(tmp_path)])}
        r = run_script(SCRIPT, "--batch_size", "1.0", "--num_beams", "1", "--top_p", "0.9", "--max_length", "75",
                       "--min_length", "5", "--beam_search", "--caption_extension", ".txt", data,
                       "--caption_weights", SD_SCRIPTS_CAPTION_WEIGHTS, cwd=cwd, env=env)
        requested = [path for _, path in hub.requests]
    assert r.returncode == 0, r.stderr[-3000:]
    assert any(p.endswith("/model.safetensors") and "Salesforce/blip-image-captioning-large" in p
               for p in requested)
    for photo in photos:
        text = photo.with_suffix(".txt").read_text(encoding="utf-8")
        assert text.endswith("\n") and text.strip() and "\n" not in text.strip()
    assert "captioned 3, skipped 0, failed 5" in r.stdout  # zero-byte, 2 truncated, text, bomb; hidden ones unseen
    assert str(broken["text_as_png"]) in r.stdout
    assert not list(cwd.iterdir())  # nothing written into the working directory


def test_offline_hub_id_fails_with_one_clear_line(tmp_path):
    data = tmp_path / "data"
    real_photos(data, n=1)
    r = run_script(SCRIPT, data, "--model_id", "Salesforce/blip2-opt-2.7b", cwd=tmp_path,
                   env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")})
    assert r.returncode == 1
    assert "error: model 'Salesforce/blip2-opt-2.7b' is not available" in r.stderr
    assert "Traceback" not in r.stderr


def test_wrong_architecture_is_a_fatal_error(tmp_path):
    from tests.fixtures.captioner_models import make_git

    data = tmp_path / "data"
    real_photos(data, n=1)
    git = make_git(tmp_path / "git")
    r = run_script(SCRIPT, data, "--model_id", git, cwd=tmp_path)
    assert r.returncode == 1 and "is not BLIP or BLIP-2 (use make_captions_by_git.py" in r.stderr
