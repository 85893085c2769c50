"""The serving job's keyed intake (``operators.device_intake``): a group of a device's messages gives
exactly what the same messages give one at a time, whatever bad messages sit among them."""

from __future__ import annotations

import json

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from operators.device_intake import DeviceIntake, Message
from operators.model_routing import ServedModel
from operators.windowing import SlidingWindower

BAD = [b'{"device_id": "d", "ts": 5', b'{"device_id": "d", "ts": 1, "values": [NaN, 1]}',
       b'{"device_id": "d", "ts": 1, "values": [1]}', b'{"device_id": "other", "ts": 1, "values": [1, 2]}',
       b'{"device_id": "d", "device_id": "e", "ts": 1, "values": [1, 2]}', b'[]']


def payload(ts: int, block: int) -> bytes:
    if block == 1:
        return orjson.dumps({"device_id": "d", "ts": ts, "values": [float(ts), -float(ts)]})
    return orjson.dumps({"device_id": "d", "ts": ts, "interval_ms": 1,
                         "values": [[float(ts + i), 1.0] for i in range(block)]})


@st.composite
def messages(draw) -> list[Message]:
    """A device's stream: readings and sample blocks, some going back in time, with bad messages among them."""
    out, ts = [], 0
    for offset in range(draw(st.integers(1, 40))):
        kind = draw(st.sampled_from(["reading", "block", "back", "bad"]))
        if kind == "bad":
            raw = draw(st.sampled_from(BAD))
        else:
            block = draw(st.integers(2, 6)) if kind == "block" else 1
            at = max(0, ts - draw(st.integers(1, 5))) if kind == "back" else ts
            raw = payload(at, block)
            ts = max(ts, at + block)
        out.append(Message(0, offset, 0, raw))
    return out


def summary(intake_out) -> tuple:
    return ([(w.start, w.end, w.values.tolist(), None if w.device_stats is None else w.device_stats.tolist())
             for w in intake_out.windows],
            [(d.offset, d.field, d.reason) for d in intake_out.dead_letters], intake_out.late, intake_out.samples)


@settings(max_examples=80, deadline=None, derandomize=True)
@given(messages(), st.data())
def test_a_group_gives_what_its_messages_give_one_at_a_time(stream, data):
    intake = DeviceIntake.for_models([ServedModel("m", ("x", "y"), 4, 2)], normalise_after=2)
    intake.joined_min_bytes = 0
    one_by_one = DeviceIntake.for_models([ServedModel("m", ("x", "y"), 4, 2)], normalise_after=2)
    one_by_one.joined_min_bytes = None
    alone, state = [], None
    for message in stream:
        out = one_by_one.take("d", [message], state, now_ms=0)
        state = out.state
        alone.append(out)
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(stream) - 1)), max_size=5)))
    groups, state, grouped = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)]) if a < b], None, []
    for group in groups:
        out = intake.take("d", group, state, now_ms=0)
        state = out.state
        grouped.append(out)
    merged = [sum((summary(o)[i] for o in outs), [] if i < 2 else 0) for outs in (alone, grouped) for i in range(4)]
    assert merged[:4] == merged[4:]
    assert sum(o.changed for o in grouped) > 0 or all(not o.changed for o in alone)


@st.composite
def block_runs(draw) -> tuple[list[Message], int]:
    """Mostly sample blocks that carry on one another (as a busy device's group holds them), each message with an
    ingest time of its own; now and then one that goes back, skips ahead, leaves a silence that resets the window,
    or is bad; with sequence numbers or without, labelled or not. Also the windower's reset gap."""
    sequenced, labelled = draw(st.booleans()), draw(st.booleans())
    out, ts, seq = [], 0, 0
    for offset in range(draw(st.integers(1, 30))):
        kind = draw(st.sampled_from(["block"] * 6 + ["reading", "back", "silence", "inner silence", "skip", "bad"]))
        if kind == "bad":
            out.append(Message(0, offset, 1000 + offset, draw(st.sampled_from(BAD))))
            continue
        n = 1 if kind == "reading" else draw(st.integers(1, 7))
        back = draw(st.integers(1, 4)) if kind == "back" else 0
        at = max(0, ts - back) + (draw(st.integers(30, 60)) if kind == "silence" else 0)
        first = max(0, seq - back) + (draw(st.integers(1, 3)) if kind == "skip" else 0)
        obj = {"device_id": "d", "ts": at, "interval_ms": 1, "values": [[float(at + i), 1.0] for i in range(n)]}
        if kind == "inner silence":  # a time per sample, with a long step inside the block
            n = max(n, 2)
            step = draw(st.integers(1, n - 1))
            times = [at + i + (draw(st.integers(30, 60)) if i >= step else 0) for i in range(n)]
            obj = {"device_id": "d", "ts": times, "values": [[float(t), 1.0] for t in times]}
            at = times[-1] - n + 1  # so that the next message starts after this one's last sample
        if kind == "reading":
            obj = {"device_id": "d", "ts": at, "values": [float(at), 1.0]}
        if sequenced:
            obj["seq"] = first
        if labelled:
            obj["label"] = draw(st.sampled_from(["a", "b"]))
        out.append(Message(0, offset, 1000 + offset, orjson.dumps(obj)))
        ts, seq = max(ts, at + n), max(seq, first + n)
    return out, draw(st.sampled_from([0, 20]))


