"""A class the model does not have, on the real broker and Flink: serving runs a model that knows three of
BasicMotions' activities while devices also walk; a labeler allowed to name classes answers "walking" as
a new class, the learning job grows the model and publishes a version with it, serving swaps it in and
predicts walking (judged on the last 150 walking windows served: the first version with the class may have
learned it from a few dozen answers, later ones learn more), and from then on every labeler is offered the
class."""

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
from tests.e2e.helpers import follow, wait_all_tasks_running
from tests.unit.test_new_classes import OLD, three_class_registry

pytestmark = pytest.mark.e2e
TOPICS = Topics()
NAME = "basic-motions"
CREATOR = "sim-labeler-0"


RECENT = 150  # walking windows served by versions that have the class, judged together


def recent_recall(predictions: list[dict], grown: set[int]) -> tuple[float, float, set[int]]:
    """Recall of walking over the last ``RECENT`` walking windows served by a version in ``grown`` (0 until
    there are that many), accuracy on the old classes' windows those versions served from the first of them
    on, and the versions that served those walking windows."""
    with_truth = [(i, p) for i, p in enumerate(predictions) if p["model_version"] in grown and p.get("truth")]
    walking = [(i, p) for i, p in with_truth if p["truth"] == "walking"][-RECENT:]
    if len(walking) < RECENT:
        return 0.0, 0.0, set()
    versions = {p["model_version"] for _, p in walking}
    old = [p for i, p in with_truth if i >= walking[0][0] and p["truth"] in OLD and p["model_version"] in versions]
    recall = sum(p["label"] == "walking" for _, p in walking) / RECENT
    return recall, sum(p["label"] == p["truth"] for p in old) / max(1, len(old)), versions


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

        def walking_learned(records) -> bool:
            """Whether the last ``RECENT`` walking windows that versions with the class served were recalled
            (the first such version may have learned from a few dozen answers only; later ones learn more)."""
            for s in records[TOPICS.model_snapshots]:
                if s.version not in grown and "walking" in ModelRegistry(root).metadata(NAME, s.version).spec["classes"]:
                    grown.add(s.version)
            recall, kept, _ = recent_recall(records[TOPICS.predictions], grown)
            return recall > 0.6 and kept > 0.6

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
                records = follow(tail, decoders, walking_learned, 300, (serving, learning))
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
    recall, kept, versions = recent_recall(records[TOPICS.predictions], grown)
    asked_after = [r for r in records[TOPICS.review_requests] if r.model_version in grown]
    assert asked_after and all("walking" in r.probabilities for r in asked_after)
    plain = [lab for lab in labels if lab.label == "walking" and not lab.new_class]
    refused = [d for d in records[TOPICS.dead_letters] if d.stage == "label-join" and "unknown class" in d.reason]
    print(f"v{first} has the new class; {len(named)} answers named it as new; the last {RECENT} walking windows "
          f"served (by v{sorted(versions)}) recalled {recall:.3f}, old classes {kept:.3f}; versions with the class: "
          f"{sorted(grown)}; later answers with it: {len(plain)}; refused: {len(refused)}")
    assert recall > 0.6 and kept > 0.6
    assert plain and not refused  # once served, every labeler answers with it, and nothing was refused
