"""Start and stop a Flink job (local MiniCluster) in its own process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path


class JobProcess:
    """``python -m <module> <args>`` with its output in ``log_path``; ``stop`` ends it and its JVM."""

    def __init__(self, module: str, args: list[str], log_path: str | os.PathLike[str]) -> None:
        self.module, self.args, self.log_path = module, args, Path(log_path)
        self.process: subprocess.Popen | None = None

    def start(self) -> "JobProcess":
        if self.alive():
            raise RuntimeError(f"{self.module} is already running (pid {self.process.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen([sys.executable, "-m", self.module, *self.args], stdout=log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout_s: float = 20.0) -> None:
        if self.process is None:
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

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def __enter__(self) -> "JobProcess":
        return self if self.alive() else self.start()  # `with JobProcess(...).start():` must not start a second one

    def __exit__(self, *exc) -> None:
        self.stop()


def serving_job(bootstrap: str, log_path: str | os.PathLike[str], **options) -> JobProcess:
    """The serving job with ``--option value`` flags from keyword arguments."""
    args = ["--bootstrap", bootstrap]
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            if value:
                args.append(flag)
        else:
            args += [flag, str(value)]
    return JobProcess("stream_jobs.serving_job", args, log_path)