@settings(max_examples=150, deadline=None, derandomize=True)
@given(block_runs(), st.data())
def test_blocks_that_carry_on_one_another_are_windowed_together_as_they_would_be_one_at_a_time(stream, data):
    """A group's blocks that continue each other are cut in one pass; windows (with the ingest time of the message
    their last sample came in), refusals and the device's state are what the messages give one at a time."""
    messages, reset_gap_ms = stream
    intake = DeviceIntake.for_models([ServedModel("m", ("x", "y"), 4, 2)])
    intake.joined_min_bytes = 0
    intake.windowers["m"] = SlidingWindower(4, 2, 2, reset_gap_ms=reset_gap_ms, max_seq_gap_buffer=4)
    one_by_one = DeviceIntake(intake.parser, intake.windowers, "m")
    one_by_one.joined_min_bytes = None

    def described(outs, state):
        windows = [(w.start, w.end, w.values.tolist(), w.truth, w.ingest_ms) for o in outs for w in o.windows]
        letters = [(d.offset, d.field, d.reason) for o in outs for d in o.dead_letters]
        kept = None if state is None else (state.count, state.last_ts, state.next_seq, state.ring.tolist(),
                                           state.ts.tolist(), list(state.labels), len(state.pending))
        return windows, letters, sum(o.late for o in outs), sum(o.samples for o in outs), kept

    alone, state = [], None
    for message in messages:
        alone.append(one_by_one.take("d", [message], state, now_ms=0))
        state = alone[-1].state
    expected = described(alone, state)
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(messages) - 1)), max_size=3)))
    grouped, state = [], None
    for a, b in zip([0, *cuts], [*cuts, len(messages)]):
        if a < b:
            grouped.append(intake.take("d", messages[a:b], state, now_ms=0))
            state = grouped[-1].state
    assert described(grouped, state) == expected


def test_each_bad_message_in_a_group_is_its_own_dead_letter_and_the_rest_are_used():
    intake = DeviceIntake.for_models([ServedModel("m", ("x", "y"), 4, 2)])
    good = [Message(0, i, 0, payload(i, 1)) for i in range(12)]
    mixed = good[:5] + [Message(0, 100 + i, 0, raw) for i, raw in enumerate(BAD)] + good[5:]
    clean, dirty = intake.take("d", good, None, 0), intake.take("d", mixed, None, 0)
    assert [(w.start, w.end) for w in dirty.windows] == [(w.start, w.end) for w in clean.windows] == \
        [(0, 3), (2, 5), (4, 7), (6, 9), (8, 11)]
    reasons = {d.offset: (d.field, d.reason) for d in dirty.dead_letters}
    assert sorted(reasons) == list(range(100, 100 + len(BAD))) and clean.dead_letters == []
    assert reasons[102] == ("values", "values: expected 2 channels, got 1")
    assert reasons[103][0] == "device_id" and reasons[104][0] == "device_id"


TWISTS = ["interval", "float interval", "no seq", "float seq", "seq jump", "unknown field", "schema 2", "schema 1",
          "ts back", "ts float", "ts str", "ts short", "ts and interval", "value str", "value null", "value bool",
          "value huge", "value big int", "row short", "row nested", "columns", "empty", "too many", "device type",
          "label", "labels", "labels short", "label int", "other device", "keyed wrong", "not an object", "future",
          "single", "single labelled", "single with interval", "single with labels", "single ts list",
          "single named", "single short", "single str", "single huge", "single same ts", "single ts back", "singles",
          "singles same ts", "singles same ts no seq", "ts repeat"]


