from operators.batching import BatchPolicy, ListStore, MicroBatcher
from operators.routing import ReviewRouter


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
