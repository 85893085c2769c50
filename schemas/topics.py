"""Topic names and partition counts: the one place they are defined (the configuration's ``[topics]``).

>>> Topics().readings
'sensor-readings'
>>> Topics(predictions="preds").partitions()["preds"]
4
"""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True)
class Topics:
    """Default topic names; ``[topics]`` in the configuration (or ``SENSORLOOP_TOPIC_<FIELD>``) renames them."""

    readings: str = "sensor-readings"
    predictions: str = "predictions"
    review_requests: str = "review-requests"
    labels: str = "labels"
    model_snapshots: str = "model-snapshots"
    dead_letters: str = "dead-letters"
    drift_events: str = "drift-events"
    forecasts: str = "forecasts"
    windows: str = "unlabeled-windows"  # a share of served windows, for the learning side's self-supervised heads

    def partitions(self) -> dict[str, int]:
        """Partition count per topic: readings and predictions are spread by device."""
        return {
            self.readings: 4,
            self.predictions: 4,
            self.review_requests: 2,
            self.labels: 2,
            self.model_snapshots: 1,
            self.dead_letters: 1,
            self.drift_events: 1,
            self.forecasts: 4,
            self.windows: 2,
        }

    def all(self) -> list[str]:
        return [getattr(self, f.name) for f in fields(self)]

