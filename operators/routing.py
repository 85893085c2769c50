"""Which predictions go to human review: low confidence, a small audit sample, within a budget."""

from __future__ import annotations

import zlib


class ReviewRouter:
    """Routes a window to review when its confidence is below ``threshold`` or when it falls
    in the audit sample; a token bucket caps requests at ``budget_per_minute``.

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

    def __init__(self, threshold: float, audit_rate: float, budget_per_minute: int) -> None:
        self.threshold = threshold
        self.audit_rate = audit_rate
        self.capacity = float(budget_per_minute)
        self.tokens = float(budget_per_minute)
        self.refill_per_ms = budget_per_minute / 60_000.0
        self.last_ms: int | None = None
        self.suppressed = 0

    def _in_audit_sample(self, review_id: str) -> bool:
        return zlib.crc32(review_id.encode()) / 0xFFFFFFFF < self.audit_rate

    def decide(self, review_id: str, confidence: float, now_ms: int) -> str | None:
        if confidence < self.threshold:
            reason = "low_confidence"
        elif self._in_audit_sample(review_id):
            reason = "audit"
        else:
            return None
        if self.last_ms is not None:
            self.tokens = min(self.capacity, self.tokens + (now_ms - self.last_ms) * self.refill_per_ms)
        self.last_ms = now_ms
        if self.tokens < 1.0:
            self.suppressed += 1
            return None
        self.tokens -= 1.0
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
