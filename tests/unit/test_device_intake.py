"""The serving job's keyed intake (``operators.device_intake``): a group of a device's messages gives
exactly what the same messages give one at a time, whatever bad messages sit among them."""

from __future__ import annotations

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from operators.device_intake import DeviceIntake, Message
from operators.model_routing import ServedModel

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
