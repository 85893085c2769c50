"""The gate of a model's self-supervised heads: held-out unlabeled windows (never trained on) on which a
candidate's error (reconstruction, and forecast where the samples after a window are known) is compared
with the version in service's, window by window, in a paired sign test like the classification gate's.

>>> import numpy as np
>>> gate = SelfSupervisedGate(min_samples=4, holdout=100, z=1.645)
>>> for i in range(20):
...     gate.hold_out(np.full((2, 1), float(i), np.float32))
>>> d = gate.compare(np.full(20, 0.1), np.full(20, 0.5))
>>> d.accept, d.wins, d.losses
(True, 20, 0)
>>> gate.compare(np.full(20, 0.5), np.full(20, 0.1)).reason
'refused: error 0.5000 vs serving 0.1000 (wins 0, losses 20: needs wins - losses > 1.645 * sqrt(20), and a lower mean) on 20 held-out unlabeled windows'
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np

from model.self_supervised import baseline_errors, window_errors
from operators.gate import wins_clearly


@dataclass
class SelfSupervisedDecision:
    accept: bool
    candidate_error: float
    serving_error: float
    samples: int
    reason: str
    wins: int = 0  # held-out windows where the candidate's error is lower
    losses: int = 0

    def clearly_worse(self, z: float) -> bool:
        """The version in service has the lower error on clearly more windows than a fair coin gives it."""
        return wins_clearly(self.losses, self.wins, z)

    def clearly_better(self, z: float) -> bool:
        return wins_clearly(self.wins, self.losses, z)


class SelfSupervisedGate:
    """Keeps the latest ``holdout`` unlabeled windows aside; a candidate passes when its error is lower on
    clearly more of them than the reference's (``z`` standard deviations of a fair coin; ties count for
    neither) and lower on average, once ``min_samples`` are held out."""

    def __init__(self, min_samples: int = 30, holdout: int = 300, z: float = 1.645) -> None:
        self.min_samples, self.z = min_samples, z
        self.windows: deque = deque(maxlen=holdout)

    def hold_out(self, window: np.ndarray, future: np.ndarray | None = None) -> None:
        after = None if future is None else np.asarray(future, np.float32)
        self.windows.append((np.asarray(window, np.float32), after))

    def arrays(self, horizon: int, channels: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """The held-out windows, their futures (zeros where unknown) and which are known."""
        X = np.stack([w for w, _ in self.windows])
        known = np.asarray([f is not None for _, f in self.windows])
        if not horizon:
            return X, None, known
        F = np.stack([f if f is not None else np.zeros((horizon, channels), np.float32) for _, f in self.windows])
        return X, F, known

    def judge(self, candidate, reference=None) -> SelfSupervisedDecision:
        """``candidate`` and ``reference`` are networks; ``reference=None`` (a first version) compares with the
        trivial model in the candidate's units (channel means rebuilt, the last sample repeated)."""
        n = len(self.windows)
        if n < self.min_samples:
            return SelfSupervisedDecision(False, math.nan, math.nan, n,
                                          f"only {n} held-out unlabeled windows, {self.min_samples} needed")
        spec = candidate.spec
        X, F, known = self.arrays(spec.horizon if spec.has("forecast") else 0, spec.n_channels)
        mine = window_errors(candidate, X, F, known)
        theirs = window_errors(reference, X, F, known) if reference is not None else baseline_errors(candidate, X, F,
                                                                                                      known)
        return self.compare(mine, theirs, "serving" if reference is not None else "the trivial model")

    def compare(self, mine: np.ndarray, theirs: np.ndarray, against: str = "serving") -> SelfSupervisedDecision:
        wins, losses = int((mine < theirs).sum()), int((mine > theirs).sum())
        accept = wins_clearly(wins, losses, self.z) and float(np.mean(mine)) < float(np.mean(theirs))
        rule = (f"wins {wins}, losses {losses}: needs wins - losses > {self.z:g} * sqrt({wins + losses}), "
                "and a lower mean")
        reason = (f"{'accepted' if accept else 'refused'}: error {float(np.mean(mine)):.4f} vs {against} "
                  f"{float(np.mean(theirs)):.4f} ({rule}) on {len(mine)} held-out unlabeled windows")
        return SelfSupervisedDecision(accept, float(np.mean(mine)), float(np.mean(theirs)), len(mine), reason, wins,
                                      losses)
