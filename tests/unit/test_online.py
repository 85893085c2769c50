import pickle

import numpy as np
import pytest
import torch

from model.network import WindowTransformer
from model.online import EWC, OnlineTrainer, ReplayReservoir
from settings import LearningSettings
from model.spec import ModelSpec
from model.train import accuracy, fit, predict_proba

SPEC = ModelSpec(window=8, channels=("a", "b"), classes=("c0", "c1", "c2"), d_model=16, n_heads=2, n_layers=1,
                 d_ff=32, dropout=0.0)


def task(classes, n, seed):
    """Class k is a level of 2k on channel 0 plus noise."""
    rng = np.random.default_rng(seed)
    y = rng.choice(classes, n)
    X = rng.normal(0, 0.5, size=(n, SPEC.window, SPEC.n_channels)).astype(np.float32)
    X[:, :, 0] += 2.0 * y[:, None]
    return X, y.astype(np.int64)


def test_reservoir_is_uniform_and_bounded():
    counts = np.zeros(1000)
    for seed in range(200):
        r = ReplayReservoir(capacity=10, seed=seed)
        for i in range(1000):
            r.add(np.array([i], np.float32), 0)
        _, _ = r.all()
        for w, _ in r.items[0]:
            counts[int(w[0])] += 1
    assert len(r) == 10 and r.seen == 1000
    first, last = counts[:500].sum(), counts[500:].sum()
    assert 0.8 < first / last < 1.25  # early and late windows are kept alike


def test_class_balanced_reservoir_keeps_rare_classes():
    r = ReplayReservoir(capacity=30, per_class=True, n_classes=3, seed=0)
    for i in range(3000):
        r.add(np.zeros(1, np.float32), 0 if i % 100 else 2)  # class 2 is 1 % of the stream
    _, y = r.all()
    assert (y == 2).sum() == 10 and (y == 0).sum() == 10 and len(y) == 20
    restored = pickle.loads(pickle.dumps(r))
    assert len(restored) == 20 and restored.seen == 3000


def test_ewc_penalty_is_zero_at_anchor_and_grows_away():
    torch.manual_seed(0)
    net = WindowTransformer(SPEC)
    X, y = task([0, 1, 2], 64, 0)
    ewc = EWC(net, X, y)
    assert ewc.penalty(net).item() == pytest.approx(0.0)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1)
    assert ewc.penalty(net).item() > 0


def test_online_trainer_learns_from_a_stream():
    torch.manual_seed(0)
    net = WindowTransformer(SPEC)
    X, y = task([0, 1, 2], 600, 1)
    net.set_normalisation(X)
    trainer = OnlineTrainer(net, 3, LearningSettings(lr=3e-3, batch_size=16, reservoir_capacity=300))
    Xv, yv = task([0, 1, 2], 300, 2)
    before = accuracy(predict_proba(net, Xv), yv)
    for w, label in zip(X, y):
        trainer.learn_one(w, int(label))
    after = accuracy(predict_proba(net, Xv), yv)
    assert trainer.updates == 600 // 16 and after > 0.9 and after > before
    with pytest.raises(ValueError):
        trainer.learn_one(X[0], 5)


def forgetting_run(replay_ratio: float, ewc_strength: float, distill_strength: float = 0.0) -> float:
    """Learn classes 0-2, then a stream of only classes 1-2; return accuracy on class 0 afterwards."""
    torch.manual_seed(0)
    net = WindowTransformer(SPEC)
    XA, yA = task([0, 1, 2], 600, 3)
    net.set_normalisation(XA)
    fit(net, XA, yA, epochs=15, batch_size=32)
    trainer = OnlineTrainer(net, 3, LearningSettings(lr=3e-3, batch_size=16, replay_ratio=replay_ratio,
                                                 ewc_strength=ewc_strength, distill_strength=distill_strength,
                                                 reservoir_capacity=300))
    for w, label in zip(XA[:300], yA[:300]):  # the reservoir holds the old concept
        trainer.reservoir.add(w, int(label))
    trainer.consolidate()
    XB, yB = task([1, 2], 800, 4)
    for w, label in zip(XB, yB):
        trainer.learn_one(w, int(label))
    Xv, yv = task([0], 200, 5)
    return accuracy(predict_proba(net, Xv), yv)


def test_replay_and_ewc_prevent_forgetting():
    plain = forgetting_run(replay_ratio=0.0, ewc_strength=0.0)
    protected = forgetting_run(replay_ratio=1.0, ewc_strength=50.0)
    assert plain < 0.5, f"plain fine-tuning should forget the absent class (kept {plain:.2f})"
    assert protected > 0.9 and protected > plain + 0.4


def test_distillation_alone_limits_forgetting():
    plain = forgetting_run(replay_ratio=0.0, ewc_strength=0.0)
    distilled = forgetting_run(replay_ratio=0.0, ewc_strength=0.0, distill_strength=2.0)
    assert distilled > plain + 0.3, f"distillation kept {distilled:.2f} of the absent class, plain {plain:.2f}"


def test_a_new_class_is_learned_and_the_old_ones_kept():
    """Classes c0 and c1 are known; c2 is taught later: the output layer grows, c2 is learned from a
    stream of c2 and c1 only, and replay keeps c0."""
    torch.manual_seed(0)
    spec2 = ModelSpec(window=8, channels=("a", "b"), classes=("c0", "c1"), d_model=16, n_heads=2, n_layers=1,
                      d_ff=32, dropout=0.0)
    net = WindowTransformer(spec2)
    XA, yA = task([0, 1], 400, 3)
    net.set_normalisation(XA)
    fit(net, XA, yA, epochs=15, batch_size=32)
    trainer = OnlineTrainer(net, 2, LearningSettings(lr=3e-3, batch_size=16, reservoir_capacity=300))
    for w, label in zip(XA[:300], yA[:300]):
        trainer.reservoir.add(w, int(label))
    assert trainer.add_classes(["c1", "c2"]) == ["c2"] and net.spec.classes == ("c0", "c1", "c2")
    assert all(len(v) <= 100 for v in trainer.reservoir.items.values())  # 300 shared by three classes now
    XB, yB = task([1, 2], 600, 4)
    for w, label in zip(XB, yB):
        trainer.learn_one(w, int(label))
    for klass in (0, 1, 2):
        Xv, yv = task([klass], 200, 5 + klass)
        assert accuracy(predict_proba(net, Xv), yv) > 0.85, f"class c{klass}"
    with pytest.raises(ValueError):
        trainer.learn_one(XB[0], 3)
