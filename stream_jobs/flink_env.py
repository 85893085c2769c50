"""What every job shares: its command line (configuration plus what belongs to one start), and a
configured StreamExecutionEnvironment (a local MiniCluster by default, or the cluster ``flink run``
submits to)."""

from __future__ import annotations

import argparse
import atexit
import logging
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from pyflink.common import Configuration, TypeInformation, Types
from pyflink.datastream import DataStream, KeyedStream, StreamExecutionEnvironment
from pyflink.java_gateway import get_gateway

from infra.flink_cluster import state_uri
from infra.jars import pipeline_jar_urls
from infra.jvm_scratch import SCRATCH_ENV, claim_scratch, remove_scratch, scratch_dir
from settings import Config, ConfigError, FlinkSettings, load_config, parse_assignments


@dataclass(frozen=True)
class JobRun:
    """What belongs to one start of a job rather than to the configuration."""

    savepoint_path: str = ""  # resume from this savepoint or retained checkpoint
    rest_port: int = 0  # a local MiniCluster's REST API (job list/cancel/savepoint); 0: a free port
    group_id: str = ""  # Kafka consumer group; empty: sensorloop-<job>
    stats_file: str = ""  # serving: append the model's throughput inside the job here (benchmarks)


THREAD_MODE_BUNDLE_TIMER_MS = 1000


def bundle_timer_ms(flink: FlinkSettings) -> int:
    """The period of Flink's timer that ends a Python operator's bundle. Process mode sends elements to the
    Python worker in bundles, so ``flink.bundle_time_ms`` bounds how long one may wait. Thread mode has no
    bundles (its operators call Python for each element; ending a bundle does nothing), so the timer only
    costs CPU: at 5 ms it took 0.035 of a core in an idle serving job, and it runs once a second instead.

    >>> bundle_timer_ms(FlinkSettings()), bundle_timer_ms(FlinkSettings(execution_mode="process"))
    (1000, 5)
    """
    return THREAD_MODE_BUNDLE_TIMER_MS if flink.execution_mode == "thread" else flink.bundle_time_ms


def subtask_index(runtime_context) -> int:
    """This parallel subtask's index (0 to parallelism - 1). PyFlink's ``get_index_of_this_subtask`` calls
    ``RuntimeContext.getIndexOfThisSubtask``, which Flink 2 moved to ``getTaskInfo()``."""
    return int(runtime_context._runtime_context.getTaskInfo().getIndexOfThisSubtask())


def quiet_embedded_logging() -> None:
    """Called from operators' ``open``: PyFlink's thread-mode interpreter sets the root logger to DEBUG and
    formats every record for Java whatever Java's log level, so libraries' debug lines (the Kafka client's,
    several per fetch of a job's own clients) took the operators' interpreter. INFO and up pass (the Kafka
    client's WARNING and up)."""
    logging.getLogger().setLevel(logging.INFO)
    logging.getLogger("kafka").setLevel(logging.WARNING)


def keyed_by_first_field(stream: DataStream, key_type: TypeInformation, value_type: TypeInformation) -> KeyedStream:
    """Key a stream of ``Row(key, value)`` records by their first field, in Java, for a keyed Python
    operator that then sees ``value`` alone. It is the shape PyFlink's ``key_by`` builds, without the
    Python operator it adds to compute the key: that operator unpickled every record, called Python once
    and pickled the record again, on the task thread of the operator before it."""
    selector = get_gateway().jvm.org.apache.flink.streaming.api.functions.python.KeyByKeySelector()
    j_keyed = stream._j_data_stream.keyBy(selector, Types.ROW([key_type]).get_java_type_info())
    return KeyedStream(j_keyed, value_type, stream)


