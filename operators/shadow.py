"""The shadow phase: a candidate that passed the gate is scored beside the version in service on the
live windows before it may serve.

Serving scores every window with both (``operators.inference.WindowScorer.shadow``), asks about the
windows where they disagree, and every review request says what each predicted. The learning job tallies
the answered windows: where exactly one of the two is right, the candidate must win clearly more to be
promoted (a paired sign test at ``z``, after at least ``min_answers``), and it is withdrawn when the
version in service wins clearly.
After ``max_answers`` answered windows without a clear result, it is promoted if it won at least as
many as it lost, else withdrawn.

>>> trial = ShadowTrial(version=3, serving=2, z=1.645, min_answers=20, max_answers=200)
>>> verdicts = [trial.observe(serving_right=i % 2 == 0, shadow_right=True) for i in range(30)]
>>> [v for v in verdicts if v][0]
ShadowVerdict(version=3, promote=True, reason='v3 in shadow right where v2 was wrong on 10 of 20 answered windows, wrong where it was right on 0 (shadow_z 1.645)')
"""

from __future__ import annotations

from dataclasses import dataclass

from operators.gate import wins_clearly


@dataclass(frozen=True)
class ShadowVerdict:
    """Promote (serve) or withdraw the version in its shadow phase, and why."""

    version: int
    promote: bool
    reason: str


@dataclass
class ShadowTrial:
    """Paired tally of a shadow version against the version in service on answered live windows."""

    version: int
    serving: int
    z: float = 1.645
    min_answers: int = 20
    max_answers: int = 200
    answers: int = 0
    wins: int = 0  # the shadow right, the version in service wrong
    losses: int = 0  # the version in service right, the shadow wrong

    def observe(self, serving_right: bool, shadow_right: bool) -> ShadowVerdict | None:
        self.answers += 1
        self.wins += int(shadow_right and not serving_right)
        self.losses += int(serving_right and not shadow_right)
        tally = (f"v{self.version} in shadow right where v{self.serving} was wrong on {self.wins} of {self.answers} "
                 f"answered windows, wrong where it was right on {self.losses}")
        if self.answers < self.min_answers:
            return None
        if wins_clearly(self.wins, self.losses, self.z):
            return ShadowVerdict(self.version, True, f"{tally} (shadow_z {self.z:g})")
        if wins_clearly(self.losses, self.wins, self.z):
            return ShadowVerdict(self.version, False, f"{tally} (shadow_z {self.z:g})")
        if self.answers >= self.max_answers:
            return ShadowVerdict(self.version, self.wins >= self.losses,
                                 f"{tally}: no clear difference after {self.max_answers} answers, "
                                 f"{'not worse' if self.wins >= self.losses else 'worse'}")
        return None
