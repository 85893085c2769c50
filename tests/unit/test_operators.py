import time

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from model.datasets import Recordings
from model.spec import ModelSpec
from settings import ServingSettings
from operators.inference import WindowScorer, review_id_for
from operators.monitor import ServingMonitor, status_line
from operators.parse import ReadingParser
from operators.replay import DriftPlan, ReadingStream
from operators.routing import ReviewRouter
from operators.serving_model import ServingModel
from operators.windowing import Window
from schemas import DeadLetter, Prediction, ReviewRequest, SensorReading

SPEC = ModelSpec(window=4, channels=("a", "b"), classes=("x", "y", "z"))


class FixedRunner:
    """Returns the probabilities it was given, one row per window in turn."""

    provider = "fixed"

    def __init__(self, rows):
        self.rows = np.asarray(rows, dtype=np.float32)

    def predict_proba(self, windows):
        assert windows.shape[1:] == (SPEC.window, SPEC.n_channels)
        return self.rows[: len(windows)]


def window(device, end, truth=None):
    return Window(device, end - 3, end, np.ones((4, 2), np.float32) * end, truth, ingest_ms=end - 100)


def test_scorer_predicts_every_window_and_routes_unsure_ones():
    model = ServingModel("m", 3, SPEC, FixedRunner([[0.9, 0.05, 0.05], [0.4, 0.35, 0.25]]))
    scorer = WindowScorer(model, ReviewRouter(threshold=0.6, audit_rate=0.0, budget_per_minute=100))
    preds, reviews, unscored = scorer.score([window("d1", 1000, "x"), window("d2", 2000)], now_ms=0,
                                            clock=lambda: 2050)
    assert unscored == []
    assert [p.label for p in preds] == ["x", "x"]
    assert preds[0].model_version == 3 and preds[0].truth == "x" and preds[0].latency_ms == 1150.0
    assert abs(sum(preds[1].probabilities.values()) - 1.0) < 1e-5
    assert len(reviews) == 1 and reviews[0].review_id == "d2:2000" and reviews[0].reason == "low_confidence"
    assert reviews[0].values[0] == [2000.0, 2000.0] and reviews[0].channels == ["a", "b"]
    # every record passes its own contract
    assert Prediction.decode(preds[0].encode()) == preds[0]
    assert ReviewRequest.decode(reviews[0].encode()).review_id == "d2:2000"
    assert scorer.stats.windows == 2 and scorer.stats.batches == 1


def test_windows_the_model_gives_no_finite_probabilities_are_not_predicted():
    nan = float("nan")
    model = ServingModel("m", 3, SPEC, FixedRunner([[0.9, 0.05, 0.05], [nan, nan, nan]]))
    scorer = WindowScorer(model, ReviewRouter(threshold=1.0, audit_rate=0.0, budget_per_minute=100))
    preds, reviews, unscored = scorer.score([window("d1", 1000), window("d2", 2000)], now_ms=0)
    assert [p.device_id for p in preds] == ["d1"] and [r.device_id for r in reviews] == ["d1"]
    assert [w.device_id for w in unscored] == ["d2"]


def test_a_nan_confidence_does_not_blind_the_confidence_watch():
    from operators.confidence_watch import ConfidenceWatch

    watch = ConfidenceWatch("m", delta=0.002, min_gap_ms=0)
    watch.observe([0.95] * 300 + [float("nan")], 1, 0)
    assert watch.detector.estimation == watch.detector.estimation  # not NaN
    assert any(watch.observe([0.5] * 50, 1, i) is not None for i in range(20))  # a real fall is still seen


def _falls_read_from_adwin(batches: list[list[float]], delta: float, min_fall: float) -> list[bool]:
    """Per batch, whether ADWIN cut its window and the part it dropped had a mean above the rest by more than
    ``min_fall``, with ADWIN's window sum and length read from the detector before and after every value."""
    from river.drift import ADWIN

    d, out = ADWIN(delta=delta), []
    for batch in batches:
        fell = False
        for x in batch:
            if x != x:
                continue
            total, width = d.estimation * d.width + x, d.width + 1
            d.update(x)
            if d.drift_detected and width > d.width:
                fell = fell or d.estimation < (total - d.estimation * d.width) / (width - d.width) - min_fall
        out.append(fell)
    return out


