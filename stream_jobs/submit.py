"""Submit the serving and learning jobs to a Flink cluster with ``flink run`` of the installed PyFlink.

The job's flags come from the configuration (``stream_jobs.config``), so what runs on a cluster is
what ``sensorloop config show`` prints. Local paths (registry, state) are made absolute: the
TaskManagers do not share this shell's working directory.
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass, fields
from pathlib import Path

from infra.flink_cluster import flink_cli
from operators.config import ServingConfig
from operators.learning import LearningConfig
from stream_jobs.config import Config

JOB_MODULES = {"serving": "stream_jobs.serving_job", "learning": "stream_jobs.learning_job"}
SUBMITTED = re.compile(r"Job has been submitted with JobID ([0-9a-f]{32})")


class SubmitError(RuntimeError):
    """``flink run`` did not submit the job; the message carries the reason from its output."""


def _local_or_url(location: str) -> str:
    return location if "://" in location else str(Path(location).resolve())


def _flags(obj, names) -> list[str]:
    out: list[str] = []
    for name in names:
        value = getattr(obj, name)
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            out += [flag] if value else []
        else:
            out += [flag, str(value)]
    return out


def job_arguments(job: str, cfg: Config, bootstrap: str) -> list[str]:
    """The job module's command line for this configuration.

    >>> args = job_arguments("serving", Config(), "kafka:9092")
    >>> args[:2], args[args.index("--max-batch") + 1]
    (['--bootstrap', 'kafka:9092'], '64')
    """
    if job not in JOB_MODULES:
        raise ValueError(f"unknown job {job!r}: one of {', '.join(JOB_MODULES)}")
    flink = cfg.flink
    state = flink.state_dir.rstrip("/")
    common = ["--parallelism", str(flink.parallelism), "--checkpoint-interval-ms", str(flink.checkpoint_interval_ms),
              "--checkpoint-dir", _local_or_url(f"{state}/checkpoints/{job}"),
              "--savepoint-dir", _local_or_url(f"{state}/savepoints/{job}"),
              "--bundle-time-ms", str(flink.bundle_time_ms), "--buffer-timeout-ms", str(flink.buffer_timeout_ms),
              "--restart-attempts", str(flink.restart_attempts)]
    common += ["--exactly-once"] if flink.exactly_once else []
    common += ["--python-executable", flink.python_executable] if flink.python_executable else []
    if job == "serving":
        serving = cfg.serving_config()
        own = [f.name for f in fields(ServingConfig) if f.name not in ("registry", "stats_file")]
        return (["--bootstrap", bootstrap, "--registry", _local_or_url(serving.registry)]
                + _flags(serving, own) + common + ["--execution-mode", flink.execution_mode])
    learning = cfg.learning
    return (["--bootstrap", bootstrap, "--registry", _local_or_url(cfg.registry.path),
             "--model-name", cfg.registry.model_name, "--label-ttl-ms", str(learning.label_ttl_ms),
             "--answers-needed", str(learning.answers_needed)]
            + _flags(learning, [f.name for f in fields(LearningConfig)]) + common)


@dataclass(frozen=True)
class Submission:
    job: str
    job_id: str
    command: list[str]


def flink_run_command(job: str, cfg: Config, bootstrap: str, jobmanager: str,
                      savepoint: str | None = None) -> list[str]:
    """``flink run -m <jobmanager> -d [-s <savepoint>] -pym <module> <flags>``."""
    address = jobmanager.removeprefix("http://").removeprefix("https://").rstrip("/")
    command = [str(flink_cli()), "run", "-m", address, "-d"]
    if savepoint:
        command += ["-s", savepoint]
    command += ["-pyclientexec", sys.executable, "-pyexec", cfg.flink.python_executable or sys.executable,
                "-pym", JOB_MODULES[job], *job_arguments(job, cfg, bootstrap)]
    return command


def explain_failure(output: str) -> str:
    """The lines of ``flink run`` output that say why, without the Java stack frames."""
    lines = [line for line in output.splitlines() if line.strip() and not line.lstrip().startswith("at ")
             and " INFO " not in line]
    causes = [line for line in lines if line.startswith(("Caused by", "Error", "ERROR", "Traceback"))
              or "Exception" in line or "Error:" in line]
    picked = causes[-6:] or lines[-6:]
    return "\n".join(picked)


def submit(job: str, cfg: Config, bootstrap: str, jobmanager: str, savepoint: str | None = None,
           env: dict[str, str] | None = None, timeout_s: float = 300.0) -> Submission:
    """Run ``flink run`` detached; returns the job id the cluster gave the job."""
    command = flink_run_command(job, cfg, bootstrap, jobmanager, savepoint)
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout_s)
    output = result.stdout + result.stderr
    found = SUBMITTED.search(output)
    if result.returncode != 0 or not found:
        raise SubmitError(f"flink run of the {job} job failed (exit {result.returncode}):\n{explain_failure(output)}")
    return Submission(job, found.group(1), command)
