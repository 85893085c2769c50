"""``summary_features``: the classify head also reads each channel's mean, deviation, minimum and maximum."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from model.export import export_onnx
from model.network import WindowTransformer, window_summary
from model.online import OnlineTrainer
from model.runtime import OnnxRunner
from model.spec import ModelSpec
from settings import LearningSettings
from settings.models import ModelDeclaration

SPEC = ModelSpec(window=16, channels=("a", "b"), classes=("calm", "shaky"), d_model=16, n_heads=2, n_layers=1,
                 d_ff=32, dropout=0.0)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(arrays(np.float32, st.tuples(st.integers(1, 4), st.integers(1, 12), st.integers(1, 3)),
              elements=st.floats(-1e3, 1e3, width=32)))
def test_the_summary_is_each_channels_mean_deviation_minimum_and_maximum(windows):
    got = window_summary(torch.as_tensor(windows)).numpy()
    want = np.concatenate([windows.mean(1), windows.std(1), windows.min(1), windows.max(1)], axis=1)
    assert got.shape == (len(windows), 4 * windows.shape[2])
    assert np.allclose(got, want, rtol=1e-4, atol=1e-3)


def noisy(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two classes with the same mean and shape that differ only in how much channel a shakes."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    X = rng.normal(size=(n, SPEC.window, 2)).astype(np.float32) * np.where(y, 2.0, 0.5)[:, None, None]
    X[:, :, 1] = 1.0  # a still channel: no deviation, and a finite gradient all the same
    return X.astype(np.float32), y


def lda_accuracy(summary: bool) -> float:
    """An encoder blind to its input (embedding weights zero: every window's features are the same) with the
    LDA head learned on what the classify head reads: only the window summary can tell the classes apart."""
    torch.manual_seed(0)
    spec = replace(SPEC, summary_features=summary)
    net = WindowTransformer(spec)
    with torch.no_grad():
        net.embed.weight.zero_()
    X, y = noisy(400, seed=1)
    net.set_normalisation(X)
    trainer = OnlineTrainer(net, 2, LearningSettings(head="lda", batch_size=8))
    trainer.warm_start(X, y)
    Xt, yt = noisy(200, seed=2)
    with torch.inference_mode():
        return float((net.eval()(torch.as_tensor(Xt)).argmax(-1).numpy() == yt).mean())


def test_the_lda_head_reads_the_summary():
    with_summary, without = lda_accuracy(True), lda_accuracy(False)
    assert with_summary > 0.95 and without < 0.65, (with_summary, without)


@pytest.mark.parametrize("tasks", [("classify",), ("classify", "anomaly")])
def test_a_model_with_the_summary_exports_the_same_probabilities_and_learns_with_a_still_channel(tasks):
    spec = replace(SPEC, tasks=tasks, summary_features=True)
    torch.manual_seed(0)
    net = WindowTransformer(spec)
    X, y = noisy(64, seed=3)
    net.set_normalisation(X)
    assert net.head.in_features == spec.d_model + 4 * spec.n_channels == spec.class_features
    loss = torch.nn.functional.cross_entropy(net.train()(torch.as_tensor(X)), torch.as_tensor(y))
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)
    runner = OnnxRunner(export_onnx(net, spec))
    with torch.inference_mode():
        want = torch.softmax(net.eval()(torch.as_tensor(X)), -1).numpy()
    assert np.abs(runner.predict(X)["probabilities"] - want).max() < 1e-5
    assert net.add_classes(["frozen"]) == ["frozen"] and net.head.in_features == spec.class_features


def test_the_declaration_key_reaches_the_spec_and_a_wrong_value_is_named():
    table = {"channels": ["a", "b"], "classes": ["calm", "shaky"], "sample_rate_hz": 10, "window": 16, "stride": 4,
             "summary_features": True}
    declared = ModelDeclaration.from_table("shakes", table)
    spec = ModelSpec.from_dict(declared.spec_dict())
    assert spec.summary_features and declared.to_table()["summary_features"] is True
    assert not ModelSpec.from_dict({**declared.spec_dict(), "summary_features": False}).summary_features
    old = {k: v for k, v in declared.spec_dict().items() if k != "summary_features"}  # a version from before
    assert not ModelSpec.from_dict(old).summary_features
    with pytest.raises(ValueError, match="summary_features: expected true or false"):
        ModelDeclaration.from_table("shakes", {**table, "summary_features": "yes"})
