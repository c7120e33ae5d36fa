"""The legacy TensorFlow SavedModel backend (WD v2 layout), loaded without Keras; skipped without TensorFlow."""

import shutil

import pytest

from library.errors import FatalError
from library.taggers.wd import WDTagger
from tests.conftest import SCRIPT, run_script
from tests.fixtures.images import real_photos

tf = pytest.importorskip("tensorflow")


@pytest.fixture(scope="module")
def saved_model_dir(tmp_path_factory, model_dir):
    from tests.fixtures.tf_models import make_wd_saved_model

    root = tmp_path_factory.mktemp("tfmodels")
    make_wd_saved_model(root / "org_tfonly", model_dir / "org_tiny")
    return root


def test_saved_model_only_folder_uses_tensorflow_and_matches_onnx(tmp_path, saved_model_dir, model_dir):
    data = tmp_path / "data"
    photos = real_photos(data, n=3)
    out_tf, out_onnx = tmp_path / "tf", tmp_path / "onnx"
    r = run_script(SCRIPT, data, "--repo_id", "org/tfonly", "--model_dir", saved_model_dir, "--output_dir", out_tf,
                   "--batch_size", "2", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = run_script(SCRIPT, data, "--repo_id", "org/tiny", "--model_dir", model_dir, "--output_dir", out_onnx,
                   "--batch_size", "2", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    for p in photos:
        assert (out_tf / f"{p.stem}.txt").read_text() == (out_onnx / f"{p.stem}.txt").read_text()


def test_backend_choice(tmp_path, saved_model_dir, model_dir):
    both = tmp_path / "org_both"
    shutil.copytree(saved_model_dir / "org_tfonly", both)
    shutil.copy(model_dir / "org_tiny" / "model.onnx", both / "model.onnx")
    assert WDTagger.from_repo("org/both", str(tmp_path), device="cpu").files.backend == "onnx"
    tagger = WDTagger.from_repo("org/both", str(tmp_path), device="cpu", backend="tensorflow")
    assert tagger.files.backend == "tensorflow" and tagger.image_size == 64
    with pytest.raises(FatalError, match="--backend tensorflow"):
        WDTagger.from_repo(str(saved_model_dir / "org_tfonly"), "unused", device="cpu", backend="onnx")
