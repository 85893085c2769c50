"""The LDA output layer (``learning.head = "lda"``): it starts from the statistics stored with a version,
learns from each label in closed form, publishes its statistics with each version, and survives
pickling (Flink state) and a new class."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from model.datasets import load_basic_motions, sliding_windows
from model.registry import ModelRegistry
from model.slda import LDA_FILE, StreamingLDA
from model.train import accuracy, encode_labels, predict_proba
from operators.label_join import LabeledWindow
from operators.learning import VersionPublisher, loop_from_registry
from schemas import Topics
from settings import LearningSettings
from tests.unit.test_new_classes import three_class_registry

NAME = "basic-motions"


def drifted(seed: int):
    """BasicMotions test windows with a +4.0 bias on the gyroscopes (the learning e2e test's), shuffled."""
    X, labels = sliding_windows(load_basic_motions("test"), 32, 4)
    X = X.copy()
    X[:, :, 3:] += 4.0
    order = np.random.default_rng(seed).permutation(len(X))
    return X[order], labels[order]


def test_the_lda_head_starts_from_the_version_and_learns_a_drift_from_few_labels(registry_copy):
    registry = ModelRegistry(registry_copy)
    v1 = registry.latest_metadata(NAME)
    assert LDA_FILE in v1.artifacts  # bootstrap stored its encoder's statistics on the training windows
    config = LearningSettings(head="lda", gate_every=32, lda_decay=0.01, holdout_every=3, min_holdout=20,
                              calibration="temperature_bias")
    loop = loop_from_registry(registry, NAME, config)
    assert loop.trainer.lda.counts.sum() == v1.data_seen
    classes = loop.spec.classes
    Xc, yc = sliding_windows(load_basic_motions("test"), 32, 8)
    assert accuracy(predict_proba(loop.trainer.net, Xc), encode_labels(yc, classes)) > 0.9  # as good as v1 clean
    X, labels = drifted(0)
    Xt, yt = X[:300], encode_labels(labels[:300], classes)
    before = accuracy(predict_proba(loop.trainer.net, Xt), yt)
    publisher = VersionPublisher(registry, NAME, Topics())
    published = []
    for i, (w, label) in enumerate(zip(X[300:], labels[300:])):  # 380 labeled drifted windows
        learned = publisher.learn(loop, LabeledWindow(f"d:{i}", "d", w, str(label), "x", loop.version, ["a"], i),
                                  i)
        if learned.accepted:
            published.append(learned.accepted[0])
    after = accuracy(predict_proba(loop.trainer.net, Xt), yt)
    assert after > before + 0.1, (before, after)
    assert published, "no version passed the gate"
    newest = registry.latest_metadata(NAME)
    assert LDA_FILE in newest.artifacts and newest.version == published[-1]
    assert {f"calibration_bias_{i}" for i in range(len(classes))} <= set(newest.metrics)  # learning.calibration
    again = loop_from_registry(registry, NAME, config)  # a restart from the registry continues the statistics
    stored = StreamingLDA.from_bytes(registry.extra_artifact(NAME, newest.version, LDA_FILE))
    assert np.allclose(again.trainer.lda.means, stored.means) and again.trainer.lda.seen == pytest.approx(stored.seen)
    restored = pickle.loads(pickle.dumps(loop))  # Flink keyed state
    assert np.allclose(predict_proba(restored.trainer.net, Xt[:16]), predict_proba(loop.trainer.net, Xt[:16]))


def test_a_new_class_is_learned_by_the_lda_head_from_a_few_labels(tmp_path):
    registry = three_class_registry(str(tmp_path / "registry"), NAME)  # v1 never saw walking
    loop = loop_from_registry(registry, NAME, LearningSettings(head="lda", gate_every=10**6))
    X, labels = sliding_windows(load_basic_motions("test"), 32, 8)
    walking = np.flatnonzero(labels == "walking")
    for i in walking[:16]:
        loop.learn(LabeledWindow(f"d:{i}", "d", X[i], "walking", "running", 1, ["a"], int(i)))
    loop.trainer.update()
    assert loop.spec.classes[-1] == "walking"
    names = np.asarray(loop.spec.classes)[predict_proba(loop.trainer.net, X).argmax(1)]
    recall = (names[walking[16:]] == "walking").mean()
    others = labels != "walking"
    kept = (names[others] == labels[others]).mean()
    assert recall > 0.7 and kept > 0.85, (recall, kept)
