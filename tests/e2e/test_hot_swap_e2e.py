"""Model hot swap in the running serving job: promote, refuse corrupt artifacts, roll back."""

import threading
import time

import orjson
import pytest

from infra.broker import EmbeddedBroker, ensure_topics
from infra.kafka_tools import TopicTail, produce
from model.registry import ModelRegistry
from schemas import DeadLetter, ModelSnapshot, Topics
from control.launcher import serving_job
from control.replayer import replay

pytestmark = pytest.mark.e2e
TOPICS = Topics()
NAME = "basic-motions"


def announce(bootstrap: str, registry: ModelRegistry, version: int) -> None:
    snapshot = ModelSnapshot.from_dict(registry.announcement(NAME, version))
    produce(bootstrap, TOPICS.model_snapshots, [(NAME.encode(), snapshot.encode())])


def test_promote_refuse_corrupt_and_roll_back(tmp_path, registry_copy):
    root = registry_copy
    registry = ModelRegistry(root)
    v1 = registry.load(NAME, 1)
    registry.publish(NAME, v1.onnx_bytes, v1.weights_bytes, v1.metadata.spec, {"test_accuracy": 0.99}, 1)  # v2
    registry.publish(NAME, v1.onnx_bytes, v1.weights_bytes, v1.metadata.spec, {}, 2)  # v3, corrupted below
    onnx = registry.version_dir(NAME, 3) / "model.onnx"
    onnx.write_bytes(onnx.read_bytes()[:1000])

    with EmbeddedBroker(log_path=tmp_path / "broker.log") as broker:
        ensure_topics(broker.bootstrap, TOPICS)
        job = serving_job(broker.bootstrap, tmp_path / "job.log", registry=str(root), model_version=1,
                          state_dir=str(tmp_path / "ck"))
        stop = threading.Event()
        sender = threading.Thread(target=replay, kwargs=dict(bootstrap=broker.bootstrap, topic=TOPICS.readings,
                                                             rate=300, n_devices=8, stop=stop), daemon=True)
        tail = TopicTail(broker.bootstrap, [TOPICS.predictions, TOPICS.dead_letters])
        versions, letters = [], []
        by_partition: dict[int, list[int]] = {}  # Kafka orders records within a partition only

        def wait_for(condition, timeout_s=120):
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                for r in tail.poll(200):
                    if r.topic == TOPICS.predictions:
                        versions.append(orjson.loads(r.value)["model_version"])
                        by_partition.setdefault(r.partition, []).append(versions[-1])
                    else:
                        letters.append(DeadLetter.decode(r.value))
                if condition():
                    return
                assert job.alive(), job.log_tail(60)
            raise AssertionError(f"timed out; versions so far {sorted(set(versions))}, letters {letters}")

        with job:
            sender.start()
            try:
                wait_for(lambda: versions.count(1) >= 20)
                announce(broker.bootstrap, registry, 2)
                # every partition that has had a prediction shows the phase (one alone may lag on a busy machine)
                wait_for(lambda: versions[-20:] == [2] * 20 and all(seen[-1] == 2 for seen in by_partition.values()))
                announce(broker.bootstrap, registry, 3)  # corrupt artifact: refused, v2 keeps serving
                produce(broker.bootstrap, TOPICS.model_snapshots, [(NAME.encode(), b'{"model_name": "x"}')])
                wait_for(lambda: len(letters) >= 2)
                mark = len(versions)
                wait_for(lambda: len(versions) >= mark + 30)
                assert set(versions[mark:]) == {2}
                announce(broker.bootstrap, registry, 1)  # roll back
                wait_for(lambda: versions[-20:] == [1] * 20 and all(seen[-1] == 1 for seen in by_partition.values()))
            finally:
                stop.set()
                tail.close()

    # The shard swaps between micro-batches. Kafka orders records within a partition only (each holds
    # whole devices, in the order they were emitted), so the phases are judged per partition: on each,
    # the versions run through 1, 2, 1 in that order (a partition may have seen no window in a phase),
    # never v3; together they show all three phases.
    phases = {p: [v for i, v in enumerate(seen) if i == 0 or v != seen[i - 1]] for p, seen in by_partition.items()}
    for partition, seen in phases.items():
        assert any(seen == [1, 2, 1][i:j] for i in range(3) for j in range(i + 1, 4)), (partition, seen)
    assert [1, 2, 1] in phases.values(), phases
    refused = [d for d in letters if d.stage == "snapshot" and "refused" in d.reason]
    assert len(refused) == 1 and "v3" in refused[0].reason and "sha256 mismatch" in refused[0].reason
    assert "still serving v2" in refused[0].reason
    malformed = [d for d in letters if "missing required field" in d.reason]
    assert len(malformed) == 1 and malformed[0].source_topic == TOPICS.model_snapshots
