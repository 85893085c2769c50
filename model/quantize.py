"""INT8 versions of a model: ONNX Runtime's dynamic quantization (8-bit weights of the MatMul and
Gemm nodes, activations quantized on the fly), checked against the FP32 graph before it may serve.

>>> import numpy as np
>>> from model.export import export_onnx
>>> from model.network import WindowTransformer
>>> from model.spec import ModelSpec
>>> spec = ModelSpec(window=8, channels=("a", "b"), classes=("x", "y"), d_model=16, n_heads=2, n_layers=1, d_ff=32)
>>> fp32 = export_onnx(WindowTransformer(spec).eval(), spec)
>>> int8 = quantize_int8(fp32)
>>> check = agreement(fp32, int8, np.random.default_rng(0).normal(size=(40, 8, 2)).astype(np.float32))
>>> check.windows, check.top1 >= 0.9, check.max_prob_diff < 0.1
(40, True, True)
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass

import numpy as np

INT8_FILE = "model-int8.onnx"


def quantize_int8(onnx_bytes: bytes) -> bytes:
    """The dynamically quantized (INT8 weights) version of an ONNX graph (tied weights untied first,
    :func:`untie_initializers`)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.getLogger().disabled, was = True, logging.getLogger().disabled  # it logs a pre-processing hint
    try:
        with tempfile.TemporaryDirectory(prefix="quantize-") as folder:
            source, target = os.path.join(folder, "fp32.onnx"), os.path.join(folder, "int8.onnx")
            with open(source, "wb") as fh:
                fh.write(untie_initializers(onnx_bytes))
            quantize_dynamic(source, target, weight_type=QuantType.QInt8)
            with open(target, "rb") as fh:
                return fh.read()
    finally:
        logging.getLogger().disabled = was


def untie_initializers(onnx_bytes: bytes) -> bytes:
    """The graph with every ``Identity`` of a weight replaced by a copy of that weight under the
    Identity's output name. PyTorch's exporter stores equal parameters once and reads the others through
    ``Identity`` nodes (the layers of an untrained ``nn.TransformerEncoder`` are copies of one another);
    ONNX Runtime's quantizer then finds a ``Gemm`` whose weight is no initializer and writes a graph that
    does not load. A graph without such nodes comes back unchanged.

    >>> import onnx
    >>> from onnx import TensorProto, helper, numpy_helper
    >>> w = numpy_helper.from_array(np.eye(2, dtype=np.float32), "w")
    >>> graph = helper.make_graph(
    ...     [helper.make_node("Identity", ["w"], ["w2"]), helper.make_node("MatMul", ["x", "w"], ["h"]),
    ...      helper.make_node("MatMul", ["h", "w2"], ["y"])], "g",
    ...     [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
    ...     [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])], [w])
    >>> untied = onnx.load_from_string(untie_initializers(helper.make_model(graph).SerializeToString())).graph
    >>> [n.op_type for n in untied.node], sorted(i.name for i in untied.initializer)
    (['MatMul', 'MatMul'], ['w', 'w2'])
    """
    import onnx

    model = onnx.load_from_string(onnx_bytes)
    graph = model.graph
    weights = {init.name: init for init in graph.initializer}
    outputs = {o.name for o in graph.output}
    tied = [n for n in graph.node if n.op_type == "Identity" and n.input[0] in weights and n.output[0] not in outputs]
    if not tied:
        return onnx_bytes
    for node in tied:
        copy = onnx.TensorProto()
        copy.CopyFrom(weights[node.input[0]])
        copy.name = node.output[0]
        graph.initializer.append(copy)
        graph.node.remove(node)
    return model.SerializeToString()


@dataclass(frozen=True)
class Agreement:
    """How closely the INT8 graph follows the FP32 one on the same windows."""

    windows: int
    top1: float  # share of windows with the same predicted class
    max_prob_diff: float  # largest difference of any class probability

    def accepts(self, min_top1: float) -> bool:
        return self.windows > 0 and self.top1 >= min_top1


def agreement(fp32: bytes, int8: bytes, X: np.ndarray) -> Agreement:
    """Score ``X`` with both graphs (ONNX Runtime on the CPU)."""
    return compare(*(probabilities(graph, X) for graph in (fp32, int8)))


def probabilities(graph: bytes, X: np.ndarray) -> np.ndarray:
    """A graph's class probabilities for ``X`` (ONNX Runtime on the CPU, one thread)."""
    from model.runtime import OnnxRunner

    return OnnxRunner(graph, prefer="cpu", threads=1).predict_proba(X)


def compare(fp32: np.ndarray, int8: np.ndarray) -> Agreement:
    """How closely one set of class probabilities follows another on the same windows."""
    return Agreement(len(fp32), float((fp32.argmax(1) == int8.argmax(1)).mean()), float(np.abs(fp32 - int8).max()))
