"""Per-device normalisation of the anomaly score.

A model's score says how rare a window is among the normal windows it was fitted on: −log10 of the share
of them that reach it (1 = the top 10 %, 3 = the top 0.1 %). Devices differ (a sensor mounted elsewhere, a
person who moves differently), so one device's ordinary windows may all score 3 while another's score
0.3, and one threshold means different things for them. :class:`DeviceScoreBaseline` keeps each device's
scores over its first ``windows`` windows under a version and from then on re-expresses that device's
scores the same way against its own: −log10 of the share of its reference windows that reach the score,
with an exponential tail above their 90th percentile, as the model does for its normal windows. The
threshold then says "this rare for this device".

The reference is fixed once learned, so a fault that develops later is not learned away; faults already
present in a device's first windows are its reference, and similar ones later score low (the price of
the option). A new version starts every device's reference afresh (its scores are on its own scale).
"""

from __future__ import annotations

import math

import numpy as np

TAIL_SHARE = 0.1  # above the reference's 90th percentile an exponential tail, as in the model's own score
MIN_TAIL_SCALE = 0.1  # the tail's mean excess, at least (score units): a device whose scores hardly vary is
#                      not flagged for a rise of a few hundredths


class DeviceReference:
    """One device's reference scores: how often they reach a score, as −log10 of the share.

    >>> ref = DeviceReference(np.arange(100) / 10.0)  # scores 0.0 .. 9.9
    >>> ref.rarity(0.0), ref.rarity(5.0), round(ref.rarity(9.0), 3), round(ref.rarity(9.9), 3)
    (0.0, 0.301, 1.072, 1.796)
    """

    def __init__(self, scores: np.ndarray) -> None:
        self.sorted = np.sort(np.asarray(scores, np.float64))
        self.tail_start = float(np.quantile(self.sorted, 1.0 - TAIL_SHARE))
        excess = self.sorted[self.sorted > self.tail_start] - self.tail_start
        self.tail_scale = max(float(excess.mean()) if len(excess) else 0.0, MIN_TAIL_SCALE)

    def rarity(self, score: float) -> float:
        """−log10 of the share of the reference that reaches ``score`` (an exponential tail above the 90th
        percentile), rounded to 3 decimals."""
        if score >= self.tail_start:
            return round(1.0 + (score - self.tail_start) / (self.tail_scale * math.log(10.0)), 3)
        reached = len(self.sorted) - np.searchsorted(self.sorted, score, side="left")
        return round(max(0.0, -math.log10(reached / len(self.sorted))), 3)


class DeviceScoreBaseline:
    """Each device's scores over its first ``windows`` windows under a version are its reference; later scores
    are put on the device's own scale (:class:`DeviceReference`). A device still learning its reference
    keeps the model's score.

    >>> baseline = DeviceScoreBaseline(windows=10)
    >>> ordinary = [3.0, 3.1, 3.2, 3.0, 3.1, 3.3, 3.2, 3.1, 3.0, 3.2]  # a device whose every window scores ~3
    >>> [baseline.adjust("d", 1, s) for s in ordinary][-1], baseline.learned("d")
    (3.2, True)
    >>> baseline.adjust("d", 1, 3.1), baseline.adjust("d", 1, 4.5)  # its ordinary windows, and a real rise
    (0.155, 6.602)
    >>> baseline.adjust("d", 2, 3.1), baseline.learned("d")  # a new version: the reference is learned afresh
    (3.1, False)
    """

    def __init__(self, windows: int) -> None:
        if windows < 10:
            raise ValueError(f"windows must be at least 10 (a reference needs a tail), got {windows}")
        self.windows = windows
        self.version: dict[str, int] = {}
        self.learning: dict[str, list[float]] = {}  # scores of devices whose reference is not complete yet
        self.references: dict[str, DeviceReference] = {}

    def adjust(self, device_id: str, version: int, score: float) -> float:
        """``score`` as the model gave it for ``device_id``'s window under ``version``, on the device's own scale
        once its reference is complete."""
        if self.version.get(device_id) != version:
            self.version[device_id] = version
            self.learning[device_id] = []
            self.references.pop(device_id, None)
        reference = self.references.get(device_id)
        if reference is not None:
            return reference.rarity(score)
        seen = self.learning[device_id]
        seen.append(score)
        if len(seen) >= self.windows:
            self.references[device_id] = DeviceReference(np.asarray(seen))
            del self.learning[device_id]
        return score

    def learned(self, device_id: str) -> bool:
        """Whether the device's reference is complete (its scores are on its own scale)."""
        return device_id in self.references

    def __len__(self) -> int:
        """Devices whose reference is complete."""
        return len(self.references)
