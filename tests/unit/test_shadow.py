"""The shadow phase through the learning job's plain-Python parts: a candidate that passed the gate is
announced as a shadow, judged on answered live windows against the version in service (paired), then
promoted or withdrawn; the journal replays it."""

from __future__ import annotations

from model.registry import ModelRegistry
from model.train import load_network, predict_proba
from operators.label_join import LabeledWindow
from operators.learning import VersionPublisher, loop_from_registry
from operators.serving_model import load_newest_usable
from operators.learning_state import AcceptedVersion, LoopJournal, ShadowEnded, Shadowing
from schemas import ModelSnapshot, Topics
from settings import LearningSettings
from tests.unit.test_lda_head import drifted

NAME = "basic-motions"


def served(net, classes, w) -> str:
    return classes[int(predict_proba(net, w[None]).argmax())]


def run(loop, publisher, stream, damage=None):
    """Feed answered windows as serving would have asked them: predicted by the version in service and, in
    a shadow phase, by the shadow too (``damage`` replaces the shadow's answers)."""
    journal, events = [], []
    classes = loop.spec.classes
    for i, (w, label) in enumerate(stream):
        shadow = loop.shadow
        said = None
        if shadow is not None:
            said = damage(label) if damage else served(shadow[1], classes, w)
        item = LabeledWindow(f"dev-{i % 8}:{i * 13}", "d", w, str(label), served(loop.serving, classes, w),
                             loop.version, ["a"], i, "", "disagreement" if said else "low_confidence", said,
                             shadow[0] if shadow else None)
        learned = publisher.learn(loop, item, i)
        journal.append(item)
        for kind in ("accepted", "shadowing", "shadow_ended"):
            value = getattr(learned, kind)
            if value is not None:
                events.append((kind, value if isinstance(value, int) else value[0]))
                journal.append({"accepted": lambda v: AcceptedVersion(*v), "shadowing": lambda v: Shadowing(*v),
                                "shadow_ended": ShadowEnded}[kind](value))
        for o in learned.outgoing:
            if o.topic == Topics().model_snapshots:
                s = ModelSnapshot.decode(o.payload)
                events.append(("announced", (s.version, s.stage)))
    return journal, events


def test_a_better_candidate_serves_only_after_winning_its_shadow_phase(registry_copy):
    registry = ModelRegistry(registry_copy)
    config = LearningSettings(gate_every=32, shadow_answers=300, shadow_min_answers=20)
    loop = loop_from_registry(registry, NAME, config)
    publisher = VersionPublisher(registry, NAME, Topics())
    X, labels = drifted(0)
    start = loop_from_registry(registry, NAME, config)
    journal, events = run(loop, publisher, zip(X[:450], labels[:450]))
    shadowed = [v for kind, v in events if kind == "shadowing"]
    assert shadowed, f"no candidate reached its shadow phase: {events}"
    first = shadowed[0]
    assert ("announced", (first, "shadow")) in events
    assert ("accepted", first) in events, events
    assert events.index(("accepted", first)) > events.index(("shadowing", first))
    assert ("announced", (first, None)) in events  # promoted: announced to serve
    assert publisher.promoted >= 1 and loop.version >= first and registry.stage(NAME, first) is None
    restored = LoopJournal().restore(None, journal, lambda: start)
    assert restored.version == loop.version and (restored.shadow is None) == (loop.shadow is None)


def test_a_candidate_worse_on_live_windows_is_withdrawn_in_its_shadow_phase(registry_copy):
    registry = ModelRegistry(registry_copy)
    config = LearningSettings(gate_every=32, shadow_answers=300, shadow_min_answers=20)
    loop = loop_from_registry(registry, NAME, config)
    publisher = VersionPublisher(registry, NAME, Topics())
    X, labels = drifted(1)
    classes = list(loop.spec.classes)
    wrong = {c: classes[(i + 1) % len(classes)] for i, c in enumerate(classes)}
    start = loop_from_registry(registry, NAME, config)
    journal, events = run(loop, publisher, zip(X[:300], labels[:300]), damage=lambda label: wrong[str(label)])
    ended = [v for kind, v in events if kind == "shadow_ended"]
    assert ended and ("announced", (ended[0], "withdrawn")) in events, events
    assert ("accepted", ended[0]) not in events and loop.version == 1  # v1 kept serving throughout
    assert publisher.withdrawn >= 1 and publisher.promoted == 0
    restored = LoopJournal().restore(None, journal, lambda: start)
    assert restored.version == 1
    # the withdrawn version stays in the registry (registry.keep_withdrawn), marked: nothing starts from it
    assert registry.stage(NAME, ended[0]) == "withdrawn" and registry.latest_servable(NAME) == 1
    assert load_network(loop.spec, registry.load(NAME, ended[0]).weights_bytes) is not None
    assert loop_from_registry(registry, NAME, config).version == 1
    assert load_newest_usable(registry_copy, NAME)[0].version == 1
    assert registry.prune_withdrawn(NAME, keep=0) == ended and ended[0] not in registry.versions(NAME)
    assert 1 in registry.versions(NAME)  # a version that served is never deleted


def test_canary_answers_count_for_the_shadow_the_other_way_round():
    """A canary device's request names the shadow as the version that served and the one in service as
    the other: the trial pairs them accordingly."""
    from tests.unit.test_learning_loop import SPEC, data
    from model.network import WindowTransformer
    from operators.learning import LearningLoop

    net = WindowTransformer(SPEC)
    loop = LearningLoop(net, SPEC, 1, LearningSettings(shadow_answers=100, shadow_min_answers=20, gate_every=10**6))
    loop.start_shadow(2, net)
    X, y = data(40, 0)
    for i, (w, label) in enumerate(zip(X, y)):
        right, wrong = SPEC.classes[label], SPEC.classes[(label + 1) % 3]
        canary = i % 2 == 0  # half from canary devices (served by v2), half from the others (served by v1)
        served, other = (right, wrong) if canary else (wrong, right)
        loop.learn(LabeledWindow(f"d:{i}", "d", w, right, served, 2 if canary else 1, ["a"], i, "", "disagreement",
                                 other, 1 if canary else 2))
    verdict = loop.take_shadow_verdict()
    assert verdict is not None and verdict.promote and loop.trial.wins == 20 and loop.trial.losses == 0
