"""The shadow phase on the real broker and Flink: with ``learning.shadow_answers`` set, a candidate that
passed the gate is announced as a shadow, serving scores it beside the version in service and asks
about the windows where they disagree, and the learning job promotes it only once it wins on the
answered live windows; until then it serves only the canary devices (``serving.canary_share``)."""

import threading

import orjson
import pytest

from control.launcher import learning_job, serving_job
from control.replayer import replay
from infra.broker import EmbeddedBroker, ensure_topics, free_port
from infra.kafka_tools import TopicTail
from labeling.simulated import run_simulated_labelers
from model.registry import ModelRegistry
from operators.inference import WindowScorer
from operators.replay import DriftPlan
from schemas import ModelSnapshot, ReviewRequest, Topics
from tests.e2e.helpers import follow, wait_all_tasks_running

pytestmark = pytest.mark.e2e
TOPICS = Topics()
NAME = "basic-motions"
GYRO_BIAS = DriftPlan(after=0, offset={3: 4.0, 4: 4.0, 5: 4.0})  # v1 is hurt from the first reading
CANARY_SHARE = 0.25  # of the 8 devices (by the hash of their ids): device-002 and device-005


def test_a_candidate_serves_only_after_its_shadow_phase(tmp_path, registry_copy):
    root = registry_copy
    classes = list(ModelRegistry(root).latest_metadata(NAME).spec["classes"])
    with EmbeddedBroker(log_path=tmp_path / "broker.log") as broker:
        ensure_topics(broker.bootstrap, TOPICS)
        serving_port, rest_port = free_port(), free_port()
        serving = serving_job(broker.bootstrap, tmp_path / "serving.log", registry=root,
                              state_dir=str(tmp_path / "ck-serving"), confidence_threshold=0.9, audit_rate=0.2,
                              review_budget_per_minute=100_000, canary_share=CANARY_SHARE, rest_port=serving_port)
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
    scorer = WindowScorer(None, None, CANARY_SHARE)
    devices = {p["device_id"] for p in records[TOPICS.predictions]}
    canaries = {d for d in devices if scorer.is_canary(d)}
    assert len(devices) == 8 and 0 < len(canaries) < 8, canaries
    requests = records[TOPICS.review_requests]
    asked = [r for r in requests if r.shadow_version is not None and max(r.model_version, r.shadow_version) == first]
    disagreements = [r for r in asked if r.reason == "disagreement"]
    assert disagreements and all(r.shadow_predicted != r.predicted for r in disagreements)
    for r in asked:  # during its shadow phase: a canary device's request names v<first> as the version that served
        assert (r.model_version == first) == (r.device_id in canaries), r
    withdrawn = {s.version for s in snapshots if s.stage == "withdrawn"}
    by_version: dict = {}
    for p in records[TOPICS.predictions]:
        by_version.setdefault(p["model_version"], []).append(p)
    served_withdrawn = [p for v in withdrawn for p in by_version.get(v, [])]
    assert {p["device_id"] for p in served_withdrawn} <= canaries  # a withdrawn version served canaries only
    canary_first = min(p["emitted_at"] for p in by_version[first] if p["device_id"] in canaries)
    everyone = min(p["emitted_at"] for p in by_version[first] if p["device_id"] not in canaries)
    assert canary_first < everyone  # the canaries had it during its shadow phase, the rest once it was promoted
    early = [p for p in by_version[first] if p["emitted_at"] < everyone]

    def accuracy(items):
        return sum(p["label"] == p["truth"] for p in items) / len(items)

    print(f"v{first}: shadow phase over {len(asked)} requests ({len(disagreements)} disagreements), canary devices "
          f"{sorted(canaries)} served by it meanwhile ({len(early)} windows), then served at "
          f"{accuracy(by_version[first]):.3f} on {len(by_version[first])} windows; v1 served at "
          f"{accuracy(by_version[1]):.3f}; withdrawn: {sorted(withdrawn)}")
