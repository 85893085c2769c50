"""With per-class calibration biases (``learning.calibration = "temperature_bias"``) a version may serve a
different class than its network's raw outputs pick. The gate, the rollback watch and every way the
learning loop gets a version (the registry, a publication, the journal, a rollback) judge the class
served."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.calibration import calibrate, cross_fitted, decision_shift, softmax
from model.network import WindowTransformer
from model.registry import ModelRegistry
from model.runtime import OnnxRunner
from model.spec import ModelSpec
from model.train import fit, publish_version, weights_bytes
from operators.learning import LearningLoop, _predictor, loop_from_registry, shift_of, with_shift
from operators.learning_state import AcceptedVersion, LoopJournal, RolledBack
from settings import LearningSettings

N = 240


class _Logits(torch.nn.Module):
    """A network whose logits are the first two values of a window (what it 'thinks' is put in the data)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0, :2]


def _windows(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two-class windows carrying two sets of logits: channels 0-1 favour class 0 by more than their signal
    (right about half the time raw, every time once a bias moves them), channels 2-3 are right 3 times in 4
    with no lean a bias could fix."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, N)
    X = np.zeros((N, 1, 4), np.float32)
    X[:, 0, 0] = 1.5 + (y == 0)
    X[:, 0, 1] = (y == 1)
    noisy = np.where(rng.random(N) < 0.25, 1 - y, y)
    X[:, 0, 2] = 2.0 * (noisy == 0)
    X[:, 0, 3] = 2.0 * (noisy == 1)
    return X, y


class _Right(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0, 2:4]


def _loop(calibration: str, candidate: torch.nn.Module, serving: torch.nn.Module) -> LearningLoop:
    spec = ModelSpec(window=1, channels=("a", "b", "c", "d"), classes=("x", "y"), d_model=8, n_heads=2, n_layers=1,
                     d_ff=16)
    loop = LearningLoop(WindowTransformer(spec), spec, 1, LearningSettings(calibration=calibration, min_holdout=30,
                                                                           gate_z=0.0))
    loop.trainer.net, loop.serving = candidate, serving
    X, y = _windows(1)
    for w, label in zip(X, y):
        loop.gate.hold_out(w, int(label))
    return loop


def _shift_fitted_on(net: torch.nn.Module, seed: int) -> np.ndarray:
    X, y = _windows(seed)
    logits = net(torch.as_tensor(X)).double().numpy()
    return decision_shift(calibrate(logits, y, "temperature_bias"), 2)


def test_the_gate_judges_the_class_a_version_serves_not_its_raw_outputs():
    # the version in service leans to class 0 raw (about 0.5) but its biases serve every class right: a candidate
    # right 3 times in 4 is worse than what serves, although its raw outputs beat serving's
    served = with_shift(_Logits(), _shift_fitted_on(_Logits(), seed=2))
    for calibration in ("temperature", "temperature_bias", "auto"):
        d = _loop(calibration, _Right(), served)._judge()
        assert d.serving_accuracy > 0.95 and 0.65 < d.candidate_accuracy < 0.85 and not d.accept, d.reason
    # the other way round: the candidate's biases would fix its lean; with them, it serves better than the
    # version in service (judged out of fold on the held-out windows), and is accepted
    X, y = _windows(1)
    expected = cross_fitted(X[:, 0, :2].astype(np.float64), y, bias=True).argmax(1) == y
    for calibration in ("temperature_bias", "auto"):  # "auto": the biases are chosen, as they would be on publish
        d = _loop(calibration, _Logits(), _Right())._judge()
        assert d.candidate_accuracy > 0.95 and d.accept, d.reason
        assert d.candidate_accuracy == pytest.approx(expected.mean())
    # without biases it would serve its raw outputs, and that is what the gate judges
    d = _loop("temperature", _Logits(), _Right())._judge()
    assert d.candidate_accuracy < 0.6 and not d.accept, d.reason


@pytest.fixture(scope="module")
def biased_registry(tmp_path_factory):
    """v1 and v2 of a 3-class model whose held-out windows moved towards class z, both published with
    per-class biases (v2 with v1 as parent)."""
    spec = ModelSpec(window=8, channels=("a", "b"), classes=("x", "y", "z"), d_model=16, n_heads=2, n_layers=1,
                     d_ff=32)
    rng = np.random.default_rng(1)

    def windows(n, lean):
        y = rng.integers(0, 3, n)
        X = rng.normal(0, 1.0, size=(n, 8, 2)).astype(np.float32)
        X[:, :, 0] += 0.8 * y[:, None] + lean
        return X, y

    X, y = windows(400, 0.0)
    Xh, yh = windows(600, 0.6)
    root = str(tmp_path_factory.mktemp("registry"))
    registry = ModelRegistry(root)
    torch.manual_seed(0)
    net = WindowTransformer(spec)
    net.set_normalisation(X)
    fit(net, X, y, epochs=40, lr=3e-3, batch_size=32)
    publish_version(registry, "m", net, spec, {}, calibration=(Xh, yh), calibration_mode="temperature_bias")
    fit(net, X, y, epochs=5, lr=3e-3, batch_size=32)
    publish_version(registry, "m", net, spec, {}, calibration=(Xh[::-1].copy(), yh[::-1].copy()), parent_version=1,
                    calibration_mode="temperature_bias")
    return registry, Xh


def _served_classes(registry: ModelRegistry, version: int, X: np.ndarray) -> np.ndarray:
    return OnnxRunner(registry.load("m", version).onnx_bytes).predict_proba(X).argmax(1)


def test_a_loop_from_the_registry_judges_serving_and_its_parent_by_the_classes_they_serve(biased_registry):
    registry, Xh = biased_registry
    loop = loop_from_registry(registry, "m", LearningSettings(calibration="temperature_bias"))
    assert loop.version == 2 and loop.serving.served_shift is not None and loop.parent_net.served_shift is not None
    raw = softmax(loop.serving(torch.as_tensor(Xh)).double().detach().numpy()).argmax(1)
    served = _served_classes(registry, 2, Xh)
    assert (raw != served).any(), "the biases change no class here: the test shows nothing"
    np.testing.assert_array_equal(_predictor(loop.serving)(Xh).argmax(1), served)
    np.testing.assert_array_equal(_predictor(loop.parent_net)(Xh).argmax(1), _served_classes(registry, 1, Xh))


def test_the_journal_and_a_rollback_keep_the_shift_of_each_version(biased_registry):
    registry, Xh = biased_registry
    fresh = lambda: loop_from_registry(registry, "m", LearningSettings(calibration="temperature_bias"))  # noqa: E731
    loop = fresh()
    v2 = loop.serving
    entries = [AcceptedVersion(3, weights_bytes(v2), shift_of(v2)), RolledBack(2, weights_bytes(v2), shift_of(v2))]
    restored = LoopJournal().restore(None, entries[:1], fresh)
    assert restored.version == 3 and shift_of(restored.serving) == shift_of(v2)
    assert shift_of(restored.parent_net) == shift_of(v2)  # v2, the version it replaced, is its rollback target
    restored = LoopJournal().restore(None, entries, fresh)
    assert restored.version == 2 and shift_of(restored.serving) == shift_of(v2)
    old = AcceptedVersion(3, weights_bytes(v2))  # an entry journaled before shifts: raw outputs, as then
    assert shift_of(LoopJournal().restore(None, [old], fresh).serving) is None
    np.testing.assert_array_equal(_predictor(restored.serving)(Xh).argmax(1), _served_classes(registry, 2, Xh))
