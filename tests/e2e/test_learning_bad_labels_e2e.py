"""Bad answers reaching the learning job (real broker, real Flink MiniCluster): each becomes a
dead letter with its reason, the good answer is still learned from, and the job keeps running."""

import time

import pytest

from infra.broker import EmbeddedBroker, ensure_topics, free_port
from infra.kafka_tools import produce, read_until
from schemas import DeadLetter, Label, ReviewRequest, Topics
from control.launcher import learning_job
from tests.e2e.helpers import wait_all_tasks_running
from tests.e2e.test_learning_restart_e2e import labeled_batch

pytestmark = pytest.mark.e2e
TOPICS = Topics()


def test_bad_labels_are_dead_lettered_and_the_job_keeps_learning(tmp_path, registry_copy):
    requests, labels = labeled_batch(0, 3)
    (r0, _), (r1, _), (r2, _) = requests
    with EmbeddedBroker(log_path=tmp_path / "broker.log") as broker:
        ensure_topics(broker.bootstrap, TOPICS)
        port = free_port()
        job = learning_job(broker.bootstrap, tmp_path / "learning.log", registry=registry_copy,
                           state_dir=str(tmp_path / "ck"), label_ttl_ms=8000, rest_port=port).start()
        try:
            wait_all_tasks_running(port, job)
            produce(broker.bootstrap, TOPICS.review_requests, requests[:2])
            time.sleep(1)
            produce(broker.bootstrap, TOPICS.labels, [labels[0]])  # good: resolves r0, learned from
            time.sleep(1)  # (answers that come before their request are resolved by majority, not refused)
            produce(broker.bootstrap, TOPICS.labels, [
                (r0, Label(r0.decode(), "standing", "other", 2).encode()),  # after the review was resolved
                (r1, Label(r1.decode(), "flying", "sim", 1).encode()),  # not one of the model's classes
                (r2, Label(r2.decode(), "walking", "sim", 1).encode()),  # no request ever comes
                (r1, b"{not json"),
                (r1, b'{"review_id": "x", "labeler": "sim", "answered_at": 1}'),  # neither a class nor a verdict
            ])
            tiny = ReviewRequest("tiny:1", "tiny", 0, 1, ["x"], [[0.0]], "walking", 0.3, {"walking": 1.0}, 1,
                                 "low_confidence", 0)  # a 1x1 window: the learner's gate broke on these
            produce(broker.bootstrap, TOPICS.review_requests, [(b"tiny:1", tiny.encode())])
            records = read_until(broker.bootstrap, [TOPICS.dead_letters], lambda rs: len(rs) >= 6, 180)
            reasons = sorted(DeadLetter.decode(r.value).reason for r in records)
            assert len(reasons) == 6, reasons
            assert any("a window of 1x1 values; the model takes 32x6" in r for r in reasons), reasons
            text = "\n".join(reasons)
            assert f"review '{r0.decode()}' was already resolved" in text
            assert "unknown class 'flying'" in text
            assert f"unknown review id '{r2.decode()}': no request within 8000 ms" in text
            assert sum("JSON" in r or "json" in r for r in reasons) >= 1
            assert "label: missing (an answer names a class, or gives an anomaly verdict)" in text, reasons
            # still running and joining: a valid pair sent afterwards is learned from (counted in its state)
            more_requests, more_labels = labeled_batch(10, 2)
            produce(broker.bootstrap, TOPICS.review_requests, more_requests)
            produce(broker.bootstrap, TOPICS.labels, more_labels)
            time.sleep(3)
            assert job.alive(), job.log_tail(40)
            extra = read_until(broker.bootstrap, [TOPICS.dead_letters], lambda rs: len(rs) > 6, 5)
            assert len(extra) == 6, [DeadLetter.decode(r.value).reason for r in extra]
        finally:
            job.stop()
