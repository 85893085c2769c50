"""Keeping a :class:`LearningLoop` in keyed state without rewriting all of it for every label.

The loop (two networks, optimizer, replay reservoir, holdout) pickles to a few MB: writing it after
every labeled window costs tens of ms, which caps the learner far below the rate labels arrive at.
Instead the state holds a full snapshot written every ``snapshot_every`` steps plus a journal of the
steps since: each labeled window, each accepted version with its weights, each rollback, and each
shadow phase begun or ended. A restore loads the
snapshot and replays the journal, so nothing learned before a checkpoint is lost; replay never
publishes again (what it re-derives is discarded; accepted versions come from the journal).

>>> journal = LoopJournal(snapshot_every=3)
>>> [journal.record() for _ in range(4)]
[False, False, True, False]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

from model.spec import ModelSpec
from model.train import load_network
from operators.label_join import LabeledWindow
from operators.learning import LearningLoop, with_shift


@dataclass(frozen=True)
class AcceptedVersion:
    """A journal entry: the loop's candidate became ``version`` (weights as published, and what its per-class
    calibration biases add to its logits: ``learning.with_shift``; None for none or an entry from before)."""

    version: int
    weights: bytes
    shift: tuple | None = None


@dataclass(frozen=True)
class RolledBack:
    """A journal entry: live audit answers rolled the model back to ``version`` (its weights and shift)."""

    version: int
    weights: bytes
    shift: tuple | None = None


@dataclass(frozen=True)
class Shadowing:
    """A journal entry: ``version`` (its weights) began its shadow phase."""

    version: int
    weights: bytes
    shift: tuple | None = None


@dataclass(frozen=True)
class ShadowEnded:
    """A journal entry: ``version``'s shadow phase ended without it serving."""

    version: int


JournalEntry = LabeledWindow | AcceptedVersion | RolledBack | Shadowing | ShadowEnded


def apply_accepted(loop: LearningLoop, entry: AcceptedVersion, spec: ModelSpec) -> None:
    """Make a published version the loop's reference again (used on replay)."""
    loop.adopt(entry.version, with_shift(load_network(spec, entry.weights), getattr(entry, "shift", None)))


class LoopJournal:
    """Counts journal entries since the last snapshot and replays a journal onto a restored loop."""

    def __init__(self, snapshot_every: int = 64) -> None:
        if snapshot_every < 1:
            raise ValueError("snapshot_every must be >= 1")
        self.snapshot_every = snapshot_every
        self.pending = 0

    def record(self) -> bool:
        """One more entry journaled; True when it is time to write a snapshot (and clear the journal)."""
        self.pending += 1
        if self.pending >= self.snapshot_every:
            self.pending = 0
            return True
        return False

    def restore(self, snapshot: LearningLoop | None, entries: Iterable[JournalEntry],
                new_loop: Callable[[], LearningLoop]) -> LearningLoop:
        """The loop as it was after the last journaled step."""
        loop = snapshot if snapshot is not None else new_loop()
        self.pending = 0
        for entry in entries:
            self.pending += 1
            if isinstance(entry, AcceptedVersion):
                apply_accepted(loop, entry, loop.spec)
            elif isinstance(entry, RolledBack):
                loop.rolled_back(entry.version, with_shift(load_network(loop.spec, entry.weights, older_classes=True),
                                                           getattr(entry, "shift", None)))
            elif isinstance(entry, Shadowing):
                loop.start_shadow(entry.version, with_shift(load_network(loop.spec, entry.weights),
                                                            getattr(entry, "shift", None)))
            elif isinstance(entry, ShadowEnded):
                loop.end_shadow()
            else:
                loop.learn(entry)  # a candidate found again here was handled before the restore
                loop.take_drifts()  # so were its drift events
                loop.take_rollback()  # and its rollback (journaled as its own entry)
                loop.take_shadow_verdict()  # and the end of a shadow phase
        return loop
