"""The labelers' queue: review requests handed out one at a time under expiring leases.

A request is given to one labeler at a time (``answers_needed`` > 1 asks for double
labeling: that many distinct labelers answer it). A lease that is not answered within
``lease_s`` seconds expires and the request goes back to the queue. "Skip" and "not sure"
are recorded answers too, but the request then goes to someone else.

>>> from schemas import ReviewRequest
>>> q = ReviewQueue(classes=["run", "walk"], lease_s=30)
>>> req = ReviewRequest("d:1", "d", 0, 1, ["x"], [[0.0]], "run", 0.4, {"run": 0.4, "walk": 0.6}, 1,
...                     "low_confidence", 0)
>>> q.add(req, partition=0, offset=0)
True
>>> q.lease("alice", now=0).review_id, q.lease("bob", now=0)
('d:1', None)
>>> answer = q.answer("d:1", "alice", "walk", now=5)  # validated, not yet recorded
>>> q.record(answer)  # once it is safely on the labels topic
>>> answer.label, q.waiting()
('walk', 0)
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field

from schemas import Label, ReviewRequest, SchemaError, check_class_name


class ReviewError(ValueError):
    """An answer that cannot be accepted; ``status`` is the HTTP status that fits."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class _Entry:
    request: ReviewRequest
    partition: int
    offset: int
    answered_by: set = field(default_factory=set)
    passed_by: set = field(default_factory=set)
    leases: dict = field(default_factory=dict)  # labeler -> expiry (seconds)
    done: bool = False


