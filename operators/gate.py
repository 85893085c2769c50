"""Validation gate: a candidate model replaces the serving one only if it is not worse, and, with
``z > 0``, only if it is better beyond chance on the same held-out windows (a paired sign test:
of the windows the two models disagree on, the candidate must win clearly more).

>>> import numpy as np
>>> gate = ValidationGate(margin=0.0, min_samples=2, holdout=10)
>>> for i in range(4):
...     gate.hold_out(np.array([float(i)]), i % 2)
>>> perfect = lambda X: np.eye(2)[(X[:, 0] % 2).astype(int)]
>>> always_0 = lambda X: np.tile([1.0, 0.0], (len(X), 1))
>>> d = gate.judge(perfect, always_0)
>>> d.accept, d.candidate_accuracy, d.serving_accuracy
(True, 1.0, 0.5)
>>> gate.judge(always_0, perfect).accept
False
>>> strict = ValidationGate(margin=0.0, min_samples=2, holdout=10, z=1.645)
>>> for i in range(4):
...     strict.hold_out(np.array([float(i)]), i % 2)
>>> strict.judge(perfect, always_0).reason   # 2 wins, 0 losses: not enough to tell
'refused: candidate 1.000 vs serving 0.500 (wins 2, losses 0: needs wins - losses > 1.645 * sqrt(2)) on 4 held-out windows'
>>> for i in range(4, 20):
...     strict.hold_out(np.array([float(i)]), i % 2)
>>> strict.judge(perfect, always_0).accept   # 10 wins, 0 losses
True
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Callable

import numpy as np

Predictor = Callable[[np.ndarray], np.ndarray]


def wins_clearly(wins: int, losses: int, z: float) -> bool:
    """A paired sign test: of the cases where exactly one side was right, ``wins`` exceed ``losses`` by
    more than ``z`` standard deviations of a fair coin (``z * sqrt(wins + losses)``).

    >>> wins_clearly(10, 0, 1.645), wins_clearly(2, 0, 1.645)
    (True, False)
    """
    return wins - losses > z * math.sqrt(wins + losses)


@dataclass
class GateDecision:
    accept: bool
    candidate_accuracy: float
    serving_accuracy: float
    samples: int
    reason: str
    wins: int = 0  # held-out windows only the candidate gets right
    losses: int = 0  # held-out windows only the serving version gets right

    def clearly_better(self, z: float) -> bool:
        """The candidate wins more of the windows they disagree on than a fair coin would, at ``z``."""
        return wins_clearly(self.wins, self.losses, z)


class ValidationGate:
    """Keeps the most recent ``holdout`` labeled windows aside (never trained on) and compares
    candidate and serving accuracy on them; accepts when candidate >= serving - ``margin`` and, with
    ``z > 0``, when the candidate's wins minus losses over the windows where exactly one of them is
    right exceed ``z`` standard deviations of a fair coin (``z * sqrt(wins + losses)``).

    Before ``min_samples`` windows are held out, a candidate may still pass, as soon as the sign test
    can tell at ``early_z`` (0: never): a first version that is clearly better need not wait.

    >>> gate = ValidationGate(min_samples=30, early_z=2.33)
    >>> for i in range(12):
    ...     gate.hold_out(np.array([float(i)]), i % 2)
    >>> perfect = lambda X: np.eye(2)[(X[:, 0] % 2).astype(int)]
    >>> always_0 = lambda X: np.tile([1.0, 0.0], (len(X), 1))
    >>> gate.judge(perfect, always_0).reason
    'accepted early: candidate 1.000 vs serving 0.500 (wins 6, losses 0: needs wins - losses > 2.33 * sqrt(6)) on 12 held-out windows'
    """

    def __init__(self, margin: float = 0.01, min_samples: int = 30, holdout: int = 300, z: float = 0.0,
                 early_z: float = 0.0) -> None:
        self.margin = margin
        self.z = z
        self.early_z = early_z
        self.min_samples = min_samples
        self.windows: deque = deque(maxlen=holdout)

    def __setstate__(self, state: dict) -> None:
        """A gate kept in state before early decisions existed loads with them off."""
        state.setdefault("early_z", 0.0)
        self.__dict__.update(state)

    def hold_out(self, window: np.ndarray, label: int) -> None:
        self.windows.append((np.asarray(window, np.float32), int(label)))

    def forget_held_out(self) -> None:
        """The stream changed (a drift): windows held out before it judge candidates by the old concept, and
        would refuse the very candidates that learned the new one; evidence starts again."""
        self.windows.clear()

    def judge(self, candidate: Predictor, serving: Predictor, must_beat: bool = False,
              out_of_fold: bool = False) -> GateDecision:
        """``must_beat``: the candidate must be strictly better (a first version against a baseline).
        ``out_of_fold``: ``candidate`` is called with the held-out labels too, ``candidate(X, y)``: its
        calibration is fitted on them, each window's prediction with a calibration not fitted on it."""
        n = len(self.windows)
        early = n < self.min_samples
        if early and (self.early_z <= 0 or n == 0):
            return GateDecision(False, float("nan"), float("nan"), n,
                                f"only {n} held-out windows, {self.min_samples} needed")
        X = np.stack([w for w, _ in self.windows])
        y = np.asarray([lab for _, lab in self.windows])
        cand_right = (candidate(X, y) if out_of_fold else candidate(X)).argmax(axis=1) == y
        serv_right = serving(X).argmax(axis=1) == y
        cand, serv = float(cand_right.mean()), float(serv_right.mean())
        wins, losses = int((cand_right & ~serv_right).sum()), int((serv_right & ~cand_right).sum())
        accept = cand > serv if must_beat else cand >= serv - self.margin
        rule = "must beat it" if must_beat else f"margin {self.margin}"
        z = self.early_z if early else self.z
        if z > 0:
            accept = bool(accept and wins_clearly(wins, losses, z))
            rule = f"wins {wins}, losses {losses}: needs wins - losses > {z:g} * sqrt({wins + losses})"
        verdict = ("accepted" if accept else "refused") + (" early" if early else "")
        against = "the majority class" if must_beat else "serving"
        return GateDecision(accept, cand, serv, n, f"{verdict}: candidate {cand:.3f} vs {against} {serv:.3f} "
                                                   f"({rule}) on {n} held-out windows", wins, losses)
