"""Records and announcements that once killed, stalled or fooled the serving job, sent to a running job
on the real broker and MiniCluster: each becomes a dead letter with its reason, the job never fails a
task, and every device (the ones the hostile records named too) keeps being served."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import orjson
import pytest
import torch

from control.launcher import serving_job
from control.stack import checkpoints_under
from infra.broker import EmbeddedBroker, ensure_topics
from infra.kafka_tools import produce, read_quiet, read_until
from model.export import export_onnx
from model.network import WindowTransformer
from model.registry import ModelRegistry
from model.spec import ModelSpec
from model.train import weights_bytes
from schemas import DeadLetter, ModelSnapshot, Topics
from tests.e2e.helpers import (collect, encoded, expected_window_ends, record_fault, replayed_readings, started,
                               window_tally)

pytestmark = pytest.mark.e2e
TOPICS = Topics()
NAME = "basic-motions"
SIX = [1, 2, 3, 4, 5, 6]


def reading(device: str, ts: int, values=SIX, seq: int | None = None) -> bytes:
    body = {"device_id": device, "ts": ts, "values": values}
    return orjson.dumps(body if seq is None else {**body, "seq": seq})


def test_hostile_records_and_announcements_neither_kill_nor_stall_nor_fool_serving(tmp_path, registry_copy):
    registry = ModelRegistry(registry_copy)
    torch.manual_seed(0)
    short = ModelSpec(window=16)  # another window length than serving cuts (32)
    net = WindowTransformer(short).eval()
    wrong_window = registry.publish(NAME, export_onnx(net, short), weights_bytes(net), short.to_dict(), {}, 1)
    outside = tmp_path / "elsewhere"
    shutil.copytree(registry.version_dir(NAME, 1), outside / "v000001")  # the real v1, but outside the registry
    v1 = registry.announcement(NAME, 1)
    forged = ModelSnapshot.from_dict({**v1, "artifact_uri": (outside / "v000001" / "model.onnx").as_uri()})

    first = replayed_readings(n_devices=4, per_device=48)
    second = replayed_readings(n_devices=4, per_device=48, start_seq=48)
    victims = sorted({r["device_id"] for r in first})[:2]  # the hostile records name two real devices
    last_ts = {d: max(r["ts"] for r in first if r["device_id"] == d) for d in victims}
    hostile = [
        (b'{"device_id": "\\ud800", "ts": 1, "values": [1, 2, 3, 4, 5, 6]}', "$"),  # lone surrogate key
        (reading("device-huge-ts", 18446744073709551615), "ts"),  # beyond int64 in the window ring
        (reading(victims[0], 4102444800000), "ts"),  # dated 2100: would make every later reading "late"
        (reading(victims[1], last_ts[victims[1]] + 1, seq=10**15), "seq"),  # a sequence jump of 10^15
    ] + [(reading("device-huge-values", 1_700_000_000_000 + i, [1e308, -1e308, 1, 2, 3, 4]), "values[0]")
         for i in range(32)]  # finite, but infinite in float32
    with EmbeddedBroker(log_path=tmp_path / "broker.log") as broker:
        ensure_topics(broker.bootstrap, TOPICS)
        job = serving_job(broker.bootstrap, tmp_path / "job.log", registry=registry_copy, model_version=1,
                          state_dir=str(tmp_path / "flink"), max_seq_jump=1000, confidence_threshold=0.0,
                          audit_rate=0.0)
        with job:
            produce(broker.bootstrap, TOPICS.readings, encoded(first))
            produce(broker.bootstrap, TOPICS.readings, [(b"hostile", raw) for raw, _ in hostile])
            for snapshot in (ModelSnapshot.from_dict(registry.announcement(NAME, wrong_window.version)), forged):
                produce(broker.bootstrap, TOPICS.model_snapshots, [(NAME.encode(), snapshot.encode())])
            time.sleep(2)  # the announcements travel on their own source
            produce(broker.bootstrap, TOPICS.readings, encoded(second))
            expected = expected_window_ends(first + second, window=32, stride=8)
            out = collect(broker.bootstrap, {TOPICS.predictions: len(expected),
                                             TOPICS.dead_letters: len(hostile) + 2}, timeout_s=240, job=job)
            assert job.alive()
            log = job.log_tail(100_000)

    predictions = [orjson.loads(r.value) for r in out[TOPICS.predictions]]
    assert {(p["device_id"], p["window_end"]) for p in predictions} == expected  # the victims too
    assert all(p["model_version"] == 1 for p in predictions)
    letters = [DeadLetter.decode(r.value) for r in out[TOPICS.dead_letters]]
    readings_letters = [d for d in letters if d.source_topic == TOPICS.readings]
    assert sorted(d.field for d in readings_letters) == sorted(field for _, field in hostile)
    assert any("no low surrogate" in d.reason for d in readings_letters)
    assert any("must be <= 9007199254740991" in d.reason for d in readings_letters)
    assert any("ahead of the job clock" in d.reason for d in readings_letters)
    assert any("jumps" in d.reason for d in readings_letters)
    refused = sorted(d.reason for d in letters if d.source_topic == TOPICS.model_snapshots)
    assert len(refused) == 2
    assert any("windows of 16 readings, serving cuts 32" in r for r in refused)
    assert any("is not where the registry keeps basic-motions v1" in r for r in refused)
    assert " to FAILED" not in log, "a task failed (and the job restarted) on a hostile record"
    assert Path(tmp_path / "flink").is_dir()


def test_a_silent_device_is_forgotten_after_the_expiry(tmp_path, trained_registry):
    """Per-device state is bounded in time: a device that sent 20 readings (no window yet) and then
    nothing for longer than ``serving.device_expiry_ms`` starts over; one that kept sending does not."""
    readings = replayed_readings(n_devices=2, per_device=40)
    quiet, busy = sorted({r["device_id"] for r in readings})
    early = [r for r in readings if r["seq"] < 20]
    trickle = [r for r in readings if r["device_id"] == busy and 20 <= r["seq"] < 28]
    rest = [r for r in readings if r["seq"] >= 20 and r not in trickle]
    with EmbeddedBroker(log_path=tmp_path / "broker.log") as broker:
        ensure_topics(broker.bootstrap, TOPICS)
        job, _ = started(lambda port: serving_job(  # every task running first: the silence is job time
            broker.bootstrap, tmp_path / "job.log", registry=trained_registry, state_dir=str(tmp_path / "flink"),
            device_expiry_ms=4000, reset_gap_ms=0, rest_port=port))
        with job:
            produce(broker.bootstrap, TOPICS.readings, encoded(early))
            for r in trickle:  # the busy device keeps talking while the quiet one is silent for 8 s
                time.sleep(1)
                produce(broker.bootstrap, TOPICS.readings, encoded([r]))
            produce(broker.bootstrap, TOPICS.readings, encoded(rest))
            collect(broker.bootstrap, {TOPICS.predictions: 2}, timeout_s=120, job=job)
            out = read_quiet(broker.bootstrap, [TOPICS.predictions], quiet_s=4)
            assert job.alive()
    ends = [(p["device_id"], p["window_end"]) for p in map(orjson.loads, (r.value for r in out))]
    # the busy device: 40 readings, window 32, stride 8, so windows end at its 32nd and 40th reading
    assert sorted(e for d, e in ends if d == busy) == [r["ts"] for r in readings if r["device_id"] == busy
                                                        and r["seq"] in (31, 39)]
    assert [e for d, e in ends if d == quiet] == []  # its first 20 readings were forgotten


def test_a_deleted_artifact_does_not_keep_serving_down(tmp_path, registry_copy):
    """The newest version's artifact disappears from the registry while the job runs, and the job is
    then killed: the restarted job serves the newest version that still loads, and every device is served."""
    import os
    import signal

    registry = ModelRegistry(registry_copy)
    v1 = registry.load(NAME, 1)
    registry.publish(NAME, v1.onnx_bytes, v1.weights_bytes, v1.metadata.spec, {}, 1)  # v2, served at start
    first = replayed_readings(n_devices=4, per_device=40)
    second = replayed_readings(n_devices=4, per_device=40, start_seq=40)
    options = dict(registry=registry_copy, state_dir=str(tmp_path / "flink"), checkpoint_interval_ms=1000,
                   group_id="deleted-artifact")
    with EmbeddedBroker(log_path=tmp_path / "broker.log") as broker:
        ensure_topics(broker.bootstrap, TOPICS)
        job = serving_job(broker.bootstrap, tmp_path / "job-a.log", **options).start()
        try:
            produce(broker.bootstrap, TOPICS.readings, encoded(first))
            before = collect(broker.bootstrap, {TOPICS.predictions: len(expected_window_ends(first, 32, 8))}, 180, job)
            assert {orjson.loads(r.value)["model_version"] for r in before[TOPICS.predictions]} == {2}
            (registry.version_dir(NAME, 2) / "model.onnx").unlink()
            time.sleep(2)  # a checkpoint after those readings
        finally:
            os.killpg(job.process.pid, signal.SIGKILL)
            job.process.wait()
        killed_ms = int(time.time() * 1000)
        produce(broker.bootstrap, TOPICS.readings, encoded(second))
        # restarted as an operator restarts a killed job: from its newest retained checkpoint (window state and
        # offsets), or from the start when it completed none; its source's committed offsets alone would skip
        # the windows that reach back into the first readings
        retained = checkpoints_under(tmp_path / "flink" / "checkpoints" / "serving")  # what `job resume` finds
        restart = dict(options, savepoint_path=retained[-1].location) if retained else options
        job = serving_job(broker.bootstrap, tmp_path / "job-b.log", **restart)
        expected = expected_window_ends(first + second, 32, 8)

        def every_window(records) -> bool:
            assert job.alive(), job.log_tail(40)
            keys = {(p["device_id"], p["window_end"]) for p in map(orjson.loads, (r.value for r in records))}
            return keys >= expected

        with job:
            records = read_until(broker.bootstrap, [TOPICS.predictions], every_window, 180)
            out = [orjson.loads(r.value) for r in records]
    assert {(p["device_id"], p["window_end"]) for p in out} == expected  # every device, every window
    record_fault("registry artifact deleted under the running job, then SIGKILL",
                 window_tally([(p["device_id"], p["window_end"]) for p in out], expected),
                 (min(r.timestamp for r in records if r.timestamp > killed_ms) - killed_ms) / 1000)
    after_crash = {p["model_version"] for p in out[len(before[TOPICS.predictions]):]}
    assert after_crash == {1}  # v2's artifact is gone: the newest version that loads serves
