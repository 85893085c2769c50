"""Serving settings shared by the plain-Python operators and the Flink wiring."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping


@dataclass(frozen=True)
class ServingConfig:
    """Every knob of the serving path, with defaults that suit 10 Hz wearable sensors.

    >>> ServingConfig(window=16, stride=4).window
    16
    >>> ServingConfig(stride=0)
    Traceback (most recent call last):
    ...
    ValueError: stride must be >= 1, got 0
    """

    model_name: str = "basic-motions"
    model_version: int = 0  # 0: the registry's latest at start; announcements on model-snapshots swap it
    registry: str = "var/registry"
    window: int = 32
    stride: int = 8
    max_out_of_order_ms: int = 0
    max_seq_gap_buffer: int = 32
    seq_gap_timeout_ms: int = 1_000
    reset_gap_ms: int = 10_000
    max_batch: int = 64
    max_wait_ms: int = 10
    confidence_threshold: float = 0.6
    audit_rate: float = 0.01
    review_budget_per_minute: int = 120
    max_message_bytes: int = 64 * 1024
    runtime: str = "onnx"
    device: str = "auto"
    inference_threads: int = 1
    stats_file: str = ""
    confidence_drift_delta: float = 0.002  # ADWIN on served confidence (a fall is a drift event); 0: off
    drift_budget_per_minute: int = 600  # review budget for a while after a confidence drift
    drift_boost_seconds: int = 120

    def __post_init__(self) -> None:
        if self.model_version < 0:
            raise ValueError("model_version must be >= 0 (0 means the latest)")
        for name in ("window", "stride", "max_batch", "max_seq_gap_buffer"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_out_of_order_ms", "seq_gap_timeout_ms", "max_wait_ms", "review_budget_per_minute", "reset_gap_ms"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.confidence_threshold <= 1.0:
            raise ValueError("confidence_threshold must lie in [0, 1]")
        if not 0.0 <= self.confidence_drift_delta < 1.0:
            raise ValueError("confidence_drift_delta must lie in [0, 1)")
        if self.drift_budget_per_minute < 0 or self.drift_boost_seconds < 0:
            raise ValueError("drift_budget_per_minute and drift_boost_seconds must be >= 0")
        if not 0.0 <= self.audit_rate <= 1.0:
            raise ValueError("audit_rate must lie in [0, 1]")
        if self.runtime not in ("onnx", "torch"):
            raise ValueError(f"runtime must be 'onnx' or 'torch', got {self.runtime!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> "ServingConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(obj) - known)
        if unknown:
            raise ValueError(f"unknown serving settings: {unknown}")
        return cls(**obj)
