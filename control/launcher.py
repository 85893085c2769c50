"""Start and stop a Flink job on its own local MiniCluster, in its own process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

from infra.jvm_scratch import remove_scratch
from infra.processes import process_start
from settings.config import sections


class JobProcess:
    """``python -m <module> <args>`` with its output in ``log_path``; ``stop`` ends it and its JVM."""

    def __init__(self, module: str, args: list[str], log_path: str | os.PathLike[str],
                 env: dict[str, str] | None = None) -> None:
        self.module, self.args, self.log_path, self.env = module, args, Path(log_path), env
        self.process: subprocess.Popen | None = None
        self.started = ""
        self.stopped = False  # its process group was killed: once its pid is free, another process may get it

    def start(self) -> "JobProcess":
        if self.alive():
            raise RuntimeError(f"{self.module} is already running (pid {self.process.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen([sys.executable, "-m", self.module, *self.args], stdout=log,
                                        stderr=subprocess.STDOUT, start_new_session=True, env=self.env)
        self.started = process_start(self.process.pid)  # with the pid, names this process once the pid is reused
        self.stopped = False
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout_s``, to the job's process group; a second stop does nothing."""
        if self.process is None or self.stopped:
            return
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
            except ProcessLookupError:
                pass
        try:  # the JVM and Python workers share the session: make sure none outlives the job
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.stopped = True
        remove_scratch(self.process.pid, started=self.started)  # what a killed JVM leaves in its temp directory

    def log_tail(self, lines: int = 40, only: str | None = None) -> str:
        """The end of the job's output, and of its local MiniCluster's log (which the job names); with
        ``only``, of the log's lines that contain it (``"/operators/"``: what the project's operators said)."""
        try:
            own = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        named = [line.rsplit(" ", 1)[1] for line in own if "local MiniCluster log " in line]
        cluster: list[str] = []
        if named:
            try:
                kept = [line for line in Path(named[-1]).read_text(errors="replace").splitlines()
                        if only is None or only in line]
                cluster = [f"--- {named[-1]} ---"] + kept[-lines:]
            except OSError:
                pass
        return "\n".join(own[-lines:] + cluster)

    def __enter__(self) -> "JobProcess":
        return self if self.alive() else self.start()  # `with JobProcess(...).start():` must not start a second one

    def __exit__(self, *exc) -> None:
        self.stop()


RUN_OPTIONS = ("savepoint_path", "rest_port", "group_id", "stats_file")  # a job's own flags, not settings


def setting_key(name: str) -> str:
    """The ``section.key`` of a keyword option: already dotted, ``registry`` for the registry's path,
    else the one section that has a field of that name.

    >>> setting_key("confidence_threshold"), setting_key("registry"), setting_key("topics.labels")
    ('serving.confidence_threshold', 'registry.path', 'topics.labels')
    """
    if "." in name:
        return name
    if name == "registry":
        return "registry.path"
    owners = [f.name for f in sections() if name in {g.name for g in fields(f.default_factory)}]
    if len(owners) != 1:
        raise ValueError(f"{name!r} names {'no' if not owners else 'more than one'} setting; use section.key")
    return f"{owners[0]}.{name}"


def job_process(job: str, log_path: str | os.PathLike[str], config: str | os.PathLike[str] | None = None,
                env: dict[str, str] | None = None, **options) -> JobProcess:
    """``python -m stream_jobs.<job>_job`` reading ``config`` (else what the environment names), with
    keyword options as ``--set section.key=value`` flags (or the job's own run flags). Without a
    ``config``, the MiniCluster's log goes beside ``log_path`` unless ``log_dir`` says otherwise.

    >>> job_process("serving", "logs/x.log", bootstrap="k:9092", window=16, group_id="g").args
    ['--set', 'broker.bootstrap=k:9092', '--set', 'serving.window=16', '--group-id', 'g', '--set', 'flink.log_dir=logs']
    """
    args = ["--config", str(config)] if config else []
    if not config and "log_dir" not in options:  # the MiniCluster's log beside the job's own
        options["log_dir"] = str(Path(log_path).parent)
    for name, value in options.items():
        if name in RUN_OPTIONS:
            args += ["--" + name.replace("_", "-"), str(value)]
        else:
            text = ("true" if value else "false") if isinstance(value, bool) else str(value)
            args += ["--set", f"{setting_key(name)}={text}"]
    return JobProcess(f"stream_jobs.{job}_job", args, log_path, env)


def serving_job(bootstrap: str, log_path: str | os.PathLike[str], **options) -> JobProcess:
    """The serving job on ``bootstrap`` with keyword options (see :func:`job_process`)."""
    return job_process("serving", log_path, bootstrap=bootstrap, **options)


def learning_job(bootstrap: str, log_path: str | os.PathLike[str], **options) -> JobProcess:
    """The learning job on ``bootstrap`` with keyword options (see :func:`job_process`)."""
    return job_process("learning", log_path, bootstrap=bootstrap, **options)
