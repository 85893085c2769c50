"""The closed loop: serving → review requests → simulated labelers → learning job → new version
→ hot swap in serving, on a stream whose gyroscopes drifted (a calibration bias)."""

import threading

import numpy as np
import orjson
import pytest

from infra.broker import EmbeddedBroker, ensure_topics, free_port
from infra.kafka_tools import TopicTail
from model.registry import ModelRegistry
from operators.replay import DriftPlan
from operators.serving_model import load_from_registry
from schemas import DriftEvent, ModelSnapshot, ReviewRequest, Topics
from control.launcher import learning_job, serving_job
from control.replayer import ReplayStats, replay
from labeling.simulated import run_simulated_labelers

from tests.e2e.helpers import follow, wait_all_tasks_running

pytestmark = pytest.mark.e2e
TOPICS = Topics()
NAME = "basic-motions"
DRIFT_AFTER = 2400  # readings (8 s at 300/s) before the devices' gyroscopes pick up a +4.0 bias: in
# that time the learner has seen fewer than gate_every answers, so v1 (hurt by the bias) is serving when it begins;
# a version published before it may be one that relies less on the gyroscopes, and then there is little to repair
AUDIT_RATE = 0.5  # of all windows (the audit comes first); the budget never caps reviews here
THRESHOLD = 0.9  # every window under it is reviewed (as an audit or as unsure)
GYRO_BIAS = DriftPlan(after=DRIFT_AFTER, offset={3: 4.0, 4: 4.0, 5: 4.0})


