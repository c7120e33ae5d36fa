"""Legacy TensorFlow SavedModel taggers (WD v2), run in a child process so TensorFlow never loads beside torch."""

# TensorFlow and triton (which torch._dynamo, and so transformers, imports on CUDA builds of torch) each carry their
# own LLVM: `import tensorflow` followed by `import triton` in one process aborts ("LLVM ERROR: inconsistency in
# registered CommandLine options") or segfaults. The caller's process therefore never imports TensorFlow: a child
# process (`python -m library.backends.tf_savedmodel`) loads the model with tf.saved_model.load (no Keras 3) and
# answers batches over a pipe.

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np

from library.errors import FatalError

NOT_INSTALLED = ("holds a TensorFlow SavedModel but TensorFlow is not installed: use the model.onnx of the same "
                 "repository (the default), or pip install tensorflow-cpu")


class SavedModelRunner:
    """Runs a WD SavedModel through its serving signature in a child process: NHWC float32 BGR in, probabilities out.

    Args:
        folder: the SavedModel folder (saved_model.pb and variables/).
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        root = str(Path(__file__).resolve().parents[2])  # this checkout, first: sd-scripts' `library` must not win
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        self._lock = threading.Lock()
        self._proc = subprocess.Popen([sys.executable, "-m", "library.backends.tf_savedmodel"], cwd=root, env=env,
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        info = self._call("load", str(self.folder))
        self.input_shape = info["input_shape"]
        self.output_name = info["output_name"]

    def run(self, x: np.ndarray) -> np.ndarray:
        return self._call("run", np.ascontiguousarray(x, dtype=np.float32))

    def close(self) -> None:
        proc, self._proc = getattr(self, "_proc", None), None
        if proc is None:
            return
        try:
            proc.stdin.close()  # the child leaves its loop at end of input
            proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()
        proc.stdout.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    def _call(self, op: str, arg):
        with self._lock:
            if self._proc is None:
                raise FatalError(f"{self.folder}: the TensorFlow process was closed")
            try:
                pickle.dump((op, arg), self._proc.stdin, protocol=pickle.HIGHEST_PROTOCOL)
                self._proc.stdin.flush()
                status, value = pickle.load(self._proc.stdout)
            except (OSError, EOFError, pickle.UnpicklingError):
                try:
                    code = self._proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    code = None
                self.close()
                raise FatalError(f"{self.folder}: the TensorFlow process ended unexpectedly (exit code {code}); "
                                 "its messages are above") from None
        if status == "fatal":
            self.close()
            raise FatalError(f"{self.folder} {value}" if value == NOT_INSTALLED else f"{self.folder}: {value}")
        if status == "error":  # this batch failed; the model stays loaded
            raise RuntimeError(f"TensorFlow: {value}")
        return value


class _SavedModel:
    """The child's side: the loaded model and its serving signature."""

    def __init__(self, folder: str):
        import tensorflow as tf

        self.tf = tf
        # tf.keras.models.load_model fails on SavedModels under Keras 3; the low-level loader does not
        self.loaded = tf.saved_model.load(folder)
        if "serving_default" not in self.loaded.signatures:
            raise ValueError("the SavedModel has no serving_default signature")
        self.fn = self.loaded.signatures["serving_default"]
        _, kwargs = self.fn.structured_input_signature
        if len(kwargs) != 1:
            raise ValueError(f"expected one image input, found {list(kwargs)}")
        (self.input_name, spec), = kwargs.items()
        self.input_shape = list(spec.shape.as_list())
        self.output_name = sorted(self.fn.structured_outputs)[0]

    def run(self, x: np.ndarray) -> np.ndarray:
        out = self.fn(**{self.input_name: self.tf.constant(x, dtype=self.tf.float32)})
        return out[self.output_name].numpy()


def _serve() -> None:
    """Answer ('load', folder) and ('run', batch) requests from stdin on stdout until stdin closes."""
    requests, replies = sys.stdin.buffer, os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything TensorFlow prints goes to stderr, never into the reply stream
    model = None
    while True:
        try:
            op, arg = pickle.load(requests)
        except EOFError:
            return
        try:
            if op == "load":
                try:
                    model = _SavedModel(arg)
                except ImportError:
                    reply = ("fatal", NOT_INSTALLED)
                else:
                    reply = ("ok", {"input_shape": model.input_shape, "output_name": model.output_name})
            else:
                reply = ("ok", model.run(arg))
        except Exception as exc:  # noqa: BLE001 - every failure goes back to the caller as one line
            reply = ("fatal" if op == "load" else "error", f"{type(exc).__name__}: {exc}".splitlines()[0])
        pickle.dump(reply, replies, protocol=pickle.HIGHEST_PROTOCOL)
        replies.flush()


if __name__ == "__main__":
    _serve()
