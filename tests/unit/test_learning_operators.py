import numpy as np

from operators.drift import DriftMonitor
from operators.gate import ValidationGate
from operators.label_join import LabelJoiner
from schemas import Label, ReviewRequest

CLASSES = ["run", "walk", "sit"]


def req(review_id="d:1"):
    return ReviewRequest(review_id, "d", 0, 1, ["x"], [[0.5], [0.7]], "run", 0.4, {}, 3, "low_confidence", 0)


def test_request_first_then_answer():
    j = LabelJoiner(CLASSES)
    s = j.new_state()
    assert j.on_request(s, req(), 0) == ([], [])
    done, rejected = j.on_label(s, Label("d:1", "sit", "ann", 1), 1)
    assert not rejected and done[0].label == "sit" and done[0].model_version == 3
    assert done[0].values.shape == (2, 1)


def test_bad_and_repeated_answers_are_rejected_with_reasons():
    j = LabelJoiner(CLASSES, answers_needed=2)
    s = j.new_state()
    j.on_request(s, req(), 0)
    assert "unknown class" in j.on_label(s, Label("d:1", "fly", "ann", 1), 1)[1][0].reason
    assert j.on_label(s, Label("d:1", "run", "ann", 2), 2) == ([], [])
    assert "repeated answer" in j.on_label(s, Label("d:1", "walk", "ann", 3), 3)[1][0].reason
    assert j.on_label(s, Label("d:1", "-", "bob", 3, "skipped"), 3) == ([], [])
    done, _ = j.on_label(s, Label("d:1", "walk", "bob", 4), 4)
    assert done[0].label == "walk" and done[0].labelers == ["ann", "bob"]  # tie: the latest answer wins
    assert "already resolved" in j.on_label(s, Label("d:1", "run", "cy", 5), 5)[1][0].reason


def test_majority_of_three():
    j = LabelJoiner(CLASSES, answers_needed=3)
    s = j.new_state()
    j.on_request(s, req(), 0)
    for who, lab in (("a", "run"), ("b", "walk"), ("c", "run")):
        done, _ = j.on_label(s, Label("d:1", lab, who, 1), 1)
    assert done[0].label == "run"


def test_answer_without_request_expires_as_unknown():
    j = LabelJoiner(CLASSES, ttl_ms=100)
    s = j.new_state()
    j.on_label(s, Label("d:9", "run", "ann", 1), now_ms=0)
    assert not j.expired(s, 99) and j.expired(s, 100)
    rejected = j.expire(s, "d:9")
    assert len(rejected) == 1 and "unknown review id" in rejected[0].reason


def test_drift_monitor_detects_a_jump_in_error_only_when_it_happens():
    m = DriftMonitor()
    rng = np.random.default_rng(0)
    early = [m.update(correct=bool(rng.random() < 0.9)) for _ in range(1000)]
    assert m.drifts["error"] == 0 and not any(early)
    for _ in range(400):
        m.update(correct=bool(rng.random() < 0.4))
    assert m.drifts["error"] >= 1 and m.error_rate > 0.3


def test_gate_needs_enough_samples_and_respects_margin():
    gate = ValidationGate(margin=0.05, min_samples=10, holdout=100)
    for i in range(9):
        gate.hold_out(np.array([i % 2], np.float32), i % 2)
    assert "only 9" in gate.judge(lambda X: np.ones((len(X), 2)), lambda X: np.ones((len(X), 2))).reason
    gate.hold_out(np.array([1], np.float32), 1)
    right = lambda X: np.eye(2)[X[:, 0].astype(int)]  # noqa: E731
    mostly = lambda X: np.eye(2)[np.r_[X[:-1, 0], 1 - X[-1:, 0]].astype(int)]  # noqa: E731  one mistake in 10
    gate_strict, gate_loose = ValidationGate(0.05, 1), ValidationGate(0.15, 1)
    for g in (gate_strict, gate_loose):
        for w, lab in gate.windows:
            g.hold_out(w, lab)
    assert not gate_strict.judge(mostly, right).accept  # 0.9 < 1.0 - 0.05
    assert gate_loose.judge(mostly, right).accept       # 0.9 >= 1.0 - 0.15


