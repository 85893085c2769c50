"""The serving job at parallelism 2, and rescaled 1 → 2 → 1 through its retained checkpoints: every
device's window state moves with its key, every window comes out exactly once, and the served model
version is the one announced before the rescale, not the registry's newest."""

import os
import signal
import time

import pytest

from control.launcher import serving_job
from infra.broker import EmbeddedBroker, ensure_topics
from infra.kafka_tools import produce
from model.registry import ModelRegistry
from schemas import ModelSnapshot, Prediction, Topics
from tests.e2e.helpers import collect, encoded, expected_window_ends, replayed_readings
from tests.e2e.test_restart_e2e import latest_checkpoint

pytestmark = pytest.mark.e2e
TOPICS = Topics()
NAME = "basic-motions"
DEVICES = 6


def committed(bootstrap: str, count: int, job, timeout_s: float = 240) -> list[Prediction]:
    out = collect(bootstrap, {TOPICS.predictions: count}, timeout_s, job, "read_committed")
    return [Prediction.decode(r.value) for r in out[TOPICS.predictions]]


def crash_after_a_checkpoint(job) -> None:
    time.sleep(2.5)  # one more checkpoint, so the restored state is past what was read
    os.killpg(job.process.pid, signal.SIGKILL)
    job.process.wait()


def test_serving_rescales_from_1_to_2_to_1_keeping_windows_and_the_served_version(tmp_path, registry_copy):
    registry = ModelRegistry(registry_copy)
    v1 = registry.load(NAME, 1)
    v2 = registry.publish(NAME, v1.onnx_bytes, v1.weights_bytes, v1.metadata.spec, {}, 1, note="announced").version
    parts = [replayed_readings(n_devices=DEVICES, per_device=40, start_seq=40 * k) for k in range(3)]
    expected = [expected_window_ends(sum(parts[:k + 1], []), 32, 8) for k in range(3)]
    options = dict(registry=registry_copy, checkpoint_interval_ms=1000, exactly_once=True, group_id="rescale",
                   inference_shards=2)
    with EmbeddedBroker(log_path=tmp_path / "broker.log") as broker:
        ensure_topics(broker.bootstrap, TOPICS)
        job = serving_job(broker.bootstrap, tmp_path / "job-p1.log", state_dir=str(tmp_path / "ck-a"), parallelism=1,
                          **options).start()
        try:
            snapshot = ModelSnapshot.from_dict(registry.announcement(NAME, v2))
            produce(broker.bootstrap, TOPICS.model_snapshots, [(NAME.encode(), snapshot.encode())])
            time.sleep(3)  # the announcement is read before the readings
            produce(broker.bootstrap, TOPICS.readings, encoded(parts[0]))
            first = committed(broker.bootstrap, len(expected[0]), job)
        finally:
            crash_after_a_checkpoint(job)
        newest = registry.publish(NAME, v1.onnx_bytes, v1.weights_bytes, v1.metadata.spec, {}, v2,
                                  note="never announced").version
        produce(broker.bootstrap, TOPICS.readings, encoded(parts[1]))
        job = serving_job(broker.bootstrap, tmp_path / "job-p2.log", state_dir=str(tmp_path / "ck-b"), parallelism=2,
                          savepoint_path=str(latest_checkpoint(tmp_path / "ck-a" / "checkpoints" / "serving")),
                          **options).start()
        try:
            second = committed(broker.bootstrap, len(expected[1]), job)
        finally:
            crash_after_a_checkpoint(job)
        produce(broker.bootstrap, TOPICS.readings, encoded(parts[2]))
        job = serving_job(broker.bootstrap, tmp_path / "job-p1-again.log", state_dir=str(tmp_path / "ck-c"),
                          parallelism=1,
                          savepoint_path=str(latest_checkpoint(tmp_path / "ck-b" / "checkpoints" / "serving")),
                          **options)
        with job:
            committed(broker.bootstrap, len(expected[2]), job)
            time.sleep(3)
            final = committed(broker.bootstrap, len(expected[2]) + 1, None, timeout_s=6)
    assert {(p.device_id, p.window_end) for p in first} == expected[0]
    assert {(p.device_id, p.window_end) for p in second} == expected[1]
    keys = [(p.device_id, p.window_end) for p in final]
    assert set(keys) == expected[2] and len(keys) == len(set(keys)), "every window exactly once"
    assert {p.model_version for p in final} == {v2} != {newest}, "the announced version serves on every shard"
    for k in (1, 2):  # windows spanning each rescale: the device's window state moved with its key
        resumed = parts[k][0]["ts"]
        spanning = {p.device_id for p in final if p.window_start < resumed <= p.window_end}
        assert len(spanning) == DEVICES, (k, spanning)
