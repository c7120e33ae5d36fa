"""The tiny WD / cl_tagger ONNX fixtures run in onnxruntime and match their numpy references."""

import json

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from tests.fixtures.images import awkward_images, bad_images, real_photos
from tests.fixtures.wd_models import (cl_reference_logits, make_cl_tagger_model, make_wd_model,
                                      reference_preprocess, wd_reference_probs)

pytestmark = pytest.mark.timeout(20)
RATINGS = [("general", 9), ("sensitive", 9), ("questionable", 9), ("explicit", 9)]
WD_TAGS = RATINGS + [(f"tag_{i}", 0) for i in range(12)] + [("hatsune_miku", 4), ("char_b", 4)]
CL_TAGS = [("general", "Rating"), ("explicit", "Rating"), ("1girl", "General"), ("solo", "General"),
           ("hatsune_miku", "Character"), ("vocaloid", "Copyright"), ("someone", "Artist"),
           ("highres", "Meta"), ("best_quality", "Quality"), ("wd_model", "Model")]


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    photos = real_photos(tmp_path_factory.mktemp("photos"), n=3)
    return np.stack([reference_preprocess(p, 64) for p in photos])  # NHWC BGR 0..255


def test_wd_model_contract(tmp_path, batch):
    folder = make_wd_model(tmp_path / "wd", WD_TAGS)
    lines = (folder / "selected_tags.csv").read_text().splitlines()
    assert lines[0] == "tag_id,name,category,count" and len(lines) == 1 + len(WD_TAGS)
    assert [line.split(",")[1:3] for line in lines[1:5]] == [[n, "9"] for n, _ in RATINGS]
    sess = _session(folder / "model.onnx")
    (inp,), (out,) = sess.get_inputs(), sess.get_outputs()
    assert (inp.name, inp.shape, out.name) == ("input_1:0", ["batch", 64, 64, 3], "output")
    probs = sess.run(None, {inp.name: batch})[0]
    assert probs.shape == (3, len(WD_TAGS)) and probs.dtype == np.float32
    assert ((probs > 0) & (probs < 1)).all() and (probs > 0.35).any() and (probs < 0.35).any()
    np.testing.assert_allclose(probs, wd_reference_probs(folder, batch), atol=1e-4)
    swapped = sess.run(None, {inp.name: np.ascontiguousarray(batch[..., ::-1])})[0]
    assert np.abs(swapped - probs).max() > 1e-2
    shifted = batch.copy()
    shifted[:, :32] = 255.0
    assert np.abs(sess.run(None, {inp.name: shifted})[0] - probs).max() > 1e-2


def test_wd_fixed_batch(tmp_path, batch):
    folder = make_wd_model(tmp_path / "wd", WD_TAGS, size=32, fixed_batch=1, grid=2)
    sess = _session(folder / "model.onnx")
    assert sess.get_inputs()[0].shape == [1, 32, 32, 3]
    x = batch[:1, ::2, ::2].copy()
    np.testing.assert_allclose(sess.run(None, {"input_1:0": x})[0], wd_reference_probs(folder, x), atol=1e-4)


@pytest.mark.parametrize("mapping_format", ["index", "split"])
def test_cl_tagger_contract(tmp_path, batch, mapping_format):
    folder = make_cl_tagger_model(tmp_path / "cl" / "cl_tagger_1_02", CL_TAGS, mapping_format=mapping_format)
    mapping = json.loads((folder / "tag_mapping.json").read_text())
    if mapping_format == "index":
        assert mapping["4"] == {"tag": "hatsune_miku", "category": "Character"}
    else:
        assert mapping["idx_to_tag"]["4"] == "hatsune_miku" and mapping["tag_to_category"]["vocaloid"] == "Copyright"
    sess = _session(folder / "model_optimized.onnx")
    assert sess.get_inputs()[0].shape == ["batch", 3, 64, 64]
    x = np.ascontiguousarray(batch.transpose(0, 3, 1, 2) / 127.5 - 1.0, dtype=np.float32)
    logits = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    assert logits.shape == (3, len(CL_TAGS)) and ((logits < 0) | (logits > 1)).any()
    np.testing.assert_allclose(logits, cl_reference_logits(folder, x), atol=1e-4)
    swapped = sess.run(None, {sess.get_inputs()[0].name: np.ascontiguousarray(x[:, ::-1])})[0]
    assert np.abs(swapped - logits).max() > 1e-2