@settings(max_examples=60, deadline=None, derandomize=True)
@given(levels=st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(1, 400)), min_size=1, max_size=6),
       noise=st.floats(0.0, 0.3), batch=st.integers(1, 130), seed=st.integers(0, 2**16),
       nans=st.floats(0.0, 0.05))
def test_the_confidence_watch_follows_adwins_window_as_reading_it_would(levels, noise, batch, seed, nans):
    """The watch keeps its own copy of ADWIN's window sum and length instead of reading them around every value;
    on streams of shifting confidence levels (and now and then a NaN) it reports a fall in exactly the batches
    in which reading them from the detector finds one."""
    from operators.confidence_watch import ConfidenceWatch

    rng = np.random.default_rng(seed)
    values = np.concatenate([np.clip(level + noise * rng.standard_normal(n), 0, 1) for level, n in levels])
    values[rng.random(len(values)) < nans] = np.nan
    batches = [values[i:i + batch].tolist() for i in range(0, len(values), batch)]
    watch = ConfidenceWatch("m", delta=0.01, min_gap_ms=0, min_fall=0.02)
    got = [watch.observe(b, 1, i) is not None for i, b in enumerate(batches)]
    assert got == _falls_read_from_adwin(batches, 0.01, 0.02)
    d = watch.detector
    if not d.drift_detected:
        assert watch.width == d.width and abs(watch.total - d.total) <= 1e-9 * max(1.0, d.width)


def test_scorer_swap_changes_version_between_batches():
    scorer = WindowScorer(ServingModel("m", 1, SPEC, FixedRunner([[1, 0, 0]])), ReviewRouter(0.0, 0.0, 10))
    assert scorer.score([window("d", 10)], 0)[0][0].model_version == 1
    scorer.swap(ServingModel("m", 2, SPEC, FixedRunner([[0, 1, 0]])))
    p = scorer.score([window("d", 20)], 0)[0][0]
    assert (p.model_version, p.label) == (2, "y")


class SleepyRunner(FixedRunner):
    """Waits without using the CPU, as a model call does when the thread is not scheduled."""

    def predict_proba(self, windows):
        time.sleep(0.05)
        return super().predict_proba(windows)


def test_scorer_separates_model_wall_time_from_its_cpu_time():
    scorer = WindowScorer(ServingModel("m", 1, SPEC, SleepyRunner([[1, 0, 0]])), ReviewRouter(0.0, 0.0, 10))
    scorer.score([window("d", 10)], 0)
    assert scorer.stats.inference_s >= 0.05
    assert 0.0 <= scorer.stats.inference_cpu_s < 0.025


def test_review_id_is_stable():
    assert review_id_for(window("dev-7", 123)) == "dev-7:123"


def test_parser_dead_letters_keep_position_and_payload():
    p = ReadingParser(["a", "b"], "sensor-readings")
    dl = p.parse(b"\xff\xfe garbage", partition=3, offset=41)
    assert isinstance(dl, DeadLetter)
    assert (dl.source_topic, dl.partition, dl.offset, dl.stage) == ("sensor-readings", 3, 41, "parse")
    assert dl.raw == "\\xff\\xfe garbage" and dl.reason.startswith("$: malformed JSON")
    big = p.parse(b"x" * 200_000, 0, 1)
    assert "exceeds the limit" in big.reason and big.raw.endswith("more bytes]")
    ok = p.parse(SensorReading("d", 1, [1.0, 2.0]).encode(), 0, 2)
    assert isinstance(ok, SensorReading)


