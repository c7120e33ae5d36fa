"""Tagger layouts after WD: PixAI (deepghs ONNX), Camie v2, WD v3 dynamic batch, layout detection, hub downloads."""

import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from library.backends.hub_files import ModelNotAvailable, locate_model
from library.taggers.labels import (load_camie_metadata, load_pixai_labels, load_selected_tags_csv,
                                    pixai_default_thresholds)
from library.taggers.layouts import KNOWN_MODELS, camie_file_names, detect_layout
from library.taggers.preprocess import StagedImageLoader, parse_preprocess_json
from library.taggers.tag_rules import TagOptions, TagSelector, expand_character_tag
from library.taggers.wd import WDTagger, ensure_tagger_files
from tests.conftest import CHARACTERS, GENERAL, SCRIPT, WD_TAGS, run_script
from tests.fixtures.hub_server import serve_repos, use_endpoint
from tests.fixtures.images import awkward_images, real_photos
from tests.fixtures.wd_models import (camie_reference_input, heads_reference_logits, make_camie_model,
                                      make_pixai_model, make_wd_model, pixai_reference_input, reference_preprocess,
                                      wd_reference_probs)

EPS = 1e-4  # float32 ONNX Runtime vs float64 reference: a tag this close to its threshold may go either way
PIXAI_TAGS = [(t, 0) for t in GENERAL] + [(c, 4) for c in CHARACTERS] + [("highres", 5), ("vocaloid", 3)]
PIXAI_SERIES = {"kagamine_rin": ["vocaloid"], "hatsune_miku_(vocaloid)": ["vocaloid"],
                "ganyu_(genshin_impact)": ["genshin_impact"], "vocaloid_(vocaloid)": ["vocaloid"]}
PIXAI_DEFAULTS = {0: 0.3, 4: 0.85, 5: 0.4, 3: 0.4}  # thresholds.csv, then imgutils' 0.4 for the rest
CAMIE_TAGS = ([(r, "rating") for r in ("general", "sensitive", "questionable", "explicit")]
              + [(t, "general") for t in GENERAL] + [(c, "character") for c in CHARACTERS]
              + [("vocaloid", "copyright"), ("some_artist", "artist"), ("highres", "meta"), ("year_2021", "year")])
PIXAI_SIZE, CAMIE_SIZE = 32, 48


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("layouts")
    make_pixai_model(root / "deepghs_pixai-tagger-v0.9-onnx", PIXAI_TAGS, size=PIXAI_SIZE, seed=3, series=PIXAI_SERIES)
    make_camie_model(root / "Camais03_camie-tagger-v2", CAMIE_TAGS, size=CAMIE_SIZE, seed=4)
    return root


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("images")
    photos = real_photos(d, n=5)
    awk = awkward_images(d.parent / (d.name + "_awkward"))
    for kind in ("rgba", "wide", "tall", "tiny", "palette_png"):
        shutil.copy(awk[kind], d / awk[kind].name)
    return d, photos + [d / awk[k].name for k in ("rgba", "wide", "tall", "tiny", "palette_png")]


def caption(path: Path) -> list[str]:
    return [t for t in path.with_suffix(".txt").read_text(encoding="utf-8").strip().split(", ") if t]


def assert_tags(got: list[str], expected: list[str], unsure: set[str], where) -> None:
    assert [t for t in got if t not in unsure] == [t for t in expected if t not in unsure], where


def pixai_probs(folder: Path, image: Path, prep=pixai_reference_input) -> np.ndarray:
    logits = heads_reference_logits(folder / "model.onnx", prep(image, PIXAI_SIZE)[None], "prediction")[0]
    return 1 / (1 + np.exp(-logits))


def pixai_expected(p: np.ndarray, thresholds: dict[int, float]):
    """CSV order, threshold per Danbooru category (inclusive), and the tags too close to call."""
    sure = [n for (n, c), v in zip(PIXAI_TAGS, p) if v >= thresholds[c] + EPS]
    unsure = {n for (n, c), v in zip(PIXAI_TAGS, p) if abs(v - thresholds[c]) < EPS}
    return sure, unsure


