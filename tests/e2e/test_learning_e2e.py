"""The closed loop: serving → review requests → simulated labelers → learning job → new version
→ hot swap in serving, on a stream whose gyroscopes drifted (a calibration bias)."""

import threading
import time

import orjson
import pytest

from infra.broker import EmbeddedBroker, ensure_topics, free_port
from infra.kafka_tools import TopicTail
from model.registry import ModelRegistry
from operators.replay import DriftPlan
from schemas import ModelSnapshot, Topics
from stream_jobs.flink_rest import FlinkRest, FlinkRestError
from stream_jobs.launcher import JobProcess, serving_job
from stream_jobs.replayer import replay
from stream_jobs.simulated_labelers import run_simulated_labelers

pytestmark = pytest.mark.e2e
TOPICS = Topics()
NAME = "basic-motions"
GYRO_BIAS = DriftPlan(after=0, offset={3: 4.0, 4: 4.0, 5: 4.0})


def wait_all_tasks_running(rest_port: int, job: JobProcess, timeout_s: float = 180) -> None:
    rest = FlinkRest(f"localhost:{rest_port}", timeout_s=2)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert job.alive(), job.log_tail(40)
        try:
            jobs = rest.jobs()
            if jobs and all(v["status"] == "RUNNING" for v in rest.job(jobs[0].job_id)["vertices"]):
                return
        except FlinkRestError:
            pass
        time.sleep(0.5)
    raise AssertionError("the learning job did not start:\n" + job.log_tail(40))


def test_labels_train_a_version_that_serving_swaps_in_and_accuracy_recovers(tmp_path, registry_copy):
    root = registry_copy
    classes = list(ModelRegistry(root).latest_metadata(NAME).spec["classes"])
    with EmbeddedBroker(log_path=tmp_path / "broker.log") as broker:
        ensure_topics(broker.bootstrap)
        serving = serving_job(broker.bootstrap, tmp_path / "serving.log", registry=str(root),
                              checkpoint_dir=str(tmp_path / "ck-serving"), confidence_threshold=0.9,
                              audit_rate=0.5, review_budget_per_minute=100_000)
        rest_port = free_port()
        learning = JobProcess("stream_jobs.learning_job", [
            "--bootstrap", broker.bootstrap, "--registry", str(root), "--checkpoint-dir", str(tmp_path / "ck-learn"),
            "--gate-every", "48", "--batch-size", "8", "--lr", "0.002", "--rest-port", str(rest_port)],
            tmp_path / "learning.log")
        stop = threading.Event()
        threads = [
            threading.Thread(target=replay, daemon=True, kwargs=dict(
                bootstrap=broker.bootstrap, topic=TOPICS.readings, rate=300, n_devices=8, drift=GYRO_BIAS,
                stop=stop)),
            threading.Thread(target=run_simulated_labelers, daemon=True, kwargs=dict(
                bootstrap=broker.bootstrap, classes=classes, delay_ms=200, stop=stop)),
        ]
        tail = TopicTail(broker.bootstrap, [TOPICS.predictions, TOPICS.model_snapshots])
        predictions, snapshots = [], []
        with learning, serving:
            wait_all_tasks_running(rest_port, learning)  # label -> serving is measured once both jobs run
            for t in threads:
                t.start()
            deadline = time.monotonic() + 300
            try:
                while time.monotonic() < deadline:
                    for r in tail.poll(200):
                        if r.topic == TOPICS.predictions:
                            predictions.append(orjson.loads(r.value))
                        else:
                            snapshots.append(ModelSnapshot.decode(r.value))
                    newer = [p for p in predictions if p["model_version"] > 1]
                    if len(newer) >= 300:
                        break
                    assert serving.alive(), serving.log_tail(60)
                    assert learning.alive(), learning.log_tail(60)
            finally:
                stop.set()
                tail.close()
    assert snapshots, "the learning job announced no version:\n" + learning.log_tail(40)
    assert snapshots[0].version == 2 and snapshots[0].parent_version == 1
    meta = ModelRegistry(root).metadata(NAME, 2)
    assert meta.metrics["holdout_accuracy"] >= meta.metrics["serving_holdout_accuracy"]
    before = [p for p in predictions if p["model_version"] == 1 and p.get("truth")]
    after = [p for p in predictions if p["model_version"] > 1 and p.get("truth")]
    assert len(after) >= 300, f"only {len(after)} predictions by a new version"
    acc_before = sum(p["label"] == p["truth"] for p in before) / len(before)
    acc_after = sum(p["label"] == p["truth"] for p in after[-300:]) / 300
    print(f"prequential accuracy: v1 {acc_before:.3f} on {len(before)} windows; "
          f"v{after[-1]['model_version']} {acc_after:.3f} on the last 300")
    assert acc_after > acc_before + 0.1
    # label → serving: from the answer that completed a version to its first prediction (reported only)
    seconds, published = [], []
    for version in sorted({p["model_version"] for p in predictions} - {1}):
        first = min(p["emitted_at"] for p in predictions if p["model_version"] == version)
        meta = ModelRegistry(root).metadata(NAME, version)
        seconds.append((first - meta.metrics["trigger_label_at_ms"]) / 1000)
        published.append((meta.created_at - meta.metrics["trigger_label_at_ms"]) / 1000)
    assert all(s > 0 for s in seconds), seconds
    print(f"label -> serving seconds per version: {[round(s, 2) for s in seconds]} "
          f"(of which label -> published: {[round(s, 2) for s in published]})")
