"""Kill the serving job hard, restart it from its last checkpoint: no window lost or duplicated."""

import os
import signal
import time
from pathlib import Path

import pytest

from infra.broker import EmbeddedBroker, ensure_topics
from infra.jvm_scratch import scratch_dir
from infra.kafka_tools import produce
from schemas import Prediction, Topics
from control.launcher import serving_job
from control.stack import checkpoints_under
from tests.e2e.helpers import collect, encoded, expected_window_ends, record_fault, replayed_readings, window_tally

pytestmark = pytest.mark.e2e
TOPICS = Topics()


def latest_checkpoint(root: Path) -> str:
    """The checkpoint ``sensorloop job resume`` would pick: the newest complete one."""
    found = checkpoints_under(root)
    assert found, f"no completed checkpoint under {root}"
    return found[-1].location


def test_restart_from_checkpoint_keeps_window_state(tmp_path, trained_registry):
    checkpoints = tmp_path / "ck"
    options = dict(registry=trained_registry, state_dir=str(checkpoints), checkpoint_interval_ms=1000,
                   exactly_once=True, group_id="restart-test")
    first = replayed_readings(n_devices=4, per_device=40)
    second = replayed_readings(n_devices=4, per_device=40, start_seq=40)
    before = expected_window_ends(first, 32, 8)
    everything = expected_window_ends(first + second, 32, 8)
    assert len(before) == 8 and len(everything) == 4 * 7
    with EmbeddedBroker(log_path=tmp_path / "broker.log") as broker:
        ensure_topics(broker.bootstrap, TOPICS)
        job = serving_job(broker.bootstrap, tmp_path / "job-a.log", **options).start()
        try:
            produce(broker.bootstrap, TOPICS.readings, encoded(first))
            # visible to read_committed only once a checkpoint after them completed
            got = collect(broker.bootstrap, {TOPICS.predictions: len(before)}, 180, job, "read_committed")
            assert len(got[TOPICS.predictions]) == len(before)
            time.sleep(2.5)  # one more checkpoint, so the restored state is past these readings
            left_behind = scratch_dir(job.process.pid)  # the JVM's temporary files: Flink's RPC jar among them
            assert any(f.name.startswith("flink-rpc") for f in left_behind.iterdir()), list(left_behind.iterdir())
        finally:
            os.killpg(job.process.pid, signal.SIGKILL)  # a crash: no clean shutdown
            job.process.wait()
        killed_ms = int(time.time() * 1000)
        produce(broker.bootstrap, TOPICS.readings, encoded(second))
        restored = latest_checkpoint(checkpoints / "checkpoints" / "serving")  # flink.state_dir/checkpoints/<job>
        job = serving_job(broker.bootstrap, tmp_path / "job-b.log", savepoint_path=str(restored), **options)
        with job:
            out = collect(broker.bootstrap, {TOPICS.predictions: len(everything)}, 240, job, "read_committed")
            # swept by the next local job start (this one's, or another test worker's)
            assert not left_behind.exists(), "no job start removed a killed job's scratch folder"
            own = scratch_dir(job.process.pid)  # named by the running process's pid and start time
            assert own.is_dir()
            time.sleep(3)
            out = collect(broker.bootstrap, {TOPICS.predictions: len(everything) + 1}, 6, None, "read_committed")
    assert not own.exists(), "stopping the job left its scratch folder"
    predictions = [Prediction.decode(r.value) for r in out[TOPICS.predictions]]
    keys = [(p.device_id, p.window_end) for p in predictions]
    # windows spanning the crash (readings 8..39 before, 40..47 after) prove the state was restored
    assert set(keys) == everything
    assert len(keys) == len(set(keys)), "a window was emitted twice"
    after = [r.timestamp for r in out[TOPICS.predictions] if r.timestamp > killed_ms]
    record_fault("serving job SIGKILL, exactly-once, resumed from its checkpoint", window_tally(keys, everything),
                 (min(after) - killed_ms) / 1000)
