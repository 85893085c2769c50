"""Scratch space for a local MiniCluster's JVM: one folder per job process, removed when the job is gone.

Flink unpacks its RPC system (a 24 MB jar) and keeps the MiniCluster's working directory in the JVM's
temporary directory, and removes them only when the cluster shuts down cleanly. A job that is killed
(``kill -9``, a supervisor's stop, a test's teardown) left about 33 MB in ``/tmp`` on every start, and a
few hundred starts filled a disk. A local job's JVM therefore gets ``-Djava.io.tmpdir`` pointing at
``<tmp>/sensorloop-jvm-<uid>/<pid of the job's Python process>-<its start time>``: whoever stops the job removes that
folder, and every local job start removes the folders of processes that are gone.

>>> import tempfile
>>> root = Path(tempfile.mkdtemp())
>>> mine = claim_scratch(os.getpid(), root)
>>> mine == scratch_dir(os.getpid(), root) and mine.is_dir()
True
>>> (root / "999999999-5").mkdir()          # a job that was killed and left its folder behind
>>> (root / f"{os.getpid()}-1").mkdir()     # a job that had this process's pid before it
>>> sorted(sweep_orphans(root)) == sorted([999999999, os.getpid()])
True
>>> [p for p in root.iterdir()] == [mine]
True
>>> shutil.rmtree(root)
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from infra.processes import process_alive, process_start

SCRATCH_FOLDER = "sensorloop-jvm"
SCRATCH_ENV = "SENSORLOOP_JVM_SCRATCH"  # the folder a process gave its JVM; its children inherit the name with JVM_ARGS


def scratch_root() -> Path:
    """Where the local jobs' JVM scratch folders of this user live: ``sensorloop-jvm-<uid>`` in the system's
    temp directory (one user's root would refuse another user's jobs their folders)."""
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return Path(tempfile.gettempdir()) / f"{SCRATCH_FOLDER}-{uid}"


def scratch_dir(pid: int, root: Path | None = None, started: str | None = None) -> Path:
    """The scratch folder of the job whose Python process is ``pid``, named ``<pid>-<start time>`` so that a
    later process given the same pid has a folder of its own (``started``: the start time when the process
    may be gone; else it is read now)."""
    started = process_start(pid) if started is None else started
    return (root or scratch_root()) / f"{pid}-{started}"


def remove_scratch(pid: int, root: Path | None = None, started: str | None = None) -> None:
    """Remove the scratch folder of the job ``pid`` (after it ended); nothing if there is none."""
    shutil.rmtree(scratch_dir(pid, root, started), ignore_errors=True)


def _gone(name: str) -> bool:
    pid, _, started = name.partition("-")
    return pid.isdigit() and not (process_alive(int(pid)) and process_start(int(pid)) == started)


def sweep_orphans(root: Path | None = None) -> list[int]:
    """Remove the scratch folders whose process is gone; returns their pids, smallest first."""
    root = root or scratch_root()
    try:
        entries = list(root.iterdir())
    except FileNotFoundError:
        return []
    removed = []
    for entry in entries:
        if entry.is_dir() and _gone(entry.name):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(int(entry.name.partition("-")[0]))
    return sorted(removed)


def claim_scratch(pid: int, root: Path | None = None) -> Path:
    """Sweep the orphans, then create (or reuse) the scratch folder of ``pid`` and return it."""
    sweep_orphans(root)
    folder = scratch_dir(pid, root)
    folder.mkdir(parents=True, exist_ok=True)
    return folder
