"""Drift detection on what the learning path sees: the prequential error of labeled windows (river ADWIN).

A fall in served confidence is the serving job's to detect (``operators.confidence_watch``), where
every window's confidence is known.

>>> m = DriftMonitor(delta=0.002)
>>> alarms = [m.update(correct=True) for _ in range(500)]
>>> alarms = [m.update(correct=False) for _ in range(500)]
>>> m.drifts["error"] >= 1
True
"""

from __future__ import annotations

from operators.python_thread import import_on_python_thread


class DriftMonitor:
    """ADWIN on the 0/1 error of labeled windows (what serving said before the label came)."""

    def __init__(self, delta: float = 0.002) -> None:
        self.detectors = {"error": import_on_python_thread("river.drift").ADWIN(delta=delta)}
        self.drifts = {name: 0 for name in self.detectors}

    def update(self, correct: bool) -> list[str]:
        """Feed one labeled window; returns the signals that drifted on it."""
        detector = self.detectors["error"]
        detector.update(0.0 if correct else 1.0)
        if detector.drift_detected:
            self.drifts["error"] += 1
            return ["error"]
        return []

    @property
    def error_rate(self) -> float:
        return float(self.detectors["error"].estimation)
