"""``JobProcess``: a job in its own process group, whose stop signals that group once."""

from __future__ import annotations

import os

from control.launcher import JobProcess


def test_a_second_stop_signals_no_process_group(tmp_path, monkeypatch):
    """Once a job's process is reaped its pid is free: a later stop must not signal whichever process
    group a new process with that pid leads."""
    job = JobProcess("http.server", ["0", "--bind", "127.0.0.1"], tmp_path / "job.log").start()
    assert job.alive() and job.started
    job.stop()
    assert job.process.poll() is not None and not job.alive()
    sent = []
    monkeypatch.setattr(os, "killpg", lambda *args: sent.append(args))
    job.stop()
    assert sent == []
