"""Whether a process is still there (the stack's broker, a killed job's scratch folder)."""

from __future__ import annotations

import os
from pathlib import Path


def process_alive(pid: int | None) -> bool:
    """True while a process ``pid`` exists (one of another user counts as alive); False for no pid.

    >>> process_alive(os.getpid()), process_alive(None)
    (True, False)
    """
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def process_start(pid: int) -> str:
    """When process ``pid`` started, in clock ticks since boot (Linux ``/proc``; "" where unknown): with the pid,
    it names one process, not whichever later process reuses the pid.

    >>> process_start(os.getpid()) == process_start(os.getpid()) != ""
    True
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]
