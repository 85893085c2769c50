"""A Flink session cluster on this machine, started from the Flink distribution inside the installed PyFlink.

One JobManager (REST API and web UI on ``rest_port``) and one TaskManager, each its own JVM, with the
Prometheus reporter on and PyFlink's runtime jar on the classpath. Jobs are submitted to it exactly as
to a remote cluster (``flink run -m localhost:<rest_port>``), so every operator command works the same
on one machine and on many.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

from settings import StackSettings

log = logging.getLogger(__name__)


def pyflink_home() -> Path:
    """The Flink distribution that ships inside the ``apache-flink`` wheel (bin/, lib/, opt/, plugins/)."""
    spec = importlib.util.find_spec("pyflink")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("apache-flink is not installed")
    return Path(list(spec.submodule_search_locations)[0])


def flink_cli() -> Path:
    return pyflink_home() / "bin" / "flink"


def state_uri(location: str) -> str:
    """A checkpoint/savepoint location as a URI: URLs (s3://, file://) as they are, paths made absolute
    (and created).

    >>> state_uri("s3://bucket/checkpoints")
    's3://bucket/checkpoints'
    >>> state_uri("/tmp/ck")
    'file:///tmp/ck'
    """
    if "://" in location:
        return location
    path = Path(location).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path.as_uri()


def flink_configuration(settings: StackSettings, state_dir: str, log_dir: Path) -> dict:
    """PyFlink's shipped ``config.yaml`` (JVM options) with this cluster's settings on top."""
    shipped = yaml.safe_load((pyflink_home() / "conf" / "config.yaml").read_text()) or {}
    state = state_uri(state_dir)
    flat = {
        "jobmanager.rpc.address": "localhost",
        "jobmanager.bind-host": "localhost",
        "jobmanager.rpc.port": settings.rpc_port,
        "jobmanager.memory.process.size": settings.jobmanager_memory,
        "taskmanager.host": "localhost",
        "taskmanager.bind-host": "localhost",
        "taskmanager.numberOfTaskSlots": settings.taskmanager_slots,
        "taskmanager.load-balance.mode": "SLOTS",  # a job's subtasks spread over the TaskManagers, not packed
        "taskmanager.memory.process.size": settings.taskmanager_memory,
        "rest.address": "localhost",
        "rest.bind-address": "localhost",
        "rest.port": settings.rest_port,
        "execution.checkpointing.savepoint-dir": f"{state.rstrip('/')}/savepoints",
        "metrics.reporter.prom.factory.class": "org.apache.flink.metrics.prometheus.PrometheusReporterFactory",
        "metrics.reporter.prom.port": settings.prometheus_ports,
        "env.log.dir": str(log_dir),
        "env.java.opts.taskmanager": settings.taskmanager_jvm_options,
    }
    for section in ("jobmanager", "taskmanager", "rest", "metrics", "parallelism"):
        shipped.pop(section, None)
    shipped.update(flat)
    return shipped


def rest_answers(url: str, timeout_s: float = 2.0) -> dict | None:
    """The cluster overview, or None when nothing answers at ``url``."""
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/overview", timeout=timeout_s) as response:
            return json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None


class LocalFlinkCluster:
    """Writes the configuration and library folder under ``run_dir`` and runs the daemons from PyFlink's bin/.

    The library folder holds links to PyFlink's jars plus ``opt/flink-python`` (the cluster side of PyFlink),
    so no file inside the installed package changes; each job brings its connector jars (``pipeline.jars``).
    """

    def __init__(self, settings: StackSettings = StackSettings(), state_dir: str = "var/flink") -> None:
        self.run_dir = Path(settings.run_dir).resolve()
        self.settings, self.state_dir = settings, state_dir
        self.conf_dir = self.run_dir / "flink-conf"
        self.lib_dir = self.run_dir / "flink-lib"
        self.log_dir = self.run_dir / "flink-log"

    @property
    def rest_url(self) -> str:
        return f"http://localhost:{self.settings.rest_port}"

    def environment(self) -> dict[str, str]:
        """Variables that point PyFlink's scripts (daemons and ``flink run``) at this cluster's files."""
        return {**os.environ, "FLINK_CONF_DIR": str(self.conf_dir), "FLINK_LIB_DIR": str(self.lib_dir),
                "FLINK_LOG_DIR": str(self.log_dir), "FLINK_PID_DIR": str(self.run_dir)}

    def prepare(self) -> None:
        home = pyflink_home()
        for folder in (self.conf_dir, self.lib_dir, self.log_dir):
            folder.mkdir(parents=True, exist_ok=True)
        for stale in self.lib_dir.iterdir():
            stale.unlink()
        jars = sorted((home / "lib").glob("*.jar")) + sorted((home / "opt").glob("flink-python-*.jar"))
        for jar in jars:
            (self.lib_dir / jar.name).symlink_to(jar.resolve())
        for name in ("log4j.properties", "log4j-console.properties", "log4j-cli.properties", "logback.xml"):
            source = home / "conf" / name
            if source.exists():
                (self.conf_dir / name).write_bytes(source.read_bytes())
        config = flink_configuration(self.settings, self.state_dir, self.log_dir)
        (self.conf_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=True))

    def _daemon(self, script: str, action: str) -> None:
        result = subprocess.run(["bash", str(pyflink_home() / "bin" / script), action], env=self.environment(),
                                capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise RuntimeError(f"{script} {action} failed: {result.stderr.strip() or result.stdout.strip()}")

    def start(self, timeout_s: float = 60.0) -> "LocalFlinkCluster":
        if rest_answers(self.rest_url):
            raise RuntimeError(f"something already answers on {self.rest_url}: stop it or pick another "
                               "stack.rest_port")
        self.prepare()
        self._daemon("jobmanager.sh", "start")
        for _ in range(self.settings.taskmanagers):  # each its own JVM; flink-daemon.sh numbers their pid and logs
            self._daemon("taskmanager.sh", "start")
        wanted = self.settings.taskmanagers
        deadline = time.monotonic() + timeout_s
        overview = None
        while time.monotonic() < deadline:
            overview = rest_answers(self.rest_url)
            if overview and overview.get("taskmanagers", 0) >= wanted:
                log.info("Flink cluster up on %s (%s TaskManagers, %s slots)", self.rest_url,
                         overview.get("taskmanagers"), overview.get("slots-total"))
                return self
            time.sleep(0.5)
        self.stop()
        registered = overview.get("taskmanagers", 0) if overview else 0
        raise TimeoutError(f"Flink cluster did not come up on {self.rest_url} within {timeout_s:.0f}s "
                           f"({registered} of {wanted} TaskManagers registered); logs in {self.log_dir}")

    def stop(self) -> None:
        for script in ("taskmanager.sh", "jobmanager.sh"):
            try:
                self._daemon(script, "stop-all")
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                log.warning("%s", exc)