def test_labels_train_a_version_that_serving_swaps_in_and_accuracy_recovers(tmp_path, registry_copy):
    root = registry_copy
    classes = list(ModelRegistry(root).latest_metadata(NAME).spec["classes"])
    with EmbeddedBroker(log_path=tmp_path / "broker.log") as broker:
        ensure_topics(broker.bootstrap, TOPICS)
        serving_port, rest_port = free_port(), free_port()
        serving = serving_job(broker.bootstrap, tmp_path / "serving.log", registry=str(root),
                              state_dir=str(tmp_path / "ck-serving"), confidence_threshold=THRESHOLD,
                              audit_rate=AUDIT_RATE, review_budget_per_minute=100_000, rest_port=serving_port)
        learning = learning_job(broker.bootstrap, tmp_path / "learning.log", registry=str(root),
                                state_dir=str(tmp_path / "ck-learn"), gate_every=64, batch_size=8, lr=0.002,
                                rest_port=rest_port)
        stop = threading.Event()
        sent = ReplayStats()
        threads = [
            threading.Thread(target=replay, daemon=True, kwargs=dict(
                bootstrap=broker.bootstrap, topic=TOPICS.readings, rate=300, n_devices=8, drift=GYRO_BIAS,
                stop=stop, stats=sent)),
            threading.Thread(target=run_simulated_labelers, daemon=True, kwargs=dict(
                bootstrap=broker.bootstrap, topics=TOPICS, classes=classes, delay_ms=200, stop=stop)),
        ]
        tail = TopicTail(broker.bootstrap, [TOPICS.predictions, TOPICS.model_snapshots, TOPICS.drift_events,
                                            TOPICS.review_requests])
        decoders = {TOPICS.predictions: orjson.loads, TOPICS.model_snapshots: ModelSnapshot.decode,
                    TOPICS.drift_events: DriftEvent.decode, TOPICS.review_requests: ReviewRequest.decode}

        def drifted_enough(records) -> bool:  # versions learned after the bias serving it for a while
            start = sent.drift_at_ms  # the send time stamped on the first biased reading
            if start is None or sum(p["window_start"] > start for p in records[TOPICS.predictions]) < 1000:
                return False
            # the drift event comes last (prediction -> review -> answer -> learner): on a slow machine the
            # 1000th prediction can come before the learner has seen enough drifted answers, so wait for it
            return any(d.signal == "error" and d.detected_at > start for d in records[TOPICS.drift_events])

        with learning, serving:
            # label -> serving is measured once both jobs run; and readings sent while serving still starts
            # would be predicted late, by whichever version is current by then, blurring the drift's onset
            wait_all_tasks_running(rest_port, learning)
            wait_all_tasks_running(serving_port, serving)
            for t in threads:
                t.start()
            try:
                records = follow(tail, decoders, drifted_enough, 300, (serving, learning))
            finally:
                stop.set()
                tail.close()
    predictions, snapshots = records[TOPICS.predictions], records[TOPICS.model_snapshots]
    drifts, reviews = records[TOPICS.drift_events], records[TOPICS.review_requests]
    drift_at_ms = sent.drift_at_ms
    assert snapshots, "the learning job announced no version:\n" + learning.log_tail(40)
    assert snapshots[0].version == 2 and snapshots[0].parent_version == 1
    meta = ModelRegistry(root).metadata(NAME, 2)
    assert meta.metrics["holdout_accuracy"] >= meta.metrics["serving_holdout_accuracy"]
    def accuracy(items):
        return sum(p["label"] == p["truth"] for p in items) / len(items)

    assert drift_at_ms is not None
    registry = ModelRegistry(root)
    # versions completed by an answer given before the bias began learned only the clean concept
    clean_versions = {1} | {v for v in registry.versions(NAME)[1:]
                            if registry.metadata(NAME, v).metrics["trigger_label_at_ms"] < drift_at_ms}
    labeled = [p for p in predictions if p.get("truth")]
    clean = [p for p in labeled if p["window_end"] < drift_at_ms]
    drifted_old = [p for p in labeled if p["window_start"] > drift_at_ms and p["model_version"] in clean_versions]
    after = [p for p in labeled if p["window_start"] > drift_at_ms and p["model_version"] not in clean_versions]
    # How long the versions from before the bias keep serving after it depends on when the next gate
    # passes, so their harm is judged on the drifted windows sent for review (values and ground truth),
    # scored by the newest of them. Every unsure window is reviewed and the audit picks AUDIT_RATE of all
    # windows: weighting each by 1 / its chance of review estimates the accuracy over all drifted windows.
    truth = {(p["device_id"], p["window_end"]): p["truth"] for p in labeled}
    drifted_reviews = [r for r in reviews if r.window_start > drift_at_ms and (r.device_id, r.window_end) in truth]
    assert len(after) >= 300 and len(clean) >= 30 and len(drifted_reviews) >= 100, (
        len(after), len(clean), len(drifted_reviews))
    last_clean = load_from_registry(str(root), NAME, max(clean_versions))
    probs = last_clean.runner.predict_proba(np.asarray([r.values for r in drifted_reviews], dtype=np.float32))
    labels = [last_clean.spec.classes[i] for i in probs.argmax(axis=1)]
    assert {r.reason for r in drifted_reviews} <= {"low_confidence", "audit"}
    weights = np.asarray([1.0 if r.confidence < THRESHOLD else 1.0 / AUDIT_RATE for r in drifted_reviews])
    correct = np.asarray([label == truth[(r.device_id, r.window_end)] for label, r in zip(labels, drifted_reviews)])
    acc_drifted = float((weights * correct).sum() / weights.sum())
    acc_clean, acc_after = accuracy(clean), accuracy(after[-300:])
    served_old = f"{accuracy(drifted_old):.3f} on {len(drifted_old)}" if drifted_old else "none"
    print(f"prequential accuracy: {acc_clean:.3f} before the drift; v{last_clean.version} (newest from before it) "
          f"{acc_drifted:.3f} on {len(drifted_reviews)} drifted review windows (served: {served_old}); "
          f"v{after[-1]['model_version']} {acc_after:.3f} on the last 300")
    assert acc_drifted < acc_clean - 0.15  # the bias really hurts the model learned before it
    assert acc_after > acc_drifted + 0.15  # and learning from the labels repairs it
    # the learner saw the drift (ADWIN on the prequential error) and told serving (raised label budget)
    onset = [d for d in drifts if d.signal == "error" and d.detected_at > drift_at_ms]
    assert onset, f"no drift detected after the bias began: {drifts}"
    print(f"drift detected {(onset[0].detected_at - drift_at_ms) / 1000:.1f} s after the bias began "
          f"(serving v{onset[0].model_version}); all events: {[(d.signal, d.model_version) for d in drifts]}")
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
