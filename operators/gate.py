"""Validation gate: a candidate model replaces the serving one only if it is not worse.

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
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Callable

import numpy as np

Predictor = Callable[[np.ndarray], np.ndarray]


@dataclass
class GateDecision:
    accept: bool
    candidate_accuracy: float
    serving_accuracy: float
    samples: int
    reason: str


class ValidationGate:
    """Keeps the most recent ``holdout`` labeled windows aside (never trained on) and compares
    candidate and serving accuracy on them; accepts when candidate >= serving - ``margin``."""

    def __init__(self, margin: float = 0.01, min_samples: int = 30, holdout: int = 300) -> None:
        self.margin = margin
        self.min_samples = min_samples
        self.windows: deque = deque(maxlen=holdout)

    def hold_out(self, window: np.ndarray, label: int) -> None:
        self.windows.append((np.asarray(window, np.float32), int(label)))

    def judge(self, candidate: Predictor, serving: Predictor, must_beat: bool = False) -> GateDecision:
        """``must_beat``: the candidate must be strictly better (a first version against a baseline)."""
        n = len(self.windows)
        if n < self.min_samples:
            return GateDecision(False, float("nan"), float("nan"), n,
                                f"only {n} held-out windows, {self.min_samples} needed")
        X = np.stack([w for w, _ in self.windows])
        y = np.asarray([lab for _, lab in self.windows])
        cand = float((candidate(X).argmax(axis=1) == y).mean())
        serv = float((serving(X).argmax(axis=1) == y).mean())
        accept = cand > serv if must_beat else cand >= serv - self.margin
        verdict = "accepted" if accept else "refused"
        rule = "must beat it" if must_beat else f"margin {self.margin}"
        against = "the majority class" if must_beat else "serving"
        return GateDecision(accept, cand, serv, n, f"{verdict}: candidate {cand:.3f} vs {against} {serv:.3f} "
                                                   f"({rule}) on {n} held-out windows")
