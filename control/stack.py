"""The embedded single-machine stack: the Tansu broker and a Flink session cluster, started in the
background by ``sensorloop stack start`` and found again by every later command through a state file.

It also remembers the savepoints taken through the CLI, so ``sensorloop job resume serving`` picks
the newest state to resume from: that savepoint, or a checkpoint Flink retained after it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from infra.broker import broker_answers, ensure_topics
from infra.flink_cluster import LocalFlinkCluster, rest_answers
from infra.processes import process_alive
from settings import Config

STATE_FILE = "stack.json"
SAVEPOINTS_FILE = "savepoints.json"


@dataclass
class StackState:
    bootstrap: str
    jobmanager: str
    broker_pid: int | None
    prometheus_ports: str
    started_at: float = field(default_factory=time.time)


def cluster_for(cfg: Config) -> LocalFlinkCluster:
    return LocalFlinkCluster(cfg.stack, cfg.flink.state_dir)


def read_state(run_dir: str | os.PathLike[str]) -> StackState | None:
    try:
        return StackState(**json.loads((Path(run_dir) / STATE_FILE).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def start_stack(cfg: Config, timeout_s: float = 90.0) -> StackState:
    """Broker (unless ``broker.bootstrap`` names one), topics, Flink session cluster; returns the state."""
    run_dir = Path(cfg.stack.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    existing = read_state(run_dir)
    if existing and rest_answers(existing.jobmanager):
        raise RuntimeError(f"the stack is already running (Flink {existing.jobmanager}, broker {existing.bootstrap}); "
                           "`sensorloop stack stop` first")
    broker_pid = None
    bootstrap = cfg.broker.bootstrap
    if not bootstrap:
        bootstrap = f"127.0.0.1:{cfg.broker.embedded_port}"
        if broker_answers(bootstrap, 1.0):
            raise RuntimeError(f"something already answers on {bootstrap}: set broker.embedded_port or broker.bootstrap")
        log = open(run_dir / "broker.log", "ab")
        process = subprocess.Popen([sys.executable, "-m", "control.cli", "broker", "--port",
                                    str(cfg.broker.embedded_port), "--storage", cfg.broker.storage,
                                    "--storage-endpoint", cfg.broker.storage_endpoint],
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        broker_pid = process.pid
        deadline = time.monotonic() + 30
        while not broker_answers(bootstrap, 1.0):
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"the embedded broker did not start; see {run_dir / 'broker.log'}")
            time.sleep(0.3)
    ensure_topics(bootstrap, cfg.topics)
    cluster = cluster_for(cfg)
    try:
        cluster.start(timeout_s)
    except Exception:
        if broker_pid:
            os.killpg(broker_pid, signal.SIGTERM)
        raise
    state = StackState(bootstrap, cluster.rest_url, broker_pid, cfg.stack.prometheus_ports)
    (run_dir / STATE_FILE).write_text(json.dumps(asdict(state), indent=2))
    return state


def stop_stack(cfg: Config) -> list[str]:
    """Stops the Flink daemons and the embedded broker; returns what it stopped."""
    run_dir = Path(cfg.stack.run_dir)
    state = read_state(run_dir)
    stopped = []
    cluster = cluster_for(cfg)
    if cluster.conf_dir.exists():
        cluster.stop()
        stopped.append("flink")
    if state and process_alive(state.broker_pid):
        try:
            os.kill(state.broker_pid, signal.SIGTERM)  # `sensorloop broker` stops Tansu on SIGTERM
            for _ in range(100):
                if not process_alive(state.broker_pid):
                    break
                time.sleep(0.1)
            else:
                os.killpg(state.broker_pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        stopped.append("broker")
    (run_dir / STATE_FILE).unlink(missing_ok=True)
    return stopped


def record_savepoint(cfg: Config, job: str, location: str) -> None:
    path = Path(cfg.stack.run_dir) / SAVEPOINTS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    known.setdefault(job, []).append({"location": location, "taken_at": time.time()})
    path.write_text(json.dumps(known, indent=2))


@dataclass(frozen=True)
class RestorePoint:
    """State a job can be resubmitted from: a savepoint or a retained checkpoint."""

    location: str
    kind: str  # "savepoint" or "checkpoint"
    taken_at: float  # epoch seconds


def local_path(location: str) -> Path | None:
    """The local folder of a ``file:`` URI or plain path; None for a remote URL (s3://)."""
    if location.startswith("file:"):
        return Path(location.removeprefix("file://").removeprefix("file:"))
    return None if "://" in location else Path(location)


def recorded_savepoints(cfg: Config, job: str) -> list[RestorePoint]:
    """The savepoints the CLI recorded for ``job``, oldest first; local ones deleted since are left out."""
    try:
        known = json.loads((Path(cfg.stack.run_dir) / SAVEPOINTS_FILE).read_text())
    except (OSError, ValueError):
        return []
    points = []
    for entry in known.get(job) or []:
        folder = local_path(entry["location"])
        if folder is None:
            points.append(RestorePoint(entry["location"], "savepoint", float(entry.get("taken_at", 0.0))))
        elif (folder / "_metadata").is_file():  # dated like a checkpoint: when Flink completed it
            points.append(RestorePoint(entry["location"], "savepoint", (folder / "_metadata").stat().st_mtime))
    return points


def retained_checkpoints(cfg: Config, job: str) -> list[RestorePoint]:
    """Complete checkpoints Flink kept for ``job`` under a local ``flink.state_dir`` (every run of the
    job: ``checkpoints/<job>/<job id>/chk-N``), oldest first. A checkpoint still being written has no
    ``_metadata`` yet and is left out; a remote state dir (s3://) is not listed."""
    folder = local_path(cfg.flink.state_dir.rstrip("/"))
    return [] if folder is None else checkpoints_under(folder / "checkpoints" / job)


def checkpoints_under(folder: Path) -> list[RestorePoint]:
    """The complete checkpoints in one job's checkpoint folder (``<job id>/chk-N/_metadata``), oldest first."""
    found = []
    for metadata in folder.glob("*/chk-*/_metadata"):
        try:
            found.append(RestorePoint(metadata.parent.resolve().as_uri(), "checkpoint", metadata.stat().st_mtime))
        except OSError:  # Flink subsumed it while we looked
            continue
    return sorted(found, key=lambda point: point.taken_at)


def latest_restore_point(cfg: Config, job: str) -> RestorePoint | None:
    """The newest state ``job`` can resume from: a recorded savepoint, or a retained checkpoint when
    the job died (kill -9, a lost machine) after its last savepoint."""
    points = recorded_savepoints(cfg, job) + retained_checkpoints(cfg, job)
    return max(points, key=lambda point: point.taken_at) if points else None