def test_confidence_watch_reports_a_fall_once_per_gap_and_not_a_rise():
    import numpy as np

    from operators.confidence_watch import ConfidenceWatch

    rng = np.random.default_rng(0)
    watch = ConfidenceWatch("basic-motions", min_gap_ms=60_000, boost_budget_per_minute=900, boost_seconds=30)
    events = []
    for step, level in enumerate([0.95] * 20 + [0.6] * 20 + [0.95] * 20):  # batches of 32 windows
        confidences = np.clip(rng.normal(level, 0.05, 32), 0, 1)
        event = watch.observe(confidences, model_version=3, now_ms=step * 1000)
        if event is not None:
            events.append((step, event))
    assert len(events) == 1, events  # the fall, once; the recovery is not a drift to report
    step, event = events[0]
    assert 20 <= step < 25 and event.signal == "confidence" and event.model_version == 3
    assert (event.boost_budget_per_minute, event.boost_seconds) == (900, 30)
    watch.reset()
    later = [watch.observe([0.5] * 32, 4, 200_000 + i) for i in range(5)]
    assert all(e is None for e in later)  # a fresh detector has no earlier level to fall from


def test_a_new_class_joins_only_from_a_creator_marking_it_and_while_there_is_room():
    j = LabelJoiner(CLASSES, creators=frozenset({"ann"}), max_classes=4)
    s = j.new_state()
    j.on_request(s, req(), 0)
    unmarked = j.on_label(s, Label("d:1", "cycle", "ann", 1), 1)[1][0].reason
    assert "unknown class 'cycle'" in unmarked
    not_allowed = j.on_label(s, Label("d:1", "cycle", "bob", 1, new_class=True), 1)[1][0].reason
    assert "bob may not name new classes" in not_allowed
    done, rejected = j.on_label(s, Label("d:1", "cycle", "ann", 2, new_class=True), 2)
    assert not rejected and done[0].label == "cycle"
    early = j.new_state()  # an answer before its request waits for it, then joins
    assert j.on_label(early, Label("d:2", "cycle", "ann", 1, new_class=True), 1) == ([], [])
    done, rejected = j.on_request(early, req("d:2"), 2)
    assert done[0].label == "cycle" and not rejected
    full = j.new_state()
    j.on_request(full, ReviewRequest("d:3", "d", 0, 1, ["x"], [[0.5], [0.7]], "run", 0.4,
                                     {"run": 0.5, "walk": 0.2, "sit": 0.2, "cycle": 0.1}, 4, "audit", 0), 0)
    assert "most classes allowed (4)" in j.on_label(full, Label("d:3", "swim", "ann", 1, new_class=True),
                                                    1)[1][0].reason
    done, _ = j.on_label(full, Label("d:3", "cycle", "bob", 1), 1)  # v4 has it: anyone may answer with it
    assert done[0].label == "cycle"


def test_an_answer_with_a_class_learned_since_the_job_started_waits_for_its_request():
    """A version that learned "cycle" asked; its answer reached the join before its request (they come on two
    topics): it waits and is learned from once the request shows the class. One naming a class no version has
    is refused when the request comes, with the classes the version that asked knows."""
    j = LabelJoiner(CLASSES, creators=frozenset({"ann"}))
    learned = j.new_state()
    assert j.on_label(learned, Label("d:4", "cycle", "bob", 1), 1) == ([], [])
    asked_by_v4 = ReviewRequest("d:4", "d", 0, 1, ["x"], [[0.5], [0.7]], "run", 0.4,
                                {**dict.fromkeys(CLASSES, 0.2), "cycle": 0.2}, 4, "audit", 0)
    done, rejected = j.on_request(learned, asked_by_v4, 2)
    assert not rejected and done[0].label == "cycle" and done[0].model_version == 4
    unknown = j.new_state()
    assert j.on_label(unknown, Label("d:5", "swim", "bob", 1), 1) == ([], [])
    done, rejected = j.on_request(unknown, req("d:5"), 2)
    assert not done and "unknown class 'swim'" in rejected[0].reason and "cycle" not in rejected[0].reason
