"""The sharded layout's operator logic (``operators.shard_serving``), driven directly: a shard's group of
many devices' messages gives each device what its messages give alone, device states are kept for the
checkpoint marker, sweeps forget and flush, and an announcement's copies act once."""

from __future__ import annotations

import threading

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from operators.device_intake import DeviceIntake, Message
from operators.model_routing import ServedModel
from operators.scoring_pipeline import THREAD_NAME
from operators.serving_model import ControlMessage
from operators.serving_shard import InferenceShard
from operators.shard_serving import DeviceTable, ShardServing
from schemas import ModelSnapshot, Topics
from settings import ServingSettings

MODEL = [ServedModel("toy", ("x", "y"), 4, 1)]


def serving(max_batch: int = 1000, expiry_ms: int = 0, threaded: bool = False, **windowing) -> ShardServing:
    intake = DeviceIntake.for_models(MODEL)
    if windowing:
        from operators.windowing import SlidingWindower
        intake.windowers["toy"] = SlidingWindower(4, 1, 2, **windowing)
    return ShardServing(intake, {"toy": InferenceShard.for_tests(max_batch=max_batch)}, expiry_ms, idle_ms=2_000,
                        threaded=threaded)


def reading(device: str, ts: int, offset: int = 0, seq: int | None = None) -> tuple[str, Message]:
    body = {"device_id": device, "ts": ts, "values": [float(ts), 1.0]}
    if seq is not None:
        body["seq"] = seq
    return device, Message(0, offset, 0, orjson.dumps(body))


def predictions(outgoing) -> list[tuple[str, int]]:
    return sorted((p["device_id"], p["window_end"]) for p in
                  (orjson.loads(o.payload) for o in outgoing if o.topic == Topics().predictions))


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c", "d"]), st.booleans()), min_size=1, max_size=60),
       st.data())
def test_a_shard_group_gives_each_device_what_its_messages_give_alone(stream, data):
    """Whatever the interleaving of devices and however it is cut into groups, every device's windows (and
    dead letters) are those of its own messages fed one at a time, in small batches scored on the scoring
    thread or at once."""
    clock: dict[str, int] = {}
    records = []
    for offset, (device, bad) in enumerate(stream):
        if bad:
            records.append((device, Message(0, offset, 0, b'{"device_id": "%s", "ts": "late"}' % device.encode())))
        else:
            clock[device] = clock.get(device, 0) + 1
            records.append(reading(device, clock[device], offset))
    alone, alone_table, alone_letters = serving(), DeviceTable(), []
    for record in records:
        served = alone.take(alone_table, [record], now_ms=0)
        alone_letters += [d.offset for d in served.dead_letters]
    expected = predictions(alone.flush(now_ms=0))
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(records) - 1)), max_size=6)))
    threaded = data.draw(st.booleans())
    grouped, table, outgoing, letters = serving(max_batch=3, threaded=threaded), DeviceTable(), [], []
    for a, b in zip([0, *cuts], [*cuts, len(records)]):
        if a < b:
            served = grouped.take(table, records[a:b], now_ms=0)
            outgoing += served.outgoing + grouped.collect()
            letters += [d.offset for d in served.dead_letters]
            assert threaded or not grouped.busy()
    outgoing += grouped.flush(now_ms=0) + grouped.drain()
    assert predictions(outgoing) == expected and len(outgoing) == len(expected)
    assert sorted(letters) == sorted(alone_letters)
    assert sorted(table.states) == sorted(alone_table.states)


def test_threaded_scoring_hands_outputs_back_in_order_and_waits_before_a_swap():
    first = [reading(d, ts) for ts in range(1, 7) for d in ("a", "b")]
    snap = ModelSnapshot("toy", 2, "file:///r/toy/v2/model.onnx", "0" * 64, {}, None, 1)
    runs = {}
    for threaded in (False, True):
        s, table = serving(max_batch=2, threaded=threaded), DeviceTable()
        out = s.take(table, first, now_ms=0).outgoing
        out += s.take(table, [reading("a", 7)], now_ms=1).outgoing  # one window left pending: v1 scores it
        out += s.control(ControlMessage(0, snap, 0, 7), now_ms=2).outgoing
        runs[threaded] = [(p["device_id"], p["window_end"], p["model_version"]) for p in map(orjson.loads, (
            o.payload for o in out))]
        assert s.shards["toy"].model.version == 2 and not s.busy()
    assert runs[True] == runs[False] and len(runs[True]) == 7 and {v for *_, v in runs[True]} == {1}
    s.take(table, [reading("b", 7)], now_ms=3)
    assert {orjson.loads(o.payload)["model_version"] for o in s.flush(now_ms=4) + s.drain()} == {2}
    s.close()


def test_the_scoring_thread_runs_only_the_model_and_the_outputs_are_made_on_the_callers_thread():
    """With ``threaded`` scoring the worker makes the model calls and nothing else: predictions, review routing
    and the confidence watch run on the operator's thread when the outputs are collected."""
    s, table = serving(max_batch=2, threaded=True), DeviceTable()
    shard = s.shards["toy"]
    threads: dict[str, set] = {"model": set(), "publish": set()}
    model_call, publish = shard.model.runner.predict_proba, shard.scorer.publish
    shard.model.runner.predict_proba = lambda x: threads["model"].add(threading.current_thread().name) or model_call(x)
    shard.scorer.publish = lambda *a, **k: threads["publish"].add(threading.current_thread().name) or publish(*a, **k)
    out = s.take(table, [reading(d, ts) for ts in range(1, 9) for d in ("a", "b", "c")], now_ms=0).outgoing
    out += s.collect() + s.flush(now_ms=1) + s.drain()
    assert len(predictions(out)) == 15 and not s.busy()
    assert threads["publish"] == {threading.current_thread().name}
    assert len(threads["model"]) == 1 and next(iter(threads["model"])).startswith(THREAD_NAME)
    s.close()


