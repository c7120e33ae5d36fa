"""uint8-input model copies: the graph does the reference conversion itself, with bit-identical outputs."""

import numpy as np
import onnxruntime as ort
import pytest

from library.backends.onnx_uint8 import InputSpec, uint8_model, uint8_path
from library.taggers.preprocess import cl_input, wd_input
from tests.conftest import CL_TAGS, WD_TAGS
from tests.fixtures.wd_models import make_cl_tagger_model, make_wd_model

pytest.importorskip("onnx")


def run(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def batch(n=3, size=64, seed=1):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


@pytest.mark.parametrize("layout", ["wd", "cl"])
def test_uint8_copy_gives_bit_identical_outputs(tmp_path, layout):
    if layout == "wd":
        folder = make_wd_model(tmp_path / "wd", WD_TAGS)
        model, spec, reference = folder / "model.onnx", InputSpec(bgr=True), wd_input
    else:
        folder = make_cl_tagger_model(tmp_path / "cl", CL_TAGS)
        model = folder / "model_optimized.onnx"
        spec, reference = InputSpec(bgr=True, nchw=True, ops=(("div", 127.5), ("sub", 1.0))), cl_input
    x = batch()
    converted = uint8_model(model, spec)
    assert converted == uint8_path(model, spec) and converted.is_file()
    session = ort.InferenceSession(str(converted), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == "tensor(uint8)" and session.get_inputs()[0].shape[1:] == [64, 64, 3]
    assert np.array_equal(run(converted, x), run(model, reference(x)))
    mtime = converted.stat().st_mtime_ns
    assert uint8_model(model, spec) == converted and converted.stat().st_mtime_ns == mtime  # cached


def test_per_channel_mean_std_and_read_only_folder_falls_back(tmp_path):
    folder = make_cl_tagger_model(tmp_path / "cl", CL_TAGS)
    model = folder / "model_optimized.onnx"
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    spec = InputSpec(nchw=True, ops=(("div", 255.0), ("sub", mean), ("div", std)))
    x = batch(seed=2)
    ref = ((x.transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255.0)) - np.array(mean, np.float32)[:, None, None]) \
        / np.array(std, np.float32)[:, None, None]
    assert np.array_equal(run(uint8_model(model, spec), x), run(model, ref.astype(np.float32)))
    other = InputSpec(bgr=True, nchw=True, ops=(("div", 127.5), ("sub", 1.0)))
    uint8_path(model, other).mkdir()  # the copy cannot be written there (as in a read-only model folder)
    assert uint8_model(model, other) is None


@pytest.mark.parametrize("repo_id", ["org/tiny", "org/cl/cl_v1"])
def test_tagger_feeds_uint8_and_gets_the_float_paths_probabilities(model_dir, repo_id):
    from library.backends.hub_files import locate_model
    from library.taggers.wd import WDTagger, ensure_tagger_files

    files = ensure_tagger_files(locate_model(repo_id, str(model_dir)))
    fast, reference = WDTagger(files, "cpu"), WDTagger(files, "cpu", uint8_input=False)
    assert fast.takes_uint8 and not reference.takes_uint8
    assert fast.runner.session.get_inputs()[0].type == "tensor(uint8)"
    x = batch(n=5, size=fast.image_size, seed=3)
    assert fast.image_size == reference.image_size
    assert np.array_equal(fast.predict(x), reference.predict(x))
