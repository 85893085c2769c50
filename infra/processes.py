"""Whether a process is still there (the stack's broker, a killed job's scratch folder)."""

from __future__ import annotations

import os


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
