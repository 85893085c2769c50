"""Full retrain from the labeled archive on a real broker: gate, publish, announce (or refuse)."""

import subprocess
import sys

import pytest

from infra.broker import EmbeddedBroker, ensure_topics
from infra.kafka_tools import produce, read_quiet
from model.registry import ModelRegistry
from schemas import ModelSnapshot, Topics
from tests.e2e.test_learning_restart_e2e import labeled_batch

pytestmark = pytest.mark.e2e
TOPICS = Topics()


def run_retrain(bootstrap, registry, *extra):
    result = subprocess.run([sys.executable, "-m", "control.cli", "retrain", "--bootstrap", bootstrap,
                             "--registry", registry, "--epochs", "8", *extra], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_retrain_publishes_a_better_version_and_refuses_a_worse_one(tmp_path, registry_copy):
    with EmbeddedBroker(log_path=tmp_path / "broker.log") as broker:
        ensure_topics(broker.bootstrap, TOPICS)
        requests, labels = labeled_batch(0, 240)  # gyroscope-biased windows v1 gets wrong half the time
        produce(broker.bootstrap, TOPICS.review_requests, requests)
        produce(broker.bootstrap, TOPICS.labels, labels + [(b"x", b"{broken"), (requests[0][0], labels[0][1])])
        out = run_retrain(broker.bootstrap, registry_copy)
        assert "240 labeled windows" in out and "published v2" in out, out
        meta = ModelRegistry(registry_copy).metadata("basic-motions", 2)
        assert meta.parent_version == 1 and meta.data_seen == 240
        assert meta.metrics["holdout_accuracy"] > meta.metrics["serving_holdout_accuracy"] + 0.1
        announced = [ModelSnapshot.decode(r.value) for r in read_quiet(broker.bootstrap, [TOPICS.model_snapshots])]
        assert [(s.model_name, s.version) for s in announced] == [("basic-motions", 2)]
        # a candidate that must beat v2 by 50 points is refused: no version, no announcement
        out = run_retrain(broker.bootstrap, registry_copy, "--gate-margin", "-0.5")
        assert "refused" in out and "no new version" in out, out
        assert ModelRegistry(registry_copy).versions("basic-motions") == [1, 2]
        assert len(read_quiet(broker.bootstrap, [TOPICS.model_snapshots])) == 1
