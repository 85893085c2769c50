"""Real recordings replayed as per-device reading streams, optionally with a concept drift.

Each simulated device plays labeled recordings back to back (a fresh shuffled order each
cycle), one reading per step, so a device's stream looks like a smartwatch worn all day.

>>> import numpy as np
>>> from model.datasets import Recordings
>>> rec = Recordings(np.arange(12, dtype=np.float32).reshape(2, 3, 2), np.array(["a", "b"]), ("x", "y"))
>>> stream = ReadingStream(rec, n_devices=2, seed=0)
>>> first = [next(stream) for _ in range(4)]
>>> [(r["device_id"], r["seq"]) for r in first]
[('device-000', 0), ('device-001', 0), ('device-000', 1), ('device-001', 1)]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from model.datasets import Recordings


@dataclass(frozen=True)
class DriftPlan:
    """From reading ``after`` on, the affected devices' sensors change gain and offset (a
    calibration drift) and their activity mix changes to ``classes`` (empty: unchanged)."""

    after: int
    gain: dict[int, float] = field(default_factory=dict)
    offset: dict[int, float] = field(default_factory=dict)
    classes: tuple[str, ...] = ()
    device_fraction: float = 1.0


class ReadingStream(Iterator[dict]):
    """Round-robin readings of ``n_devices`` devices; each dict has device_id, seq, values, label."""

    def __init__(self, recordings: Recordings, n_devices: int = 8, seed: int = 0,
                 drift: DriftPlan | None = None, device_prefix: str = "device") -> None:
        self.rec = recordings
        self.rng = np.random.default_rng(seed)
        self.drift = drift
        self.devices = [f"{device_prefix}-{i:03d}" for i in range(n_devices)]
        self.queues: list[list[int]] = [[] for _ in range(n_devices)]
        self.position = [0] * n_devices
        self.seq = [0] * n_devices
        self.emitted = 0
        self.drifting = set(range(int(round(n_devices * (drift.device_fraction if drift else 0)))))
        self.rows: list[list[list[float]]] = [[] for _ in range(n_devices)]  # each device's current recording
        self.current = [self._start_recording(i) for i in range(n_devices)]

    @property
    def drifted(self) -> bool:
        return self.drift is not None and self.emitted >= self.drift.after

    def _allowed(self, device: int) -> np.ndarray:
        if self.drifted and device in self.drifting and self.drift.classes:
            return np.flatnonzero(np.isin(self.rec.labels, self.drift.classes))
        return np.arange(len(self.rec))

    def _next_recording(self, device: int) -> int:
        if not self.queues[device]:
            self.queues[device] = list(self.rng.permutation(self._allowed(device)))
        return int(self.queues[device].pop())

    def _start_recording(self, device: int) -> int:
        """Pick the device's next recording and round its rows once, as one array operation (with
        the drift's gain and offset when the device drifts by now)."""
        recording = self._next_recording(device)
        series = np.array(self.rec.series[recording])
        if self.drifted and device in self.drifting:
            for channel, gain in self.drift.gain.items():
                series[:, channel] *= gain
            for channel, offset in self.drift.offset.items():
                series[:, channel] += offset
        self.rows[device] = np.round(series.astype(np.float64), 6).tolist()
        return recording

    def __next__(self) -> dict:
        device = self.emitted % len(self.devices)
        if self.drift is not None and self.emitted == self.drift.after:
            for d in self.drifting:  # drifting devices switch to the new activity mix right away
                self.queues[d] = []
                self.current[d] = self._start_recording(d)
                self.position[d] = 0
        rows = self.rows[device]
        reading = {"device_id": self.devices[device], "seq": self.seq[device],
                   "values": rows[self.position[device]], "label": str(self.rec.labels[self.current[device]])}
        self.seq[device] += 1
        self.position[device] += 1
        if self.position[device] >= len(rows):
            self.position[device] = 0
            self.current[device] = self._start_recording(device)
        self.emitted += 1
        return reading


class BlockPacker:
    """Gathers each device's readings into sample blocks of ``size`` samples (``schemas.blocks``),
    with one time per sample, kept strictly increasing per device (readings stamped in the same
    millisecond are spread one millisecond apart).

    >>> packer = BlockPacker(size=2)
    >>> packer.add({"device_id": "a", "ts": 5, "seq": 0, "values": [1.0], "label": "x"}) is None
    True
    >>> packer.add({"device_id": "a", "ts": 5, "seq": 1, "values": [2.0], "label": "x"})
    {'device_id': 'a', 'ts': [5, 6], 'values': [[1.0], [2.0]], 'seq': 0, 'label': 'x'}
    """

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("size must be >= 1")
        self.size = size
        self.buffers: dict[str, list[dict]] = {}
        self.last_ts: dict[str, int] = {}

    def add(self, reading: dict) -> dict | None:
        """Buffer one reading; returns its device's block when it is full."""
        device = reading["device_id"]
        ts = max(int(reading["ts"]), self.last_ts.get(device, -1) + 1)
        self.last_ts[device] = ts
        buffer = self.buffers.setdefault(device, [])
        buffer.append({**reading, "ts": ts})
        if len(buffer) < self.size:
            return None
        del self.buffers[device]
        return self._block(buffer)

    def drain(self) -> list[dict]:
        """The partial blocks still buffered (at the end of a replay)."""
        out = [self._block(buffer) for buffer in self.buffers.values() if buffer]
        self.buffers.clear()
        return out

    @staticmethod
    def _block(readings: list[dict]) -> dict:
        first = readings[0]
        block = {"device_id": first["device_id"], "ts": [r["ts"] for r in readings],
                 "values": [r["values"] for r in readings]}
        if first.get("seq") is not None:
            block["seq"] = first["seq"]
        labels = [r.get("label") for r in readings]
        if any(label is not None for label in labels):
            if len(set(labels)) == 1:
                block["label"] = labels[0]
            else:
                block["labels"] = labels
        if first.get("device_type") is not None:
            block["device_type"] = first["device_type"]
        return block
