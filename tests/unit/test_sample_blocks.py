"""Sample blocks: many samples per message. The contract checks every sample and names the bad one;
the windower takes a block whole or not at all, and cuts exactly the windows the same samples sent
one by one would make (a Hypothesis property over random streams, block sizes and settings)."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
from hypothesis import given, settings, strategies as st

from operators.parse import ReadingParser
from operators.windowing import SlidingWindower
from schemas import DeadLetter, SchemaError, SensorReading
from schemas.blocks import SampleBlock, decode_reading

CHANNELS = ["x", "y"]


def block(device, ts, rows, seq=None, labels=None) -> SampleBlock:
    obj = {"device_id": device, "ts": ts, "values": rows}
    if seq is not None:
        obj["seq"] = seq
    if labels is not None:
        obj["labels"] = labels
    return decode_reading(orjson.dumps(obj), CHANNELS)


@pytest.mark.parametrize("payload, field, reason", [
    ({"ts": 1, "interval_ms": 10, "values": [[1, 2], [3]]}, "values[1]", "expected 2 channels, got 1"),
    ({"ts": 1, "interval_ms": 10, "values": [[1, 2], [3, True]]}, "values[1][1]", "must be a number"),
    ({"ts": 1, "values": [[1, 2], [3, 4]]}, "ts", "needs interval_ms or a ts per sample"),
    ({"ts": [1, 2, 3], "values": [[1, 2], [3, 4]]}, "ts", "3 times for 2 samples"),
    ({"ts": [1, 3, 2], "values": [[1, 2], [3, 4], [5, 6]]}, "ts[2]", "is not after"),
    ({"ts": 1, "interval_ms": 0, "values": [[1, 2], [3, 4]]}, "interval_ms", "positive number"),
    ({"ts": 1, "interval_ms": 10, "values": []}, "values", "at least one sample"),
    ({"ts": 1, "interval_ms": 10, "values": {"x": [1, 2], "y": [3]}}, "values.y", "1 samples where x has 2"),
    ({"ts": 1, "interval_ms": 10, "values": {"x": [1], "z": [3]}}, "values.y", "missing channel"),
    ({"ts": 1, "interval_ms": 10, "values": [[1, 2]] * 11}, "values", "at most 10 allowed"),
    ({"ts": 1, "interval_ms": 10, "values": [[1, 2], [3, 4]], "labels": ["a"]}, "labels", "a list of 2 labels"),
    ({"ts": 1, "interval_ms": 10, "values": [[1, 2], [3, 4e300]]}, "values[1][1]", "above the limit"),
])
def test_a_bad_sample_anywhere_in_a_block_refuses_the_block_and_is_named(payload, field, reason):
    parser = ReadingParser(CHANNELS, "sensor-readings", max_abs=1e9, max_block_samples=10)
    letter = parser.parse(orjson.dumps({"device_id": "d", **payload}), 0, 5)
    assert isinstance(letter, DeadLetter) and letter.field == field and reason in letter.reason, letter


def test_the_bad_blocks_a_device_really_sends_are_dead_letters_naming_the_sample():
    parser = ReadingParser(["x", "y", "z"], "sensor-readings", max_bytes=1 << 20, max_abs=1e9, max_block_samples=1000)
    rows = [[0.1 * k, 1.0, 2.0] for k in range(50)]
    nan = orjson.dumps({"device_id": "d", "ts": 1000, "interval_ms": 20, "values": rows}).replace(
        b"[3.7,1.0,2.0]", b"[3.7,NaN,2.0]")  # sample 37 (what a device's JSON library writes for NaN)
    assert parser.parse(nan, 0, 1).reason == "values[37][1]: must be finite (NaN/inf refused)"
    huge = orjson.dumps({"device_id": "d", "ts": 1000, "interval_ms": 1, "values": [[1, 2, 3]] * 10_000})
    assert parser.parse(huge, 0, 2).reason == "values: a block of 10000 samples; at most 1000 allowed"
    backwards = orjson.dumps({"device_id": "d", "ts": [5, 6, 7, 6, 8], "values": [[1, 2, 3]] * 5})
    assert parser.parse(backwards, 0, 3).reason == "ts[3]: 6 is not after the sample before it (7)"
    ragged = orjson.dumps({"device_id": "d", "ts": 1, "interval_ms": 10, "values": [[1, 2, 3], [1, 2], [1, 2, 3]]})
    assert parser.parse(ragged, 0, 4).reason == "values[1]: expected 3 channels, got 2"


def _reference_refusal(ts, rows, max_abs: float) -> str | None:
    """What a block decoder must say of ``ts`` (a list) and ``rows``, sample by sample in order: the first row
    that is not a list of two numbers, then the first value not finite or above ``max_abs``, then the first time
    that is not a safe non-negative integer, then the first time not after the one before it."""
    for i, row in enumerate(rows):
        if not isinstance(row, list):
            return f"values[{i}]: must be a list"
        if len(row) != 2:
            return f"values[{i}]: expected 2 channels, got {len(row)}"
        for j, v in enumerate(row):
            if type(v) not in (int, float):
                return f"values[{i}][{j}]: must be a number"
    for i, row in enumerate(rows):
        for j, v in enumerate(row):
            if isinstance(v, float) and not np.isfinite(v):
                return f"values[{i}][{j}]: must be finite"
            if abs(v) > max_abs:
                return f"values[{i}][{j}]: magnitude"
    for k, t in enumerate(ts):
        if type(t) is not int:
            return f"ts[{k}]: must be an integer"
        if t < 0:
            return f"ts[{k}]: must be >= 0"
        if t > 2**53 - 1:
            return f"ts[{k}]: must be <= "
    for k in range(1, len(ts)):
        if ts[k] <= ts[k - 1]:
            return f"ts[{k}]: {ts[k]} is not after the sample before it ({ts[k - 1]})"
    return None


_ODD_VALUES = st.one_of(st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True, width=64),
                        st.sampled_from([True, False, None, "4", 1e12, -1e12, 2**70]),
                        st.lists(st.integers(0, 3), max_size=2))
_ODD_ROWS = st.lists(st.one_of(st.lists(_ODD_VALUES, min_size=2, max_size=2), st.lists(_ODD_VALUES, max_size=3),
                               st.integers(0, 3), st.none()), min_size=1, max_size=12)
_ODD_TIMES = st.one_of(st.integers(0, 40), st.integers(-3, -1), st.integers(2**53 - 2, 2**53 + 2),
                       st.sampled_from([True, 2.5, "7", None]))


@settings(max_examples=300, deadline=None, derandomize=True)
@given(data=st.data(), mostly_good=st.booleans())
def test_blocks_of_odd_json_are_refused_at_the_first_bad_sample_as_a_sample_by_sample_check_says(data, mostly_good):
    """The decoder checks a block's samples in bulk; whatever JSON a device sends, it refuses exactly what a check
    sample by sample refuses, naming the same sample first, and decodes the rest to the same numbers."""
    if mostly_good:  # plausible blocks, with now and then one odd sample or time among them
        n = data.draw(st.integers(1, 12))
        rows = data.draw(st.lists(st.lists(st.floats(-1e6, 1e6), min_size=2, max_size=2), min_size=n, max_size=n))
        ts = sorted(data.draw(st.lists(st.integers(0, 10**13), min_size=n, max_size=n, unique=True)))
        if data.draw(st.booleans()):
            rows[data.draw(st.integers(0, n - 1))] = data.draw(st.one_of(st.lists(_ODD_VALUES, min_size=2, max_size=2),
                                                                         st.lists(_ODD_VALUES, max_size=3)))
        if data.draw(st.booleans()):
            ts[data.draw(st.integers(0, n - 1))] = data.draw(_ODD_TIMES)
    else:
        rows = data.draw(_ODD_ROWS)
        ts = data.draw(st.lists(_ODD_TIMES, min_size=len(rows), max_size=len(rows)))
    max_abs = 1e9
    expected = _reference_refusal(ts, rows, max_abs)
    obj = {"device_id": "d", "ts": ts, "values": rows}
    # with no bool in the block, also the path where NumPy tells the types (a parser's payload without true/false)
    for no_bools in (False, True) if not _holds_bool(obj) else (False,):
        try:
            got = SampleBlock.from_dict(obj, CHANNELS, max_abs=max_abs, no_bools=no_bools)
        except SchemaError as exc:
            assert expected is not None, f"refused a good block: {exc}"
            assert str(exc).startswith(expected), (str(exc), expected)
            continue
        assert expected is None, f"accepted a block a sample-by-sample check refuses: {expected}"
        assert got.ts.tolist() == ts and np.array_equal(got.values, np.asarray(rows, np.float32))
        assert got.values.dtype == np.float32 and got.values.shape == (len(rows), len(CHANNELS))


def _holds_bool(value) -> bool:
    if isinstance(value, bool):
        return True
    if isinstance(value, dict):
        value = list(value.values())
    return isinstance(value, list) and any(map(_holds_bool, value))


def test_a_parsed_block_with_a_bool_among_its_numbers_is_refused_at_that_value():
    """The parser lets NumPy tell the types only when the payload holds no true or false: NumPy would read them
    as 1 and 0."""
    parser = ReadingParser(CHANNELS, "sensor-readings")
    for raw, field in ((b'{"device_id": "d", "ts": [1, 2], "values": [[1.5, 2], [3, true]]}', "values[1][1]"),
                       (b'{"device_id": "d", "ts": [1, 2], "values": {"x": [false, 2], "y": [3, 4]}}', "values[0][0]")):
        letter = parser.parse(raw, 0, 5)
        assert isinstance(letter, DeadLetter) and letter.field == field, letter
        assert letter.reason.endswith("must be a number, got bool")
    labelled = parser.parse(b'{"device_id": "d", "ts": [1, 2], "values": [[1, 2], [3, 4]], "label": "not false"}', 0, 6)
    assert labelled.values.tolist() == [[1, 2], [3, 4]]  # a string holding the word only takes the value-by-value check


@settings(max_examples=100, deadline=None, derandomize=True)
@given(first=st.integers(0, 10**13), interval=st.one_of(st.integers(1, 1000), st.floats(0.01, 1000.0)),
       n=st.integers(1, 300))
def test_a_blocks_times_from_interval_ms_are_the_first_time_plus_each_rounded_step(first, interval, n):
    obj = {"device_id": "d", "ts": first, "interval_ms": interval, "values": [[0, 0]] * n}
    steps = [first + int(round(k * interval)) for k in range(n)]
    if any(b <= a for a, b in zip(steps, steps[1:])):
        with pytest.raises(SchemaError, match="is not after the sample before it"):
            SampleBlock.from_dict(obj, CHANNELS)
    else:
        assert SampleBlock.from_dict(obj, CHANNELS).ts.tolist() == steps


def test_rows_columns_and_per_sample_times_are_the_same_block():
    single = decode_reading(orjson.dumps({"device_id": "d", "ts": 100, "values": [1, 2]}), CHANNELS)
    assert isinstance(single, SensorReading)  # the single-sample form still works
    one_row = block("d", 100, [[1, 2]])
    assert isinstance(one_row, SampleBlock) and one_row.ts.tolist() == [100]
    a = decode_reading(orjson.dumps({"device_id": "d", "ts": 100, "interval_ms": 12.5,
                                     "values": [[1, 2], [3, 4], [5, 6]]}), CHANNELS)
    b = decode_reading(orjson.dumps({"device_id": "d", "ts": [100, 112, 125],
                                     "values": {"x": [1, 3, 5], "y": [2, 4, 6]}, "label": "walk"}), CHANNELS)
    assert a.ts.tolist() == b.ts.tolist() == [100, 112, 125] and (a.values == b.values).all()
    assert b.labels == ["walk"] * 3 and a.labels is None
    with pytest.raises(SchemaError, match="interval_ms: give either"):
        decode_reading(orjson.dumps({"device_id": "d", "ts": [1, 2], "interval_ms": 5, "values": [[1, 2]] * 2}),
                       CHANNELS)


def run(windower, items):
    state, windows, refused = windower.new_state("m"), [], []
    for item in items:
        add = windower.add_block if isinstance(item, SampleBlock) else windower.add
        done, bad = add(state, item, ingest_ms=7)
        windows += done
        refused += bad
    return windows, refused, state


def as_tuples(windows):
    return [(w.device_id, w.start, w.end, w.values.tolist(), w.truth, w.model_name) for w in windows]


@settings(max_examples=150, deadline=None, derandomize=True)
@given(n=st.integers(1, 120), cuts=st.lists(st.integers(1, 40), min_size=1, max_size=40),
       length=st.integers(2, 12), stride=st.integers(1, 12), sequenced=st.booleans(),
       gaps=st.lists(st.integers(1, 30), min_size=1, max_size=5), reset_gap_ms=st.sampled_from([0, 25]),
       labelled=st.booleans())
def test_blocks_make_exactly_the_windows_their_samples_make_one_by_one(n, cuts, length, stride, sequenced, gaps,
                                                                       reset_gap_ms, labelled):
    stride = min(stride, length)
    ts, t = [], 1000
    for k in range(n):
        t += gaps[k % len(gaps)]
        ts.append(t)
    rows = [[float(k), float(-k)] for k in range(n)]
    labels = [("a" if k % 7 < 4 else "b") if labelled and k % 11 else None for k in range(n)]
    singles = [SensorReading("d", ts[k], rows[k], k if sequenced else None, labels[k]) for k in range(n)]
    blocks, start, i = [], 0, 0
    while start < n:
        size = cuts[i % len(cuts)]
        part = slice(start, min(n, start + size))
        blocks.append(SampleBlock("d", np.asarray(ts[part]), np.asarray(rows[part], np.float32),
                                  start if sequenced else None, labels[part] if labelled else None))
        start, i = part.stop, i + 1
    windower = SlidingWindower(length, stride, 2, reset_gap_ms=reset_gap_ms)
    one_by_one, refused_one, _ = run(windower, singles)
    by_block, refused_block, state = run(windower, blocks)
    assert not refused_one and not refused_block
    assert as_tuples(by_block) == as_tuples(one_by_one)
    assert state.count == run(windower, singles)[2].count


def test_a_block_that_overlaps_what_was_used_is_refused_whole_and_changes_nothing():
    import pickle

    windower = SlidingWindower(4, 2, 2)
    state = windower.new_state("m")
    windows, _ = windower.add_block(state, block("d", [10, 20, 30, 40], [[1, 1]] * 4), 1)
    assert len(windows) == 1
    before = pickle.dumps(state)
    windows, refused = windower.add_block(state, block("d", [35, 50, 60], [[2, 2]] * 3), 2)
    assert windows == [] and "late or duplicate: block of ts 35..60 is not after the last used reading (40)" \
        in refused[0].reason
    state.late -= 3
    assert pickle.dumps(state) == before  # nothing of it was applied
    windower = SlidingWindower(4, 2, 2, max_seq_jump=1000)
    seq = windower.new_state("m")
    windower.add_block(seq, block("d", [10, 20], [[1, 1]] * 2, seq=0), 1)
    _, refused = windower.add_block(seq, block("d", [30, 40], [[1, 1]] * 2, seq=1), 1)
    assert "block of seq 1..2 overlaps" in refused[0].reason
    _, refused = windower.add_block(seq, block("d", [30, 40], [[1, 1]] * 2, seq=10**6), 1)
    assert "ahead of the next expected 2" in refused[0].reason
