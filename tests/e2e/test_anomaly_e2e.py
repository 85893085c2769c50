"""Anomaly scores and forecasts through the real serving job: a model with classify, anomaly and forecast
heads serves replayed BasicMotions devices, three of which develop a fault half-way (a spike train, a
drifting offset, a channel stuck at zero). The faulty windows are asked about (reason ``anomaly``), the
healthy devices almost never are and keep being served, and every window gets a forecast that beats
repeating its last sample."""

from __future__ import annotations

import time

import numpy as np
import orjson
import pytest

from control.launcher import serving_job
from infra.broker import EmbeddedBroker, ensure_topics
from infra.kafka_tools import produce
from model.registry import ModelRegistry
from model.spec import ModelSpec
from model.train import bootstrap
from schemas import DeadLetter, Forecast, Prediction, ReviewRequest, Topics
from tests.e2e.helpers import collect, encoded, expected_window_ends, replayed_readings

pytestmark = pytest.mark.e2e
TOPICS = Topics()
FAULT_FROM_SEQ = 60
HEALTHY = ("device-000", "device-001", "device-002")


def inject_faults(readings: list[dict]) -> None:
    """From ``FAULT_FROM_SEQ`` on: device-003's gyr_x stuck at 0, device-004's acc_x spiking by +60 every
    fourth sample (about ten standard deviations), device-005's acc_y drifting by +0.3 per sample."""
    for r in readings:
        seq, values = r["seq"], r["values"]
        if seq < FAULT_FROM_SEQ:
            continue
        if r["device_id"] == "device-003":
            values[3] = 0.0
        elif r["device_id"] == "device-004" and seq % 4 == 0:
            values[0] += 60.0
        elif r["device_id"] == "device-005":
            values[1] += 0.3 * (seq - FAULT_FROM_SEQ)


def test_faults_are_flagged_for_review_and_every_window_is_forecast(tmp_path):
    registry = tmp_path / "registry"
    bootstrap(ModelRegistry(registry), "basic-motions", ModelSpec(tasks=("classify", "anomaly", "forecast"),
                                                                  horizon=8), epochs=15)
    readings = replayed_readings(n_devices=6, per_device=150)
    inject_faults(readings)
    expected = expected_window_ends(readings, window=32, stride=8)
    with EmbeddedBroker(log_path=tmp_path / "broker.log") as broker:
        ensure_topics(broker.bootstrap, TOPICS)
        job = serving_job(broker.bootstrap, tmp_path / "job.log", registry=str(registry),
                          state_dir=str(tmp_path / "ck"), audit_rate=0.0, review_budget_per_minute=10_000)
        with job:
            produce(broker.bootstrap, TOPICS.readings, encoded(readings))
            out = collect(broker.bootstrap, {TOPICS.predictions: len(expected), TOPICS.forecasts: len(expected)},
                          timeout_s=180, job=job)
            assert job.alive()
            reviews = [ReviewRequest.decode(r.value) for r in
                       collect(broker.bootstrap, {TOPICS.review_requests: 10**9}, timeout_s=5)[TOPICS.review_requests]]
    predictions = [Prediction.decode(r.value) for r in out[TOPICS.predictions]]
    assert {(p.device_id, p.window_end) for p in predictions} == expected, "every device keeps being served"
    assert all(p.anomaly is not None for p in predictions)
    flagged = {}
    for r in reviews:
        if r.reason == "anomaly":
            assert r.anomaly >= 3.0
            flagged[r.device_id] = flagged.get(r.device_id, 0) + 1
    windows = {d: sum(p.device_id == d for p in predictions) for d in {p.device_id for p in predictions}}
    scores = {d: [p.anomaly for p in predictions if p.device_id == d] for d in windows}
    print("anomaly requests per device:", flagged, "median score:", {d: round(float(np.median(s)), 2)
                                                                   for d, s in sorted(scores.items())})
    assert flagged.get("device-004", 0) >= 4 and flagged.get("device-005", 0) >= 2
    assert flagged.get("device-003", 0) >= 3, "a channel stuck at a plausible value is flagged (the flatness part)"
    assert sum(flagged.get(d, 0) for d in HEALTHY) <= 0.05 * sum(windows[d] for d in HEALTHY)
    # forecasts: the samples that followed each window are in the replayed stream
    by_device: dict[str, dict[int, list[float]]] = {}
    for r in readings:
        by_device.setdefault(r["device_id"], {})[r["ts"]] = r["values"]
    errors, last_value = [], []
    for record in out[TOPICS.forecasts]:
        f = Forecast.decode(record.value)
        series = by_device[f.device_id]
        truth = [series.get(f.window_end + round(f.interval_ms * (i + 1))) for i in range(len(f.values))]
        if f.device_id not in HEALTHY or any(t is None for t in truth):
            continue
        errors.append(np.abs(np.asarray(f.values) - np.asarray(truth)).mean())
        last_value.append(np.abs(np.asarray(series[f.window_end]) - np.asarray(truth)).mean())
    print(f"forecast MAE {np.mean(errors):.3f} vs last value {np.mean(last_value):.3f} on {len(errors)} windows")
    assert len(errors) >= 30 and np.mean(errors) < np.mean(last_value)


