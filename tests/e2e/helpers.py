"""Shared pieces of the end-to-end tests: readings, job start, collection."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import orjson

from control.flink_rest import FlinkRest, FlinkRestError
from infra.broker import free_port
from infra.kafka_tools import read_until
from model.datasets import load_basic_motions
from operators.replay import ReadingStream


def replayed_readings(n_devices: int, per_device: int, start_seq: int = 0, seed: int = 0) -> list[dict]:
    """Real BasicMotions readings, ``per_device`` for each device, timestamps 100 ms apart."""
    stream = ReadingStream(load_basic_motions("test"), n_devices=n_devices, seed=seed)
    out = []
    for _ in range((start_seq + per_device) * n_devices):
        r = next(stream)
        if r["seq"] >= start_seq:
            r["ts"] = 1_700_000_000_000 + r["seq"] * 100
            out.append(r)
    return out


def encoded(readings: list[dict]) -> list[tuple[bytes, bytes]]:
    return [(r["device_id"].encode(), orjson.dumps(r)) for r in readings]


def expected_windows(readings: list[dict], window: int, stride: int) -> dict[tuple[str, int], list[dict]]:
    """Every window the readings make, fed in sequence order: its readings by (device, window end ts)."""
    windows = {}
    by_device: dict[str, list[dict]] = {}
    for r in readings:
        by_device.setdefault(r["device_id"], []).append(r)
    for device, items in by_device.items():
        items.sort(key=lambda r: r["seq"])
        for i in range(window - 1, len(items), stride):
            windows[(device, items[i]["ts"])] = items[i + 1 - window:i + 1]
    return windows


def expected_window_ends(readings: list[dict], window: int, stride: int) -> set[tuple[str, int]]:
    """(device, window end ts) of every window the readings make, fed in sequence order."""
    return set(expected_windows(readings, window, stride))


def collect(bootstrap: str, topic_counts: dict[str, int], timeout_s: float, job=None,
            isolation_level: str = "read_uncommitted") -> dict[str, list]:
    """Read until each topic has at least its count (or time runs out); fail fast if the job died."""
    def done(records):
        if job is not None and not job.alive():
            raise AssertionError("job died:\n" + job.log_tail(60))
        counts = {t: 0 for t in topic_counts}
        for r in records:
            counts[r.topic] += 1
        return all(counts[t] >= n for t, n in topic_counts.items())

    records = read_until(bootstrap, list(topic_counts), done, timeout_s, isolation_level)
    out = {t: [] for t in topic_counts}
    for r in records:
        out[r.topic].append(r)
    return out


def follow(tail, decoders: dict[str, Callable[[bytes], Any]], check: Callable[[dict[str, list]], bool],
           timeout_s: float, jobs=()) -> dict[str, list]:
    """Read a ``TopicTail`` into one list per topic, each record decoded by its topic's decoder; after
    every poll ``check(records)`` may act on what came and ends the reading by returning True. Fails
    fast, with its log, when one of ``jobs`` died; returns what was read when time runs out too."""
    records: dict[str, list] = {topic: [] for topic in decoders}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for record in tail.poll(200):
            records[record.topic].append(decoders[record.topic](record.value))
        if check(records):
            break
        for job in jobs:
            assert job.alive(), job.log_tail(60)
    return records


FAULTS_FILE = "tests/artifacts/faults.jsonl"


def window_tally(keys: list[tuple[str, int]], expected: set[tuple[str, int]]) -> dict:
    """Windows expected vs predictions out, duplicates and windows lost, for ``record_fault``."""
    return dict(unit="windows", sent=len(expected), out=len(keys), duplicates=len(keys) - len(set(keys)),
                lost=len(expected - set(keys)))


def record_fault(fault: str, tally: dict, recover_s: float, **extra) -> dict:
    """Append one fault run's figures (what was sent vs what came out, duplicates, lost, time to
    recover) to ``tests/artifacts/faults.jsonl``, where the README's fault table comes from."""
    row = dict(fault=fault, **tally, recover_s=round(recover_s, 1), at=time.strftime("%Y-%m-%dT%H:%M:%S"), **extra)
    path = Path(FAULTS_FILE)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as out:
        out.write(json.dumps(row) + "\n")
    return row


def wait_all_tasks_running(rest_port: int, job, timeout_s: float = 180, attempts: int = 3) -> int:
    """Wait until every task of ``job`` (a started ``JobProcess`` with ``--rest-port rest_port``) runs; returns
    its REST port. A port picked free can be taken before the MiniCluster binds it: then the job starts again
    on another port. A job that does not come up is stopped, and the failure shows its log."""
    for attempt in range(attempts):
        try:
            FlinkRest(f"localhost:{rest_port}", timeout_s=2).wait_all_tasks_running(job.alive, timeout_s)
            return rest_port
        except FlinkRestError as exc:
            taken = not job.alive() and "Could not start rest endpoint" in job.log_tail(400)
            job.stop()
            if not taken or attempt == attempts - 1:
                raise AssertionError(f"{exc}:\n{job.log_tail(40)}") from None
            rest_port = free_port()
            job.args[job.args.index("--rest-port") + 1] = str(rest_port)
            job.start()
    raise AssertionError("unreachable")


def started(make_job, attempts: int = 3):
    """Start ``make_job(rest_port)`` and wait until every task runs (readings sent before are read too,
    but later); returns the job and its REST client (on another port if the first was taken:
    :func:`wait_all_tasks_running`)."""
    rest_port = free_port()
    job = make_job(rest_port).start()
    return job, FlinkRest(f"localhost:{wait_all_tasks_running(rest_port, job, attempts=attempts)}")
