"""Faults injected under a running serving job on the real broker and MiniCluster: the broker reset
(in-memory storage) is reported within seconds; the broker killed with SIGKILL on durable storage
loses nothing; a checkpoint directory that cannot be written does not stop serving. Each run's
figures go to ``tests/artifacts/faults.jsonl`` (see ``helpers.record_fault``)."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import orjson
import pytest

from control.launcher import serving_job
from infra.broker import EmbeddedBroker, ensure_topics, free_port
from infra.kafka_tools import produce, read_quiet, read_until
from schemas import Topics
from tests.e2e.helpers import encoded, expected_window_ends, record_fault, replayed_readings, started, window_tally

pytestmark = pytest.mark.e2e
TOPICS = Topics()


def predictions_until(bootstrap: str, job, expected: set, timeout_s: float) -> list:
    """Prediction records until every expected (device, window end) is among them."""
    def every_window(records) -> bool:
        assert job.alive(), job.log_tail(60)
        return {window_key(r) for r in records} >= expected

    return read_until(bootstrap, [TOPICS.predictions], every_window, timeout_s)


def back_empty(broker: EmbeddedBroker, port: int, tmp_path: Path) -> tuple[EmbeddedBroker, float]:
    """The in-memory broker killed and started again on its port: every topic, offset and group comes back
    empty; the topics are created again and a few new readings sent (fewer than the job had read). Also
    when (``time.monotonic()``) it answered again."""
    broker.kill()
    broker = EmbeddedBroker(port=port, log_path=tmp_path / "broker.log").start()
    back_at = time.monotonic()
    ensure_topics(broker.bootstrap, TOPICS)
    produce(broker.bootstrap, TOPICS.readings, encoded(replayed_readings(n_devices=1, per_device=8, seed=5)))
    return broker, back_at


def first_stall_report(job, since: float, timeout_s: float = 60.0) -> tuple[str | None, float]:
    """The job's first ``source stalled or reset`` log line (None if none came within ``timeout_s`` of ``since``,
    a ``time.monotonic()``), and the seconds from ``since`` until it was seen."""
    reported = None
    while time.monotonic() - since < timeout_s and reported is None:
        assert job.alive(), job.log_tail(60)
        lines = [line for line in job.log_tail(100_000).splitlines() if "source stalled or reset" in line]
        reported = lines[0] if lines else None
        time.sleep(0.5)
    return reported, time.monotonic() - since


def window_key(record) -> tuple[str, int]:
    p = orjson.loads(record.value)
    return p["device_id"], p["window_end"]


def test_a_broker_reset_under_a_running_job_is_reported_within_seconds(tmp_path, trained_registry):
    first = replayed_readings(n_devices=4, per_device=40)
    port = free_port()
    broker = EmbeddedBroker(port=port, log_path=tmp_path / "broker.log").start()
    job = None
    try:
        ensure_topics(broker.bootstrap, TOPICS)
        job, _ = started(lambda rest_port: serving_job(
            broker.bootstrap, tmp_path / "job.log", registry=trained_registry, rest_port=rest_port,
            source_check_ms=1000, group_id="reset-test", state_dir=str(tmp_path / "flink")))
        produce(broker.bootstrap, TOPICS.readings, encoded(first))
        predictions_until(broker.bootstrap, job, expected_window_ends(first, 32, 8), 180)
        assert "source stalled or reset" not in job.log_tail(100_000)  # no false alarm on a healthy stream
        broker, back_at = back_empty(broker, port, tmp_path)
        reported, detect_s = first_stall_report(job, back_at)
    finally:
        if job is not None:
            job.stop()
        broker.stop()
    assert reported is not None, "the reset was never reported"
    assert "sensor-readings partition" in reported and "no longer has offset" in reported
    record_fault("broker restart, in-memory storage: reported", dict(unit="reset reported", sent=1, out=1,
                                                                     duplicates=0, lost=0), detect_s)


def test_a_job_restored_after_the_broker_lost_its_topics_reports_it(tmp_path, trained_registry):
    """The job crashes (SIGKILL) and the in-memory broker restarts empty; the job restored from its last checkpoint
    resumes beyond every partition's end, where it would read nothing for ever. Its watch has read no offset yet,
    so it checks the ones the job's consumer group committed (the restored source commits its position with its
    first checkpoint), and reports the loss. The broker's reset alone under a running job is the test above; a
    sink that fails on the reset restores the job in just this way."""
    from control.stack import checkpoints_under

    first = replayed_readings(n_devices=4, per_device=40)
    port = free_port()
    broker = EmbeddedBroker(port=port, log_path=tmp_path / "broker.log").start()
    options = dict(registry=trained_registry, source_check_ms=1000, group_id="restored-reset-test",
                   state_dir=str(tmp_path / "flink"), checkpoint_interval_ms=1000)
    job = None
    try:
        ensure_topics(broker.bootstrap, TOPICS)
        job, _ = started(lambda rest_port: serving_job(broker.bootstrap, tmp_path / "job-a.log", rest_port=rest_port,
                                                       **options))
        produce(broker.bootstrap, TOPICS.readings, encoded(first))
        predictions_until(broker.bootstrap, job, expected_window_ends(first, 32, 8), 180)
        time.sleep(2.5)  # one more checkpoint, so the restored position is past these readings
        os.killpg(job.process.pid, signal.SIGKILL)
        job.process.wait()
        job = None
        broker, _ = back_empty(broker, port, tmp_path)
        found = checkpoints_under(tmp_path / "flink" / "checkpoints" / "serving")
        assert found, "no completed checkpoint to restore"
        job, _ = started(lambda rest_port: serving_job(broker.bootstrap, tmp_path / "job-b.log", rest_port=rest_port,
                                                       savepoint_path=found[-1].location, **options))
        restored_at = time.monotonic()
        reported, detect_s = first_stall_report(job, restored_at)
    finally:
        if job is not None:
            job.stop()
        broker.stop()
    assert reported is not None, "the restored job never reported the lost topic"
    assert "sensor-readings partition" in reported and "consumer group committed" in reported
    record_fault("broker restart, in-memory storage, job restored: reported",
                 dict(unit="reset reported", sent=1, out=1, duplicates=0, lost=0), detect_s)


@pytest.fixture
def s3_endpoint(monkeypatch):
    """moto's S3 server on loopback with a bucket for the broker's records."""
    moto_server = pytest.importorskip("moto.server", reason="moto[server] (test extra) is not installed")
    import boto3

    port = free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    for name, value in dict(AWS_ACCESS_KEY_ID="sensorloop", AWS_SECRET_ACCESS_KEY="sensorloop-secret",
                            AWS_DEFAULT_REGION="us-east-1", AWS_REGION="us-east-1").items():
        monkeypatch.setenv(name, value)
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="broker")
    yield endpoint
    server.stop()


def send_steadily(bootstrap: str, readings: list[dict], per_second: float, unstored: list,
                  acked: dict) -> threading.Thread:
    """Send ``readings`` in order at a steady rate from a thread, each acknowledged before the next,
    retrying through a broker restart. Tansu, restarting, may acknowledge a record with offset -1 and
    not store it: such a record is sent again and noted in ``unstored``; ``acked`` maps each record's
    (partition, offset) to its bytes."""
    from kafka import KafkaProducer

    def send() -> None:
        # a request to the dead broker times out in 5 s, not the client's 30 s, and reconnects are tried every
        # second at most: the sender resumes soon after the broker is back
        producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", retries=50, retry_backoff_ms=200,
                                 max_in_flight_requests_per_connection=1, linger_ms=0, request_timeout_ms=5000,
                                 reconnect_backoff_max_ms=1000)
        for key, value in encoded(readings):
            while (meta := producer.send(TOPICS.readings, key=key, value=value).get(timeout=120)).offset < 0:
                unstored.append(key)
            acked[(meta.partition, meta.offset)] = value
            time.sleep(1 / per_second)
        producer.close()

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


def test_a_broker_crash_on_s3_storage_mid_stream_is_never_silent(tmp_path, trained_registry, s3_endpoint):
    """The embedded broker on S3 storage killed mid-stream and restarted. Either it kept every
    acknowledged reading and every window comes out, or it lost some and the job says so (Tansu 0.6's
    S3 engine has lost readings the job had already read, under the real jobs, after a SIGTERM or a
    SIGKILL alike). The figures go to the fault table."""
    how = "SIGKILL"
    readings = replayed_readings(n_devices=4, per_device=120)
    expected = expected_window_ends(readings, 32, 8)
    port = free_port()
    durable = dict(port=port, storage="s3://broker/", storage_endpoint=s3_endpoint, log_path=tmp_path / "broker.log")
    broker = EmbeddedBroker(**durable).start()
    job = None
    try:
        ensure_topics(broker.bootstrap, TOPICS)
        job, _ = started(lambda rest_port: serving_job(
            broker.bootstrap, tmp_path / "job.log", registry=trained_registry, rest_port=rest_port,
            group_id="durable-test", state_dir=str(tmp_path / "flink"), checkpoint_interval_ms=1000))
        unstored: list = []
        acked: dict = {}
        sender = send_steadily(broker.bootstrap, readings, per_second=80, unstored=unstored, acked=acked)
        time.sleep(2.5)
        broker.kill() if how == "SIGKILL" else broker.stop()  # mid-stream: readings and predictions in flight
        killed_ms = int(time.time() * 1000)
        time.sleep(1.0)
        broker = EmbeddedBroker(**durable).start()
        back_ms = int(time.time() * 1000)
        sender.join(180)
        stored = {(r.partition, r.offset): r.value  # all it kept: read until nothing more comes for 3 s
                  for r in read_quiet(broker.bootstrap, [TOPICS.readings], quiet_s=3, timeout_s=30)}
        broker_lost = sorted(k for k, v in acked.items() if stored.get(k) != v)
        if not broker_lost:
            records = predictions_until(broker.bootstrap, job, expected, 180)
        else:  # the broker lost readings: windows shift; wait for the stream to settle
            records = read_quiet(broker.bootstrap, [TOPICS.predictions], quiet_s=6, timeout_s=30)
        time.sleep(3)  # anything still on its way, duplicates included
        records = read_quiet(broker.bootstrap, [TOPICS.predictions], quiet_s=2, timeout_s=30)
        log = job.log_tail(100_000)
    finally:
        if job is not None:
            job.stop()
        broker.stop()
    keys = [window_key(r) for r in records]
    reported = "source stalled or reset" in log
    if not broker_lost:  # every window of what the broker kept, and no false alarm
        assert set(keys) == expected
        assert not reported
    else:  # records the job had read are gone from the broker: the job must have said so
        assert reported, f"the broker lost {broker_lost} and the job did not report it"
    after = sorted(r.timestamp for r in records if r.timestamp >= back_ms)
    record_fault(f"broker {how} mid-stream, Tansu on S3 (moto), 1 s down", window_tally(keys, expected),
                 (after[0] - killed_ms) / 1000 if after else float("nan"), acknowledged_unstored=len(unstored),
                 readings_acknowledged=len(acked), readings_lost_by_broker=len(broker_lost), loss_reported=reported,
                 predictions_before_crash_kept=sum(r.timestamp < killed_ms for r in records))


def test_an_unwritable_checkpoint_directory_does_not_stop_serving(tmp_path, trained_registry):
    phases = [replayed_readings(n_devices=4, per_device=40, start_seq=40 * i) for i in range(3)]
    options = dict(registry=trained_registry, state_dir=str(tmp_path / "flink"), checkpoint_interval_ms=1000,
                   group_id="checkpoint-fault")
    with EmbeddedBroker(log_path=tmp_path / "broker.log") as broker:
        ensure_topics(broker.bootstrap, TOPICS)
        job, rest = started(lambda rest_port: serving_job(broker.bootstrap, tmp_path / "job-a.log",
                                                          rest_port=rest_port, **options))
        try:
            job_id = rest.jobs()[0].job_id
            produce(broker.bootstrap, TOPICS.readings, encoded(phases[0]))
            predictions_until(broker.bootstrap, job, expected_window_ends(phases[0], 32, 8), 180)
            folder = Path(options["state_dir"]) / "checkpoints" / "serving" / job_id
            assert folder.is_dir()
            failed_before = rest.checkpoints(job_id).failed
            # root ignores permission bits, so the folder is put aside and a file takes its name
            folder.rename(folder.with_name(job_id + ".aside"))
            folder.write_text("not a directory")
            deadline = time.monotonic() + 60
            while rest.checkpoints(job_id).failed < failed_before + 2:
                assert time.monotonic() < deadline, "checkpoints did not fail on an unwritable directory"
                time.sleep(0.5)
            failure = rest.checkpoints(job_id).latest_failure
            produce(broker.bootstrap, TOPICS.readings, encoded(phases[1]))  # served while checkpoints fail
            predictions_until(broker.bootstrap, job, expected_window_ends(phases[0] + phases[1], 32, 8), 120)
            assert rest.checkpoints(job_id).failed >= failed_before + 2
            folder.unlink()
            folder.with_name(job_id + ".aside").rename(folder)
            restored_at = time.monotonic()
            completed = rest.checkpoints(job_id).completed
            while rest.checkpoints(job_id).completed <= completed:
                assert time.monotonic() - restored_at < 60, "checkpoints did not resume"
                time.sleep(0.2)
            recover_s = time.monotonic() - restored_at
            time.sleep(1.5)
            log = job.log_tail(100_000)
        finally:
            os.killpg(job.process.pid, signal.SIGKILL)  # and then a crash: the resumed checkpoint is a new one
            job.process.wait()
        assert " to FAILED" not in log, "a task failed while checkpoints could not be written"
        latest = sorted(folder.glob("chk-*/_metadata"), key=lambda p: int(p.parent.name.split("-")[1]))[-1].parent
        produce(broker.bootstrap, TOPICS.readings, encoded(phases[2]))
        job = serving_job(broker.bootstrap, tmp_path / "job-b.log", savepoint_path=str(latest), **options)
        expected = expected_window_ends(phases[0] + phases[1] + phases[2], 32, 8)
        with job:
            records = predictions_until(broker.bootstrap, job, expected, 180)
            time.sleep(3)
            records = read_until(broker.bootstrap, [TOPICS.predictions], lambda r: False, 5)
    keys = [window_key(r) for r in records]
    assert set(keys) == expected
    row = record_fault("checkpoint directory unwritable, then SIGKILL", window_tally(keys, expected), recover_s,
                       checkpoint_failure=failure.splitlines()[0][:160] if failure else "")
    assert row["lost"] == 0
