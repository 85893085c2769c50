"""The README's demo command, shortened: broker + serving and learning jobs + simulated labelers +
replay with a drift, and a status line that shows it working."""

import re
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.serial]  # fixed-length demo runs: alone on the machine


def test_demo_runs_and_reports(tmp_path, registry_copy):
    result = subprocess.run(
        [sys.executable, "-m", "control.cli", "demo", "--duration", "30", "--rate", "400", "--drain", "8",
         "--interval", "1", "--drift-after-s", "10", "--registry", registry_copy, "--run-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    done = re.search(r"done: (\d+) readings -> (\d+) predictions, (\d+) review requests, (\d+) dead letters, "
                     r"(\d+) labels", result.stdout)
    assert done, result.stdout[-2000:]
    readings, predictions, reviews, dead, labels = map(int, done.groups())
    assert readings >= 30 * 400 * 0.9
    assert predictions > 0.5 * readings / 8  # one prediction per device every 8 readings
    assert dead >= 4  # the demo mixes in bad records every 10 s
    assert re.search(r"latency p50 \d+ ms p99 \d+ ms", result.stdout)
    assert reviews > 0 and labels > 0  # the simulated labelers answered review requests
    assert re.search(r"model v1: accuracy 0\.\d+ on \d+ windows", result.stdout)
    assert "WARNING kafka" not in result.stdout + result.stderr


def test_a_replay_shorter_than_the_jobs_start_is_still_served(tmp_path, registry_copy):
    """Two seconds of replay and one of drain end long before a serving job on a MiniCluster starts: the
    demo keeps watching (``--start-timeout``) until the job has predicted the backlog Kafka kept for it,
    instead of reporting no prediction (or stopping the job at its first)."""
    result = subprocess.run(
        [sys.executable, "-m", "control.cli", "demo", "--duration", "2", "--rate", "400", "--drain", "3",
         "--devices", "4", "--no-learning", "--drift-after-s", "0", "--registry", registry_copy,
         "--run-dir", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    done = re.search(r"done: (\d+) readings -> (\d+) predictions", result.stdout)
    assert done, result.stdout[-2000:]
    readings, predictions = map(int, done.groups())
    assert readings >= 2 * 400 * 0.9 and predictions > 0.5 * readings / 8, result.stdout[-2000:]