def wd_style_input(image: Path, size: int) -> np.ndarray:
    """The WD geometry (white pad, BICUBIC) with PixAI's normalisation: a plausible preprocessing mistake."""
    rgb = reference_preprocess(image, size)[..., ::-1] / 255.0
    return ((rgb - 0.5) / 0.5).transpose(2, 0, 1)


def test_pixai_uses_its_own_preprocessing_and_thresholds_by_default(models, images, tmp_path):
    folder = models / "deepghs_pixai-tagger-v0.9-onnx"
    d, paths = images
    r = run_script(SCRIPT, d, "--repo_id", folder, "--batch_size", "3", "--max_data_loader_n_workers", "2",
                   cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    differs = 0
    for img in paths:
        p = pixai_probs(folder, img)
        sure, unsure = pixai_expected(p, PIXAI_DEFAULTS)
        assert_tags(caption(img), sure, unsure, img.name)
        wrong, _ = pixai_expected(pixai_probs(folder, img, wd_style_input), PIXAI_DEFAULTS)
        differs += wrong != sure
    assert differs >= len(paths) // 2  # the test would notice a preprocessing mistake
    assert any(n in caption(img) for img in paths for n, c in PIXAI_TAGS if c == 4)  # 0.85 still lets some through
    assert f"tagged {len(paths)}" in r.stdout


def test_pixai_flags_override_its_thresholds_and_characters_bring_their_series(models, images, tmp_path):
    folder = models / "deepghs_pixai-tagger-v0.9-onnx"
    d, paths = images
    r = run_script(SCRIPT, d, "--repo_id", folder, "--thresh", "0.5", "--character_threshold", "0.2",
                   "--character_tag_expand", "--max_data_loader_n_workers", "0", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    for img in paths:
        p = pixai_probs(folder, img)
        sure, unsure = pixai_expected(p, {0: 0.5, 4: 0.2, 5: 0.5, 3: 0.5})
        expanded, seen = [], set()
        for tag in sure:
            for piece in expand_character_tag(tag, tuple(PIXAI_SERIES.get(tag, ()))):
                if piece not in seen:
                    seen.add(piece)
                    expanded.append(piece)
        got = caption(img)
        if not unsure:
            assert got == expanded, img.name
        if p[PIXAI_TAGS.index(("kagamine_rin", 4))] >= 0.2 + EPS:
            assert "kagamine_rin" in got and "vocaloid" in got


def test_expand_character_tag_with_the_models_series():
    assert expand_character_tag("hu_tao_(genshin_impact)", ("genshin_impact",)) == ["hu_tao", "genshin_impact"]
    assert expand_character_tag("misaka_mikoto", ("toaru_kagaku_no_railgun",)) == ["misaka_mikoto",
                                                                                    "toaru_kagaku_no_railgun"]
    assert expand_character_tag("saber_(fate)", ("fate/stay_night",)) == ["saber_(fate)", "fate/stay_night"]
    assert expand_character_tag("saber_(fate)") == ["saber", "fate"]
    assert expand_character_tag("chara_(costume)_(series)") == ["chara_(costume)", "series"]


def test_pixai_label_files(models, tmp_path):
    folder = models / "deepghs_pixai-tagger-v0.9-onnx"
    labels = load_selected_tags_csv(folder / "selected_tags.csv")
    assert labels.names[:2] == GENERAL[:2] and labels.categories[-2:] == ["meta", "copyright"]
    assert labels.series[PIXAI_TAGS.index(("kagamine_rin", 4))] == ("vocaloid",)
    assert labels.series[0] == ()
    assert pixai_default_thresholds(folder / "thresholds.csv", labels.categories) == {
        "general": 0.3, "character": 0.85, "meta": 0.4, "copyright": 0.4}
    assert pixai_default_thresholds(None, ["general", "rating"]) == {"general": 0.4}
    twice = tmp_path / "thresholds.csv"
    twice.write_text("category,name,threshold\n0,general,0.25\n0,general,0.9\n")
    assert pixai_default_thresholds(twice, ["general"]) == {"general": 0.25}  # the first row wins, as in imgutils
    bad = tmp_path / "selected_tags.csv"
    bad.write_text("id,tag_id,name,category,count,ips\n0,1,a,0,5,not json\n")
    with pytest.raises(ValueError, match=r"selected_tags.csv:2: the ips column"):
        load_selected_tags_csv(bad)
    labels = load_pixai_labels(folder / "selected_tags.csv", folder / "thresholds.csv")
    selector = TagSelector(labels, TagOptions(thresholds={"general": 0.5}))  # a flag given for general only
    general, character = labels.categories.index("general"), labels.categories.index("character")
    assert selector.thresholds[general] == pytest.approx(0.5) and selector.thresholds[character] == pytest.approx(0.85)
    assert TagSelector(labels, TagOptions()).thresholds[general] == pytest.approx(0.3)


def test_pixai_preprocess_json_and_its_loader(models, images):
    folder = models / "deepghs_pixai-tagger-v0.9-onnx"
    staged = parse_preprocess_json(folder / "preprocess.json")
    assert staged.output_size == (PIXAI_SIZE, PIXAI_SIZE)
    loader = StagedImageLoader(staged.geometry, PIXAI_SIZE)
    loader = pickle.loads(pickle.dumps(loader))  # worker processes receive it pickled
    for img in images[1]:
        arr, size = loader(img)
        assert arr.dtype == np.uint8 and arr.shape == (PIXAI_SIZE, PIXAI_SIZE, 3)
        x = staged.tensor(arr[None])[0]
        assert x.dtype == np.float32 and np.abs(x - pixai_reference_input(img, PIXAI_SIZE)).max() < 1e-6


@pytest.mark.parametrize("stages, message", [
    ('{"stages": [{"type": "to_tensor"}, {"type": "resize", "size": 8}]}', "stage 2 (resize): image stages"),
    ('{"stages": [{"type": "resize", "size": 8, "interpolation": "nearest-exact"}, {"type": "to_tensor"}]}',
     "unsupported interpolation"),
    ('{"stages": [{"type": "random_flip"}]}', "stage 1 (random_flip): unsupported stage"),
    ('{"stages": [{"type": "resize", "size": [8, 8]}]}', "no to_tensor stage"),
    ('[1, 2]', "expected a JSON object"),
])
def test_bad_preprocess_json_names_the_file_and_stage(tmp_path, stages, message):
    path = tmp_path / "preprocess.json"
    path.write_text(stages)
    with pytest.raises(ValueError) as info:
        parse_preprocess_json(path)
    assert str(path) in str(info.value) and message in str(info.value)


def test_timm_style_resize_and_centre_crop_stages(tmp_path, images):
    from PIL import Image

    path = tmp_path / "preprocess.json"
    path.write_text('{"stages": [{"type": "resize", "size": 40, "interpolation": "bicubic"}, '
                    '{"type": "center_crop", "size": [32, 32]}, {"type": "maybe_to_tensor"}, '
                    '{"type": "normalize", "mean": 0.5, "std": 0.25}]}')
    staged = parse_preprocess_json(path)
    assert staged.output_size == (32, 32)
    img = images[1][0]  # 512x512 astronaut
    arr, _ = StagedImageLoader(staged.geometry, 32)(img)
    with Image.open(img) as im:
        ref = im.convert("RGB").resize((40, 40), Image.BICUBIC, reducing_gap=None).crop((4, 4, 36, 36))
    assert np.array_equal(arr, np.asarray(ref))
    assert np.allclose(staged.tensor(arr[None])[0], (np.asarray(ref) / 255.0 - 0.5).transpose(2, 0, 1) / 0.25,
                       atol=1e-6)


def camie_probs(folder: Path, image: Path, head="refined_predictions", prep=camie_reference_input) -> np.ndarray:
    x = prep(image, CAMIE_SIZE)[None]
    return 1 / (1 + np.exp(-heads_reference_logits(folder / "camie-tagger-v2.onnx", x, head)[0]))


def camie_expected(p: np.ndarray, thresh=0.35):
    """Rating argmax first (--use_rating_tags), then every other tag above the threshold by confidence."""
    cats = [c for _, c in CAMIE_TAGS]
    names = [n for n, _ in CAMIE_TAGS]
    rating = max((i for i, c in enumerate(cats) if c == "rating"), key=lambda i: p[i])
    rest = sorted((i for i, c in enumerate(cats) if c != "rating" and p[i] >= thresh + EPS), key=lambda i: -p[i])
    unsure = {names[i] for i, c in enumerate(cats) if c != "rating" and abs(p[i] - thresh) < EPS}
    return [names[rating]] + [names[i] for i in rest], unsure


def test_camie_end_to_end_with_its_geometry_normalisation_and_refined_output(models, images, tmp_path):
    d, paths = images
    model_dir = models
    r = run_script(SCRIPT, d, "--repo_id", "Camais03/camie-tagger-v2", "--model_dir", model_dir,
                   "--use_rating_tags", "--max_data_loader_n_workers", "2", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "GPL-3.0" in r.stderr
    folder = models / "Camais03_camie-tagger-v2"
    wrong_head = wrong_prep = 0
    for img in paths:
        sure, unsure = camie_expected(camie_probs(folder, img))
        got = caption(img)
        assert_tags(got, sure, unsure, img.name)
        wrong_head += camie_expected(camie_probs(folder, img, head="initial_predictions"))[0] != sure
        wrong_prep += camie_expected(camie_probs(folder, img, prep=lambda i, s: wd_style_input(i, s)))[0] != sure
    assert wrong_head == len(paths) and wrong_prep >= len(paths) // 2
    assert any("year_2021" in caption(img) for img in paths)  # year tags are kept (as meta tags)


def test_camie_metadata(models, tmp_path):
    labels, size = load_camie_metadata(models / "Camais03_camie-tagger-v2" / "camie-tagger-v2-metadata.json")
    assert size == CAMIE_SIZE and len(labels) == len(CAMIE_TAGS) and labels.order_by_confidence
    assert labels.categories[:4] == ["rating"] * 4 and labels.categories[-1] == "meta"  # year -> meta
    bad = tmp_path / "x-metadata.json"
    bad.write_text('{"model_info": {}}')
    with pytest.raises(ValueError, match="not a Camie metadata file"):
        load_camie_metadata(bad)
    bad.write_text('{"dataset_info": {"tag_mapping": {"idx_to_tag": {"0": "a"}, "tag_to_category": {"a": "lore"}}}}')
    with pytest.raises(ValueError, match="unknown category 'lore'"):
        load_camie_metadata(bad)


def test_wd_v3_layout_with_dynamic_batch_works_as_is(tmp_path):
    folder = make_wd_model(tmp_path / "models" / "SmilingWolf_wd-eva02-large-tagger-v3", WD_TAGS, size=448, seed=5,
                           input_name="input")
    tagger = WDTagger.from_repo("SmilingWolf/wd-eva02-large-tagger-v3", str(tmp_path / "models"), device="cpu")
    assert tagger.layout == "wd" and tagger.image_size == 448 and tagger.fixed_batch is None
    assert tagger.default_thresholds == {}
    d = tmp_path / "data"
    photos = real_photos(d, n=3)
    loader = tagger.image_loader()
    batch = np.stack([loader(p)[0] for p in photos])
    together = tagger.predict(batch)
    alone = np.concatenate([tagger.predict(batch[i:i + 1]) for i in range(3)])
    assert np.allclose(together, alone, atol=1e-6)
    assert np.allclose(together, wd_reference_probs(folder, np.stack([reference_preprocess(p, 448) for p in photos])),
                       atol=1e-5)
    r = run_script(SCRIPT, d, "--repo_id", "SmilingWolf/wd-eva02-large-tagger-v3", "--model_dir", tmp_path / "models",
                   "--batch_size", "2", "--max_data_loader_n_workers", "0", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    for p, probs in zip(photos, together):
        sure = [n for (n, c), v in zip(WD_TAGS, probs) if c in (0, 4) and v >= 0.35 + EPS]
        unsure = {n for (n, c), v in zip(WD_TAGS, probs) if c in (0, 4) and abs(v - 0.35) < EPS}
        assert_tags(caption(p), sure, unsure, p.name)


def test_unknown_layout_gets_one_error_listing_the_layouts(tmp_path):
    folder = tmp_path / "mystery"
    folder.mkdir()
    (folder / "weights.safetensors").write_bytes(b"x" * 10)
    (folder / "labels.txt").write_text("a\n")
    with pytest.raises(ModelNotAvailable) as info:
        WDTagger.from_repo(str(folder), "unused", device="cpu")
    message = str(info.value)
    assert "\n" not in message and str(folder) in message and "weights.safetensors" in message
    for needed in ("wd (", "cl (", "pixai (", "camie (", "selected_tags.csv", "preprocess.json",
                   "camie-tagger-v2-metadata.json", "tag_mapping.json"):
        assert needed in message
    d = tmp_path / "data"
    real_photos(d, n=1)
    r = run_script(SCRIPT, d, "--repo_id", folder, cwd=tmp_path)
    assert r.returncode == 1 and "not a tagger layout captionkit knows" in r.stderr


def test_layout_detection_from_file_names():
    assert detect_layout(["model.onnx", "selected_tags.csv"]) == "wd"
    assert detect_layout(["saved_model.pb", "selected_tags.csv"]) == "wd"
    assert detect_layout(["model.onnx", "selected_tags.csv", "preprocess.json", "thresholds.csv"]) == "pixai"
    assert detect_layout(["model.onnx", "selected_tags.csv", "preprocessor.json"]) == "pixai"
    assert detect_layout(["camie-tagger-v2.onnx", "camie-tagger-v2-metadata.json", "README.md"]) == "camie"
    assert detect_layout(["model_optimized.onnx", "tag_mapping.json"]) == "cl"
    assert detect_layout(["README.md", ".gitattributes"]) is None
    cached = ["metadata.json", "weights.onnx", "weights_fp16.onnx", "weights_u8_1a2b3c4d.onnx"]
    assert camie_file_names(cached) == ("weights.onnx", "metadata.json")  # captionkit's cached copies are skipped
    assert camie_file_names([]) == ("camie-tagger-v2.onnx", "camie-tagger-v2-metadata.json")


def test_list_models_needs_no_image_folder(tmp_path):
    r = run_script(SCRIPT, "--list_models", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    camie = next(line for line in r.stdout.splitlines() if line.startswith("Camais03/camie-tagger-v2"))
    assert "camie" in camie and "GPL-3.0" in camie and "789 MB" in camie
    for model in KNOWN_MODELS:
        assert model.repo_id in r.stdout
    assert "deepghs/pixai-tagger-v0.9-onnx" in r.stdout and "SmilingWolf/wd-eva02-large-tagger-v3" in r.stdout


@pytest.fixture(scope="module")
def hub_repos(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    make_pixai_model(root / "pixai", PIXAI_TAGS, size=PIXAI_SIZE, seed=3, series=PIXAI_SERIES)
    make_pixai_model(root / "pixai_old", PIXAI_TAGS, size=PIXAI_SIZE, seed=6, thresholds=None,
                     preprocess_name="preprocessor.json")
    make_camie_model(root / "camie", CAMIE_TAGS, size=CAMIE_SIZE, seed=4)
    make_camie_model(root / "camie_fork", CAMIE_TAGS, size=CAMIE_SIZE, seed=7, onnx_name="tagger.onnx",
                     metadata_name="tagger-metadata.json")
    for folder in root.iterdir():
        (folder / "README.md").write_text("model card\n")
    make_wd_model(root / "eva02", WD_TAGS, size=64, seed=5, input_name="input")
    return {"deepghs/pixai-tagger-v0.9-onnx": root / "pixai", "someone/pixai-old-export": root / "pixai_old",
            "Camais03/camie-tagger-v2": root / "camie", "someone/camie-fork": root / "camie_fork",
            "SmilingWolf/wd-eva02-large-tagger-v3": root / "eva02"}


def downloaded(hub) -> list[str]:
    return sorted(p.rsplit("/", 1)[-1] for m, p in hub.requests if m == "GET" and "/resolve/" in p)


@pytest.mark.parametrize("repo_id, layout, files", [
    ("deepghs/pixai-tagger-v0.9-onnx", "pixai", ["model.onnx", "preprocess.json", "selected_tags.csv", "thresholds.csv"]),
    ("someone/pixai-old-export", "pixai", ["model.onnx", "preprocessor.json", "selected_tags.csv"]),
    ("Camais03/camie-tagger-v2", "camie", ["camie-tagger-v2-metadata.json", "camie-tagger-v2.onnx"]),
    ("someone/camie-fork", "camie", ["tagger-metadata.json", "tagger.onnx"]),
    ("SmilingWolf/wd-eva02-large-tagger-v3", "wd", ["model.onnx", "selected_tags.csv"]),
])
def test_hub_download_of_each_layout(hub_repos, tmp_path, repo_id, layout, files):
    model_dir = tmp_path / "wd14_tagger_model"
    with serve_repos(hub_repos) as hub, use_endpoint(hub.url):
        tagger = WDTagger.from_repo(repo_id, str(model_dir), device="cpu")
        assert tagger.layout == layout and downloaded(hub) == files  # only the layout's files, not the README
        assert tagger.predict(np.zeros((2, tagger.image_size, tagger.image_size, 3), np.uint8)).shape[0] == 2
        hub.requests.clear()
        again = WDTagger.from_repo(repo_id, str(model_dir), device="cpu")
        assert hub.requests == [] and again.layout == layout  # a complete folder needs no network
    if repo_id == "someone/pixai-old-export":
        assert tagger.default_thresholds == {"general": 0.4, "character": 0.4, "meta": 0.4, "copyright": 0.4}


def test_hub_repo_of_no_known_layout_is_refused_before_downloading(hub_repos, tmp_path):
    readme_only = tmp_path / "readme_only"
    readme_only.mkdir()
    (readme_only / "README.md").write_text("nothing here\n")
    (readme_only / "weights.safetensors").write_bytes(b"x" * 10)
    with serve_repos({**hub_repos, "someone/not-a-tagger": readme_only}) as hub, use_endpoint(hub.url):
        with pytest.raises(ModelNotAvailable) as info:
            WDTagger.from_repo("someone/not-a-tagger", str(tmp_path / "m"), device="cpu")
        assert downloaded(hub) == []
    message = str(info.value)
    assert "someone/not-a-tagger on the hub" in message and "weights.safetensors" in message and "pixai (" in message


def test_pixai_folder_missing_a_file_says_what_the_layout_needs(models, tmp_path):
    local = tmp_path / "pixai"
    shutil.copytree(models / "deepghs_pixai-tagger-v0.9-onnx", local)
    (local / "model.onnx").unlink()
    with pytest.raises(ModelNotAvailable, match=r"missing model.onnx \(the PixAI .* layout needs model.onnx"):
        ensure_tagger_files(locate_model(str(local), "unused"))
    (local / "preprocess.json").write_text('{"stages": [{"type": "resize", "size": [16, 16]}, {"type": "to_tensor"}]}')
    shutil.copy(models / "deepghs_pixai-tagger-v0.9-onnx" / "model.onnx", local / "model.onnx")
    with pytest.raises(ModelNotAvailable, match="its stages make 16x16 images but the model takes 32x32"):
        WDTagger.from_repo(str(local), "unused", device="cpu")


@pytest.mark.parametrize("name", ["deepghs_pixai-tagger-v0.9-onnx", "Camais03_camie-tagger-v2"])
def test_input_spec_makes_a_bit_identical_uint8_model_copy(models, tmp_path, name):
    import onnxruntime as ort

    from library.backends.onnx_uint8 import uint8_model

    folder = tmp_path / name
    shutil.copytree(models / name, folder)
    tagger = WDTagger.from_repo(str(folder), "unused", device="cpu")
    x = np.random.default_rng(0).integers(0, 256, (2, tagger.image_size, tagger.image_size, 3), dtype=np.uint8)
    converted = uint8_model(tagger.files.model, tagger.input_spec)
    assert converted is not None and WDTagger.from_repo(str(folder), "unused", device="cpu").layout == tagger.layout

    def outputs(path, data):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, {session.get_inputs()[0].name: data})

    for ours, reference in zip(outputs(converted, x), outputs(tagger.files.model, tagger._model_input(x))):
        assert np.array_equal(ours, reference)