def test_replay_devices_keep_their_own_sequence_and_labels():
    rec = Recordings(np.arange(2 * 5 * 2, dtype=np.float32).reshape(2, 5, 2), np.array(["p", "q"]), ("a", "b"))
    stream = ReadingStream(rec, n_devices=3, seed=1)
    items = [next(stream) for _ in range(30)]
    for dev in ("device-000", "device-001", "device-002"):
        seqs = [r["seq"] for r in items if r["device_id"] == dev]
        assert seqs == list(range(10))
    assert {r["label"] for r in items} <= {"p", "q"}


def test_replay_values_are_the_recordings_rows_rounded_to_six_places():
    rng = np.random.default_rng(3)
    series = (rng.standard_normal((3, 7, 4)) * 1e3).astype(np.float32)
    rec = Recordings(series, np.array(["r0", "r1", "r2"]), ("a", "b", "c", "d"))
    stream = ReadingStream(rec, n_devices=2, seed=2)
    for _ in range(60):
        reading = next(stream)
        recording = int(reading["label"][1:])
        position = reading["seq"] % 7  # each recording is 7 samples long, played back to back
        assert reading["values"] == [round(float(v), 6) for v in series[recording, position]]


def test_kafka_clients_check_record_crcs_in_c():
    """kafka-python computes and checks every record batch's CRC-32C; without the ``crc32c`` package it
    does so in pure Python (about 11 MB/s), which halved the replayer's message rate."""
    from kafka.record import util

    assert util.crc32c_c is not None and util.calc_crc32c(b"123456789") == 0xE3069283


def test_drift_changes_gain_and_class_mix():
    rec = Recordings(np.ones((4, 5, 2), np.float32), np.array(["p", "q", "p", "q"]), ("a", "b"))
    stream = ReadingStream(rec, n_devices=2, seed=0, drift=DriftPlan(after=20, gain={0: 3.0}, classes=("q",)))
    before = [next(stream) for _ in range(20)]
    after = [next(stream) for _ in range(40)]
    assert all(r["values"] == [1.0, 1.0] for r in before)
    assert all(r["values"] == [3.0, 1.0] for r in after)
    assert {r["label"] for r in after} == {"q"}


def test_serving_settings_refuse_bad_values():
    import pytest

    with pytest.raises(ValueError, match="runtime"):
        ServingSettings(runtime="tensorflow")
    with pytest.raises(ValueError, match="audit_rate must lie in"):
        ServingSettings(audit_rate=1.5)
    assert ServingSettings(window=16).window == 16


def test_status_line_reads_well():
    m = ServingMonitor()
    m.observe_dead_letter()
    line = status_line(m.snapshot(10, 1.0))
    assert "dead letters 1" in line and "model v-" in line


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.dictionaries(st.integers(0, 7), st.integers(0, 10_000), max_size=6), st.data())
def test_the_source_watch_reports_a_committed_offset_only_when_the_broker_lost_that_record(committed, data):
    """A restored job's watch takes its group's committed offsets for the partitions it has not read: it reports
    exactly the partitions whose last committed record the broker no longer has (after two checks), and a read
    from an older position (a savepoint) afterwards is no reset."""
    from operators.source_watch import SourceWatch

    lost = data.draw(st.sets(st.sampled_from(sorted(committed)) if committed else st.nothing()))
    watch = SourceWatch("sensor-readings")
    asked: list[dict[int, int]] = []

    def probe(positions: dict[int, int]) -> dict[int, bool]:
        asked.append(dict(positions))
        return {p: p not in lost for p in positions}

    reports = watch.check(probe, lambda: committed) + watch.check(probe, lambda: committed)
    expected = {p for p in lost if committed[p] > 0}  # offset 0 committed: nothing was read there
    assert {r.partition for r in reports} == expected
    assert all(r.seen_offset == committed[r.partition] - 1 for r in reports)
    assert all(a == {p: o - 1 for p, o in committed.items() if o > 0} for a in asked[:1])
    for partition in committed:
        assert watch.see(partition, 0) is None
    assert watch.stalled_partitions() == 0
