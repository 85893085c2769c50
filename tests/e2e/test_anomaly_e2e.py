"""Anomaly scores and forecasts through the real serving job: a model with classify, anomaly and forecast
heads serves replayed BasicMotions devices, three of which develop a fault half-way (a spike train, a
drifting offset, a channel stuck at zero). The faulty windows are asked about (reason ``anomaly``), the
healthy devices almost never are and keep being served, and every window gets a forecast that beats
repeating its last sample."""

from __future__ import annotations

import numpy as np
import pytest

from control.launcher import serving_job
from infra.broker import EmbeddedBroker, ensure_topics
from infra.kafka_tools import produce
from model.registry import ModelRegistry
from model.spec import ModelSpec
from model.train import bootstrap
from schemas import Forecast, Prediction, ReviewRequest, Topics
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