def job_parser(job: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"python -m stream_jobs.{job}_job",
        description=f"The sensorloop {job} job. Its settings come from the configuration: the file "
                    "(--config, else $SENSORLOOP_CONFIG, else ./sensorloop.toml), then SENSORLOOP_<SECTION>_<KEY> "
                    "variables, then --set flags; `sensorloop config show` prints every key.")
    parser.add_argument("--config", default="", help="TOML configuration file")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one setting (repeatable), e.g. --set serving.confidence_threshold=0.8")
    parser.add_argument("--bootstrap", default=None, help="same as --set broker.bootstrap=HOST:PORT")
    parser.add_argument("--savepoint-path", default="", help="resume from this savepoint")
    parser.add_argument("--rest-port", type=int, default=0, help="local MiniCluster's REST port (0: a free one)")
    parser.add_argument("--group-id", default="", help=f"Kafka consumer group (default: sensorloop-{job})")
    if job == "serving":
        parser.add_argument("--stats-file", default="", help="append the model's own throughput here every 5 s")
    return parser


def parse_job_args(job: str, argv: list[str] | None = None,
                   parser: argparse.ArgumentParser | None = None) -> tuple[Config, JobRun]:
    """The validated configuration and the run's own options; exits with every problem listed."""
    parser = parser or job_parser(job)
    args = parser.parse_args(argv)
    try:
        flags = parse_assignments(args.set)
        if args.bootstrap:
            flags["broker.bootstrap"] = args.bootstrap
        cfg = load_config(args.config, flags=flags)
    except ConfigError as exc:
        parser.exit(2, f"{parser.prog}: {exc}\n")
    if not cfg.broker.bootstrap:
        parser.exit(2, f"{parser.prog}: no Kafka broker: set broker.bootstrap (file, $SENSORLOOP_BROKER_BOOTSTRAP, "
                       "--set or --bootstrap)\n")
    return cfg, JobRun(args.savepoint_path, args.rest_port, args.group_id, getattr(args, "stats_file", ""))


def under_flink_run() -> bool:
    """True when ``flink run`` (or a FlinkDeployment) started this process: its JVM is already there."""
    return "PYFLINK_GATEWAY_PORT" in os.environ


def prepare_local_jvm(job: str, jvm_options: str, log_dir: str, scratch: Path | None = None) -> Path | None:
    """Before PyFlink starts its own JVM (a local MiniCluster): add ``jvm_options`` to ``JVM_ARGS``, give
    the MiniCluster's log a file of its own under ``log_dir`` (PyFlink's default is one shared file that
    the next start overwrites) and its temporary files a folder of this process's own under ``scratch``
    (``infra.jvm_scratch``; unless ``JVM_ARGS`` names a ``java.io.tmpdir`` of the user's), removed when the
    process exits or by the next job start after it was killed. A child process inherits ``JVM_ARGS`` with its
    parent's folder in it (``SENSORLOOP_JVM_SCRATCH`` names that folder): it gets a folder of its own instead,
    since the parent removes its folder when it exits. Returns that log file; None under ``flink run``."""
    from pyflink import java_gateway

    if under_flink_run():
        return None
    current = os.environ.get("JVM_ARGS", "").split()
    inherited = os.environ.get(SCRATCH_ENV)
    if inherited and inherited != str(scratch_dir(os.getpid(), scratch)):  # a parent's folder, not the user's choice
        current = [option for option in current if option != f"-Djava.io.tmpdir={inherited}"]
    missing = [option for option in jvm_options.split() if option not in current]
    ident = f"sensorloop-{job}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    folder = Path(log_dir).resolve()
    if java_gateway._gateway is not None:
        if missing:
            raise RuntimeError(f"PyFlink's JVM already runs without {' '.join(missing)}: "
                               "set the JVM options before the process's first PyFlink call")
        return None
    folder.mkdir(parents=True, exist_ok=True)
    if not any(option.startswith("-Djava.io.tmpdir=") for option in current + missing):
        own = claim_scratch(os.getpid(), scratch)
        atexit.register(remove_scratch, os.getpid(), scratch)
        missing.append(f"-Djava.io.tmpdir={own}")
        os.environ[SCRATCH_ENV] = str(own)
    os.environ["JVM_ARGS"] = " ".join(current + missing)
    os.environ["FLINK_LOG_DIR"] = str(folder)
    os.environ["FLINK_IDENT_STRING"] = ident
    return folder / f"flink-{ident}-python-{socket.gethostname()}.log"


