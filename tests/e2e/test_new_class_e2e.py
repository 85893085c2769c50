"""A class the model does not have, on the real broker and Flink: serving runs a model that knows three of
BasicMotions' activities while devices also walk; a labeler allowed to name classes answers "walking" as
a new class, the learning job grows the model and publishes a version with it, serving swaps it in and
predicts walking, and from then on every labeler is offered the class."""

import threading

import orjson
import pytest

from control.launcher import learning_job, serving_job
from control.replayer import replay
from infra.broker import EmbeddedBroker, ensure_topics, free_port
from infra.kafka_tools import TopicTail
from labeling.simulated import run_simulated_labelers
from model.registry import ModelRegistry
from schemas import DeadLetter, Label, ModelSnapshot, ReviewRequest, Topics
from tests.e2e.helpers import follow
from tests.e2e.test_learning_e2e import wait_all_tasks_running
from tests.unit.test_new_classes import OLD, three_class_registry

pytestmark = pytest.mark.e2e
TOPICS = Topics()
NAME = "basic-motions"
CREATOR = "sim-labeler-0"


def test_labelers_teach_a_new_class_that_serving_then_predicts(tmp_path):
    root = str(tmp_path / "registry")
    three_class_registry(root, NAME)
    with EmbeddedBroker(log_path=tmp_path / "broker.log") as broker:
        ensure_topics(broker.bootstrap, TOPICS)
        serving_port, rest_port = free_port(), free_port()
        serving = serving_job(broker.bootstrap, tmp_path / "serving.log", registry=root,
                              state_dir=str(tmp_path / "ck-serving"), confidence_threshold=0.9, audit_rate=0.3,
                              review_budget_per_minute=100_000, rest_port=serving_port)
        learning = learning_job(broker.bootstrap, tmp_path / "learning.log", registry=root,
                                state_dir=str(tmp_path / "ck-learn"), gate_every=32, lr=0.002,
                                class_creators=CREATOR, rest_port=rest_port)
        stop = threading.Event()
        tail = TopicTail(broker.bootstrap, [TOPICS.predictions, TOPICS.model_snapshots, TOPICS.review_requests,
                                            TOPICS.labels, TOPICS.dead_letters])
        decoders = {TOPICS.predictions: orjson.loads, TOPICS.model_snapshots: ModelSnapshot.decode,
                    TOPICS.review_requests: ReviewRequest.decode, TOPICS.labels: Label.decode,
                    TOPICS.dead_letters: DeadLetter.decode}
        grown: set[int] = set()

        def walking_served(records) -> bool:
            for s in records[TOPICS.model_snapshots]:
                if s.version not in grown and "walking" in ModelRegistry(root).metadata(NAME, s.version).spec["classes"]:
                    grown.add(s.version)
            by_grown = [p for p in records[TOPICS.predictions] if p["model_version"] in grown and p.get("truth")]
            return sum(p["truth"] == "walking" for p in by_grown) >= 150

        with learning, serving:
            wait_all_tasks_running(rest_port, learning)
            wait_all_tasks_running(serving_port, serving)
            threads = [threading.Thread(target=replay, daemon=True, kwargs=dict(
                           bootstrap=broker.bootstrap, topic=TOPICS.readings, rate=300, n_devices=8, stop=stop)),
                       threading.Thread(target=run_simulated_labelers, daemon=True, kwargs=dict(
                           bootstrap=broker.bootstrap, topics=TOPICS, classes=list(OLD), delay_ms=200, stop=stop,
                           creators=frozenset({CREATOR})))]
            for t in threads:
                t.start()
            try:
                records = follow(tail, decoders, walking_served, 240, (serving, learning))
            finally:
                stop.set()
                tail.close()
    assert grown, "no version with the new class was published:\n" + learning.log_tail(40)
    first = min(grown)
    meta = ModelRegistry(root).metadata(NAME, first)
    assert meta.spec["classes"] == [*OLD, "walking"]
    labels = records[TOPICS.labels]
    named = [lab for lab in labels if lab.new_class]
    assert named and {lab.labeler for lab in named} == {CREATOR} and {lab.label for lab in named} == {"walking"}
    walking = [p for p in records[TOPICS.predictions] if p["model_version"] in grown and p.get("truth") == "walking"]
    recall = sum(p["label"] == "walking" for p in walking) / len(walking)
    old = [p for p in records[TOPICS.predictions] if p["model_version"] in grown and p.get("truth") in OLD]
    kept = sum(p["label"] == p["truth"] for p in old) / max(1, len(old))
    asked_after = [r for r in records[TOPICS.review_requests] if r.model_version in grown]
    assert asked_after and all("walking" in r.probabilities for r in asked_after)
    plain = [lab for lab in labels if lab.label == "walking" and not lab.new_class]
    refused = [d for d in records[TOPICS.dead_letters] if d.stage == "label-join" and "unknown class" in d.reason]
    print(f"v{first} has the new class after {len(named)} answers naming it; served walking windows recalled "
          f"{recall:.3f} ({len(walking)}), old classes {kept:.3f} ({len(old)}); later answers with it: "
          f"{len(plain)}; refused: {len(refused)}")
    assert recall > 0.6 and kept > 0.6
    assert plain and not refused  # once served, every labeler answers with it, and nothing was refused