def hostile_block(draw, ts: int, seq: int, n: int, twist: str) -> tuple[dict, int, int]:
    """A block that carries on ``ts`` and ``seq``, odd or wrong in the way ``twist`` names: returns it with the time
    and sequence number the next block would carry on from."""
    times = [ts + i for i in range(n)]
    obj: dict = {"device_id": "d", "ts": times, "values": [[float(t), 1.0] for t in times], "seq": seq}
    nxt = (ts + n, seq + n)
    if twist == "interval":
        obj["ts"], obj["interval_ms"] = ts, 1
    elif twist == "float interval":
        obj["ts"], obj["interval_ms"] = ts, 1.0
    elif twist == "no seq":
        del obj["seq"]
    elif twist == "float seq":
        obj["seq"] = float(seq)
    elif twist == "seq jump":
        obj["seq"] = seq + 2
        nxt = (ts + n, seq + n + 2)
    elif twist == "unknown field":
        obj["colour"] = "red"
    elif twist in ("schema 2", "schema 1"):
        obj["schema_version"] = int(twist[-1])
    elif twist == "ts back":
        obj["ts"] = [t - 3 for t in times]
    elif twist == "ts float":
        obj["ts"][-1] += 0.5
    elif twist == "ts repeat":  # two samples of the block at one time
        obj["ts"][-1] = obj["ts"][0]
    elif twist == "ts str":
        obj["ts"][0] = str(ts)
    elif twist == "ts short":
        obj["ts"] = times[:-1] or [ts, ts + 1]
    elif twist == "ts and interval":
        obj["interval_ms"] = 1
    elif twist.startswith("value"):
        obj["values"][draw(st.integers(0, n - 1))][1] = {"value str": "1", "value null": None, "value bool": True,
                                                        "value huge": 1e300, "value big int": 2**70}[twist]
    elif twist == "row short":
        obj["values"][-1] = [1.0]
    elif twist == "row nested":
        obj["values"][0] = [[1.0], [2.0]]
    elif twist == "columns":
        obj["values"] = {"x": [float(t) for t in times], "y": [1.0] * n}
    elif twist == "empty":
        obj["values"], obj["ts"] = [], []
    elif twist == "too many":  # the parser below allows 6 samples per block
        obj["ts"] = [ts + i for i in range(7)]
        obj["values"] = [[float(t), 1.0] for t in obj["ts"]]
        nxt = (ts + 7, seq + 7)
    elif twist == "device type":
        obj["device_type"] = "m"
    elif twist == "label":
        obj["label"] = draw(st.sampled_from(["a", "b"]))
    elif twist == "labels":
        obj["labels"] = [draw(st.sampled_from(["a", None])) for _ in range(n)]
    elif twist == "labels short":
        obj["labels"] = ["a"] * (n - 1)
    elif twist == "label int":
        obj["label"] = 3
    elif twist == "other device":
        obj["device_id"] = "e"
    elif twist == "not an object":
        obj = [obj]
    elif twist == "future":
        obj["ts"] = [t + 10**9 for t in times]
    elif twist.startswith("single"):  # a single reading: one sample, values a flat list
        obj = {"device_id": "d", "ts": ts, "values": [float(ts), 1.0], "seq": seq}
        nxt = (ts + 1, seq + 1)
        if twist == "single labelled":
            obj["label"] = "a"
        elif twist == "single with interval":
            obj["interval_ms"] = 1
        elif twist == "single with labels":
            obj["labels"] = ["a"]
        elif twist == "single ts list":
            obj["ts"] = [ts]
        elif twist == "single named":
            obj["values"] = {"x": float(ts), "y": 1.0}
        elif twist == "single short":
            obj["values"] = [1.0]
        elif twist == "single str":
            obj["values"][1] = "1"
        elif twist == "single huge":
            obj["values"][1] = 1e300
        elif twist.startswith(("single same ts", "singles same ts")):  # the time of the sample before
            obj["ts"] = ts - 1
            nxt = (ts, seq + 1)
            if twist.endswith("no seq"):
                del obj["seq"]
        elif twist == "single ts back":
            obj["ts"] = ts - 2
    return obj, *nxt


@st.composite
def hostile_runs(draw) -> list[Message]:
    """A device's sample blocks carrying on one another, one of them (or none) odd or wrong in one way, or now and
    then a NaN literal."""
    out, ts, seq = [], 1000, 0
    count = draw(st.integers(1, 10))
    twist, at = draw(st.sampled_from(["none", *TWISTS])), draw(st.integers(0, count - 1))
    for offset in range(count):
        odd = twist if offset == at or twist.startswith("singles") else "none"  # singles: every message one reading
        obj, ts, seq = hostile_block(draw, ts, seq, draw(st.integers(1, 5)), odd)
        if twist == "keyed wrong":  # every block names a device other than the key Java grouped them by
            obj["device_id"] = "e"
        raw = json.dumps(obj).encode()  # (orjson refuses an integer beyond 64 bits)
        if draw(st.integers(0, 30)) == 0:
            raw = raw.replace(b"1.0", b"NaN", 1)
        out.append(Message(0, offset, 500 + offset, raw))
    return out


