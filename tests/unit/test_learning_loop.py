import zlib

import numpy as np
import pytest
import torch

from model.network import WindowTransformer
from model.spec import ModelSpec
from model.train import accuracy, fit, predict_proba
from operators.label_join import LabeledWindow
from operators.learning import LearningLoop
from settings import LearningSettings

SPEC = ModelSpec(window=8, channels=("a", "b"), classes=("c0", "c1", "c2"), d_model=16, n_heads=2, n_layers=1,
                 d_ff=32, dropout=0.0)


def data(n, seed, offset=0.0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    X = rng.normal(0, 0.5, size=(n, SPEC.window, SPEC.n_channels)).astype(np.float32)
    X[:, :, 0] += 2.0 * y[:, None]
    X[:, :, 1] += offset  # a calibration drift on channel b
    X[:, :, 1] += np.where(offset, 1.5 * (y[:, None] == 1), 0.0)  # ...which also carries class information
    return X, y


def test_loop_proposes_a_better_candidate_after_drift():
    torch.manual_seed(0)
    net = WindowTransformer(SPEC)
    X, y = data(600, 0)
    net.set_normalisation(X)
    fit(net, X, y, epochs=10, batch_size=32)
    loop = LearningLoop(net, SPEC, version=1, config=LearningSettings(gate_every=40, batch_size=8, lr=3e-3))
    Xd, yd = data(800, 1, offset=3.0)
    with torch.inference_mode():
        served = torch.softmax(net(torch.as_tensor(Xd)), -1).numpy().argmax(1)
    candidates = []
    for i, (w, label, p) in enumerate(zip(Xd, yd, served)):
        item = LabeledWindow(f"d:{i}", "d", w, SPEC.classes[label], SPEC.classes[p], 1, ["sim"])
        c = loop.learn(item)
        if c is not None:
            candidates.append(c)
            loop.accepted(c, loop.version + 1)
    assert candidates, "no candidate passed the gate"
    last = candidates[-1].decision
    assert last.candidate_accuracy >= last.serving_accuracy
    assert loop.version == 1 + len(candidates) and loop.labeled == 800
    assert len(loop.gate.windows) > 100  # about a quarter held out, never trained on
    Xv, yv = data(400, 2, offset=3.0)
    before = accuracy(predict_proba(net, Xv), yv)
    after = accuracy(predict_proba(loop.serving, Xv), yv)
    assert after > before + 0.2, (before, after)


@pytest.mark.parametrize("ewc_strength", [0.0, 1.0])
def test_loop_reports_each_detected_drift_once(ewc_strength):
    torch.manual_seed(0)
    net = WindowTransformer(SPEC)
    loop = LearningLoop(net, SPEC, version=1, config=LearningSettings(gate_every=10_000, ewc_strength=ewc_strength))
    X, y = data(1400, 3)
    for i, (w, label) in enumerate(zip(X, y)):
        predicted = label if i < 900 else (label + 1) % 3  # serving starts being wrong at window 900
        loop.learn(LabeledWindow(f"d:{i}", "d", w, SPEC.classes[label], SPEC.classes[predicted], 1, ["s"]))
        if i == 899:
            assert loop.take_drifts() == []
    drifts = loop.take_drifts()
    assert drifts and set(drifts) == {"error"} and loop.drift_events == len(drifts)
    assert loop.take_drifts() == []
    # the drift consolidated EWC when it is on; with EWC off no Fisher information is computed at all
    assert (loop.trainer.ewc is not None) == (ewc_strength > 0)


def test_snapshot_plus_journal_restores_the_loop_at_any_step():
    """The learning job's state: a snapshot every few steps plus a journal; a restore at any point
    (a checkpoint between two elements) gives back what was learned, including accepted versions."""
    import copy
    import pickle

    from model.train import weights_bytes
    from operators.learning_state import AcceptedVersion, LoopJournal

    torch.manual_seed(0)
    net = WindowTransformer(SPEC)
    X, y = data(300, 0)
    net.set_normalisation(X)
    fit(net, X, y, epochs=5, batch_size=32)
    config = LearningSettings(gate_every=24, batch_size=8, lr=3e-3, min_holdout=5, gate_z=0.0)  # versions often
    loop = LearningLoop(net, SPEC, version=1, config=config)
    journal = LoopJournal(snapshot_every=10)
    stored = {"snapshot": None, "journal": []}  # what keyed state holds
    checkpoints = []
    Xd, yd = data(200, 1, offset=3.0)
    for i, (w, label) in enumerate(zip(Xd, yd)):
        item = LabeledWindow(f"d:{i}", "d", w, SPEC.classes[label], SPEC.classes[0], 1, ["sim"])
        entries = [item]
        candidate = loop.learn(item)
        if candidate is not None:
            loop.accepted(candidate, loop.version + 1)
            entries.append(AcceptedVersion(loop.version, weights_bytes(candidate.net)))
        for entry in entries:
            stored["journal"].append(entry)
            if journal.record():
                stored = {"snapshot": pickle.dumps(loop), "journal": []}
        checkpoints.append((copy.deepcopy(stored), loop.labeled, loop.version, len(loop.gate.windows),
                            len(loop.trainer.reservoir)))
    assert loop.version > 2, "the stream should have produced accepted versions"
    for state, labeled, version, held_out, replayed in checkpoints[5::37] + checkpoints[-1:]:
        snapshot = pickle.loads(state["snapshot"]) if state["snapshot"] else None
        restored = LoopJournal(10).restore(snapshot, state["journal"],
                                           lambda: LearningLoop(net, SPEC, version=1, config=config))
        assert (restored.labeled, restored.version, len(restored.gate.windows),
                len(restored.trainer.reservoir)) == (labeled, version, held_out, replayed)
    final = LoopJournal(10).restore(pickle.loads(stored["snapshot"]), stored["journal"], lambda: None)
    Xv, yv = data(200, 2, offset=3.0)
    assert accuracy(predict_proba(final.serving, Xv), yv) == accuracy(predict_proba(loop.serving, Xv), yv)


def cold_start_labels(loop: LearningLoop, X, y, limit: int):
    """Feed answers to a cold-started loop until it proposes its first version; (labels used, candidate)."""
    for i, (w, label) in enumerate(zip(X[:limit], y[:limit])):
        candidate = loop.learn(LabeledWindow(f"d:{i}", "d", w, SPEC.classes[label], SPEC.classes[0], 0, ["sim"]))
        if candidate is not None:
            return i + 1, candidate
    return limit, None


def test_a_cold_start_publishes_a_first_version_only_once_it_beats_the_majority_class():
    X, y = data(1500, 3)
    loop = LearningLoop(None, SPEC, version=0, config=LearningSettings(gate_early_z=0.0))
    used, candidate = cold_start_labels(loop, X, y, 1500)
    assert candidate is not None, "no first version from 1,500 answers"
    d = candidate.decision
    assert d.accept and "majority class" in d.reason and d.candidate_accuracy > d.serving_accuracy
    assert used >= 4 * 30  # one answer in four is held out, and the gate needs 30 of them

    assert not torch.equal(candidate.net.mean, torch.zeros(SPEC.n_channels))  # normalisation fitted on the answers
    # one class only: nothing beats "always that class", so no version is ever proposed
    single = LearningLoop(None, SPEC, version=0, config=LearningSettings())
    assert cold_start_labels(single, X, np.zeros_like(y), 600)[1] is None
    assert single.refused > 0  # each check it judged and refused is counted (metric candidates_refused)


def test_periodic_deployment_publishes_clear_improvements_at_once_and_the_rest_at_most_once_per_interval():
    """With ``publish_interval_s`` a candidate that is merely not worse waits for the interval (by answer
    time); one that wins clearly more held-out windows goes out at once."""
    torch.manual_seed(0)
    net = WindowTransformer(SPEC)
    X, y = data(300, 0)
    net.set_normalisation(X)
    fit(net, X, y, epochs=5, batch_size=32)
    Xd, yd = data(600, 1, offset=3.0)  # drifted: the first candidates are clearly better, later ones not

    def published(interval_s: float) -> tuple[list[int], LearningLoop]:
        config = LearningSettings(gate_every=16, batch_size=8, lr=3e-3, min_holdout=8, publish_interval_s=interval_s)
        loop, times = LearningLoop(net, SPEC, version=1, config=config), []
        for i, (w, label) in enumerate(zip(Xd, yd)):
            item = LabeledWindow(f"d:{i}", "d", w, SPEC.classes[label], SPEC.classes[0], loop.version, ["s"],
                                 answered_at=i * 100)  # an answer every 0.1 s
            candidate = loop.learn(item)
            if candidate is not None:
                loop.accepted(candidate, loop.version + 1)
                times.append((item.answered_at, candidate.decision.clearly_better(1.645)))
        return times, loop

    every, _ = published(0.0)
    paced, loop = published(20.0)
    gaps = np.diff([at for at, _ in paced])
    assert len(every) > len(paced) >= 2 and loop.deferred > 0
    for gap, (_, clearly) in zip(gaps, paced[1:]):
        assert gap >= 20_000 or clearly, (paced, gaps)  # early only when clearly better
    print(f"versions: {len(every)} without an interval, {len(paced)} with 20 s ({loop.deferred} deferred; "
          f"gaps {list(gaps)} ms)")


def test_with_holdout_audit_the_gate_holds_out_only_answered_audit_windows():
    net = WindowTransformer(SPEC)
    X, y = data(80, 3)
    loop = LearningLoop(net, SPEC, version=1, config=LearningSettings(holdout="audit", gate_every=10**6))
    for i, (w, label) in enumerate(zip(X, y)):
        reason = "audit" if i % 5 == 0 else "low_confidence"
        loop.learn(LabeledWindow(f"d:{i}", "d", w, SPEC.classes[label], SPEC.classes[0], 1, ["s"], 0, "", reason))
    audits = [i for i in range(80) if i % 5 == 0]
    held = [i for i in audits if zlib.crc32(f"d:{i}".encode()) % 4 == 0]
    assert 0 < len(held) < len(audits) and len(loop.gate.windows) == len(held)
    assert loop.trainer.learned + len(loop.trainer.pending) == 80 - len(held)
    with pytest.raises(ValueError, match="holdout must be hashed or audit"):
        LearningSettings(holdout="random")


def test_a_clearly_better_first_version_need_not_wait_for_min_holdout():
    """BasicMotions from a cold start, every window answered: by default (``gate_early_z`` = 2.33) the first
    version comes as soon as the sign test says it clearly beats the majority class."""
    from model.datasets import load_basic_motions, sliding_windows
    from model.spec import ModelSpec

    X, labels = sliding_windows(load_basic_motions("test"), 32, 4)
    order = np.random.default_rng(0).permutation(len(X))
    spec = ModelSpec()
    first = {}
    for early_z in (0.0, 2.33):
        loop = LearningLoop(None, spec, 0, LearningSettings(gate_early_z=early_z))
        for i, k in enumerate(order):
            c = loop.learn(LabeledWindow(f"dev-{k % 8}:{k * 7}", "d", X[k], str(labels[k]), "badminton", 0, ["a"], i))
            if c is not None:
                first[early_z] = (i + 1, c)
                break
    (waited, _), (used, early) = first[0.0], first[2.33]
    assert used < waited and early.decision.samples < LearningSettings().min_holdout
    assert early.decision.reason.startswith("accepted early")
    Xtr, ltr = sliding_windows(load_basic_motions("train"), 32, 8)
    names = np.asarray(spec.classes)[predict_proba(early.net, Xtr).argmax(1)]
    assert (names == ltr).mean() > 0.6  # far above the majority class's 0.25


def test_a_drift_empties_the_gates_held_out_windows_when_asked():
    """``learning.gate_forgets_on_drift``: when serving's error drifts, the windows held out before the drift
    (judging by the old concept) are dropped, so candidates that learned the new one are judged on new
    windows; without the option they stay."""
    torch.manual_seed(0)
    net = WindowTransformer(SPEC)
    X, y = data(300, 0)
    net.set_normalisation(X)
    Xd, yd = data(300, 1, offset=3.0)
    kept = {}
    for forgets in (False, True):
        loop = LearningLoop(net, SPEC, version=1, config=LearningSettings(gate_every=10_000,
                                                                          gate_forgets_on_drift=forgets))
        held_before = 0
        for i, (w, label) in enumerate(zip(np.concatenate([X, Xd]), np.concatenate([y, yd]))):
            served = label if i < 300 else (label + 1) % 3  # right before the drift, wrong after it
            loop.learn(LabeledWindow(f"d:{i}", "d", w, SPEC.classes[label], SPEC.classes[served], 1, ["sim"]))
            if i == 299:
                held_before = len(loop.gate.windows)
        assert loop.drift_events >= 1 and held_before > 50
        kept[forgets] = len(loop.gate.windows)
    assert kept[False] > held_before and kept[True] < kept[False] - 50, (held_before, kept)
