import numpy as np
import pytest

from operators.windowing import SlidingWindower
from schemas import SensorReading


def feed(w, state, items):
    windows, rejected = [], []
    for item in items:
        wins, rej = w.add(state, item, ingest_ms=item.ts)
        windows += wins
        rejected += rej
    return windows, rejected


def seq_readings(seqs, device="d", label=None):
    return [SensorReading(device, 1000 + 10 * s, [float(s), -float(s)], seq=s, label=label) for s in seqs]


def test_in_order_windows_have_length_and_stride():
    w = SlidingWindower(length=4, stride=2, n_channels=2)
    windows, rejected = feed(w, w.new_state(), seq_readings(range(10)))
    assert not rejected
    assert [(x.start, x.end) for x in windows] == [(1000, 1030), (1020, 1050), (1040, 1070), (1060, 1090)]
    np.testing.assert_array_equal(windows[1].values[:, 0], [2, 3, 4, 5])
    assert windows[0].device_id == "d" and windows[0].values.dtype == np.float32


def test_out_of_order_sequence_is_put_back_in_order():
    w = SlidingWindower(length=3, stride=1, n_channels=2)
    windows, rejected = feed(w, w.new_state(), seq_readings([0, 2, 1, 4, 3, 5]))
    assert not rejected
    assert [list(x.values[:, 0]) for x in windows] == [[0, 1, 2], [1, 2, 3], [2, 3, 4], [3, 4, 5]]


def test_duplicate_and_late_readings_are_refused_with_reason():
    w = SlidingWindower(length=2, stride=1, n_channels=2)
    state = w.new_state()
    _, rejected = feed(w, state, seq_readings([0, 1, 2, 1, 2]))
    assert len(rejected) == 2 and state.late == 2
    assert "seq 1 already used" in rejected[0].reason


def test_gap_is_skipped_after_timeout_and_counted():
    w = SlidingWindower(length=2, stride=1, n_channels=2, seq_gap_timeout_ms=25)
    state = w.new_state()
    readings = seq_readings([0, 1, 3, 4, 5, 6])  # seq 2 never arrives
    windows, _ = feed(w, state, readings)
    assert state.gaps == 1
    assert [list(x.values[:, 0]) for x in windows][-1] == [5, 6]
    _, late = feed(w, state, seq_readings([2]))  # arriving after the skip: late
    assert len(late) == 1


def test_gap_is_skipped_when_buffer_is_full():
    w = SlidingWindower(length=2, stride=1, n_channels=2, max_seq_gap_buffer=2, seq_gap_timeout_ms=10**9)
    state = w.new_state()
    feed(w, state, seq_readings([0, 2, 3, 4]))
    assert state.gaps == 1 and state.next_seq == 5


def test_timestamp_order_with_out_of_order_bound():
    w = SlidingWindower(length=2, stride=1, n_channels=1, max_out_of_order_ms=20)
    state = w.new_state()
    items = [SensorReading("d", ts, [float(ts)]) for ts in (100, 120, 110, 150, 130, 200)]
    windows, rejected = feed(w, state, items)
    assert not rejected
    assert [list(x.values[:, 0]) for x in windows] == [[100, 110], [110, 120], [120, 130], [130, 150]]
    _, late = feed(w, state, [SensorReading("d", 105, [0.0])])
    assert len(late) == 1 and "not after" in late[0].reason
    assert [x.end for x in w.flush(state)] == [200]


def test_timestamp_order_without_bound_is_immediate():
    w = SlidingWindower(length=2, stride=1, n_channels=1)
    state = w.new_state()
    windows, _ = feed(w, state, [SensorReading("d", ts, [0.0]) for ts in (1, 2)])
    assert len(windows) == 1 and not state.pending


def test_truth_is_majority_label_when_every_reading_has_one():
    w = SlidingWindower(length=3, stride=1, n_channels=2)
    state = w.new_state()
    items = seq_readings([0, 1], label="run") + seq_readings([2], label="walk")
    windows, _ = feed(w, state, items)
    assert windows[0].truth == "run"
    windows, _ = feed(w, state, seq_readings([3]))
    assert windows[0].truth is None