def test_reference_preprocess_on_awkward_and_bad_files(tmp_path):
    for kind, path in awkward_images(tmp_path / "ok").items():
        arr = reference_preprocess(path, 48)
        assert arr.shape == (48, 48, 3) and arr.dtype == np.float32, kind
    assert reference_preprocess(tmp_path / "ok" / "tiny.png", 48)[0, 0].tolist() == [60.0, 30.0, 200.0]
    bad = bad_images(tmp_path / "bad")
    with pytest.raises(Image.DecompressionBombError):
        Image.open(bad["decompression_bomb"])
    with pytest.raises(OSError):
        reference_preprocess(bad["truncated_png"], 48)


def test_pixai_model_contract(tmp_path):
    from tests.fixtures.wd_models import heads_reference_logits, make_pixai_model, pixai_reference_input

    tags = [("1girl", 0), ("solo", 0), ("kagamine_rin", 4), ("highres", 5)]
    folder = make_pixai_model(tmp_path / "pixai", tags, size=32, series={"kagamine_rin": ["vocaloid"]})
    assert sorted(p.name for p in folder.iterdir()) == ["model.onnx", "preprocess.json", "selected_tags.csv",
                                                         "thresholds.csv"]
    lines = (folder / "selected_tags.csv").read_text().splitlines()
    assert lines[0] == "id,tag_id,name,category,count,ips" and lines[3].endswith('"[""vocaloid""]"')
    assert (folder / "thresholds.csv").read_text().splitlines() == ["category,name,threshold", "0,general,0.3",
                                                                     "4,character,0.85"]
    assert json.loads((folder / "preprocess.json").read_text())["stages"][0]["size"] == [32, 32]
    sess = _session(folder / "model.onnx")
    (inp,) = sess.get_inputs()
    assert (inp.name, inp.shape) == ("input", ["batch_size", 3, 32, 32])
    assert [o.name for o in sess.get_outputs()] == ["embedding", "logits", "prediction"]
    photos = real_photos(tmp_path / "photos", n=2)
    x = np.stack([pixai_reference_input(p, 32) for p in photos]).astype(np.float32)
    emb, logits, pred = sess.run(None, {"input": x})
    assert emb.shape == (2, 48) and np.allclose(pred, 1 / (1 + np.exp(-logits)), atol=1e-6)
    assert np.allclose(logits, heads_reference_logits(folder / "model.onnx", x, "prediction"), atol=1e-4)


def test_camie_model_contract(tmp_path):
    from tests.fixtures.wd_models import camie_reference_input, heads_reference_logits, make_camie_model

    tags = [("general", "rating"), ("explicit", "rating"), ("1girl", "general"), ("year_2021", "year")]
    folder = make_camie_model(tmp_path / "camie", tags, size=48)
    meta = json.loads((folder / "camie-tagger-v2-metadata.json").read_text())
    assert meta["model_info"]["img_size"] == 48
    assert meta["dataset_info"]["tag_mapping"]["idx_to_tag"]["3"] == "year_2021"
    assert meta["dataset_info"]["tag_mapping"]["tag_to_category"]["year_2021"] == "year"
    sess = _session(folder / "camie-tagger-v2.onnx")
    assert [o.name for o in sess.get_outputs()] == ["initial_predictions", "refined_predictions"]
    photos = real_photos(tmp_path / "photos", n=2)
    x = np.stack([camie_reference_input(p, 48) for p in photos]).astype(np.float32)
    initial, refined = sess.run(None, {sess.get_inputs()[0].name: x})
    assert not np.allclose(initial, refined)
    path = folder / "camie-tagger-v2.onnx"
    assert np.allclose(refined, heads_reference_logits(path, x, "refined_predictions"), atol=1e-4)
    assert np.allclose(initial, heads_reference_logits(path, x, "initial_predictions"), atol=1e-4)
