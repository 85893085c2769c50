"""Real labeled sensor data that ships offline, cut into windows for training.

BasicMotions: a smartwatch's 3-axis accelerometer and gyroscope at 10 Hz, 10 s
recordings of four activities (loaded from the copy bundled with ``aeon``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Recordings:
    """Labeled recordings ``series[n, time, channels]`` with one label each."""

    series: np.ndarray
    labels: np.ndarray
    channels: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.labels)


def load_basic_motions(split: str = "train") -> Recordings:
    """Load BasicMotions (``split`` is ``train`` or ``test``), as float32 ``[n, 100, 6]``."""
    from aeon.datasets import load_basic_motions as _load

    from model.spec import BASIC_MOTIONS_CHANNELS

    X, y = _load(split=split)
    series = np.ascontiguousarray(np.transpose(X, (0, 2, 1)), dtype=np.float32)
    return Recordings(series, np.asarray([str(v) for v in y]), tuple(BASIC_MOTIONS_CHANNELS))


def sliding_windows(rec: Recordings, window: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Cut every recording into windows; each window takes its recording's label.

    >>> rec = Recordings(np.zeros((2, 10, 3), np.float32), np.array(["a", "b"]), ("x", "y", "z"))
    >>> X, y = sliding_windows(rec, window=4, stride=3)
    >>> X.shape, y.tolist()
    ((6, 4, 3), ['a', 'a', 'a', 'b', 'b', 'b'])
    """
    xs, ys = [], []
    for series, label in zip(rec.series, rec.labels):
        for start in range(0, series.shape[0] - window + 1, stride):
            xs.append(series[start:start + window])
            ys.append(label)
    return np.stack(xs).astype(np.float32), np.asarray(ys)
