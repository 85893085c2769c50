from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from operators.batching import BatchPolicy, ListStore, MicroBatcher
from operators.routing import ReviewRouter, unsure


def test_batch_flushes_on_size_and_on_wait():
    b, store = MicroBatcher(BatchPolicy(max_batch=3, max_wait_ms=50)), ListStore()
    assert b.add(store, 1, 0) is None and b.add(store, 2, 10) is None
    assert b.add(store, 3, 20) == [1, 2, 3]
    assert store.count() == 0 and b.deadline(store) is None
    assert b.add(store, 4, 100) is None
    assert b.deadline(store) == 150  # the oldest pending item's arrival, not the newest's
    assert b.add(store, 5, 140) is None and b.deadline(store) == 150
    assert b.poll(store, 149) is None
    assert b.poll(store, 150) == [4, 5]
    assert b.poll(store, 1000) is None


def test_policy_never_flushes_empty():
    assert not BatchPolicy(1, 0).should_flush(0, None, 10)
    assert BatchPolicy(4, 0).should_flush(1, 10, 10)


def test_router_threshold_and_budget_refill():
    r = ReviewRouter(threshold=0.5, audit_rate=0.0, budget_per_minute=60)
    granted = [r.decide(f"id{i}", 0.1, now_ms=0) for i in range(100)]
    assert granted.count("low_confidence") == 60 and r.suppressed == 40
    assert r.decide("late", 0.1, now_ms=500) is None  # half a token refilled
    assert r.decide("later", 0.1, now_ms=1_000) == "low_confidence"
    assert r.decide("sure", 0.99, now_ms=10_000) is None


def test_audit_sample_is_deterministic_and_near_rate():
    a = ReviewRouter(threshold=0.0, audit_rate=0.1, budget_per_minute=10**6)
    b = ReviewRouter(threshold=0.0, audit_rate=0.1, budget_per_minute=10**6)
    picks_a = [a.decide(f"dev:{i}", 0.9, 0) for i in range(5000)]
    picks_b = [b.decide(f"dev:{i}", 0.9, 0) for i in range(5000)]
    assert picks_a == picks_b
    assert 0.07 < picks_a.count("audit") / 5000 < 0.13


def test_budget_can_be_raised():
    r = ReviewRouter(threshold=0.5, audit_rate=0.0, budget_per_minute=1)
    assert r.decide("a", 0.1, 0) and r.decide("b", 0.1, 0) is None
    r.set_budget(600)
    assert r.decide("c", 0.1, 1_000) == "low_confidence"


def test_one_noisy_device_cannot_take_the_whole_review_budget_and_the_audit_stays_uniform():
    r = ReviewRouter(threshold=0.6, audit_rate=0.0, budget_per_minute=40, device_share=0.25)
    noisy = [r.decide(f"noisy:{i}", 0.1, now_ms=i, device="noisy", predicted="a") for i in range(30)]
    quiet = [r.decide(f"quiet:{i}", 0.1, now_ms=100 + i, device="quiet", predicted="a") for i in range(5)]
    assert noisy.count("low_confidence") == 10 and r.over_share == 20  # a quarter of 40
    assert quiet == ["low_confidence"] * 5  # the other device is still asked about
    assert r.decide("noisy:late", 0.1, now_ms=60_000 + 1, device="noisy", predicted="a") == "low_confidence"  # next minute
    audit = ReviewRouter(threshold=0.6, audit_rate=0.5, budget_per_minute=1000, device_share=0.01)
    reasons = [audit.decide(f"n:{i}", 0.1, now_ms=i, device="noisy", predicted="a") for i in range(100)]
    sampled = [i for i in range(100) if audit._in_audit_sample(f"n:{i}")]
    assert reasons.count("low_confidence") == 10  # a hundredth of 1000
    assert [i for i, r in enumerate(reasons) if r == "audit"] == sampled and 30 < len(sampled) < 70  # never capped


