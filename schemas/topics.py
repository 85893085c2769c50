"""Topic names and partition counts: the one place they are defined (env overrides allowed).

>>> Topics().readings
'sensor-readings'
>>> Topics.from_env({"SENSORLOOP_TOPIC_PREDICTIONS": "preds"}).predictions
'preds'
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from typing import Mapping


@dataclass(frozen=True)
class Topics:
    """Default topic names; every name can be overridden with ``SENSORLOOP_TOPIC_<FIELD>``."""

    readings: str = "sensor-readings"
    predictions: str = "predictions"
    review_requests: str = "review-requests"
    labels: str = "labels"
    model_snapshots: str = "model-snapshots"
    dead_letters: str = "dead-letters"
    drift_events: str = "drift-events"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Topics":
        env = os.environ if env is None else env
        overrides = {f.name: env[f"SENSORLOOP_TOPIC_{f.name.upper()}"]
                     for f in fields(cls) if f"SENSORLOOP_TOPIC_{f.name.upper()}" in env}
        return replace(cls(), **overrides)

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
        }

    def all(self) -> list[str]:
        return [getattr(self, f.name) for f in fields(self)]


def topic_environment(topics: Topics) -> dict[str, str]:
    """``SENSORLOOP_TOPIC_*`` variables that make ``Topics.from_env()`` return ``topics``.

    >>> Topics.from_env(topic_environment(Topics(labels="answers"))).labels
    'answers'
    """
    return {f"SENSORLOOP_TOPIC_{f.name.upper()}": getattr(topics, f.name) for f in fields(topics)}
