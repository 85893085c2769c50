"""The export writes the encoder as ``FlatEncoder`` computes it: the same numbers as ``nn.TransformerEncoder``,
a graph without shape arithmetic, and the network left as it was."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import numpy as np
import onnx
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from model.export import export_onnx
from model.flat_encoder import FlatEncoder
from model.network import WindowTransformer
from model.runtime import OnnxRunner
from model.spec import ModelSpec

SPEC = ModelSpec(window=16, channels=("a", "b", "c"), classes=("x", "y", "z"), d_model=16, n_heads=2, n_layers=2,
                 d_ff=32, dropout=0.1, patch=4)


@settings(max_examples=25, deadline=None, derandomize=True)
@given(heads=st.sampled_from([1, 2, 4]), head_width=st.sampled_from([2, 8]), layers=st.integers(1, 3),
       tokens=st.integers(1, 9), batch=st.integers(1, 6), norm_first=st.booleans(),
       activation=st.sampled_from(["relu", "gelu"]), final_norm=st.booleans(), seed=st.integers(0, 2**16))
def test_the_flat_encoder_computes_what_the_torch_encoder_does(heads, head_width, layers, tokens, batch, norm_first,
                                                                activation, final_norm, seed):
    torch.manual_seed(seed)
    width = heads * head_width
    layer = nn.TransformerEncoderLayer(width, heads, 2 * width, 0.3, activation=activation, batch_first=True,
                                       norm_first=norm_first)
    encoder = nn.TransformerEncoder(layer, layers, norm=nn.LayerNorm(width) if final_norm else None,
                                    enable_nested_tensor=False).eval()
    x = torch.randn(batch, tokens, width) * 3
    with torch.no_grad():
        want, got = encoder(x), FlatEncoder(encoder, tokens)(x)
    assert got.shape == want.shape
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()


def test_the_exported_graph_has_no_shape_arithmetic_and_one_gemm_per_linear_layer():
    net = WindowTransformer(SPEC)
    flat = Counter(node.op_type for node in onnx.load_from_string(export_onnx(net, SPEC)).graph.node)
    nested = Counter(node.op_type for node in
                     onnx.load_from_string(export_onnx(net, SPEC, flat_encoder=False)).graph.node)
    assert nested["Shape"] > 0  # what the flat encoder removes is there without it
    assert flat["Shape"] == flat["Concat"] == flat["Unsqueeze"] == 0, flat
    # per layer: input projection, output projection, two feed-forward layers; then the classify head
    assert flat["Gemm"] == 4 * SPEC.n_layers + 1, flat
    assert sum(flat.values()) < sum(nested.values()) / 2, (flat, nested)


@pytest.mark.parametrize("tasks", [("classify",), ("classify", "anomaly", "forecast")])
def test_both_graphs_give_the_same_outputs_and_the_network_keeps_its_encoder(tasks):
    spec = replace(SPEC, tasks=tasks, horizon=2 if "forecast" in tasks else 0)
    torch.manual_seed(1)
    net = WindowTransformer(spec).train()
    encoder = net.encoder
    X = np.random.default_rng(1).normal(size=(11, spec.window, 3)).astype(np.float32)
    flat, nested = (OnnxRunner(export_onnx(net, spec, flat_encoder=f)).predict(X) for f in (True, False))
    assert net.encoder is encoder and net.training  # put back as it was, in training mode
    assert isinstance(encoder, nn.TransformerEncoder)
    for name in nested:
        np.testing.assert_allclose(flat[name], nested[name], atol=1e-5, err_msg=name)


def test_a_layer_it_cannot_flatten_is_refused_by_name():
    layer = nn.TransformerEncoderLayer(8, 2, 16, batch_first=False)
    with pytest.raises(ValueError, match="batch-first"):
        FlatEncoder(nn.TransformerEncoder(layer, 1, enable_nested_tensor=False), tokens=4)


def test_its_fp16_graph_loads_and_agrees_on_the_cpu():
    """``bench/gpu_bench.py`` converts the export to FP16 for the CUDA provider; the converted flat graph loads and
    scores on the CPU provider too (the nested graph's FP16 conversion crashed ONNX Runtime's CPU session here),
    within FP16's precision of the FP32 graph."""
    from bench.gpu_bench import fp16

    torch.manual_seed(2)
    fp32 = export_onnx(WindowTransformer(SPEC), SPEC)
    X = np.random.default_rng(2).normal(size=(9, SPEC.window, 3)).astype(np.float32)
    half = OnnxRunner(fp16(fp32)).predict_proba(X)
    assert half.dtype == np.float32 and half.shape == (9, 3)
    np.testing.assert_allclose(half, OnnxRunner(fp32).predict_proba(X), atol=1e-2)
