"""One configuration path: a value in a TOML file changes what the serving job does however it is
started — ``sensorloop serve``, ``sensorloop demo``, ``sensorloop job submit`` and the way a
FlinkDeployment starts it (``python -m stream_jobs.serving_job`` with ``$SENSORLOOP_CONFIG`` and no
flags). The file renames the readings, predictions and review topics and sets the review settings so
that every window goes to review (audit rate 1.0, threshold 0.99; the defaults send a few percent)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from control.launcher import JobProcess
from infra.broker import EmbeddedBroker, ensure_topics, free_port
from infra.kafka_tools import produce, read_until
from settings import load_config
from tests.e2e.helpers import encoded, expected_window_ends, replayed_readings

pytestmark = [pytest.mark.e2e, pytest.mark.serial]  # fixed-length demo runs: alone on the machine
WINDOW, STRIDE = 32, 8


def write_config(tmp_path: Path, way: str, bootstrap: str, registry: str) -> Path:
    path = tmp_path / f"{way}.toml"
    path.write_text(f"""
[broker]
bootstrap = "{bootstrap}"
[registry]
path = "{registry}"
[topics]
readings = "readings-{way}"
predictions = "predictions-{way}"
review_requests = "reviews-{way}"
[flink]
state_dir = "{tmp_path / way / 'flink'}"
log_dir = "{tmp_path / way / 'logs'}"
[stack]
run_dir = "{tmp_path / way / 'stack'}"
[serving]
window = {WINDOW}
stride = {STRIDE}
confidence_threshold = 0.99
audit_rate = 1.0
review_budget_per_minute = 100000
""")
    return path


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENSORLOOP_")}
    return {**env, **extra}


def served(bootstrap: str, config: Path, at_least: int, job: JobProcess | None = None) -> tuple[list, list]:
    """Predictions and review requests on the file's topics, once ``at_least`` predictions came."""
    topics = load_config(config, env={}).topics

    def done(records):
        if job is not None and not job.alive():
            raise AssertionError("job died:\n" + job.log_tail(40))
        predictions = sum(r.topic == topics.predictions for r in records)
        return predictions >= at_least and len(records) - predictions >= 0.9 * predictions

    records = read_until(bootstrap, [topics.predictions, topics.review_requests], done, 240)
    return ([r for r in records if r.topic == topics.predictions],
            [r for r in records if r.topic == topics.review_requests])


def assert_configured_behaviour(predictions: list, reviews: list, expected: int) -> None:
    assert len(predictions) >= expected
    assert len(reviews) >= 0.9 * len(predictions), (len(reviews), len(predictions))  # the defaults: a few percent


def feed(bootstrap: str, config: Path) -> int:
    topics = load_config(config, env={}).topics
    ensure_topics(bootstrap, topics)
    readings = replayed_readings(n_devices=2, per_device=64)
    produce(bootstrap, topics.readings, encoded(readings))
    return len(expected_window_ends(readings, WINDOW, STRIDE))


def cli(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "control.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_a_toml_value_reaches_the_serving_job_however_it_starts(tmp_path, trained_registry):
    with EmbeddedBroker(log_path=tmp_path / "broker.log") as broker:
        bootstrap = broker.bootstrap

        # 1. sensorloop serve (foreground; extra flags go to the job)
        config = write_config(tmp_path, "serve", bootstrap, trained_registry)
        expected = feed(bootstrap, config)
        with JobProcess("control.cli", ["--config", str(config), "serve", "--group-id", "serve-path"],
                        tmp_path / "serve.log", clean_env()) as job:
            assert_configured_behaviour(*served(bootstrap, config, expected, job), expected)

        # 2. sensorloop job submit --local (the job reads a file written for the submission)
        config = write_config(tmp_path, "submit", bootstrap, trained_registry)
        expected = feed(bootstrap, config)
        port = free_port()
        out = cli("--config", str(config), "job", "submit", "serving", "--local", "--rest-port", str(port),
                  "--wait-running", env=clean_env())
        assert out.returncode == 0, out.stdout + out.stderr
        try:
            assert_configured_behaviour(*served(bootstrap, config, expected), expected)
        finally:
            cli("--config", str(config), "job", "cancel", "serving", "--jobmanager", f"localhost:{port}",
                env=clean_env(), timeout=60)

        # 3. as a FlinkDeployment starts it: no flags, the file named by $SENSORLOOP_CONFIG
        config = write_config(tmp_path, "deployment", bootstrap, trained_registry)
        expected = feed(bootstrap, config)
        with JobProcess("stream_jobs.serving_job", [], tmp_path / "deployment.log",
                        clean_env(SENSORLOOP_CONFIG=str(config))) as job:
            assert_configured_behaviour(*served(bootstrap, config, expected, job), expected)
        logs = list((tmp_path / "deployment" / "logs").glob("flink-sensorloop-serving-*.log"))
        assert logs and logs[0].stat().st_size > 0  # the MiniCluster's log, in a file of its own

        # 4. sensorloop demo (its own replay; serving only)
        config = write_config(tmp_path, "demo", bootstrap, trained_registry)
        ensure_topics(bootstrap, load_config(config, env={}).topics)
        out = cli("--config", str(config), "demo", "--duration", "15", "--rate", "200", "--drain", "5",
                  "--no-learning", "--drift-after-s", "0", "--run-dir", str(tmp_path / "demo" / "run"),
                  env=clean_env(), timeout=300)
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
        predictions, reviews = served(bootstrap, config, 50)
        assert_configured_behaviour(predictions, reviews, 50)
