"""Automatic rollback on the real broker and Flink: a version that serves worse on live windows than
the one before it is rolled back by the learning job, and serving swaps back.

The bad version is v1 with its output rows rotated (it answers the next class), published by hand as
v2 with parent v1, the way `model promote` or a retrain outside the gate would put it in service;
serving starts on it as the newest version. The simulated labelers answer the uniform audit sample;
the learning job scores the same audit windows with v1 and, once v2 is clearly worse on them,
announces v1 again."""

from __future__ import annotations

import threading
import time

import orjson
import pytest

from control.launcher import learning_job, serving_job
from control.replayer import replay
from infra.broker import EmbeddedBroker, ensure_topics
from infra.kafka_tools import TopicTail
from labeling.simulated import run_simulated_labelers
from model.registry import ModelRegistry
from schemas import ModelSnapshot, Topics
from tests.e2e.helpers import follow, started
from tests.unit.test_rollback import NAME, publish_damaged

pytestmark = pytest.mark.e2e
TOPICS = Topics()


def test_a_version_worse_on_live_audits_is_rolled_back_and_serving_swaps_back(tmp_path, registry_copy):
    registry = ModelRegistry(registry_copy)
    assert publish_damaged(registry) == 2
    classes = list(registry.latest_metadata(NAME).spec["classes"])
    with EmbeddedBroker(log_path=tmp_path / "broker.log") as broker:
        ensure_topics(broker.bootstrap, TOPICS)
        serving, _ = started(lambda port: serving_job(
            broker.bootstrap, tmp_path / "serving.log", registry=registry_copy, state_dir=str(tmp_path / "ck-s"),
            audit_rate=0.3, review_budget_per_minute=100_000, rest_port=port))
        learning, _ = started(lambda port: learning_job(
            broker.bootstrap, tmp_path / "learning.log", registry=registry_copy, state_dir=str(tmp_path / "ck-l"),
            gate_every=100_000, rollback_min_audits=20, rest_port=port))  # no new versions: only the rollback
        stop = threading.Event()
        threads = [threading.Thread(target=replay, daemon=True, kwargs=dict(
                       bootstrap=broker.bootstrap, topic=TOPICS.readings, rate=300, n_devices=8, stop=stop)),
                   threading.Thread(target=run_simulated_labelers, daemon=True, kwargs=dict(
                       bootstrap=broker.bootstrap, topics=TOPICS, classes=classes, delay_ms=200, stop=stop))]
        tail = TopicTail(broker.bootstrap, [TOPICS.predictions, TOPICS.model_snapshots])

        def served_v1_again(records) -> bool:
            return sum(p["model_version"] == 1 for p in records[TOPICS.predictions]) >= 200

        with serving, learning:
            started_at = time.time()
            for t in threads:
                t.start()
            try:
                records = follow(tail, {TOPICS.predictions: orjson.loads, TOPICS.model_snapshots: ModelSnapshot.decode},
                                 served_v1_again, 240, (serving, learning))
            finally:
                stop.set()
                tail.close()
        log = learning.log_tail(5000)  # the job's output and its MiniCluster's log (the Python workers' lines)
    predictions, snapshots = records[TOPICS.predictions], records[TOPICS.model_snapshots]
    assert [(s.model_name, s.version) for s in snapshots] == [(NAME, 1)], (snapshots, learning.log_tail(40))
    assert "rolled back to v1" in log
    before = [p for p in predictions if p["model_version"] == 2 and p.get("truth")]
    after = [p for p in predictions if p["model_version"] == 1 and p.get("truth")]
    assert len(before) >= 20 and len(after) >= 200, (len(before), len(after))
    acc_before = sum(p["label"] == p["truth"] for p in before) / len(before)
    acc_after = sum(p["label"] == p["truth"] for p in after) / len(after)
    assert acc_after > acc_before + 0.3
    assert {p["device_id"] for p in after} == {f"device-{i:03d}" for i in range(8)}  # every device served on
    rolled_at = min(p["emitted_at"] for p in predictions if p["model_version"] == 1) / 1000
    reason = next(line for line in log.splitlines() if "rolled back to v1" in line).split("rolled back to v1: ", 1)[1]
    print(f"rolled back {rolled_at - started_at:.1f} s after the stream began: {reason}; served accuracy "
          f"v2 {acc_before:.3f} on {len(before)} windows, v1 after the rollback {acc_after:.3f} on {len(after)}")
