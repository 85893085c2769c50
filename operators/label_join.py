"""Join labelers' answers to review requests by review id, with a TTL and a stated conflict rule.

State is per review id (Flink keyed state in the learning job). An answer may arrive before
its request and waits for it. Rule: a request is resolved once ``answers_needed`` distinct
labelers answered; the label is their majority, ties going to the latest answer. Every answer
that cannot be used is returned as a rejection with the reason (for ``dead-letters``), never
dropped silently: unknown class, repeated answer, an answer after resolution, and answers whose
request did not arrive within the TTL.

>>> from schemas import Label, ReviewRequest, SchemaError
>>> j = LabelJoiner(classes=["run", "walk"], ttl_ms=60_000)
>>> state = j.new_state()
>>> j.on_label(state, Label("d:1", "walk", "ann", 5), now_ms=5)
([], [])
>>> req = ReviewRequest("d:1", "d", 0, 1, ["x"], [[0.5]], "run", 0.4, {}, 1, "low_confidence", 0)
>>> done, rejected = j.on_request(state, req, now_ms=9)
>>> done[0].label, done[0].labelers, rejected
('walk', ['ann'], [])
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from schemas import Label, ReviewRequest, SchemaError


@dataclass
class LabeledWindow:
    """A window with the label people gave it: what the online trainer learns from."""

    review_id: str
    device_id: str
    values: np.ndarray
    label: str
    predicted: str
    model_version: int
    labelers: list[str]
    answered_at: int = 0  # when the answer that resolved it was given (epoch ms)
    model_name: str = ""  # the model that asked ("" when the request named none: the job's default model)
    reason: str = ""  # why it was asked (``audit``: the uniform sample that estimates live accuracy)
    shadow_predicted: str | None = None  # what the version in its shadow phase said, when one was scored
    shadow_version: int | None = None
    verdict: str | None = None  # an anomaly question's answer ("normal" / "abnormal"); ``label`` may then be ""


@dataclass
class JoinState:
    request: ReviewRequest | None = None
    answers: list = field(default_factory=list)  # [(labeler, label, answered_at)], arrival order
    first_seen_ms: int | None = None
    resolved: bool = False
    verdicts: dict = field(default_factory=dict)  # labeler -> "normal" / "abnormal" (anomaly questions)

    def __setstate__(self, state: dict) -> None:
        """A join state kept before anomaly verdicts existed loads with none."""
        state.setdefault("verdicts", {})
        self.__dict__.update(state)


@dataclass
class RefusedLabel:
    """An answer the join could not use (unknown class, late, repeated, or for an unknown review), and why."""

    label: Label
    reason: str


@dataclass(frozen=True)
class JoinTarget:
    """What answers to one model's requests must fit: its classes and (optionally) its window shape."""

    classes: tuple[str, ...]
    shape: tuple[int, int] | None = None


