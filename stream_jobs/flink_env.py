"""A configured StreamExecutionEnvironment: local MiniCluster by default, or a remote cluster."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from pyflink.common import Configuration
from pyflink.datastream import StreamExecutionEnvironment

from infra.flink_cluster import C1_ONLY
from infra.jars import pipeline_jar_urls


@dataclass(frozen=True)
class FlinkSettings:
    """Runtime settings of a job (latency-oriented defaults; see DESIGN.md pitfalls)."""

    parallelism: int = 1
    checkpoint_interval_ms: int = 5_000
    checkpoint_dir: str = "var/checkpoints"
    bundle_time_ms: int = 5
    bundle_size: int = 500
    buffer_timeout_ms: int = 5
    restart_attempts: int = 3
    exactly_once: bool = False
    savepoint_path: str | None = None
    execution_mode: str = "thread"
    python_executable: str = ""  # Python on the TaskManagers (a cluster's); empty: this interpreter
    rest_port: int = 0  # local MiniCluster's REST API (job list/cancel/savepoint); 0: a free port
    savepoint_dir: str = ""  # default target of savepoints triggered without one
    jvm_options: str = C1_ONLY  # the local MiniCluster's JVM (PyFlink's JVM_ARGS); "" for the JVM's defaults


def state_uri(location: str) -> str:
    """A checkpoint/savepoint location as a URI: URLs (s3://, file://) as they are, paths made absolute.

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


def pass_jvm_options(options: str) -> None:
    """Add ``options`` to ``JVM_ARGS``, which PyFlink reads when it starts its JVM (the local
    MiniCluster); raises when that JVM already runs without them. Nothing to do under ``flink run``,
    whose client JVM is already there (the cluster's own configuration sets its JVMs' options)."""
    from pyflink import java_gateway

    if "PYFLINK_GATEWAY_PORT" in os.environ:
        return
    current = os.environ.get("JVM_ARGS", "").split()
    missing = [option for option in options.split() if option not in current]
    if not missing:
        return
    if java_gateway._gateway is not None:
        raise RuntimeError(f"PyFlink's JVM already runs without {' '.join(missing)}: "
                           "set the JVM options before the process's first PyFlink call")
    os.environ["JVM_ARGS"] = " ".join(current + missing)


def make_env(settings: FlinkSettings, jars_source: str | None = None) -> StreamExecutionEnvironment:
    pass_jvm_options(settings.jvm_options)
    config = Configuration()
    config.set_string("pipeline.jars", pipeline_jar_urls(jars_source))
    config.set_string("python.executable", settings.python_executable or sys.executable)
    config.set_string("python.client.executable", sys.executable)
    config.set_string("python.execution-mode", settings.execution_mode)
    if settings.execution_mode == "thread" and not settings.python_executable:
        # the embedded interpreter needs the venv on its path (a cluster's image sets its own)
        config.set_string("python.pythonpath", os.pathsep.join(p for p in sys.path if p))
    config.set_string("python.fn-execution.bundle.time", str(settings.bundle_time_ms))
    config.set_string("python.fn-execution.bundle.size", str(settings.bundle_size))
    config.set_string("execution.buffer-timeout.interval", f"{settings.buffer_timeout_ms} ms")
    config.set_string("execution.checkpointing.interval", f"{settings.checkpoint_interval_ms} ms")
    config.set_string("execution.checkpointing.mode",
                      "EXACTLY_ONCE")
    config.set_string("execution.checkpointing.dir", state_uri(settings.checkpoint_dir))
    config.set_string("execution.checkpointing.externalized-checkpoint-retention", "RETAIN_ON_CANCELLATION")
    config.set_string("restart-strategy.type", "fixed-delay")
    config.set_string("restart-strategy.fixed-delay.attempts", str(settings.restart_attempts))
    config.set_string("restart-strategy.fixed-delay.delay", "1 s")
    if settings.savepoint_dir:
        config.set_string("execution.checkpointing.savepoint-dir", state_uri(settings.savepoint_dir))
    if settings.rest_port:
        config.set_string("rest.port", str(settings.rest_port))
        config.set_string("rest.address", "localhost")
    if settings.savepoint_path:
        config.set_string("execution.state-recovery.path", settings.savepoint_path)
    config.set_string("taskmanager.memory.process.size", os.environ.get("SENSORLOOP_TM_MEMORY", "2g"))
    env = StreamExecutionEnvironment.get_execution_environment(config)
    env.set_parallelism(settings.parallelism)
    env.set_buffer_timeout(settings.buffer_timeout_ms)
    return env

