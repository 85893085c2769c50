"""The operator CLI end to end on the embedded stack (Tansu broker + a real Flink session cluster of two
TaskManagers): stack start, job submit, status (Prometheus metrics), model rollback seen in predictions,
stop-with-savepoint and resume from it rescaled 1 → 2 → 1 with state intact, cancel, stack stop."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

from control.flink_rest import FlinkRest
from infra.broker import free_port
from infra.kafka_tools import produce, read_until
from model.registry import ModelRegistry
from schemas import Topics
from tests.e2e.helpers import encoded, expected_window_ends, replayed_readings

pytestmark = pytest.mark.e2e
TOPICS = Topics()
NAME = "basic-motions"
WINDOW, STRIDE = 32, 8


def _config(tmp_path: Path, registry: str) -> Path:
    prom = free_port()
    path = tmp_path / "sensorloop.toml"
    path.write_text(f"""
[broker]
embedded_port = {free_port()}
[registry]
path = "{registry}"
[flink]
state_dir = "{tmp_path / 'state'}"
checkpoint_interval_ms = 2000
[stack]
run_dir = "{tmp_path / 'stack'}"
rest_port = {free_port()}
prometheus_ports = "{prom}-{prom + 3}"
taskmanager_memory = "1600m"
[serving]
window = {WINDOW}
stride = {STRIDE}
max_wait_ms = 20
""")
    return path


def cli(config: Path, *args: str, timeout: float = 300) -> str:
    """Run ``sensorloop --config <config> <args>``; fail with its output if it fails."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENSORLOOP_")}
    result = subprocess.run([sys.executable, "-m", "control.cli", "--config", str(config), *args],
                            capture_output=True, text=True, timeout=timeout, env=env)
    assert result.returncode == 0, f"sensorloop {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def _predictions(bootstrap: str, at_least: int) -> list[dict]:
    records = read_until(bootstrap, [TOPICS.predictions], lambda rs: len(rs) >= at_least, 180)
    return [orjson.loads(r.value) for r in records]


def _metric(status: str, name: str) -> int:
    """A serving metric's value as ``sensorloop status`` prints it (``name=value``)."""
    return int(float(status.split(f" {name}=", 1)[1].split(",", 1)[0].split()[0]))


def _window_keys(records) -> list[tuple[str, int]]:
    """The (device, window end) of each prediction record, in order, repeats included."""
    return [(p["device_id"], p["window_end"]) for p in map(orjson.loads, (r.value for r in records))]


