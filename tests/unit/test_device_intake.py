"""The serving job's keyed intake (``operators.device_intake``): a group of a device's messages gives
exactly what the same messages give one at a time, whatever bad messages sit among them."""

from __future__ import annotations

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
    alone, state = [], None
    for message in stream:
        out = intake.take("d", [message], state, now_ms=0)
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
    intake.windowers["m"] = SlidingWindower(4, 2, 2, reset_gap_ms=reset_gap_ms, max_seq_gap_buffer=4)

    def described(outs, state):
        windows = [(w.start, w.end, w.values.tolist(), w.truth, w.ingest_ms) for o in outs for w in o.windows]
        letters = [(d.offset, d.field, d.reason) for o in outs for d in o.dead_letters]
        kept = None if state is None else (state.count, state.last_ts, state.next_seq, state.ring.tolist(),
                                           state.ts.tolist(), list(state.labels), len(state.pending))
        return windows, letters, sum(o.late for o in outs), sum(o.samples for o in outs), kept

    alone, state = [], None
    for message in messages:
        alone.append(intake.take("d", [message], state, now_ms=0))
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