def test_long_silence_restarts_the_window():
    w = SlidingWindower(length=2, stride=1, n_channels=1, reset_gap_ms=1000)
    state = w.new_state()
    items = [SensorReading("d", ts, [0.0], seq=i) for i, ts in enumerate((0, 10, 5000, 5010))]
    windows, _ = feed(w, state, items)
    assert [(x.start, x.end) for x in windows] == [(0, 10), (5000, 5010)] and state.resets == 1


def test_state_survives_pickling():
    import pickle

    w = SlidingWindower(length=3, stride=1, n_channels=2)
    state = w.new_state()
    feed(w, state, seq_readings([0, 2]))
    state = pickle.loads(pickle.dumps(state))
    windows, _ = feed(w, state, seq_readings([1]))
    assert [list(x.values[:, 0]) for x in windows] == [[0, 1, 2]]


def test_invalid_sizes_refused():
    with pytest.raises(ValueError):
        SlidingWindower(length=0, stride=1, n_channels=1)


def windows_as_tuples(windows):
    return [(x.device_id, x.start, x.end, x.values.tolist(), x.truth, x.ingest_ms) for x in windows]


def test_state_pickled_after_every_reading_gives_the_same_windows():
    """Flink keeps a device's state pickled between readings; out-of-order readings wait in it."""
    import pickle

    order = [0, 1, 3, 2, 4, 6, 5, 7, 8, 11, 9, 10]
    readings = seq_readings(order, label="walking")
    w = SlidingWindower(length=4, stride=1, n_channels=2)
    expected, _ = feed(w, w.new_state(), readings)
    state, got = w.new_state(), []
    for reading in readings:
        windows, _ = w.add(state, reading, ingest_ms=reading.ts)
        got += [pickle.loads(pickle.dumps(x)) for x in windows]
        state = pickle.loads(pickle.dumps(state))
    assert len(expected) == 9 and windows_as_tuples(got) == windows_as_tuples(expected)
    assert got[0].values.dtype == np.float32 and got[0].values.flags.writeable


def test_state_and_windows_pickled_by_an_earlier_version_still_load(monkeypatch):
    """Checkpoints taken before the compact pickling hold the dataclasses' default pickles."""
    import pickle

    from operators.windowing import DeviceState, Window

    w = SlidingWindower(length=4, stride=1, n_channels=2)
    state = w.new_state()
    windows, _ = feed(w, state, seq_readings(range(5)))
    monkeypatch.delattr(DeviceState, "__reduce__")
    monkeypatch.delattr(Window, "__reduce__")
    old_state, old_window = pickle.dumps(state), pickle.dumps(windows[-1])
    monkeypatch.undo()
    assert b"_rebuild" not in old_state + old_window
    restored = pickle.loads(old_state)
    more, _ = feed(w, restored, seq_readings([5]))
    assert [(x.start, x.end) for x in more] == [(1020, 1050)]
    assert windows_as_tuples([pickle.loads(old_window)]) == windows_as_tuples(windows[-1:])


def test_a_sequence_number_far_ahead_is_refused_and_the_device_keeps_being_served():
    w = SlidingWindower(length=2, stride=1, n_channels=2, max_seq_jump=1000, reset_gap_ms=10_000)
    state = w.new_state()
    hostile = SensorReading("d", 1025, [0.0, 0.0], seq=10**15)
    windows, rejected = feed(w, state, seq_readings([0, 1, 2]) + [hostile] + seq_readings([3, 4]))
    assert len(rejected) == 1 and "jumps" in rejected[0].reason and "at most 1000" in rejected[0].reason
    assert [x.end for x in windows] == [1010, 1020, 1030, 1040]  # seq 3 and 4 were not made "late"


def test_after_a_silence_a_restarted_sequence_is_taken():
    w = SlidingWindower(length=2, stride=1, n_channels=1, max_seq_jump=1000, reset_gap_ms=1000)
    state = w.new_state()
    before = [SensorReading("d", 10 * i, [0.0], seq=50_000 + i) for i in range(3)]
    rebooted = [SensorReading("d", 60_000 + 10 * i, [0.0], seq=i) for i in range(3)]  # counter back at 0
    windows, rejected = feed(w, state, before + rebooted)
    assert rejected == [] and [x.end for x in windows] == [10, 20, 60_010, 60_020]
