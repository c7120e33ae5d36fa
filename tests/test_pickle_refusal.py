"""A model folder whose only weights are a malicious pickle: refused in one line, the pickled code never runs."""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from tests.fixtures.images import real_photos  # noqa: E402
from tests.fixtures.llava_model import make_llava_model  # noqa: E402

pytestmark = pytest.mark.timeout(180)
ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "finetune" / "dual_caption.py"


class _TouchOnUnpickle:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (Path(self.marker),)


def test_dual_caption_refuses_a_pickled_model_in_one_line(tmp_path):
    from safetensors.torch import load_file

    good = make_llava_model(tmp_path / "good")
    evil = tmp_path / "evil"
    shutil.copytree(good, evil)
    state = load_file(evil / "model.safetensors")
    (evil / "model.safetensors").unlink()
    marker = tmp_path / "pwned"
    state["lm_head.weight"] = _TouchOnUnpickle(marker)  # only running pickled code can build this
    with open(evil / "pytorch_model.bin", "wb") as f:
        torch.save(state, f, pickle_module=pickle)
    data = tmp_path / "data"
    real_photos(data, 1)
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONIOENCODING="utf-8")
    proc = subprocess.run([sys.executable, str(SCRIPT), str(data), "--model", str(evil), "--device", "cpu",
                           "--num-workers", "0", "--no-progress"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=150)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "pickled objects other than tensors, which are refused" in errors[0]
    assert not marker.exists()
    assert not list(data.glob("*.txt"))

