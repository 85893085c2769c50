"""Export a trained classifier to a self-contained ONNX file with a dynamic batch axis."""

from __future__ import annotations

import io
import warnings

import torch
from torch import nn

from model.network import ProbabilityModel
from model.spec import ModelSpec


def export_onnx(net: nn.Module, spec: ModelSpec) -> bytes:
    """Return ONNX bytes of ``softmax(net(x))`` for ``x: float32[batch, window, channels]``."""
    was_training = net.training
    net.eval()
    wrapped = ProbabilityModel(net).eval()
    example = torch.zeros(2, spec.window, spec.n_channels)
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            wrapped,
            (example,),
            dynamo=True,
            input_names=["window"],
            output_names=["probabilities"],
            dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=65536)}},
            external_data=False,
            verbose=False,
        )
        program.save(buf, external_data=False) if hasattr(program, "save") else None
    net.train(was_training)
    data = buf.getvalue()
    if not data:
        raise RuntimeError("ONNX export produced no bytes")
    return data
