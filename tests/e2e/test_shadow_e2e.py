"""The shadow phase on the real broker and Flink: with ``learning.shadow_answers`` set, a candidate that
passed the gate is announced as a shadow, serving scores it beside the version in service and asks
about the windows where they disagree, and the learning job promotes it only once it wins on the
answered live windows; until then it serves nothing."""

import threading

import orjson
import pytest

from control.launcher import learning_job, serving_job
from control.replayer import replay
from infra.broker import EmbeddedBroker, ensure_topics, free_port
from infra.kafka_tools import TopicTail
from labeling.simulated import run_simulated_labelers
from model.registry import ModelRegistry
from operators.replay import DriftPlan
from schemas import ModelSnapshot, ReviewRequest, Topics
from tests.e2e.helpers import follow
from tests.e2e.test_learning_e2e import wait_all_tasks_running

pytestmark = pytest.mark.e2e
TOPICS = Topics()
NAME = "basic-motions"
GYRO_BIAS = DriftPlan(after=0, offset={3: 4.0, 4: 4.0, 5: 4.0})  # v1 is hurt from the first reading


def test_a_candidate_serves_only_after_its_shadow_phase(tmp_path, registry_copy):
    root = registry_copy
    classes = list(ModelRegistry(root).latest_metadata(NAME).spec["classes"])
    with EmbeddedBroker(log_path=tmp_path / "broker.log") as broker:
        ensure_topics(broker.bootstrap, TOPICS)
        serving_port, rest_port = free_port(), free_port()
        serving = serving_job(broker.bootstrap, tmp_path / "serving.log", registry=root,
                              state_dir=str(tmp_path / "ck-serving"), confidence_threshold=0.9, audit_rate=0.2,
                              review_budget_per_minute=100_000, rest_port=serving_port)
        learning = learning_job(broker.bootstrap, tmp_path / "learning.log", registry=root,
                                state_dir=str(tmp_path / "ck-learn"), gate_every=32, lr=0.002, shadow_answers=150,
                                shadow_min_answers=20, rest_port=rest_port)
        stop = threading.Event()
        tail = TopicTail(broker.bootstrap, [TOPICS.predictions, TOPICS.model_snapshots, TOPICS.review_requests])
        decoders = {TOPICS.predictions: orjson.loads, TOPICS.model_snapshots: ModelSnapshot.decode,
                    TOPICS.review_requests: ReviewRequest.decode}

        def promoted_and_serving(records) -> bool:
            shadows = {s.version for s in records[TOPICS.model_snapshots] if s.stage == "shadow"}
            served = {s.version for s in records[TOPICS.model_snapshots] if s.stage is None} & shadows
            return sum(p["model_version"] in served for p in records[TOPICS.predictions]) >= 200

        with learning, serving:
            wait_all_tasks_running(rest_port, learning)
            wait_all_tasks_running(serving_port, serving)
            threads = [threading.Thread(target=replay, daemon=True, kwargs=dict(
                           bootstrap=broker.bootstrap, topic=TOPICS.readings, rate=300, n_devices=8, drift=GYRO_BIAS,
                           stop=stop)),
                       threading.Thread(target=run_simulated_labelers, daemon=True, kwargs=dict(
                           bootstrap=broker.bootstrap, topics=TOPICS, classes=classes, delay_ms=200, stop=stop))]
            for t in threads:
                t.start()
            try:
                records = follow(tail, decoders, promoted_and_serving, 300, (serving, learning))
            finally:
                stop.set()
                tail.close()
    snapshots = records[TOPICS.model_snapshots]
    shadows = [s for s in snapshots if s.stage == "shadow"]
    assert shadows, "no candidate began a shadow phase:\n" + learning.log_tail(40)
    promoted = [s for s in snapshots if s.stage is None and s.version in {x.version for x in shadows}]
    assert promoted, f"no shadow was promoted: {[(s.version, s.stage) for s in snapshots]}\n" + learning.log_tail(40)
    first = promoted[0].version
    announced_shadow = next(i for i, s in enumerate(snapshots) if s.version == first and s.stage == "shadow")
    assert announced_shadow < snapshots.index(promoted[0])
    asked = [r for r in records[TOPICS.review_requests] if r.shadow_version == first]
    disagreements = [r for r in asked if r.reason == "disagreement"]
    assert disagreements and all(r.shadow_predicted != r.predicted for r in disagreements)
    assert all(r.model_version < first for r in asked)  # asked while the older version served
    withdrawn = {s.version for s in snapshots if s.stage == "withdrawn"}
    by_version = {}
    for p in records[TOPICS.predictions]:
        by_version.setdefault(p["model_version"], []).append(p["label"] == p["truth"])
    assert not withdrawn & set(by_version), "a withdrawn version served"
    print(f"v{first}: shadow phase over {len(asked)} answered-window requests ({len(disagreements)} "
          f"disagreements), then served at {sum(by_version[first]) / len(by_version[first]):.3f} on "
          f"{len(by_version[first])} windows; v1 served at {sum(by_version[1]) / len(by_version[1]):.3f}; "
          f"withdrawn: {sorted(withdrawn)}")
