"""Submit the serving and learning jobs to a Flink cluster with ``flink run`` of the installed PyFlink.

The job reads the configuration from a file written for the submission (``--config``), so what runs
on a cluster is what ``sensorloop config show`` prints. Local paths (registry, state) are made
absolute: the TaskManagers do not share this shell's working directory.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from infra.flink_cluster import flink_cli
from settings import Config, to_toml

JOB_MODULES = {"serving": "stream_jobs.serving_job", "learning": "stream_jobs.learning_job"}
SUBMITTED = re.compile(r"Job has been submitted with JobID ([0-9a-f]{32})")


class SubmitError(RuntimeError):
    """``flink run`` did not submit the job; the message carries the reason from its output."""


def _local_or_url(location: str) -> str:
    return location if "://" in location else str(Path(location).resolve())


def for_cluster(cfg: Config, bootstrap: str) -> Config:
    """``cfg`` with the broker resolved and local paths made absolute: the job's client and its
    TaskManagers do not share this shell's working directory.

    >>> for_cluster(Config(), "kafka:9092").registry.path.startswith("/")
    True
    """
    paths = {"registry.path": cfg.registry.path, "flink.state_dir": cfg.flink.state_dir,
             "flink.log_dir": cfg.flink.log_dir}
    if cfg.flink.jars_dir:
        paths["flink.jars_dir"] = cfg.flink.jars_dir
    return cfg.with_values({**{k: _local_or_url(v) for k, v in paths.items()}, "broker.bootstrap": bootstrap},
                           origin="submission")


def job_environment(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a submitted job's process: without ``SENSORLOOP_*`` settings, which the
    job's configuration file already holds (they would otherwise win over it, flags included)."""
    environ = dict(os.environ if environ is None else environ)
    return {k: v for k, v in environ.items() if not k.startswith("SENSORLOOP_")}


def write_job_config(job: str, cfg: Config, bootstrap: str, folder: Path | None = None) -> Path:
    """The configuration a submitted job reads, as a TOML file in ``folder`` (default ``stack.run_dir``/jobs):
    what ``sensorloop config show`` prints, with the broker resolved and paths absolute."""
    folder = (folder or Path(cfg.stack.run_dir) / "jobs").resolve()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{job}-{time.strftime('%Y%m%d-%H%M%S')}-{time.time_ns() % 1_000_000:06d}.toml"
    path.write_text(to_toml(for_cluster(cfg, bootstrap)))
    return path


@dataclass(frozen=True)
class Submission:
    job: str
    job_id: str
    command: list[str]


def flink_run_command(job: str, cfg: Config, config_file: Path, jobmanager: str,
                      savepoint: str | None = None) -> list[str]:
    """``flink run -m <jobmanager> -d [-s <savepoint>] -pym <module> --config <file>``."""
    address = jobmanager.removeprefix("http://").removeprefix("https://").rstrip("/")
    command = [str(flink_cli()), "run", "-m", address, "-d"]
    if savepoint:
        command += ["-s", savepoint]
    return command + ["-pyclientexec", sys.executable, "-pyexec", cfg.flink.python_executable or sys.executable,
                      "-pym", JOB_MODULES[job], "--config", str(config_file)]


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
    """Run ``flink run`` detached with the job's configuration file; returns the job id the cluster gave it."""
    if job not in JOB_MODULES:
        raise ValueError(f"unknown job {job!r}: one of {', '.join(JOB_MODULES)}")
    command = flink_run_command(job, cfg, write_job_config(job, cfg, bootstrap), jobmanager, savepoint)
    result = subprocess.run(command, capture_output=True, text=True, env=job_environment(env), timeout=timeout_s)
    output = result.stdout + result.stderr
    found = SUBMITTED.search(output)
    if result.returncode != 0 or not found:
        raise SubmitError(f"flink run of the {job} job failed (exit {result.returncode}):\n{explain_failure(output)}")
    return Submission(job, found.group(1), command)
