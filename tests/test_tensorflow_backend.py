"""The legacy TensorFlow SavedModel backend (WD v2 layout): TensorFlow runs only in child processes, never here."""

import importlib.util
import json
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from library.backends.tf_savedmodel import SavedModelRunner
from library.errors import FatalError
from library.taggers.wd import WDTagger
from tests.conftest import ROOT, SCRIPT, run_script
from tests.fixtures.images import real_photos

needs_tf = pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None,  # finds it without importing it
                              reason="TensorFlow is not installed (requirements-test.txt brings tensorflow-cpu on x86_64)")


def python(code: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter with this checkout first on sys.path."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.fixture(scope="module")
def saved_model_dir(tmp_path_factory, model_dir):
    root = tmp_path_factory.mktemp("tfmodels")
    r = python(f"""
        from tests.fixtures.tf_models import make_wd_saved_model
        make_wd_saved_model({str(root / "org_tfonly")!r}, {str(model_dir / "org_tiny")!r})
    """)
    assert r.returncode == 0, r.stderr
    return root


@pytest.fixture
def no_tensorflow_here():
    """Every test in this file must leave this process without TensorFlow."""
    yield
    assert "tensorflow" not in sys.modules


@needs_tf
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


@needs_tf
def test_backend_choice_and_predictions_without_tensorflow_in_this_process(tmp_path, saved_model_dir, model_dir,
                                                                          no_tensorflow_here):
    both = tmp_path / "org_both"
    shutil.copytree(saved_model_dir / "org_tfonly", both)
    shutil.copy(model_dir / "org_tiny" / "model.onnx", both / "model.onnx")
    onnx_tagger = WDTagger.from_repo("org/both", str(tmp_path), device="cpu")
    assert onnx_tagger.files.backend == "onnx"
    tagger = WDTagger.from_repo("org/both", str(tmp_path), device="cpu", backend="tensorflow")
    assert tagger.files.backend == "tensorflow" and tagger.image_size == 64
    batch = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    np.testing.assert_allclose(tagger.predict(batch), onnx_tagger.predict(batch), atol=1e-5)
    with pytest.raises(FatalError, match="--backend tensorflow"):
        WDTagger.from_repo(str(saved_model_dir / "org_tfonly"), "unused", device="cpu", backend="onnx")
    tagger.runner.close()


IMPORT_ORDER = """
    import importlib.util, json, sys
    import numpy as np
    from library.taggers.wd import WDTagger

    def heavy():  # what a BLIP run imports: transformers, torch, torch._dynamo (and triton on CUDA builds of torch)
        import torch._dynamo  # noqa: F401
        from transformers import BlipForConditionalGeneration  # noqa: F401
        if importlib.util.find_spec("triton") is not None:
            import triton  # noqa: F401  (after TensorFlow in one process, this import aborts)

    def tag():
        tagger = WDTagger.from_repo({folder!r}, "unused", device="cpu", backend="tensorflow")
        batch = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
        return tagger.predict(batch).round(6).tolist()

    order = {order!r}
    first = heavy() if order == "torch first" else tag()
    second = tag() if order == "torch first" else heavy()
    probs = second if order == "torch first" else first
    print(json.dumps({{"probs": probs, "tensorflow_here": "tensorflow" in sys.modules,
                      "triton_here": "triton" in sys.modules, "torch_here": "torch" in sys.modules}}))
"""


@needs_tf
@pytest.mark.slow
def test_torch_and_the_tensorflow_backend_load_in_either_order(saved_model_dir):
    results = {}
    for order in ("torch first", "tensorflow backend first"):
        r = python(IMPORT_ORDER.format(folder=str(saved_model_dir / "org_tfonly"), order=order))
        assert r.returncode == 0, f"{order}: exit code {r.returncode}\n{r.stderr[-3000:]}"
        results[order] = json.loads(r.stdout.strip().splitlines()[-1])
        assert results[order]["torch_here"] and not results[order]["tensorflow_here"], results[order]
    assert results["torch first"]["probs"] == results["tensorflow backend first"]["probs"]


def fake_tensorflow(tmp_path, body: str) -> dict:
    """An environment whose `import tensorflow` runs `body` instead (for the child process the backend starts)."""
    (tmp_path / "fake" / "tensorflow").mkdir(parents=True)
    (tmp_path / "fake" / "tensorflow" / "__init__.py").write_text(body)
    return {"PYTHONPATH": str(tmp_path / "fake")}


def test_tensorflow_not_installed_is_one_clear_error(tmp_path, monkeypatch, no_tensorflow_here):
    for key, value in fake_tensorflow(tmp_path, "raise ImportError('No module named tensorflow')\n").items():
        monkeypatch.setenv(key, value)
    with pytest.raises(FatalError, match="TensorFlow is not installed: use the model.onnx"):
        SavedModelRunner(tmp_path / "model")


def test_tensorflow_process_dying_is_one_clear_error(tmp_path, monkeypatch, no_tensorflow_here):
    for key, value in fake_tensorflow(tmp_path, "import os\nos._exit(3)\n").items():
        monkeypatch.setenv(key, value)
    with pytest.raises(FatalError, match=r"TensorFlow process ended unexpectedly \(exit code 3\)"):
        SavedModelRunner(tmp_path / "model")
