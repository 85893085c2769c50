"""``patch``: the encoder reads ``patch`` consecutive samples (all channels) as one token."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from model.export import export_onnx
from model.network import WindowTransformer
from model.online import OnlineTrainer
from model.quantize import quantize_int8
from model.registry import ModelRegistry
from model.runtime import OnnxRunner
from model.spec import ModelSpec
from model.train import publish_version
from operators.serving_model import load_from_registry
from settings import LearningSettings
from settings.models import ModelDeclaration

SPEC = ModelSpec(window=16, channels=("a", "b"), classes=("calm", "shaky"), d_model=16, n_heads=2, n_layers=1,
                 d_ff=32, dropout=0.0, patch=4)


def noisy(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two classes that differ only in how much channel a shakes."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    X = rng.normal(size=(n, SPEC.window, 2)).astype(np.float32) * np.where(y, 2.0, 0.5)[:, None, None]
    return X.astype(np.float32), y


def test_a_token_is_consecutive_samples_side_by_side():
    """Token t holds samples 4t..4t+3, each with every channel, in time order: moving one sample to another
    token changes the features, swapping two channels' places inside every token's layout does too."""
    torch.manual_seed(0)
    net = WindowTransformer(SPEC).eval()
    x = torch.randn(3, SPEC.window, 2)
    tokens = torch.stack([torch.cat([x[:, 4 * t + i] for i in range(4)], dim=1) for t in range(SPEC.tokens)], 1)
    with torch.no_grad():
        want = net.norm(net.encoder(net.embed(tokens) + net.position).mean(dim=1))
        assert torch.allclose(net.encode(x), want, atol=1e-6)
        assert net.embed.in_features == 8 and tuple(net.position.shape) == (1, 4, 16)


@settings(max_examples=12, deadline=None, derandomize=True)
@given(batch=st.integers(1, 40), patch=st.sampled_from([2, 4, 8, 16]), seed=st.integers(0, 2**16))
def test_the_exported_graph_gives_the_networks_outputs_for_any_batch(batch, patch, seed):
    spec = replace(SPEC, patch=patch, tasks=("classify", "anomaly", "forecast"), horizon=2)
    torch.manual_seed(seed)
    net = WindowTransformer(spec).eval()
    X = np.random.default_rng(seed).normal(size=(batch, spec.window, 2)).astype(np.float32)
    got = OnnxRunner(export_onnx(net, spec)).predict(X)
    with torch.inference_mode():
        x = torch.as_tensor(X)
        assert np.abs(got["probabilities"] - torch.softmax(net(x), -1).numpy()).max() < 1e-5
        assert np.abs(got["forecast"] - net.forecast(x).numpy()).max() < 1e-4
        assert got["anomaly"].shape == (batch,)


def test_a_patched_model_learns_online_and_quantizes():
    torch.manual_seed(0)
    net = WindowTransformer(SPEC)
    X, y = noisy(256, seed=1)
    net.set_normalisation(X)
    trainer = OnlineTrainer(net, 2, LearningSettings(batch_size=16))
    for _ in range(4):
        for window, label in zip(X, y):
            trainer.learn_one(window, int(label))
    Xt, yt = noisy(200, seed=2)
    with torch.inference_mode():
        accuracy = float((net.eval()(torch.as_tensor(Xt)).argmax(-1).numpy() == yt).mean())
    assert accuracy > 0.9, accuracy
    fp32 = export_onnx(net, SPEC)
    int8 = OnnxRunner(quantize_int8(fp32)).predict(Xt)["probabilities"]
    assert (int8.argmax(-1) == OnnxRunner(fp32).predict(Xt)["probabilities"].argmax(-1)).mean() > 0.95


def test_a_published_patched_version_is_served_from_the_registry(tmp_path):
    torch.manual_seed(0)
    net = WindowTransformer(SPEC)
    X, y = noisy(64, seed=3)
    net.set_normalisation(X)
    publish_version(ModelRegistry(tmp_path), "shakes", net, SPEC, {})
    served = load_from_registry(str(tmp_path), "shakes")
    assert served.spec.patch == 4 and served.spec.tokens == 4
    with torch.inference_mode():
        want = torch.softmax(net.eval()(torch.as_tensor(X)), -1).numpy()
    assert np.abs(served.runner.predict(X)["probabilities"] - want).max() < 1e-5


def test_the_declaration_key_reaches_the_spec_and_wrong_values_are_named():
    table = {"channels": ["a", "b"], "classes": ["calm", "shaky"], "sample_rate_hz": 10, "window": 16, "stride": 4,
             "patch": 4}
    declared = ModelDeclaration.from_table("shakes", table)
    spec = ModelSpec.from_dict(declared.spec_dict())
    assert spec.patch == 4 and spec.tokens == 4 and declared.to_table()["patch"] == 4
    assert "patch" not in ModelDeclaration.from_table("shakes", {**table, "patch": 1}).to_table()
    old = {k: v for k, v in declared.spec_dict().items() if k != "patch"}  # a version from before the key
    assert ModelSpec.from_dict(old).patch == 1
    with pytest.raises(ValueError, match=r"patch: 5 samples per token does not divide the window \(16 samples\)"):
        ModelDeclaration.from_table("shakes", {**table, "patch": 5})
    for wrong in (0, True, "4", 2.0):
        with pytest.raises(ValueError, match="patch: expected a positive integer"):
            ModelDeclaration.from_table("shakes", {**table, "patch": wrong})
