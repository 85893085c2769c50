"""A class the model does not have, named by labelers: the learning loop grows the model, the gate lets a
version with it through, serving loads that version and predicts the class, the old classes are kept,
and rollbacks and journal restores across the growth work."""

from __future__ import annotations

import pickle

import numpy as np
import torch

from model.datasets import load_basic_motions, sliding_windows
from model.network import WindowTransformer
from model.registry import ModelRegistry
from model.spec import ModelSpec
from model.train import encode_labels, fit, lda_of, publish_version
from operators.label_join import LabeledWindow
from operators.learning import VersionPublisher, loop_from_registry
from operators.learning_state import AcceptedVersion, LoopJournal, RolledBack
from operators.serving_model import load_from_registry
from schemas import Topics
from settings import LearningSettings

OLD = ("badminton", "running", "standing")
SPEC = ModelSpec(window=32, classes=OLD, d_model=32, n_heads=4, n_layers=1, d_ff=64, dropout=0.0)


def three_class_registry(root: str, name: str = "motions") -> ModelRegistry:
    """v1 of ``name``: trained on BasicMotions without its ``walking`` recordings."""
    X, y = sliding_windows(load_basic_motions("train"), 32, 8)
    keep = y != "walking"
    torch.manual_seed(0)
    net = WindowTransformer(SPEC)
    net.set_normalisation(X[keep])
    fit(net, X[keep], encode_labels(y[keep], OLD), epochs=15, seed=0)
    registry = ModelRegistry(root)
    publish_version(registry, name, net, SPEC, {}, note="three classes", lda=lda_of(net, X[keep], encode_labels(y[keep], OLD)))
    return registry


def test_a_class_named_by_labelers_is_learned_served_and_kept_through_rollback_and_restore(tmp_path):
    registry = three_class_registry(str(tmp_path / "registry"))
    config = LearningSettings(gate_every=32, lr=2e-3, distill_strength=1.0)
    loop = loop_from_registry(registry, "motions", config)
    at_start = pickle.dumps(loop)
    publisher = VersionPublisher(registry, "motions", Topics())
    X, y = sliding_windows(load_basic_motions("test"), 32, 8)
    order = np.random.default_rng(0).permutation(len(y))
    stream = [(X[i], str(y[i])) for i in np.concatenate([order, order])]
    journal, grown_version = [], None
    for i, (window, label) in enumerate(stream):
        item = LabeledWindow(f"d:{i}", "d", window, label, "badminton", loop.version, ["ann"], i)
        learned = publisher.learn(loop, item, i)
        journal.append(item)
        if learned.accepted is not None:
            journal.append(AcceptedVersion(*learned.accepted))
            grown_version = grown_version or learned.accepted[0]
    assert loop.new_classes == ["walking"] and loop.spec.classes == (*OLD, "walking")
    assert grown_version is not None, "no version with the new class passed the gate"
    served = load_from_registry(registry.root, "motions")  # the newest version, through ONNX as serving loads it
    assert served.spec.classes == (*OLD, "walking")
    Xt, yt = sliding_windows(load_basic_motions("test"), 32, 16)
    predicted = np.asarray(served.spec.classes)[served.runner.predict_proba(Xt).argmax(1)]
    per_class = {c: float((predicted[yt == c] == c).mean()) for c in (*OLD, "walking")}
    assert per_class["walking"] > 0.8 and min(per_class[c] for c in OLD) > 0.6, per_class
    v1 = load_from_registry(registry.root, "motions", 1)
    assert v1.spec.classes == OLD  # the old version is untouched and still loads

    rolled = publisher._roll_back(loop, type("R", (), {"to_version": 1, "version": loop.version,
                                                       "reason": "test"})())[1]
    assert rolled is not None and loop.version == 1
    assert loop.trainer.net.spec.classes == (*OLD, "walking")  # the learner keeps the class it learned
    journal.append(RolledBack(*rolled))
    restored = LoopJournal().restore(None, journal, lambda: pickle.loads(at_start))
    assert restored.version == 1 and restored.spec.classes == (*OLD, "walking")
    with torch.inference_mode():
        same = torch.allclose(restored.trainer.net(torch.as_tensor(Xt[:8])), loop.trainer.net(torch.as_tensor(Xt[:8])),
                              atol=1e-4)
    assert same