def test_operator_cli_on_the_embedded_stack(tmp_path, registry_copy):
    registry = ModelRegistry(registry_copy)
    v1 = registry.load(NAME, 1)
    registry.publish(NAME, v1.onnx_bytes, v1.weights_bytes, v1.metadata.spec, {"test_accuracy": 0.99}, 1)  # v2
    config = _config(tmp_path, registry_copy)
    out = cli(config, "stack", "start", "--taskmanagers", "2")
    bootstrap, rest = out.split()[1], FlinkRest(out.split()[3])
    assert "2 TaskManagers × 4 slots" in out
    try:
        assert "up, 2 TaskManagers, 8/8 slots free" in cli(config, "stack", "status")
        out = cli(config, "job", "submit", "serving", "--wait-running")
        first_job = out.split()[3]
        assert "is RUNNING" in out

        # Roll back from the registry's latest (v2) to v1: predictions made after it name v1.
        assert "announced basic-motions v1" in cli(config, "model", "rollback", "--version", "1")
        deadline = time.monotonic() + 90
        while "model_version=1," not in (status := cli(config, "status")):  # the swap, seen in the job's metrics
            assert time.monotonic() < deadline, status
            time.sleep(1)
        readings = replayed_readings(n_devices=4, per_device=120)
        first, second, third = (readings[k * len(readings) // 3:(k + 1) * len(readings) // 3] for k in range(3))
        produce(bootstrap, TOPICS.readings, encoded(first))
        expected_first = expected_window_ends(first, WINDOW, STRIDE)
        before = _predictions(bootstrap, len(expected_first))
        assert {(p["device_id"], p["window_end"]) for p in before} == expected_first
        assert {p["model_version"] for p in before} == {1}

        status = cli(config, "status")
        assert f"readings_in={len(first)}" in status and f"predictions={len(expected_first)}" in status, status
        assert "model v1: temperature" in status and "expected calibration error" in status, status
        assert "checkpoints: " in status and "STALLED" not in status, status
        # a burst is grouped per device in Java before it crosses into Python (ReadingGrouper)
        grouped = _metric(status, "groups_in")
        assert 0 < grouped <= len(first) // 2, status

        # readings of devices that send slower than serving.group_ms, with nothing else arriving, cross alone
        slow = [dict(r, device_id=f"slow-{r['device_id']}") for r in replayed_readings(n_devices=3, per_device=4)]
        for reading in slow:  # each device's next reading comes 0.75 s after its last
            produce(bootstrap, TOPICS.readings, encoded([reading]))
            time.sleep(0.25)
        deadline = time.monotonic() + 60
        while _metric(status := cli(config, "status"), "readings_in") < len(first) + len(slow):
            assert time.monotonic() < deadline, status
            time.sleep(1)
        assert _metric(status, "groups_in") == grouped + len(slow), status

        out = cli(config, "job", "savepoint", "serving", "--stop")
        savepoint = out.split(": ", 1)[1].split()[0]
        assert "(job stopped)" in out and Path(savepoint.removeprefix("file:")).is_dir()
        assert "FINISHED" in cli(config, "job", "list", "--all")

        produce(bootstrap, TOPICS.readings, encoded(second))  # arrives while no job runs
        out = cli(config, "job", "resume", "serving", "--parallelism", "2", "--wait-running")
        assert f"from savepoint {savepoint} at parallelism 2" in out
        placement = rest.placement(re.search(r"submitted serving job ([0-9a-f]{32})", out).group(1))
        serving = [subtasks for name, subtasks in placement.items() if "serve-shards" in name]
        assert serving and all(len(set(subtasks)) == 2 for subtasks in serving), placement  # one per TaskManager
        assert "2 on 2 TaskManagers" in cli(config, "job", "list")
        expected_two = expected_window_ends(first + second, WINDOW, STRIDE)
        so_far = _predictions(bootstrap, len(expected_two))
        keys = [(p["device_id"], p["window_end"]) for p in so_far]
        # Windows spanning the savepoint need the per-device buffers from it; the Kafka offsets come from it too.
        assert set(keys) == expected_two and len(keys) == len(expected_two)
        # `status` sums the job's counters over both TaskManagers' reporter ports (the resumed job counts from 0)
        deadline = time.monotonic() + 60
        while _metric(status := cli(config, "status"), "predictions") != len(expected_two) - len(expected_first):
            assert time.monotonic() < deadline, status
            time.sleep(1)

        out = cli(config, "job", "savepoint", "serving", "--stop")  # and back to one subtask
        second_savepoint = out.split(": ", 1)[1].split()[0]
        produce(bootstrap, TOPICS.readings, encoded(third))
        out = cli(config, "job", "resume", "serving", "--parallelism", "1", "--wait-running")
        assert f"from savepoint {second_savepoint} at parallelism 1" in out
        assert "1 on 1 TaskManager " in cli(config, "job", "list")
        expected_all = expected_window_ends(readings, WINDOW, STRIDE)
        everything = _predictions(bootstrap, len(expected_all))
        keys = [(p["device_id"], p["window_end"]) for p in everything]
        assert set(keys) == expected_all and len(keys) == len(expected_all)
        for part in (second, third):  # each device's window across each rescale came from the moved window state
            resumed = part[0]["ts"]
            spanning = {p["device_id"] for p in everything if p["window_start"] < resumed <= p["window_end"]}
            assert len(spanning) == 4, (resumed, spanning)
        after = everything[len(before):]
        # The rolled-back model is keyed state: the rescaled jobs still serve v1, not the registry's latest v2.
        assert {p["model_version"] for p in after} == {1}

        assert "is RUNNING" in cli(config, "job", "submit", "learning", "--wait-running")
        listed = cli(config, "job", "list")
        assert "sensorloop-learning" in listed and "sensorloop-serving" in listed
        assert "CANCELED" in cli(config, "job", "cancel", "learning")
        out = cli(config, "job", "cancel", "serving")
        assert "CANCELED" in out
        assert "no jobs running" in cli(config, "job", "list")
        assert first_job in cli(config, "job", "list", "--all")
    finally:
        print(cli(config, "stack", "stop"))
    result = subprocess.run([sys.executable, "-m", "control.cli", "--config", str(config), "stack", "status"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "not running" in result.stdout


@dataclass
class LocalJob:
    """A serving job on its own local MiniCluster, as ``job submit --local`` started it, and a second REST
    port for the job that replaces it."""
    bootstrap: str
    config: Path
    port: int
    second_port: int
    submitted: str  # what ``job submit`` printed


@contextmanager
def local_serving_job(tmp_path: Path, registry: str):
    """A broker, and the serving job submitted with ``--local`` on it; on the way out, whatever job still
    answers on either port is cancelled."""
    from infra.broker import EmbeddedBroker, ensure_topics

    with EmbeddedBroker(log_path=tmp_path / "broker.log") as broker:
        ensure_topics(broker.bootstrap, TOPICS)
        config = _config(tmp_path, registry)
        config.write_text(config.read_text().replace("[broker]\n", f'[broker]\nbootstrap = "{broker.bootstrap}"\n'))
        first_port, second_port = free_port(), free_port()
        out = cli(config, "job", "submit", "serving", "--local", "--rest-port", str(first_port), "--wait-running")
        assert "RUNNING on a local MiniCluster" in out
        try:
            yield LocalJob(broker.bootstrap, config, first_port, second_port, out)
        finally:
            for port in (first_port, second_port):
                subprocess.run([sys.executable, "-m", "control.cli", "--config", str(config), "job", "cancel",
                                "serving", "--jobmanager", f"localhost:{port}"], capture_output=True, timeout=60)


def test_jobs_on_a_local_minicluster_are_managed_through_its_rest_api(tmp_path, trained_registry):
    """``job submit --local``: the job on its own MiniCluster in the background, then the same
    list / stop-with-savepoint / resume / cancel commands through that MiniCluster's REST API."""
    with local_serving_job(tmp_path, trained_registry) as job:
        manage = ["--jobmanager", f"localhost:{job.port}"]
        assert "sensorloop-serving  RUNNING" in cli(job.config, "job", "list", *manage)
        readings = replayed_readings(n_devices=2, per_device=60)
        first, second = readings[:len(readings) // 2], readings[len(readings) // 2:]
        produce(job.bootstrap, TOPICS.readings, encoded(first))
        _predictions(job.bootstrap, len(expected_window_ends(first, WINDOW, STRIDE)))
        out = cli(job.config, "job", "savepoint", "serving", "--stop", *manage)
        assert "(job stopped)" in out
        produce(job.bootstrap, TOPICS.readings, encoded(second))
        out = cli(job.config, "job", "resume", "serving", "--local", "--rest-port", str(job.second_port),
                  "--wait-running")
        assert "RUNNING on a local MiniCluster" in out
        expected = expected_window_ends(readings, WINDOW, STRIDE)
        keys = [(p["device_id"], p["window_end"]) for p in _predictions(job.bootstrap, len(expected))]
        assert set(keys) == expected and len(keys) == len(expected)


def test_a_local_job_killed_with_sigkill_resumes_from_its_newest_checkpoint(tmp_path, trained_registry):
    """``job resume`` after a crash: no savepoint was taken, so it picks the newest complete checkpoint
    Flink left under ``flink.state_dir``, and the resumed job predicts every window, those spanning the
    crash included (their first samples are in the checkpointed window state)."""
    import signal

    from control.stack import checkpoints_under

    with local_serving_job(tmp_path, trained_registry) as job:
        pid = int(job.submitted.split("(pid ", 1)[1].split(",", 1)[0])
        readings = replayed_readings(n_devices=2, per_device=60)
        first, second = readings[:len(readings) // 2 + 3], readings[len(readings) // 2 + 3:]
        produce(job.bootstrap, TOPICS.readings, encoded(first))
        _predictions(job.bootstrap, len(expected_window_ends(first, WINDOW, STRIDE)))
        predicted_at = time.time()
        deadline = time.monotonic() + 60
        while not [p for p in checkpoints_under(tmp_path / "state" / "checkpoints" / "serving")
                   if p.taken_at > predicted_at + 0.5]:
            assert time.monotonic() < deadline, "no checkpoint after the first readings were predicted"
            time.sleep(0.5)
        os.killpg(pid, signal.SIGKILL)  # a crash: no savepoint, no clean shutdown
        produce(job.bootstrap, TOPICS.readings, encoded(second))  # arrives while no job runs

        out = cli(job.config, "job", "resume", "serving", "--local", "--rest-port", str(job.second_port),
                  "--wait-running")
        assert "from its newest checkpoint" in out and "RUNNING on a local MiniCluster" in out, out
        expected = expected_window_ends(readings, WINDOW, STRIDE)
        # Records between the checkpoint and the kill are predicted again (the sink is at-least-once by
        # default), so wait for every window rather than for a count.
        records = read_until(job.bootstrap, [TOPICS.predictions], lambda rs: expected <= set(_window_keys(rs)), 180)
        keys = _window_keys(records)
        assert set(keys) == expected
        # Resumed from that checkpoint, not from the start: the windows predicted before it come out once.
        assert all(keys.count(key) == 1 for key in expected_window_ends(first, WINDOW, STRIDE))
