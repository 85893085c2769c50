"""Live status of the serving path, computed from what it publishes.

>>> m = ServingMonitor()
>>> m.observe_prediction({"latency_ms": 10.0, "model_version": 1, "label": "a", "truth": "a"})
>>> m.observe_prediction({"latency_ms": 30.0, "model_version": 1, "label": "b", "truth": "a"})
>>> snap = m.snapshot(readings_sent=100, elapsed_s=2.0)
>>> snap["predictions"], snap["p50_ms"], snap["accuracy"], snap["model_version"]
(2, 20.0, 0.5, 1)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class ServingMonitor:
    predictions: int = 0
    reviews: int = 0
    labels: int = 0
    dead_letters: int = 0
    correct: int = 0
    judged: int = 0
    model_version: int | None = None
    latencies: list = field(default_factory=list)
    per_version: dict = field(default_factory=dict)  # version -> [correct, judged]
    _last: dict = field(default_factory=dict)

    def observe_prediction(self, p: dict) -> None:
        self.predictions += 1
        self.latencies.append(float(p["latency_ms"]))
        self.model_version = p["model_version"]
        if p.get("truth") is not None and p.get("label") is not None:  # (a model that does not classify has none)
            hit = int(p["label"] == p["truth"])
            self.judged += 1
            self.correct += hit
            tally = self.per_version.setdefault(p["model_version"], [0, 0])
            tally[0] += hit
            tally[1] += 1

    def observe_label(self) -> None:
        self.labels += 1

    def version_accuracy(self) -> dict[int, tuple[float, int]]:
        """Accuracy against ground truth of each model version's predictions, with their count."""
        return {v: (c / n, n) for v, (c, n) in sorted(self.per_version.items()) if n}

    def observe_review(self) -> None:
        self.reviews += 1

    def observe_dead_letter(self) -> None:
        self.dead_letters += 1

    def snapshot(self, readings_sent: int, elapsed_s: float) -> dict:
        """Totals, rates since the previous snapshot, and latency percentiles of that interval."""
        last = self._last or {"readings": 0, "predictions": 0, "elapsed": 0.0}
        dt = max(1e-9, elapsed_s - last["elapsed"])
        recent = np.asarray(self.latencies) if self.latencies else None
        snap = {
            "elapsed_s": elapsed_s,
            "readings": readings_sent,
            "readings_per_s": (readings_sent - last["readings"]) / dt,
            "predictions": self.predictions,
            "predictions_per_s": (self.predictions - last["predictions"]) / dt,
            "p50_ms": float(np.percentile(recent, 50)) if recent is not None else None,
            "p99_ms": float(np.percentile(recent, 99)) if recent is not None else None,
            "review_requests": self.reviews,
            "labels": self.labels,
            "dead_letters": self.dead_letters,
            "model_version": self.model_version,
            "accuracy": self.correct / self.judged if self.judged else None,
        }
        self.latencies = []
        self._last = {"readings": readings_sent, "predictions": self.predictions, "elapsed": elapsed_s}
        return snap


def status_line(s: dict) -> str:
    """One human line of a snapshot."""
    def fmt(v, spec):
        return "-" if v is None else format(v, spec)

    return (f"[{s['elapsed_s']:6.1f}s] readings {s['readings']:>7} ({s['readings_per_s']:6.0f}/s) | "
            f"predictions {s['predictions']:>6} ({s['predictions_per_s']:5.0f}/s) | "
            f"latency p50 {fmt(s['p50_ms'], '.0f')} ms p99 {fmt(s['p99_ms'], '.0f')} ms | "
            f"reviews {s['review_requests']} | labels {s['labels']} | dead letters {s['dead_letters']} | "
            f"model v{fmt(s['model_version'], 'd')} | accuracy {fmt(s['accuracy'], '.3f')}")