def phase(readings_of, devices: int, per_device: int, start_seq: int, spiking: str | None = None) -> list[dict]:
    """Replayed readings of ``devices`` devices from ``start_seq``; ``spiking``'s acc_x jumps by +60 every fourth
    sample (the pattern the test asks labelers about)."""
    readings = readings_of(n_devices=devices, per_device=per_device, start_seq=start_seq)
    for r in readings:
        if r["device_id"] == spiking and r["seq"] % 4 == 0:
            r["values"][0] += 60.0
    return readings


def test_an_anomaly_model_starts_cold_flags_faults_and_learns_what_labelers_call_normal(tmp_path):
    """A model declared with an anomaly head only, no version and no labels: serving says nothing about its
    windows but passes a share of them to the learning job, which publishes v1 once it rebuilds held-out
    windows better than the trivial model; serving swaps to it and scores every window. A device whose
    sensor spikes is asked about (reason ``anomaly``); labelers answer ``normal``; a later version, learned
    with those windows, scores that device's same pattern lower."""
    from control.launcher import learning_job
    from infra.kafka_tools import read_until
    from schemas import Label, ModelSnapshot

    channels = ["acc_x", "acc_y", "acc_z", "gyr_x", "gyr_y", "gyr_z"]
    config = tmp_path / "sensorloop.toml"
    config.write_text(f"""
[registry]
path = "{tmp_path / 'registry'}"
model_name = "motion-watch"

[serving]
unlabeled_share = 0.5
audit_rate = 0.0
review_budget_per_minute = 10000

[learning]
gate_every = 32
min_holdout = 30
batch_size = 8

[models.motion-watch]
channels = {channels!r}
sample_rate_hz = 10
window = 32
stride = 8
tasks = ["anomaly"]
d_model = 32
d_ff = 64
""".replace("'", '"'))
    options = dict(config=str(config), state_dir=str(tmp_path / "ck"), log_dir=str(tmp_path))
    with EmbeddedBroker(log_path=tmp_path / "broker.log") as broker:
        ensure_topics(broker.bootstrap, TOPICS)
        serving = serving_job(broker.bootstrap, tmp_path / "serving.log", **options)
        learning = learning_job(broker.bootstrap, tmp_path / "learning.log", **options)
        with serving, learning:
            produce(broker.bootstrap, TOPICS.readings, encoded(phase(replayed_readings, 12, 800, 0)))
            # hostile records on the learning job's unlabeled windows: refused by name, the job goes on
            good = {"device_id": "d", "window_start": 0, "window_end": 3100, "channels": channels,
                    "values": [[0.1] * 6] * 32, "model_name": "motion-watch", "model_version": 0}
            produce(broker.bootstrap, TOPICS.windows, [
                (b"motion-watch", b"{not json"),
                (b"other", orjson.dumps({**good, "model_name": "other-model"})),
                (b"motion-watch", orjson.dumps({**good, "values": [[0.1] * 6] * 31})),
                (b"motion-watch", orjson.dumps({**good, "values": [[0.1] * 5 + ["x"]] + [[0.1] * 6] * 31}))])
            first = read_until(broker.bootstrap, [TOPICS.model_snapshots], lambda rs: len(rs) >= 1, timeout_s=240)
            assert first, "no first version:\n" + learning.log_tail(40)
            v1 = ModelSnapshot.decode(first[0].value)
            assert v1.version == 1 and serving.alive() and learning.alive()
            produce(broker.bootstrap, TOPICS.readings, encoded(phase(replayed_readings, 12, 300, 800, "device-003")))

            def flagged(records):
                return [ReviewRequest.decode(r.value) for r in records if r.topic == TOPICS.review_requests
                        and ReviewRequest.decode(r.value).reason == "anomaly"]
            out = read_until(broker.bootstrap, [TOPICS.review_requests, TOPICS.predictions],
                             lambda rs: sum(r.topic == TOPICS.predictions for r in rs) >= 12 * 30, timeout_s=180)
            asked = flagged(out)
            predictions = [Prediction.decode(r.value) for r in out if r.topic == TOPICS.predictions]
            assert predictions and all(p.label is None and p.anomaly is not None for p in predictions)
            assert min(p.model_version for p in predictions) >= 1, "nothing is said before the first version"
            spiking = [p.anomaly for p in predictions if p.device_id == "device-003" and p.window_start >= 1_700_000_000_000
                       + 100 * 800]
            healthy = [p.anomaly for p in predictions if p.device_id != "device-003"]
            on_device = [r for r in asked if r.device_id == "device-003"]
            print(f"v1 ({v1.metrics.get('holdout_error', 0):.3f} vs trivial {v1.metrics.get('serving_holdout_error', 0):.3f}): "
                  f"spiking device median score {np.median(spiking):.2f}, healthy {np.median(healthy):.2f}; "
                  f"{len(on_device)} anomaly questions about it, {len(asked) - len(on_device)} about the others")
            assert len(on_device) >= 5 and len(asked) - len(on_device) <= 0.05 * len(healthy)
            answers = [Label(r.review_id, "", labeler, int(time.time() * 1000), model_name="motion-watch",
                             verdict="normal") for r in on_device for labeler in ("ann",)]
            produce(broker.bootstrap, TOPICS.labels, [(a.review_id.encode(), a.encode()) for a in answers])
            # the same pattern keeps coming while the learning job learns it
            produce(broker.bootstrap, TOPICS.readings, encoded(phase(replayed_readings, 12, 500, 1100, "device-003")))

            def learned_them(snapshot: ModelSnapshot) -> bool:  # a version fitted with the windows called normal
                return snapshot.metrics.get("anomaly_confirmed_normal", 0) > 0

            later = read_until(broker.bootstrap, [TOPICS.model_snapshots],
                               lambda rs: any(learned_them(ModelSnapshot.decode(r.value)) for r in rs), timeout_s=240)
            snapshots = [ModelSnapshot.decode(r.value) for r in later]
            versions = sorted(s.version for s in snapshots)
            taught = min((s.version for s in snapshots if learned_them(s)), default=None)
            assert taught is not None, f"versions {versions}:\n" + learning.log_tail(60, only="/operators/")
            produce(broker.bootstrap, TOPICS.readings, encoded(phase(replayed_readings, 12, 200, 1600, "device-003")))
            out = read_until(broker.bootstrap, [TOPICS.predictions],
                             lambda rs: sum(Prediction.decode(r.value).window_start >= 1_700_000_000_000 + 100 * 1600
                                            for r in rs) >= 12 * 10, timeout_s=180)
            assert serving.alive() and learning.alive()
            dead = read_until(broker.bootstrap, [TOPICS.dead_letters], lambda rs: len(rs) >= 4, timeout_s=30)
    letters = [DeadLetter.decode(r.value) for r in dead]
    assert sorted(d.field or "" for d in letters if d.source_topic == TOPICS.windows) == [
        "$", "model_name", "values", "values[0][5]"], [d.reason for d in letters]
    newest = [Prediction.decode(r.value) for r in out]
    after = [p.anomaly for p in newest if p.device_id == "device-003" and p.model_version >= taught
             and p.window_start >= 1_700_000_000_000 + 100 * 1600]
    print(f"versions {versions}, v{taught} the first fitted with the windows called normal; the spiking device's "
          f"median score: v1 {np.median(spiking):.2f}, v{max(p.model_version for p in newest)} {np.median(after):.2f}")
    assert len(after) >= 5 and np.median(after) < np.median(spiking) - 1.0
