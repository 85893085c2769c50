"""Per-device input normalisation, learned online (``serving.device_normalisation_windows``).

Devices differ: a sensor mounted upside down or with another gain, a person who moves harder. A model
normalises its input by one per-channel mean and deviation, fitted on its training windows. With this
option each device's own per-channel mean and deviation are learned from its windows as they come, and
a window is re-expressed before the model sees it, so that the device's values have the model's mean and
deviation: ``(x - device mean) / device deviation * model deviation + model mean``.

The windowing operator keeps each device's statistics in its keyed state (:class:`InputStats`, a few
numbers per channel) and hands every window the statistics of the windows *before* it (a window is never
judged against itself); a device that has sent fewer than ``warmup`` windows is served unchanged. The
inference operator knows the model's own mean and deviation and re-expresses the window
(:func:`adapt`); review requests and the windows learning trains on carry the re-expressed values, so
learning sees what serving scored.

``halflife`` (in windows) lets the statistics follow a device that changes (0: every window counts the
same, for as long as the device is known).

>>> norm = DeviceNormaliser(warmup=2)
>>> stats = None
>>> for offset in (10.0, 12.0):  # a device whose only channel reads 10 and 12 around a model mean of 0
...     window = np.full((4, 1), offset, np.float32)
...     assert norm.reference(stats) is None  # still warming up
...     stats = norm.observe(stats, window)
>>> ref = norm.reference(stats)
>>> ref.tolist()
[[11.0], [1.0]]
>>> adapt(np.full((4, 1), 12.0, np.float32), ref, np.zeros(1), np.ones(1)).ravel().tolist()
[1.0, 1.0, 1.0, 1.0]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MIN_STD_SHARE = 1e-3  # a device deviation below this share of the model's is taken as that floor: a channel a
#                      device holds still is centred, not blown up


@dataclass(slots=True)
class InputStats:
    """One device's per-channel mean and variance over its windows so far (``weight``: how many windows they
    stand for; fewer than ``count`` with a half-life)."""

    count: int
    weight: float
    mean: np.ndarray
    var: np.ndarray

    def __reduce__(self):
        return _rebuild_stats, (self.count, self.weight, self.mean.tolist(), self.var.tolist())


def _rebuild_stats(count: int, weight: float, mean: list, var: list) -> InputStats:
    return InputStats(count, weight, np.asarray(mean, np.float64), np.asarray(var, np.float64))


class DeviceNormaliser:
    """Learns a device's per-channel mean and deviation from its windows (:meth:`observe`) and says what to
    normalise its next window by (:meth:`reference`, None until ``warmup`` windows were seen)."""

    def __init__(self, warmup: int, halflife: int = 0) -> None:
        if warmup < 1 or halflife < 0:
            raise ValueError(f"warmup must be at least 1 and halflife at least 0, got {warmup} and {halflife}")
        self.warmup = warmup
        self.decay = 0.5 ** (1.0 / halflife) if halflife else 1.0

    def observe(self, stats: InputStats | None, window: np.ndarray) -> InputStats:
        """``stats`` with one more window ``[time, channels]`` (a new object; ``stats`` may be None).

        Each window's per-channel mean and variance are merged in (Chan's parallel update, with the past
        weighted down by the half-life), so overlapping windows count each sample about equally."""
        values = np.asarray(window, np.float64)
        mean, var = values.mean(0), values.var(0)
        if stats is None:
            return InputStats(1, 1.0, mean, var)
        old = stats.weight * self.decay
        weight = old + 1.0
        delta = mean - stats.mean
        new_mean = stats.mean + delta / weight
        new_var = (old * stats.var + var + delta ** 2 * old / weight) / weight
        return InputStats(stats.count + 1, weight, new_mean, new_var)

    def step(self, stats: InputStats | None, window: np.ndarray) -> tuple[np.ndarray | None, InputStats]:
        """What to normalise ``window`` by (the statistics of the windows *before* it, as :meth:`reference`
        gives them) and the statistics with it learned."""
        return self.reference(stats), self.observe(stats, window)

    def reference(self, stats: InputStats | None) -> np.ndarray | None:
        """``[[means], [deviations]]`` (float32) to normalise the device's next window by, or None while it
        has sent fewer than ``warmup`` windows."""
        if stats is None or stats.count < self.warmup:
            return None
        return np.stack([stats.mean, np.sqrt(stats.var)]).astype(np.float32)


def adapt(values: np.ndarray, device: np.ndarray, model_mean: np.ndarray, model_std: np.ndarray) -> np.ndarray:
    """``values`` ``[time, channels]`` re-expressed from the device's mean and deviation (``device``, as
    :meth:`DeviceNormaliser.reference` gives them) to the model's (float32, a new array)."""
    model_mean, model_std = np.asarray(model_mean, np.float32), np.asarray(model_std, np.float32)
    std = np.maximum(device[1], model_std * MIN_STD_SHARE)
    return ((values - device[0]) / std * model_std + model_mean).astype(np.float32)