def test_changed_devices_are_handed_over_once_for_the_checkpoint():
    s, table = serving(), DeviceTable()
    s.take(table, [reading("a", 1), reading("b", 1)], now_ms=0)
    stored, removed = table.take_changes()
    assert sorted(stored) == ["a", "b"] and removed == []
    assert table.take_changes() == ({}, [])
    s.take(table, [reading("b", 2)], now_ms=1)
    assert list(table.take_changes()[0]) == ["b"]


def test_windows_wait_for_a_full_batch_and_a_flush_scores_them():
    s, table = serving(max_batch=3), DeviceTable()
    served = s.take(table, [reading(d, ts) for ts in range(1, 5) for d in ("a", "b")], now_ms=0)
    assert served.windows == 2 and served.outgoing == []  # a batch of 3 is not full
    assert s.due_at() == 10  # max_wait_ms after the first window
    assert predictions(s.poll(now_ms=9)) == [] and predictions(s.poll(now_ms=10)) == [("a", 4), ("b", 4)]
    s.take(table, [reading("a", 5)], now_ms=20)
    assert predictions(s.flush(now_ms=20)) == [("a", 5)] and s.due_at() is None


def test_windows_are_scored_once_every_shard_that_sent_has_paused():
    """The grouper's marker that the readings paused (``quiet``) hands the pending windows over at once, but
    only when no shard whose messages came since the last pause is still without its marker; without markers
    they wait for a full batch or ``max_wait_ms`` as before, and a shard sending again must pause again."""
    for threaded in (False, True):
        s, first, second = serving(max_batch=100, threaded=threaded), DeviceTable(), DeviceTable()
        out = s.take(first, [reading("a", ts) for ts in range(1, 6)], now_ms=0).outgoing
        out += s.take(second, [reading("b", ts) for ts in range(1, 5)], now_ms=1).outgoing
        assert out == [] and s.due_at() == 10
        assert s.quiet(first, now_ms=2) == [] and s.poll(now_ms=2) == []  # the second shard may send more
        s.take(first, [reading("a", 6)], now_ms=3)  # the first sends again: it must pause again too
        assert s.quiet(second, now_ms=4) == [] and s.due_at() == 10
        out = s.quiet(first, now_ms=5) + s.drain()
        assert predictions(out) == [("a", 4), ("a", 5), ("a", 6), ("b", 4)] and s.due_at() is None
        assert s.quiet(first, now_ms=6) == [] and s.quiet(second, now_ms=6) == []  # nothing pending: no-ops
        s.take(second, [reading("b", 5)], now_ms=7)
        assert s.quiet(second, now_ms=8) + s.drain() != [] and s.due_at() is None
        s.close()


def test_a_sweep_forgets_silent_devices_and_schedules_the_next():
    s, table = serving(expiry_ms=60_000), DeviceTable()
    served = s.take(table, [reading("a", 1)], now_ms=0)
    assert served.sweep_at == 6_000 and table.sweep_at == 6_000  # a tenth of the expiry
    assert s.take(table, [reading("b", 1)], now_ms=30_000).sweep_at is None  # one sweep is already due
    table.take_changes()
    swept = s.sweep(table, now_ms=60_000)
    assert swept.expired == 1 and sorted(table.states) == ["b"] and table.take_changes() == ({}, ["a"])
    assert swept.sweep_at == 66_000
    assert s.sweep(table, now_ms=90_000).expired == 1 and s.sweep(table, now_ms=90_001).sweep_at is None


def test_a_sweep_uses_the_held_readings_of_an_idle_device():
    s, table = serving(max_seq_gap_buffer=8, seq_gap_timeout_ms=10**9), DeviceTable()
    served = s.take(table, [reading("a", ts, seq=ts) for ts in (1, 2, 3, 4, 6, 7)], now_ms=0)  # seq 5 missing
    assert predictions(served.outgoing + s.flush(0)) == [("a", 4)] and served.sweep_at == 2_000
    assert s.sweep(table, now_ms=1_000).windows == 0  # not idle yet
    swept = s.sweep(table, now_ms=2_000)
    assert predictions(swept.outgoing) == [("a", 6), ("a", 7)]  # scored at once: nothing waits for a timer
    assert list(table.take_changes()[0]) == ["a"] and s.due_at() is None


def test_an_announcement_acts_on_its_first_copy_only():
    shard = InferenceShard.for_tests()
    loads = []
    shard.load = lambda snap: loads.append(snap.version) or shard.model.__class__(
        snap.model_name, snap.version, shard.model.spec, shard.model.runner)
    s = ShardServing(DeviceIntake.for_models(MODEL), {"toy": shard})
    snap = ModelSnapshot("toy", 2, "file:///r/toy/v2/model.onnx", "0" * 64, {}, None, 1)
    first = s.control(ControlMessage(0, snap, 0, 7), now_ms=0)
    copies = [s.control(ControlMessage(k, snap, 0, 7), now_ms=0) for k in range(1, 8)]
    assert loads == [2] and shard.model.version == 2
    assert first.accepted is snap and all(c.accepted is snap and c.outgoing == [] for c in copies)
    other = ModelSnapshot("other", 3, "file:///r/other/v3/model.onnx", "0" * 64, {}, None, 1)
    assert s.control(ControlMessage(0, other, 0, 8), now_ms=0).accepted is None and loads == [2]


def test_settings_refuse_an_unknown_layout():
    import pytest
    with pytest.raises(ValueError, match="layout"):
        ServingSettings(layout="fused")