class LabelJoiner:
    """Joins review requests with their answers. With ``shape`` (window, channels), a request whose
    values are not a window of that shape is refused with a ``SchemaError`` naming ``values``: the
    learner can learn only from windows the model takes.

    With ``others`` (model name → ``JoinTarget``) it joins for several models: a request names its
    model (one naming none is the default model's), and its answers must be that model's classes.

    >>> LabelJoiner(["run"], shape=(32, 6)).check_request(
    ...     ReviewRequest("d:1", "d", 0, 1, ["x"], [[0.0]], "run", 0.4, {"run": 1.0}, 1, "audit", 0))
    Traceback (most recent call last):
    ...
    schemas.base.SchemaError: values: a window of 1x1 values; the model takes 32x6
    >>> j = LabelJoiner(["run", "walk"], others={"knee": JoinTarget(("ok", "freeze"))})
    >>> state = j.new_state()
    >>> j.on_label(state, Label("k:1", "run", "ann", 5), now_ms=5)
    ([], [])
    >>> done, rejected = j.on_request(state, ReviewRequest("k:1", "k", 0, 1, ["x"], [[0.5]], "ok", 0.4, {}, 1,
    ...                                                    "audit", 0, model_name="knee"), now_ms=9)
    >>> done, rejected[0].reason
    ([], "label: unknown class 'run' for model knee; known: ['ok', 'freeze']")
    """

    def __init__(self, classes: list[str], ttl_ms: int = 3_600_000, answers_needed: int = 1,
                 shape: tuple[int, int] | None = None, others: dict[str, JoinTarget] | None = None,
                 name: str = "", creators: frozenset[str] = frozenset(), max_classes: int = 64) -> None:
        self.classes = list(classes)
        self.name = name  # the default model's name, when known: requests naming another unknown model are refused
        self.ttl_ms = ttl_ms
        self.answers_needed = answers_needed
        self.shape = shape
        self.others = dict(others or {})
        self.creators, self.max_classes = frozenset(creators), max_classes

    def new_state(self) -> JoinState:
        return JoinState()

    def _target(self, request: ReviewRequest) -> JoinTarget:
        named = request.model_name
        if named is not None and named in self.others:
            return self.others[named]
        if named is not None and named != self.name and (self.others or self.name):
            raise SchemaError("model_name", f"no model {named!r} learns here "
                                            f"(known: {sorted([self.name, *self.others])})")
        return JoinTarget(tuple(self.classes), self.shape)

    def _classes_of(self, request: ReviewRequest) -> list[str]:
        """The classes an answer to ``request`` may name: its model's, and any its version has learned
        since the job started (the request's probabilities name every class of the version that asked)."""
        return list(dict.fromkeys([*self._target(request).classes, *(request.probabilities or {})]))

    def _may_add(self, who: str, new_class: bool, known: list[str]) -> bool:
        """Whether an answer may teach a class the model lacks: marked as new, by a labeler allowed to,
        while the model has room."""
        return new_class and who in self.creators and len(known) < self.max_classes

    def check_request(self, request: ReviewRequest) -> None:
        shape = self._target(request).shape
        if shape is None:
            return
        rows = request.values
        found = (len(rows), len(rows[0]) if rows else 0)
        if found != shape or any(len(row) != shape[1] for row in rows):
            raise SchemaError("values", f"a window of {found[0]}x{found[1]} values; "
                                        f"the model takes {shape[0]}x{shape[1]}")

    def on_request(self, state: JoinState, request: ReviewRequest, now_ms: int):
        self.check_request(request)
        if state.first_seen_ms is None:
            state.first_seen_ms = now_ms
        rejected: list[RefusedLabel] = []
        if state.request is None:
            state.request = request
            classes = self._classes_of(request)
            # answers that came first were checked against every model's classes only (or named a new one);
            # a verdict alone fits a request that asked about an anomaly
            fits = [lab in classes or self._may_add(who, True, classes) or (not lab and request.anomaly is not None)
                    for who, lab, _ in state.answers]
            model = f" for model {request.model_name}" if self.others else ""
            rejected = [RefusedLabel(Label(request.review_id, lab, who, at, model_name=request.model_name),
                                     f"label: unknown class {lab!r}{model}; known: {list(classes)}" if lab else
                                     f"verdict: review {request.review_id!r} asked no anomaly question")
                        for (who, lab, at), ok in zip(state.answers, fits) if not ok]
            state.answers = [a for a, ok in zip(state.answers, fits) if ok]
        return self._resolve(state), rejected

    def on_label(self, state: JoinState, label: Label, now_ms: int):
        if state.first_seen_ms is None:
            state.first_seen_ms = now_ms
        if label.status != "answered":
            return [], []  # skip / not sure: recorded on the topic, nothing to learn
        if label.verdict is not None:
            if state.request is not None and state.request.anomaly is None:
                return [], [RefusedLabel(label, f"verdict: review {label.review_id!r} asked no anomaly question")]
            if not label.label:
                return self._vote(state, label)
        if state.request is None:
            # the request is not known yet, and with it neither the model nor the classes of the version that asked
            # (it may have learned one since this job started): the answer waits and is judged when it comes
            return self._vote(state, label)
        known = self._classes_of(state.request)
        if label.label not in known and not self._may_add(label.labeler, bool(label.new_class), known):
            model = f" for model {state.request.model_name}" if self.others else ""
            why = (f"; {label.labeler} may not name new classes (labeling.class_creators)" if label.new_class
                   and label.labeler not in self.creators else
                   f"; the model has the most classes allowed ({self.max_classes})" if label.new_class else "")
            return [], [RefusedLabel(label, f"label: unknown class {label.label!r}{model}; known: {known}{why}")]
        if state.resolved:
            return [], [RefusedLabel(label, f"review {label.review_id!r} was already resolved")]
        return self._vote(state, label)

    def _vote(self, state: JoinState, label: Label):
        """Count one answer (a class, a verdict or both) from a labeler who has not answered this review."""
        if state.resolved:
            return [], [RefusedLabel(label, f"review {label.review_id!r} was already resolved")]
        if any(who == label.labeler for who, _, _ in state.answers):
            return [], [RefusedLabel(label, f"repeated answer by {label.labeler!r} (the first one counts)")]
        state.answers.append((label.labeler, label.label, label.answered_at))
        if label.verdict is not None:
            state.verdicts[label.labeler] = label.verdict
        return self._resolve(state), []

    def _resolve(self, state: JoinState) -> list[LabeledWindow]:
        if state.resolved or state.request is None or len(state.answers) < self.answers_needed:
            return []
        if state.request.anomaly is None and any(not lab for _, lab, _ in state.answers):
            state.answers = [a for a in state.answers if a[1]]  # verdicts that came before a request without one
            return []
        named = [(who, lab, at) for who, lab, at in state.answers if lab]
        votes = Counter(lab for _, lab, _ in named)
        label = ""
        if votes:
            best = max(votes.values())
            label = next(lab for _, lab, _ in reversed(named) if votes[lab] == best)  # ties: latest wins
        verdicts = Counter(state.verdicts.get(who) for who, _, _ in state.answers if who in state.verdicts)
        verdict = None
        if verdicts:
            best = max(verdicts.values())
            verdict = next(state.verdicts[who] for who, _, _ in reversed(state.answers)
                           if who in state.verdicts and verdicts[state.verdicts[who]] == best)
        state.resolved = True
        r = state.request
        return [LabeledWindow(r.review_id, r.device_id, np.asarray(r.values, np.float32), label, r.predicted or "",
                              r.model_version, [who for who, _, _ in state.answers],
                              max(at for _, _, at in state.answers), r.model_name or "", r.reason,
                              r.shadow_predicted, r.shadow_version, verdict)]

    def expired(self, state: JoinState, now_ms: int) -> bool:
        return state.first_seen_ms is not None and now_ms - state.first_seen_ms >= self.ttl_ms

    def expire(self, state: JoinState, review_id: str) -> list[RefusedLabel]:
        """At TTL: answers whose request never came are rejected (the caller then clears the state)."""
        if state.request is not None:
            return []
        return [RefusedLabel(Label(review_id, lab, who, at), f"unknown review id {review_id!r}: no request "
                                                          f"within {self.ttl_ms} ms")
                for who, lab, at in state.answers]
