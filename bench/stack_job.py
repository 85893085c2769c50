"""The serving job on a session cluster of several TaskManager JVMs, for benchmarks that compare it with the job
on its own MiniCluster (one JVM, so one embedded Python interpreter for all of its subtasks).

A ``StackJob`` starts a ``LocalFlinkCluster`` of its own (fresh ports and folders under the benchmark's work
folder), submits the serving job to it with ``flink run`` as ``sensorloop job submit`` does, and offers what
``bench.serving_bench`` asks of a job: ``start``, ``alive``, ``stop``, ``log_tail`` and the processes whose CPU
time is the job's (the JobManager and every TaskManager).
"""

from __future__ import annotations

import socket
from pathlib import Path

from control.flink_rest import FlinkRest
from control.launcher import setting_key
from control.submit import submit
from infra.broker import free_port
from infra.flink_cluster import LocalFlinkCluster
from infra.processes import process_alive
from settings import Config, StackSettings


def free_port_range(count: int, tries: int = 50) -> int:
    """The first of ``count`` consecutive ports that nothing listens on now."""
    for _ in range(tries):
        first = free_port()
        if first + count < 65536 and all(port_is_free(first + k) for k in range(1, count)):
            return first
    raise RuntimeError(f"no {count} consecutive free ports found")


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class StackJob:
    """The serving job at ``parallelism`` on ``taskmanagers`` TaskManager JVMs; ``settings`` as the keyword
    options of ``control.launcher.serving_job`` (``stride=8``, ``registry=...``)."""

    def __init__(self, work: Path, name: str, bootstrap: str, taskmanagers: int, parallelism: int,
                 **settings) -> None:
        prom = free_port_range(taskmanagers + 1)
        self.stack = StackSettings(run_dir=str(work / f"{name}-stack"), rest_port=free_port(), rpc_port=free_port(),
                                   prometheus_ports=f"{prom}-{prom + taskmanagers}", taskmanagers=taskmanagers)
        values = {setting_key(k): v for k, v in settings.items()}
        self.cfg = Config().with_values({**values, "flink.parallelism": parallelism,
                                         "flink.state_dir": str(work / f"{name}-ck")}, origin="benchmark")
        self.cluster = LocalFlinkCluster(self.stack, self.cfg.flink.state_dir)
        self.bootstrap, self.rest = bootstrap, FlinkRest(self.cluster.rest_url)
        self.job_id: str | None = None

    def start(self) -> "StackJob":
        """The cluster, and the job submitted (detached: its tasks deploy after this returns, as a local job's
        do after its process starts, so a gauge read from here on sees the whole drain)."""
        self.cluster.start()
        self.job_id = submit("serving", self.cfg, self.bootstrap, self.cluster.rest_url).job_id
        return self

    def pids(self) -> list[int]:
        """The JobManager's and the TaskManagers' processes (the job's Python runs inside the TaskManagers)."""
        found = []
        for pid_file in Path(self.stack.run_dir).glob("flink-*.pid"):
            found += [int(line) for line in pid_file.read_text().split() if line.strip().isdigit()]
        return found

    def alive(self) -> bool:
        return self.job_id is not None and all(process_alive(pid) for pid in self.pids())

    def placement(self) -> dict[str, list[str]]:
        return self.rest.placement(self.job_id) if self.job_id else {}

    def log_tail(self, lines: int = 40) -> str:
        logs = sorted(self.cluster.log_dir.glob("*.log"))
        return "\n".join(f"== {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
                         for log in logs)

    def stop(self) -> None:
        if self.job_id is not None:
            try:
                self.rest.cancel(self.job_id)
            except Exception:  # the cluster goes down next either way
                pass
        self.cluster.stop()
