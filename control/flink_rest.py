"""A small client for the Flink JobManager REST API: list, cancel, savepoint, stop-with-savepoint, checkpoints.

It talks to any JobManager: the embedded stack's session cluster, a standalone or Kubernetes cluster.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any


class FlinkRestError(RuntimeError):
    """The REST API answered with an error, or did not answer."""


class JobManagerGone(FlinkRestError):
    """The JobManager stopped answering (a local MiniCluster ends with its only job)."""


@dataclass(frozen=True)
class JobSummary:
    job_id: str
    name: str
    state: str
    start_time_ms: int
    duration_ms: int


def normalise_url(address: str) -> str:
    """``host:port`` or a URL → ``http://host:port``.

    >>> normalise_url("jobmanager:8081")
    'http://jobmanager:8081'
    >>> normalise_url("https://flink.example.com/")
    'https://flink.example.com'
    """
    address = address.strip().rstrip("/")
    return address if address.startswith(("http://", "https://")) else f"http://{address}"


@dataclass(frozen=True)
class CheckpointCounts:
    completed: int
    failed: int
    latest_failure: str
    latest_failure_ms: int


class FlinkRest:
    def __init__(self, address: str, timeout_s: float = 10.0) -> None:
        self.url = normalise_url(address)
        self.timeout_s = timeout_s

    def _call(self, method: str, path: str, body: dict | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"{self.url}{path}", data=data, method=method,
                                         headers={"Content-Type": "application/json"} if data else {})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            try:
                errors = json.loads(detail).get("errors", [detail])
                detail = "; ".join(str(e).strip().splitlines()[0] for e in errors if str(e).strip())
            except (ValueError, AttributeError):
                pass
            raise FlinkRestError(f"{method} {path}: HTTP {exc.code}: {detail.strip()[:500]}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise JobManagerGone(f"no Flink JobManager answers at {self.url}: {exc}") from None
        return json.loads(raw) if raw else {}

    def jobs(self) -> list[JobSummary]:
        listed = self._call("GET", "/jobs/overview").get("jobs", [])
        jobs = [JobSummary(j["jid"], j["name"], j["state"], j.get("start-time", 0), j.get("duration", 0))
                for j in listed]
        return sorted(jobs, key=lambda j: -j.start_time_ms)

    def job(self, job_id: str) -> dict:
        return self._call("GET", f"/jobs/{job_id}")

    def placement(self, job_id: str) -> dict[str, list[str]]:
        """Where each task's subtasks run: task name -> the TaskManager id of subtask 0, 1, ..."""
        placed = {}
        for vertex in self.job(job_id).get("vertices", []):
            subtasks = self._call("GET", f"/jobs/{job_id}/vertices/{vertex['id']}").get("subtasks", [])
            ordered = sorted(subtasks, key=lambda t: t["subtask"])
            placed[vertex["name"]] = [t.get("taskmanager-id", "?") for t in ordered]
        return placed

    def find(self, ref: str) -> JobSummary:
        """A job by id, id prefix, or name (the newest running one of that name)."""
        jobs = self.jobs()
        by_id = [j for j in jobs if j.job_id.startswith(ref)]
        if len(by_id) == 1:
            return by_id[0]
        named = [j for j in jobs if j.name in (ref, f"sensorloop-{ref}") and j.state == "RUNNING"]
        if named:
            return named[0]
        raise FlinkRestError(f"no running job matches {ref!r} at {self.url} "
                             f"(jobs: {', '.join(f'{j.name} {j.job_id[:8]} {j.state}' for j in jobs) or 'none'})")

    def checkpoints(self, job_id: str) -> CheckpointCounts:
        """How the job's checkpoints went: completed, failed, and the latest failure's message."""
        stats = self._call("GET", f"/jobs/{job_id}/checkpoints")
        counts = stats.get("counts", {})
        failed = (stats.get("latest") or {}).get("failed") or {}
        return CheckpointCounts(counts.get("completed", 0), counts.get("failed", 0),
                                failed.get("failure_message") or "", failed.get("latest_ack_timestamp")
                                or failed.get("failure_timestamp") or 0)

    def cancel(self, job_id: str) -> None:
        self._call("PATCH", f"/jobs/{job_id}?mode=cancel")

    def savepoint(self, job_id: str, target_dir: str | None = None, stop: bool = False,
                  timeout_s: float = 120.0) -> str:
        """Trigger a savepoint (``stop=True``: stop the job with it) and wait; returns its location."""
        body: dict[str, Any] = {"cancel-job": False} if not stop else {"drain": False}
        if target_dir:
            body["targetDirectory"] = target_dir
        trigger = self._call("POST", f"/jobs/{job_id}/{'stop' if stop else 'savepoints'}", body)
        request_id = trigger["request-id"]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            status = self._call("GET", f"/jobs/{job_id}/savepoints/{request_id}")
            if status.get("status", {}).get("id") == "COMPLETED":
                operation = status.get("operation", {})
                if "location" in operation:
                    return operation["location"]
                cause = operation.get("failure-cause", {})
                first_line = (str(cause.get("stack-trace", cause)).strip().splitlines() or ["unknown cause"])[0]
                raise FlinkRestError(f"savepoint of {job_id} failed: {first_line}")
            time.sleep(0.5)
        raise FlinkRestError(f"savepoint of {job_id} not done within {timeout_s:.0f}s")

    def wait_state(self, job_id: str, states: tuple[str, ...], timeout_s: float = 60.0) -> str:
        deadline = time.monotonic() + timeout_s
        state = "?"
        while time.monotonic() < deadline:
            state = self.job(job_id).get("state", "?")
            if state in states:
                return state
            time.sleep(0.5)
        raise FlinkRestError(f"job {job_id} is {state}, not {'/'.join(states)}, after {timeout_s:.0f}s")

    def tasks_running(self, job_id: str) -> bool:
        """True when the job and every one of its tasks run (a RUNNING job may still be deploying tasks)."""
        detail = self.job(job_id)
        vertices = detail.get("vertices", [])
        return detail.get("state") == "RUNNING" and bool(vertices) and all(v["status"] == "RUNNING" for v in vertices)

    def wait_all_tasks_running(self, still_alive=lambda: True, timeout_s: float = 180.0) -> str:
        """Wait until the cluster's newest job has every task running; returns its id. ``still_alive``
        (e.g. the job's process) is checked in between, so a job that died fails fast."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not still_alive():
                raise FlinkRestError("the job's process exited before it ran")
            try:
                jobs = self.jobs()
                if jobs and self.tasks_running(jobs[0].job_id):
                    return jobs[0].job_id
            except FlinkRestError:
                pass
            time.sleep(0.5)
        raise FlinkRestError(f"no job with every task running at {self.url} after {timeout_s:.0f}s")


def taskmanagers(count: int) -> str:
    """``count`` TaskManagers, in words.

    >>> taskmanagers(1), taskmanagers(2)
    ('1 TaskManager', '2 TaskManagers')
    """
    return f"{count} TaskManager{'' if count == 1 else 's'}"


def spread(placement: dict[str, list[str]]) -> str:
    """A running job's parallelism and the TaskManagers its subtasks run on, from ``FlinkRest.placement``.

    >>> spread({"source": ["tm-a", "tm-b"], "serve-shards": ["tm-a", "tm-b"], "sink": ["tm-a"]})
    '2 on 2 TaskManagers'
    >>> spread({"source": ["tm-a"]})
    '1 on 1 TaskManager'
    >>> spread({})
    '-'
    """
    if not placement:
        return "-"
    managers = {manager for subtasks in placement.values() for manager in subtasks}
    return f"{max(map(len, placement.values()))} on {taskmanagers(len(managers))}"
