"""Serving-side drift detection: ADWIN (river) on the confidence of every served prediction.

A fall in mean confidence means the model sees inputs unlike what it learned from, before any
label says so. The watch turns such a fall into a :class:`DriftEvent` (signal ``confidence``),
at most one per ``min_gap_ms``; a rise (a better model, easier inputs) is not reported.

>>> watch = ConfidenceWatch("m", min_gap_ms=0)
>>> [watch.observe([0.95] * 50, model_version=1, now_ms=i) for i in range(8)].count(None)
8
>>> events = [watch.observe([0.55] * 50, model_version=1, now_ms=100 + i) for i in range(8)]
>>> [(e.signal, e.model_version) for e in events if e is not None]
[('confidence', 1)]
"""

from __future__ import annotations

import math

from typing import Iterable

from operators.python_thread import import_on_python_thread
from schemas import DriftEvent


class ConfidenceWatch:
    def __init__(self, model_name: str, delta: float = 0.002, min_gap_ms: int = 60_000,
                 boost_budget_per_minute: int = 600, boost_seconds: int = 120, min_fall: float = 0.02) -> None:
        self.model_name, self.delta, self.min_gap_ms = model_name, delta, min_gap_ms
        self.boost_budget_per_minute, self.boost_seconds, self.min_fall = boost_budget_per_minute, boost_seconds, min_fall
        self.last_event_ms: int | None = None
        self.reset()

    def reset(self) -> None:
        """Start over (a new model has its own confidence level)."""
        self.detector = import_on_python_thread("river.drift").ADWIN(delta=self.delta)
        self.total, self.width = 0.0, 0  # ADWIN's window (sum, length), followed here: reading it costs calls

    def observe(self, confidences: Iterable[float], model_version: int, now_ms: int) -> DriftEvent | None:
        """Feed one micro-batch's confidences; a DriftEvent when their mean fell significantly."""
        fell = False
        d, total, width = self.detector, self.total, self.width
        for confidence in confidences:
            if not math.isfinite(confidence):
                continue  # a non-finite confidence would leave ADWIN's estimate NaN for good
            x = float(confidence)
            d.update(x)
            total += x  # ADWIN adds each value to its window's sum, and drops values only when it detects a change
            width += 1
            if d.drift_detected:
                if width > d.width:  # it dropped the older part of its window: compare that part's mean with the rest
                    older = (total - d.total) / (width - d.width)
                    fell = fell or d.estimation < older - self.min_fall
                total, width = 0.0, 0  # its next update starts a fresh window
        self.total, self.width = total, width
        if not fell or (self.last_event_ms is not None and now_ms - self.last_event_ms < self.min_gap_ms):
            return None
        self.last_event_ms = now_ms
        return DriftEvent(self.model_name, "confidence", now_ms, model_version, self.boost_budget_per_minute,
                          self.boost_seconds, None)