def test_one_predicted_class_cannot_take_the_whole_review_budget():
    r = ReviewRouter(threshold=0.6, audit_rate=0.0, budget_per_minute=20, class_share=0.5)
    got = [r.decide(f"d{i}:{i}", 0.1, now_ms=i, device=f"d{i}", predicted="walk") for i in range(15)]
    assert got.count("low_confidence") == 10
    assert r.decide("x:1", 0.1, now_ms=20, device="x", predicted="run") == "low_confidence"


@settings(max_examples=100, deadline=None, derandomize=True)
@given(st.lists(st.tuples(st.sampled_from("abcd"), st.sampled_from(["walk", "run"]), st.floats(0, 1)), max_size=200),
       st.floats(0.05, 1.0), st.floats(0.05, 1.0))
def test_within_a_minute_no_device_or_class_exceeds_its_share_and_no_more_than_the_budget_is_asked(
        windows, device_share, class_share):
    budget = 30
    r = ReviewRouter(0.6, 0.0, budget, device_share=device_share, class_share=class_share)
    granted = [(d, c) for i, (d, c, conf) in enumerate(windows)
               if r.decide(f"{d}:{i}", conf, now_ms=i, device=d, predicted=c) is not None]
    assert len(granted) <= budget
    per_device, per_class = Counter(d for d, _ in granted), Counter(c for _, c in granted)
    assert max(per_device.values(), default=0) <= max(1, int(device_share * budget))
    assert max(per_class.values(), default=0) <= max(1, int(class_share * budget))
    unsure = sum(conf < 0.6 for _, _, conf in windows)  # (no audit sample here)
    assert len(granted) + r.over_share + r.suppressed == unsure  # every unsure window accounted for


def test_query_strategies_pick_different_windows_from_the_same_probabilities():
    rows = {"split": np.array([0.48, 0.47, 0.05]), "spread": np.array([0.62, 0.2, 0.18]),
            "sure": np.array([0.9, 0.05, 0.05])}
    picked = {s: {name for name, row in rows.items() if unsure(row, s, t)}
              for s, t in (("confidence", 0.6), ("margin", 0.2), ("entropy", 0.75))}
    assert picked == {"confidence": {"split"}, "margin": {"split"}, "entropy": {"split", "spread"}}
    assert unsure(np.array([0.6, 0.35, 0.05]), "margin", 0.3) and not unsure(np.array([0.6, 0.35, 0.05]),
                                                                                "confidence", 0.6)
    r = ReviewRouter(0.2, 0.0, 100, strategy="margin")
    assert r.decide("a:1", 0.48, 0, rows["split"]) == "low_confidence" and r.decide("a:2", 0.9, 0, rows["sure"]) is None
    with pytest.raises(ValueError, match="unknown query strategy"):
        ReviewRouter(0.5, 0.0, 10, strategy="random")


class CountingStore(ListStore):
    """A ListStore that remembers every item ever stored."""

    def __init__(self) -> None:
        super().__init__()
        self.stored: list = []

    def append(self, item) -> int:
        self.stored.append(item)
        return super().append(item)

    def extend(self, items) -> int:
        self.stored.extend(items)
        return super().extend(items)


@settings(max_examples=80, deadline=None, derandomize=True)
@given(st.integers(1, 8), st.lists(st.tuples(st.integers(1, 12), st.integers(0, 30)), max_size=30))
def test_batches_keep_every_item_once_in_order_and_items_that_fill_a_batch_are_never_stored(max_batch, records):
    """Records of 1-12 items arriving 0-30 ms apart: the batches and what stays pending are the input in
    order; a batch leaves when it is full (or waited), and the items that filled it skipped the store."""
    b, store = MicroBatcher(BatchPolicy(max_batch=max_batch, max_wait_ms=20)), CountingStore()
    now, sent, out, filled = 0, [], [], []
    for n, gap in records:
        now += gap
        items = list(range(len(sent), len(sent) + n))
        sent += items
        pending = store.count()
        batch = b.add(store, items[0], now) if n == 1 else b.add_many(store, items, now)  # one window: add
        if pending + n >= max_batch:
            assert batch is not None and len(batch) == pending + n
            filled += items
        if batch is not None:
            out += batch
    assert out + store.take_all() == sent
    assert not set(filled) & set(store.stored)
