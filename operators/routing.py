"""Which predictions go to human review: unsure windows (by a query strategy), a small uniform
audit sample, within a budget that one device or one predicted class cannot take alone."""

from __future__ import annotations

import math
import zlib
from collections import Counter

import numpy as np

STRATEGIES = ("confidence", "margin", "entropy")


def unsure(row: np.ndarray, strategy: str, threshold: float) -> bool:
    """Whether one probability row is unsure: ``confidence`` (top probability below the threshold),
    ``margin`` (top two closer than the threshold), ``entropy`` (normalised entropy above it).

    >>> row = np.array([0.5, 0.4, 0.1])
    >>> unsure(row, "confidence", 0.6), unsure(row, "margin", 0.2), unsure(row, "entropy", 0.9)
    (True, True, False)
    """
    if strategy == "confidence":
        return float(row.max()) < threshold
    if strategy == "margin":
        top2 = np.partition(row, -2)[-2:] if row.size > 1 else np.array([0.0, row.max()])
        return float(top2[1] - top2[0]) < threshold
    if strategy == "entropy":
        p = row[row > 0]
        return float(-(p * np.log(p)).sum() / math.log(row.size)) > threshold if row.size > 1 else False
    raise ValueError(f"unknown query strategy {strategy!r}; use one of {STRATEGIES}")


class ReviewRouter:
    """Routes a window to review when it falls in the audit sample (whatever its confidence) or is
    unsure (confidence below ``threshold``, or the ``strategy``'s test); a token bucket caps requests
    at ``budget_per_minute``.

    The audit sample is a hash of the review id, so a replay after a restart picks the
    same windows.

    >>> r = ReviewRouter(threshold=0.6, audit_rate=0.0, budget_per_minute=2)
    >>> [r.decide("id%d" % i, 0.3, now_ms=0) for i in range(3)]
    ['low_confidence', 'low_confidence', None]
    >>> r.suppressed, r.decide("id9", 0.3, now_ms=30_000)
    (1, 'low_confidence')
    >>> r.decide("id10", 0.95, now_ms=30_000) is None
    True
    """

    def __init__(self, threshold: float, audit_rate: float, budget_per_minute: int, strategy: str = "confidence",
                 device_share: float = 1.0, class_share: float = 1.0) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown query strategy {strategy!r}; use one of {STRATEGIES}")
        self.threshold = threshold
        self.strategy = strategy
        self.audit_rate = audit_rate
        self.capacity = float(budget_per_minute)
        self.tokens = float(budget_per_minute)
        self.refill_per_ms = budget_per_minute / 60_000.0
        self.last_ms: int | None = None
        self.suppressed = 0
        self.device_share, self.class_share = device_share, class_share
        self.minute: int | None = None
        self.by_device: Counter = Counter()  # unsure-window reviews granted this minute
        self.by_class: Counter = Counter()
        self.over_share = 0  # unsure windows not asked about: their device or class had its share

    def _in_audit_sample(self, review_id: str) -> bool:
        return zlib.crc32(review_id.encode()) / 0xFFFFFFFF < self.audit_rate

    def _within_share(self, device: str | None, predicted: str | None, now_ms: int) -> bool:
        """One device, or one predicted class, gets at most its share of a minute's budget."""
        if self.device_share >= 1.0 and self.class_share >= 1.0:
            return True
        if self.minute != now_ms // 60_000:
            self.minute = now_ms // 60_000
            self.by_device.clear()
            self.by_class.clear()
        device_cap = max(1, int(self.device_share * self.capacity))
        class_cap = max(1, int(self.class_share * self.capacity))
        if self.by_device[device] >= device_cap or self.by_class[predicted] >= class_cap:
            self.over_share += 1
            return False
        return True

    def decide(self, review_id: str, confidence: float, now_ms: int, row: np.ndarray | None = None,
               device: str | None = None, predicted: str | None = None, disagree: bool = False,
               anomalous: bool = False) -> str | None:
        """The reason to ask about a window (None: not asked). ``row`` (its probabilities) is needed by
        the margin and entropy strategies; ``device`` and ``predicted`` by the shares; ``disagree``: the
        version in its shadow phase predicted another class (asked as ``disagreement``, sure or not);
        ``anomalous``: its anomaly score reached the threshold (asked as ``anomaly``, before the others, and
        within the same shares: a broken sensor cannot take the whole budget).

        >>> r = ReviewRouter(threshold=0.6, audit_rate=0.0, budget_per_minute=10)
        >>> r.decide("a", 0.99, 0), r.decide("b", 0.99, 0, disagree=True), r.decide("c", 0.3, 0, disagree=True)
        (None, 'disagreement', 'low_confidence')
        >>> r.decide("d", 0.3, 0, anomalous=True)
        'anomaly'
        """
        if self._in_audit_sample(review_id):
            reason = "audit"  # first, unsure or not: uniform over all windows, so estimates from it are unbiased
        else:
            doubtful = (confidence < self.threshold if self.strategy == "confidence" or row is None
                        else unsure(row, self.strategy, self.threshold))
            if not ((doubtful or disagree or anomalous) and self._within_share(device, predicted, now_ms)):
                return None
            reason = "anomaly" if anomalous else "low_confidence" if doubtful else "disagreement"
        if self.last_ms is not None:
            self.tokens = min(self.capacity, self.tokens + (now_ms - self.last_ms) * self.refill_per_ms)
        self.last_ms = now_ms
        if self.tokens < 1.0:
            self.suppressed += 1
            return None
        self.tokens -= 1.0
        if reason != "audit" and (self.device_share < 1.0 or self.class_share < 1.0):
            self.by_device[device] += 1
            self.by_class[predicted] += 1
        return reason

    def set_budget(self, budget_per_minute: int) -> None:
        """Change the cap (the learning path raises it for a while after a drift)."""
        self.capacity = float(budget_per_minute)
        self.refill_per_ms = budget_per_minute / 60_000.0
        self.tokens = min(self.tokens, self.capacity)


def boosted_budget(configured_per_minute: int, boost_per_minute: int, cap_per_minute: int) -> int:
    """The review budget while a drift boost lasts: the boost raises it, never lowers it, and never
    beyond ``cap_per_minute`` (serving's own ``drift_budget_per_minute``: a drift event is a message
    anyone who can write to the topic may send).

    >>> boosted_budget(120, 600, 600), boosted_budget(100_000, 600, 600), boosted_budget(120, 10**9, 600)
    (600, 100000, 600)
    """
    return max(configured_per_minute, min(boost_per_minute, cap_per_minute))
