"""Legacy TensorFlow SavedModel taggers (WD v2), loaded with tf.saved_model.load so Keras 3 is not involved."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from library.errors import FatalError

logger = logging.getLogger(__name__)


class SavedModelRunner:
    """Runs a WD SavedModel through its serving signature: NHWC float32 BGR in, probabilities out.

    Args:
        folder: the SavedModel folder (saved_model.pb and variables/).
    """

    def __init__(self, folder: str | os.PathLike):
        try:
            os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
            import tensorflow as tf
        except ImportError:
            raise FatalError(f"{folder} holds a TensorFlow SavedModel but TensorFlow is not installed: use the "
                             "model.onnx of the same repository (the default), or pip install tensorflow-cpu") from None
        self._tf = tf
        self.folder = Path(folder)
        # tf.keras.models.load_model fails on SavedModels under Keras 3; the low-level loader does not
        loaded = tf.saved_model.load(str(self.folder))
        self._keep = loaded
        if "serving_default" not in loaded.signatures:
            raise FatalError(f"{self.folder}: the SavedModel has no serving_default signature")
        self.fn = loaded.signatures["serving_default"]
        _, kwargs = self.fn.structured_input_signature
        if len(kwargs) != 1:
            raise FatalError(f"{self.folder}: expected one image input, found {list(kwargs)}")
        (self.input_name, spec), = kwargs.items()
        self.input_shape = [d if d is not None else None for d in spec.shape.as_list()]
        self.output_name = sorted(self.fn.structured_outputs)[0]

    def run(self, x: np.ndarray) -> np.ndarray:
        out = self.fn(**{self.input_name: self._tf.constant(x, dtype=self._tf.float32)})
        return out[self.output_name].numpy()
