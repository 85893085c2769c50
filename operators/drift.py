"""Drift detection on what the learning path sees: prequential error and mean confidence (river ADWIN).

>>> m = DriftMonitor(delta=0.002)
>>> alarms = [m.update(correct=True, confidence=0.95) for _ in range(500)]
>>> alarms = [m.update(correct=False, confidence=0.4) for _ in range(500)]
>>> m.drifts["error"] >= 1 and m.drifts["confidence"] >= 1
True
"""

from __future__ import annotations

from river import drift


class DriftMonitor:
    """Two ADWIN detectors: one on the 0/1 error of labeled windows, one on served confidence."""

    def __init__(self, delta: float = 0.002) -> None:
        self.detectors = {"error": drift.ADWIN(delta=delta), "confidence": drift.ADWIN(delta=delta)}
        self.drifts = {name: 0 for name in self.detectors}

    def _feed(self, name: str, value: float) -> bool:
        detector = self.detectors[name]
        detector.update(value)
        if detector.drift_detected:
            self.drifts[name] += 1
            return True
        return False

    def update(self, correct: bool | None = None, confidence: float | None = None) -> list[str]:
        """Feed what is known about one window; returns the signals that drifted on it."""
        fired = []
        if correct is not None and self._feed("error", 0.0 if correct else 1.0):
            fired.append("error")
        if confidence is not None and self._feed("confidence", float(confidence)):
            fired.append("confidence")
        return fired

    @property
    def error_rate(self) -> float:
        return float(self.detectors["error"].estimation)