class ReviewQueue:
    """In-memory queue over the ``review-requests`` topic; the topic stays the source of truth.

    A labeler among ``creators`` may answer with a class the model lacks (``new_class=True``), up to
    ``max_classes`` for the model; once a version that has it serves, its requests offer it to everyone.

    >>> q = ReviewQueue(["run", "walk"], creators={"ann"})
    >>> q.add(ReviewRequest("d:2", "d", 0, 1, ["x"], [[0.0]], "run", 0.4, {"run": 0.4, "walk": 0.6}, 1,
    ...                     "low_confidence", 0), 0, 1)
    True
    >>> _ = q.lease("ann", now=0)
    >>> q.answer("d:2", "ann", "cycling", now=1, new_class=True).new_class
    True
    >>> _ = q.lease("bob", now=0)
    >>> try:
    ...     q.answer("d:2", "bob", "cycling", now=1, new_class=True)
    ... except ReviewError as exc:
    ...     print(exc.status, exc)
    403 bob may not name new classes (labeling.class_creators)
    """

    def __init__(self, classes: list[str], lease_s: float = 120.0, answers_needed: int = 1,
                 recent: int = 200, capacity: int = 10_000, model_classes: dict[str, list[str]] | None = None,
                 creators: frozenset[str] | set[str] = frozenset(), max_classes: int = 64) -> None:
        self.classes = list(classes)
        self.creators, self.max_classes = frozenset(creators), max_classes
        self.served_classes: dict[str, None] = {}  # classes the requests' versions have (new ones included)
        self.model_classes = {k: list(v) for k, v in (model_classes or {}).items()}  # when several models ask
        self.lease_s = lease_s
        self.answers_needed = answers_needed
        self.entries: dict[str, _Entry] = {}
        self.order: list[str] = []
        self.per_labeler: Counter = Counter()
        self.recent: deque = deque(maxlen=recent)  # (predicted, answered label)
        self.model_version: int | None = None
        self._early: dict[str, list[Label]] = {}  # answers whose request has not come (yet)
        self.capacity = capacity
        self.evicted = 0

    def classes_for(self, request: ReviewRequest) -> list[str]:
        """The classes a request's model offers (``classes`` when the request names no other model), and
        any the version that asked has since learned (its probabilities name them)."""
        known = self.model_classes.get(request.model_name or "", self.classes)
        if request.probabilities is None and request.predicted is None and not known:
            return []  # a model that does not classify
        return list(dict.fromkeys([*known, *(request.probabilities or {})]))

    def may_name_classes(self, labeler: str) -> bool:
        return labeler in self.creators

    @property
    def all_classes(self) -> list[str]:
        """Every class of every model asking here (what an answer on the labels topic may name)."""
        return list(dict.fromkeys([*self.classes, *(c for cs in self.model_classes.values() for c in cs),
                                   *self.served_classes]))

    def add(self, request: ReviewRequest, partition: int, offset: int) -> bool:
        """Queue a request (False when it is already known)."""
        if request.review_id in self.entries:
            return False
        entry = _Entry(request, partition, offset)
        self.entries[request.review_id] = entry
        self.served_classes.update(dict.fromkeys(request.probabilities or {}))
        self.order.append(request.review_id)
        self.model_version = max(self.model_version or 0, request.model_version)
        for label in self._early.pop(request.review_id, []):
            self.record(label)
        self._evict()
        return True

    def _evict(self) -> None:
        """Keep at most ``capacity`` requests: answered ones are forgotten first, oldest first; only a
        flood of unanswered ones pushes out the oldest of those (they stay on the topic)."""
        excess = len(self.entries) - self.capacity
        if excess <= 0:
            return
        done = [rid for rid in self.order if self.entries[rid].done][:excess]
        victims = done + [rid for rid in self.order if not self.entries[rid].done][:excess - len(done)]
        gone = set(victims)
        for rid in victims:
            del self.entries[rid]
        self.order = [rid for rid in self.order if rid not in gone]
        self.evicted += len(victims)

    def _leasable(self, entry: _Entry, labeler: str, now: float) -> bool:
        if entry.done or labeler in entry.answered_by or labeler in entry.passed_by:
            return False
        live = {who for who, until in entry.leases.items() if until > now}
        return labeler not in live and len(live) + len(entry.answered_by) < self.answers_needed

    def lease(self, labeler: str, now: float) -> ReviewRequest | None:
        """The oldest request this labeler may answer now, or ``None``; re-asking renews a live lease."""
        for review_id in self.order:
            entry = self.entries[review_id]
            if not entry.done and entry.leases.get(labeler, -1) > now:
                entry.leases[labeler] = now + self.lease_s
                return entry.request
        for review_id in self.order:
            entry = self.entries[review_id]
            if self._leasable(entry, labeler, now):
                entry.leases[labeler] = now + self.lease_s
                return entry.request
        return None

    def lease_expiry(self, review_id: str, labeler: str) -> float | None:
        entry = self.entries.get(review_id)
        return entry.leases.get(labeler) if entry else None

    def answer(self, review_id: str, labeler: str, label: str, now: float, status: str = "answered",
               new_class: bool = False, verdict: str | None = None) -> Label:
        """Validate an answer against the lease and the classes (``new_class``: a class the model lacks,
        named on purpose by a labeler allowed to; ``verdict``: ``normal`` / ``abnormal``, for a request that
        asks about an anomaly, with or without a class); returns the record to publish.

        The queue changes only when that record is passed to :meth:`record` (after publishing)."""
        entry = self.entries.get(review_id)
        if entry is None:
            raise ReviewError(f"unknown review id {review_id!r}", 404)
        if status not in Label.STATUSES:
            raise ReviewError(f"unknown status {status!r}; use one of {list(Label.STATUSES)}")
        if verdict is not None and (verdict not in Label.VERDICTS or status != "answered"):
            raise ReviewError(f"verdict must be one of {list(Label.VERDICTS)}, with an answer")
        if verdict is not None and entry.request.anomaly is None:
            raise ReviewError(f"review {review_id!r} asks no anomaly question")
        classes = self.classes_for(entry.request)
        new_class = new_class and status == "answered" and label not in classes
        if new_class:
            self._check_new_class(labeler, label, classes)
        elif status == "answered" and label not in classes and not (verdict is not None and label == ""):
            raise ReviewError(f"unknown class {label!r}; known classes: {classes}"
                              + ("" if entry.request.anomaly is None else " (or give a verdict: normal / abnormal)"))
        if entry.done or labeler in entry.answered_by:
            raise ReviewError(f"review {review_id!r} is already answered", 409)
        if entry.leases.get(labeler, -1) <= now:
            raise ReviewError(f"review {review_id!r} is not leased to {labeler!r} (the lease may have expired)", 409)
        return Label(review_id, label if status == "answered" else status, labeler, int(now * 1000), status,
                     entry.request.model_name, True if new_class else None, verdict)

    def _check_new_class(self, labeler: str, label: str, classes: list[str]) -> None:
        if labeler not in self.creators:
            raise ReviewError(f"{labeler} may not name new classes (labeling.class_creators)", 403)
        try:
            check_class_name(label)
        except SchemaError as exc:
            raise ReviewError(str(exc)) from None
        if len(classes) >= self.max_classes:
            raise ReviewError(f"the model has {len(classes)} classes, the most allowed (labeling.max_classes)")

    def record(self, label: Label) -> None:
        """Apply an answer seen on the ``labels`` topic (ours or anyone's)."""
        entry = self.entries.get(label.review_id)
        if entry is None:  # the answer arrived before its request (or its request was forgotten)
            self._early.setdefault(label.review_id, []).append(label)
            while len(self._early) > self.capacity:
                self._early.pop(next(iter(self._early)))
            return
        entry.leases.pop(label.labeler, None)
        if label.status != "answered":
            entry.passed_by.add(label.labeler)
            return
        if label.labeler in entry.answered_by:
            return
        entry.answered_by.add(label.labeler)
        self.per_labeler[label.labeler] += 1
        if label.label and entry.request.predicted is not None:
            self.recent.append((entry.request.predicted, label.label))
        if len(entry.answered_by) >= self.answers_needed:
            entry.done = True

    def waiting(self) -> int:
        return sum(1 for e in self.entries.values() if not e.done)

    def recent_accuracy(self) -> float | None:
        """How often the model's prediction matched the labelers' answer, over recent answers."""
        if not self.recent:
            return None
        return sum(p == a for p, a in self.recent) / len(self.recent)

    def resume_offsets(self) -> dict[int, int]:
        """Per partition, the first offset still needed (everything before it is answered)."""
        by_partition: dict[int, list[_Entry]] = {}
        for entry in self.entries.values():
            by_partition.setdefault(entry.partition, []).append(entry)
        out = {}
        for partition, entries in by_partition.items():
            entries.sort(key=lambda e: e.offset)
            pending = [e.offset for e in entries if not e.done]
            out[partition] = pending[0] if pending else entries[-1].offset + 1
        return out

    def status(self) -> dict:
        return {"waiting": self.waiting(), "total": len(self.entries), "forgotten": self.evicted,
                "answers_per_labeler": dict(self.per_labeler),
                "model_version": self.model_version, "recent_accuracy": self.recent_accuracy(),
                "recent_answers": len(self.recent)}