def make_env(cfg: Config, job: str, run: JobRun = JobRun()) -> StreamExecutionEnvironment:
    """The job's environment from the configuration's ``[flink]`` section; checkpoints and savepoints
    under ``flink.state_dir``/checkpoints|savepoints/<job>."""
    flink = cfg.flink
    log_file = prepare_local_jvm(job, flink.local_jvm_options, flink.log_dir)
    if log_file is not None:
        print(f"sensorloop {job} job: local MiniCluster log {log_file}", file=sys.stderr, flush=True)
    state = flink.state_dir.rstrip("/")
    config = Configuration()
    config.set_string("pipeline.jars", pipeline_jar_urls(flink.jars_dir))
    config.set_string("python.executable", flink.python_executable or sys.executable)
    config.set_string("python.client.executable", sys.executable)
    config.set_string("python.execution-mode", flink.execution_mode)
    if flink.execution_mode == "thread" and not flink.python_executable:
        # the embedded interpreter needs the venv on its path (a cluster's image sets its own)
        config.set_string("python.pythonpath", os.pathsep.join(p for p in sys.path if p))
    config.set_string("python.fn-execution.bundle.time", str(bundle_timer_ms(flink)))
    config.set_string("python.fn-execution.bundle.size", str(flink.bundle_size))
    config.set_string("execution.buffer-timeout.interval", f"{flink.buffer_timeout_ms} ms")
    config.set_string("execution.checkpointing.interval", f"{flink.checkpoint_interval_ms} ms")
    config.set_string("execution.checkpointing.mode", "EXACTLY_ONCE")
    # aligned barriers: the serving job's sharded layout writes device states at a marker each channel sends
    # just before its barrier, which an unaligned barrier would overtake
    config.set_string("execution.checkpointing.unaligned.enabled", "false")
    config.set_string("execution.checkpointing.dir", state_uri(f"{state}/checkpoints/{job}"))
    config.set_string("execution.checkpointing.savepoint-dir", state_uri(f"{state}/savepoints/{job}"))
    config.set_string("execution.checkpointing.externalized-checkpoint-retention", "RETAIN_ON_CANCELLATION")
    config.set_string("execution.checkpointing.tolerable-failed-checkpoints", str(flink.tolerable_checkpoint_failures))
    # a failure that repeats (a bad dependency, a full disk) backs off instead of stopping the job for good
    config.set_string("restart-strategy.type", "exponential-delay")
    config.set_string("restart-strategy.exponential-delay.initial-backoff", "1 s")
    config.set_string("restart-strategy.exponential-delay.max-backoff", f"{flink.restart_max_backoff_ms} ms")
    config.set_string("restart-strategy.exponential-delay.backoff-multiplier", "2.0")
    config.set_string("restart-strategy.exponential-delay.reset-backoff-threshold", "10 min")
    config.set_string("restart-strategy.exponential-delay.jitter-factor", "0.1")
    config.set_string("restart-strategy.exponential-delay.attempts-before-reset-backoff", str(2**31 - 1))
    if run.rest_port:
        config.set_string("rest.port", str(run.rest_port))
        config.set_string("rest.address", "localhost")
    if run.savepoint_path:
        config.set_string("execution.state-recovery.path", run.savepoint_path)
    config.set_string("taskmanager.memory.process.size", flink.local_taskmanager_memory)
    env = StreamExecutionEnvironment.get_execution_environment(config)
    env.set_parallelism(flink.parallelism)
    env.set_buffer_timeout(flink.buffer_timeout_ms)
    return env