@settings(max_examples=800, deadline=None, derandomize=True)
@given(hostile_runs(), st.data())
def test_a_group_checked_and_joined_at_once_gives_what_its_messages_give_one_by_one(messages, data):
    """``DeviceIntake`` first tries a device's group as one run of blocks (``RoutedParser.parse_run``): whatever the
    blocks hold, the windows, dead letters (the same reasons, naming the same messages) and the device's state are
    those of taking each message alone on the one-by-one path."""
    model = ServedModel("m", ("x", "y"), 4, 2)
    joined = DeviceIntake.for_models([model])
    joined.joined_min_bytes = 0  # every group of two or more messages tried as one run
    joined.parser.parsers["m"].max_abs = 1e9
    joined.parser.parsers["m"].max_future_ms = 60_000
    joined.parser.parsers["m"].max_block_samples = 6
    one_by_one = DeviceIntake(joined.parser, joined.windowers, "m")
    one_by_one.joined_min_bytes = None
    now_ms = 10_000

    def described(intake, groups):
        state, windows, letters, counts = None, [], [], [0, 0]
        for group in groups:
            out = intake.take("d", group, state, now_ms)
            state = out.state if out.state is not None else state
            windows += [(w.start, w.end, w.values.tolist(), w.truth, w.ingest_ms) for w in out.windows]
            letters += [(d.offset, d.field, d.reason) for d in out.dead_letters]
            counts = [counts[0] + out.late, counts[1] + out.samples]
        kept = None if state is None else (state.count, state.last_ts, state.next_seq, state.ring.tolist(),
                                           state.ts.tolist(), list(state.labels))
        return windows, letters, counts, kept

    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(messages) - 1)), max_size=3)))
    groups = [messages[a:b] for a, b in zip([0, *cuts], [*cuts, len(messages)]) if a < b]
    assert described(joined, groups) == described(one_by_one, [[m] for m in messages])


def test_a_busy_devices_group_of_blocks_is_checked_and_joined_at_once():
    """The replayer's blocks (a ts per sample, seq, label) take the joined path: no message is decoded alone."""
    intake = DeviceIntake.for_models([ServedModel("m", ("x", "y"), 4, 2)])
    blocks = [orjson.dumps({"device_id": "d", "ts": [10 * k + i for i in range(10)], "seq": 10 * k,
                            "values": [[float(i), 1.0] for i in range(10)], "label": "a"}) for k in range(5)]
    calls = []
    decode_one = intake.parser.parse
    intake.parser.parse = lambda *a: calls.append(a) or decode_one(*a)
    out = intake.take("d", [Message(0, k, 0, raw) for k, raw in enumerate(blocks)], None, now_ms=0)
    assert calls == [] and out.samples == 50 and len(out.windows) == 24 and out.state.next_seq == 50
    # single readings with sequence numbers, sent in one millisecond (as a backlog's replay sends them)
    readings = [orjson.dumps({"device_id": "d", "ts": 60, "seq": 50 + k, "values": [float(k), 1.0]}) for k in range(16)]
    out = intake.take("d", [Message(0, 5 + k, 0, raw) for k, raw in enumerate(readings)], out.state, now_ms=0)
    assert calls == [] and out.samples == 16 and len(out.windows) == 8 and out.state.next_seq == 66


def test_a_lone_message_or_a_few_small_ones_are_taken_one_by_one():
    """Below ``joined_min_bytes`` (or alone) a device's messages skip the joined run, which would cost more."""
    intake = DeviceIntake.for_models([ServedModel("m", ("x", "y"), 4, 2)])
    runs = []
    intake.parser.parse_run = lambda *a: runs.append(a)
    few = [orjson.dumps({"device_id": "d", "ts": k, "seq": k, "values": [1.0, 2.0]}) for k in range(4)]
    out = intake.take("d", [Message(0, k, 0, raw) for k, raw in enumerate(few)], None, now_ms=0)
    out = intake.take("d", [Message(0, 9, 0, orjson.dumps({"device_id": "d", "ts": [4, 5], "seq": 4,
                                                           "values": [[1.0, 2.0]] * 2}))], out.state, now_ms=0)
    assert runs == [] and out.state.next_seq == 6
