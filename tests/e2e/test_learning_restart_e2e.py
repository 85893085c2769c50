"""Kill the learning job mid-training and restart it from its checkpoint: the learning state
(counts, reservoir, weights) resumes and version numbers are never reused."""

import os
import signal
import time

import numpy as np
import pytest

from infra.broker import EmbeddedBroker, ensure_topics
from infra.kafka_tools import produce, read_quiet, read_until
from model.datasets import load_basic_motions, sliding_windows
from model.registry import ModelRegistry
from schemas import Label, ModelSnapshot, ReviewRequest, Topics
from control.launcher import learning_job
from tests.e2e.helpers import record_fault
from tests.e2e.test_restart_e2e import latest_checkpoint

pytestmark = pytest.mark.e2e
TOPICS = Topics()
NAME = "basic-motions"


def audit_answered(rid: str, window: np.ndarray, predicted: str, answer: str) -> tuple[tuple, tuple]:
    """An audit review request for ``window`` (served as ``predicted`` by v1) and a labeler's ``answer``, as
    (key, value) records for ``review-requests`` and ``labels``."""
    device = rid.split(":", 1)[0]
    request = ReviewRequest(rid, device, 0, 1, ["a"] * 6, np.round(window, 4).tolist(), predicted, 0.5, {}, 1,
                            "audit", 0)
    return (rid.encode(), request.encode()), (rid.encode(), Label(rid, answer, "sim", 1).encode())


def labeled_batch(start: int, count: int):
    """Review requests and their answers for real windows with a gyroscope bias."""
    X, y = sliding_windows(load_basic_motions("test"), 32, 4)
    X = X.copy()
    X[:, :, 3:] += 4.0
    requests, labels = [], []
    for i in range(start, start + count):
        k = i % len(X)
        request, label = audit_answered(f"device-r:{1_700_000_000_000 + i}", X[k], "standing", str(y[k]))
        requests.append(request)
        labels.append(label)
    return requests, labels


def start(broker, root, tmp_path, name, restore=None):
    # The answers come in the dataset's class order, so serving's error changes with each class: the drift
    # monitor sees that (rightly), and a gate that forgets on drift would wait for 20 fresh held-out windows
    # after the restart. This test is about what a checkpoint restores, so the gate keeps its windows.
    options = dict(registry=root, state_dir=str(tmp_path / "ck"), checkpoint_interval_ms=1000, gate_every=32,
                   gate_margin=1.0, gate_z=0.0, gate_forgets_on_drift=False, group_id="learn-restart")
    if restore:
        options["savepoint_path"] = str(restore)
    return learning_job(broker.bootstrap, tmp_path / f"{name}.log", **options).start()


def snapshots(bootstrap, n, timeout_s):
    records = read_until(bootstrap, [TOPICS.model_snapshots], lambda rs: len(rs) >= n, timeout_s)
    return [ModelSnapshot.decode(r.value) for r in records]


def test_learning_resumes_from_checkpoint(tmp_path, registry_copy):
    registry = ModelRegistry(registry_copy)
    with EmbeddedBroker(log_path=tmp_path / "broker.log") as broker:
        ensure_topics(broker.bootstrap, TOPICS)
        job = start(broker, registry_copy, tmp_path, "learn-a")
        try:
            requests, labels = labeled_batch(0, 160)
            produce(broker.bootstrap, TOPICS.review_requests, requests)
            produce(broker.bootstrap, TOPICS.labels, labels)
            assert len(snapshots(broker.bootstrap, 2, 240)) >= 2  # the gate (margin 1.0) passes every 32 windows
            assert job.alive(), job.log_tail(40)
            time.sleep(3)  # a checkpoint after those versions
        finally:
            os.killpg(job.process.pid, signal.SIGKILL)
            job.process.wait()
        killed_at = int(time.time() * 1000)
        published_before = registry.versions(NAME)
        restored = latest_checkpoint(tmp_path / "ck" / "checkpoints" / "learning")
        job = start(broker, registry_copy, tmp_path, "learn-b", restored)
        with job:
            requests, labels = labeled_batch(160, 64)
            produce(broker.bootstrap, TOPICS.review_requests, requests)
            produce(broker.bootstrap, TOPICS.labels, labels)
            deadline = time.monotonic() + 180
            while registry.latest_version(NAME) == max(published_before) and time.monotonic() < deadline:
                assert job.alive(), job.log_tail(40)
                time.sleep(0.5)
            time.sleep(2)
            all_snapshots = [ModelSnapshot.decode(r.value)
                             for r in read_quiet(broker.bootstrap, [TOPICS.model_snapshots], quiet_s=3)]
    versions = [s.version for s in all_snapshots]
    assert len(versions) == len(set(versions)), f"a version number was announced twice: {versions}"
    assert registry.versions(NAME) == list(range(1, max(versions) + 1))
    restarted = [v for v in registry.versions(NAME) if registry.metadata(NAME, v).created_at > killed_at]
    assert restarted, "no version after the restart"
    first = registry.metadata(NAME, restarted[0])
    # a fresh learner would publish its first version after 32 labeled windows; the restored one
    # continues from its checkpointed count (and reservoir, weights, holdout)
    assert first.data_seen > 32, first
    # versions published after the last checkpoint are re-derived on replay: the lineage then
    # continues from the version the restored learner knew, which was published before the crash
    assert first.parent_version in published_before and first.parent_version >= 2
    for v in registry.versions(NAME)[1:]:
        assert registry.metadata(NAME, v).parent_version < v
    record_fault("learning job SIGKILL mid-training, resumed from its checkpoint",
                 dict(unit="versions announced", sent=len(set(versions)), out=len(versions),
                      duplicates=len(versions) - len(set(versions)), lost=None),
                 (first.created_at - killed_at) / 1000, labels_sent=224, first_version_after_restart_saw=first.data_seen)
