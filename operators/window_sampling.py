"""Which served windows go to the learning side unlabeled, for the self-supervised objectives of a model's
anomaly and forecast heads (``model.self_supervised``): a share of them, picked by a hash of the device and
window end (a replay picks the same ones), each with the samples that followed it when the model forecasts.

>>> import numpy as np
>>> from operators.windowing import Window
>>> sampler = WindowSampler(share=1.0, horizon=2)
>>> first = Window("d", 0, 300, np.arange(4, dtype=np.float32)[:, None], None, 0)
>>> sampler.offer(first, "m", 1, ["x"])
[]
>>> later = Window("d", 200, 500, np.arange(2, 6, dtype=np.float32)[:, None], None, 0)
>>> [s.future for s in sampler.offer(later, "m", 1, ["x"])]
[[[4.0], [5.0]]]
"""

from __future__ import annotations

import zlib
from collections import OrderedDict

import numpy as np

from operators.windowing import Window
from schemas import WindowSample


def sample_of(window: Window, model_name: str, version: int, channels: list[str],
              future: np.ndarray | None = None) -> WindowSample:
    return WindowSample(window.device_id, window.start, window.end, channels,
                        np.round(window.values.astype(np.float64), 5).tolist(), model_name, version,
                        np.round(future.astype(np.float64), 5).tolist() if future is not None else None)


class WindowSampler:
    """Picks ``share`` of the windows offered; with a ``horizon`` a picked window waits (in memory, at most
    ``max_waiting`` of them) for a later window of its device that holds the ``horizon`` samples after it,
    and goes without them when its device's next windows do not (a gap, a reset) or room runs out."""

    def __init__(self, share: float, horizon: int = 0, max_waiting: int = 10_000) -> None:
        self.share, self.horizon, self.max_waiting = share, horizon, max_waiting
        self.waiting: OrderedDict[tuple[str, int], tuple[Window, str, int, list[str]]] = OrderedDict()
        self.sent = 0

    def picks(self, window: Window) -> bool:
        return self.share > 0 and zlib.crc32(f"{window.device_id}:{window.end}#unlabeled".encode()) / 0xFFFFFFFF \
            < self.share

    def offer(self, window: Window, model_name: str, version: int, channels: list[str]) -> list[WindowSample]:
        """The samples ready to send now that ``window`` was scored."""
        out = self._complete(window) if self.waiting else []
        if self.picks(window):
            if self.horizon:
                self.waiting[(window.device_id, window.end)] = (window, model_name, version, channels)
                while len(self.waiting) > self.max_waiting:
                    old, name, v, names = self.waiting.popitem(last=False)[1]
                    out.append(sample_of(old, name, v, names))
            else:
                out.append(sample_of(window, model_name, version, channels))
        self.sent += len(out)
        return out

    def _complete(self, later: Window) -> list[WindowSample]:
        out = []
        for key in [k for k in self.waiting if k[0] == later.device_id and k[1] < later.end]:
            window, name, version, channels = self.waiting[key]
            future = following(window, later, self.horizon)
            if future is None and later.end < window.end + self.horizon * interval_of(window):
                continue  # the samples after it are still to come
            del self.waiting[key]
            out.append(sample_of(window, name, version, channels, future))
        return out


def interval_of(window: Window) -> float:
    n = len(window.values)
    return (window.end - window.start) / (n - 1) if n > 1 and window.end > window.start else 1.0


def following(window: Window, later: Window, horizon: int) -> np.ndarray | None:
    """The ``horizon`` samples right after ``window`` where ``later`` holds them all (by their times), else None."""
    step, later_step = interval_of(window), interval_of(later)
    wanted = window.end + step * np.arange(1, horizon + 1)
    index = np.rint((wanted - later.start) / later_step).astype(int)
    if index.min() < 0 or index.max() >= len(later.values):
        return None
    times = later.start + index * later_step
    if np.abs(times - wanted).max() > 0.5 * step:
        return None
    return later.values[index]
