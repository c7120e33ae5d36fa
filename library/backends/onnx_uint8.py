"""uint8 copies of ONNX image models: the graph takes NHWC uint8 RGB and does cast, channel order and scaling itself.

The decode workers already ship uint8 RGB; with such a copy the main process hands that batch to ONNX Runtime as
is, so no float32 array is built on the CPU (4x less memory traffic, and the conversion runs on the GPU when the
model does). The ops are the numpy reference's, in the same order, so the model sees bit-identical floats.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from library.backends.onnx_fp16 import is_current
from library.files.sidecars import atomic_write

logger = logging.getLogger(__name__)

UINT8_SUFFIX = "_u8"


@dataclass(frozen=True)
class InputSpec:
    """How a model's float input is made from NHWC uint8 RGB, as the numpy reference does it.

    Attributes:
        bgr: reverse the channels (RGB -> BGR).
        nchw: transpose to NCHW after the channel order.
        ops: elementwise steps in order, each ('div' | 'sub' | 'mul' | 'add', value or per-channel values).
    """

    bgr: bool = False
    nchw: bool = False
    ops: tuple[tuple[str, float | tuple[float, ...]], ...] = ()

    def tag(self) -> str:
        """A short stable name of the spec, part of the cached file name (a different spec is another file)."""
        import hashlib

        return hashlib.sha1(repr(self).encode()).hexdigest()[:8]


def uint8_path(model_path: str | os.PathLike, spec: InputSpec) -> Path:
    model_path = Path(model_path)
    return model_path.with_name(f"{model_path.stem}{UINT8_SUFFIX}_{spec.tag()}{model_path.suffix}")


def add_uint8_input(model, spec: InputSpec):
    """Rewrite an onnx ModelProto in place: its first input becomes NHWC uint8 RGB followed by the spec's ops."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    old = graph.input[0]
    dims = [d for d in old.type.tensor_type.shape.dim]
    shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in dims]
    if len(shape) != 4:
        raise ValueError(f"the model's input {old.name} has {len(shape)} dimensions, not 4")
    nhwc = [shape[0], shape[2], shape[3], shape[1]] if spec.nchw else shape
    name = old.name
    internal = name + "__float"
    for node in graph.node:
        node.input[:] = [internal if i == name else i for i in node.input]
    new_input = helper.make_tensor_value_info(name, TensorProto.UINT8, nhwc)
    graph.input.remove(old)
    graph.input.insert(0, new_input)
    nodes, current = [], name

    def step(op: str, inputs: list[str], **attrs) -> None:
        nonlocal current
        out = f"{name}__u8_{len(nodes)}"
        nodes.append(helper.make_node(op, inputs, [out], **attrs))
        current = out

    def const(value) -> str:
        arr = np.asarray(value, dtype=np.float32)
        if arr.ndim == 1:  # per channel: broadcast over the channel axis
            arr = arr.reshape((1, 3, 1, 1) if spec.nchw else (1, 1, 1, 3))
        cname = f"{name}__u8_c{len(graph.initializer)}"
        graph.initializer.append(numpy_helper.from_array(arr, cname))
        return cname

    step("Cast", [current], to=TensorProto.FLOAT)
    if spec.bgr:
        idx = f"{name}__u8_bgr"
        graph.initializer.append(numpy_helper.from_array(np.array([2, 1, 0], dtype=np.int64), idx))
        step("Gather", [current, idx], axis=3)
    if spec.nchw:
        step("Transpose", [current], perm=[0, 3, 1, 2])
    ops = {"div": "Div", "sub": "Sub", "mul": "Mul", "add": "Add"}
    for op, value in spec.ops:
        step(ops[op], [current, const(value)])
    nodes[-1].output[0] = internal
    for i, node in enumerate(nodes):
        graph.node.insert(i, node)
    return model


def uint8_model(model_path: str | os.PathLike, spec: InputSpec) -> Path | None:
    """The uint8-input copy of `model_path` for `spec`, converted once and cached beside it (redone when older).

    None when it cannot be made (no onnx package, a read-only model folder, an unusual graph): the caller then
    converts on the CPU as before, with the same results.
    """
    model_path = Path(model_path)
    converted = uint8_path(model_path, spec)
    if is_current(model_path, converted):
        return converted
    try:
        import onnx
    except ImportError:
        logger.info("the onnx package is not installed: images are converted to float32 on the CPU "
                    "(pip install onnx lets the model take uint8 directly)")
        return None
    try:
        model = add_uint8_input(onnx.load(str(model_path)), spec)
        data = model.SerializeToString()
        atomic_write(converted, lambda tmp: Path(tmp).write_bytes(data))
    except Exception as exc:  # noqa: BLE001 - damaged file, odd graph, read-only folder: the float path still works
        logger.info("cannot make a uint8-input copy of %s (%s): converting on the CPU", model_path.name, exc)
        return None
    logger.info("made %s (takes uint8 RGB; cached)", converted.name)
    return converted
