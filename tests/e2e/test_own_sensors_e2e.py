"""A user's own sensors, driven only through the CLI and one TOML file, on a second real dataset
(PickupGestureWiimoteZ: one accelerometer channel, ten gestures, where BasicMotions has six channels
and four activities): import a CSV → train v1 → replay it through the real jobs → reviews answered by
simulated labelers → the learning job publishes a new version → serving swaps to it."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.unit.test_recordings import wiimote_csv

pytestmark = [pytest.mark.e2e, pytest.mark.serial]  # fixed-length demo runs: alone on the machine


def cli(config, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "control.cli", "--config", str(config), *args],
                          capture_output=True, text=True, timeout=timeout)


def project(tmp_path):
    """The Wiimote recordings as a user's CSV, and a TOML file that declares their model."""
    model, csv_path = wiimote_csv(tmp_path)
    config = tmp_path / "sensorloop.toml"
    config.write_text(f"""
[registry]
path = "{tmp_path / 'registry'}"
model_name = "wiimote"

[data]
dir = "{tmp_path / 'datasets'}"

[learning]
gate_every = 16
min_holdout = 16

[models.wiimote]
channels = ["acc_z"]
units = ["g"]
sample_rate_hz = 100
window = "0.32s"
stride = 8
classes = {list(model.classes)!r}
d_model = 32
d_ff = 64
""".replace("'", '"'))
    return config, csv_path


def run_demo(config, tmp_path, seconds: int) -> str:
    """``sensorloop demo --dataset wii`` at twice the recorded speed; its output."""
    demo = cli(config, "demo", "--dataset", "wii", "--speed", "2", "--duration", str(seconds), "--drain", "8",
               "--interval", "2", "--run-dir", str(tmp_path / "demo"), timeout=400)
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    return demo.stdout


def demo_figures(out: str) -> tuple[dict, dict[int, float]]:
    done = re.search(r"done: (\d+) readings -> (\d+) predictions, (\d+) review requests, (\d+) dead letters, "
                     r"(\d+) labels", out)
    assert done, out[-3000:]
    figures = dict(zip(("readings", "predictions", "reviews", "dead", "labels"), map(int, done.groups())))
    versions = {int(v): float(a) for v, a in re.findall(r"model v(\d+): accuracy (\d\.\d+) on \d+ windows", out)}
    return figures, versions


def test_own_sensors_from_a_csv_to_a_served_learning_model(tmp_path):
    config, csv_path = project(tmp_path)
    check = cli(config, "config", "check")
    assert check.returncode == 0, check.stdout + check.stderr
    imported = cli(config, "data", "import", csv_path, "--dataset", "wii")
    assert imported.returncode == 0 and "imported dataset wii" in imported.stdout, imported.stdout + imported.stderr
    trained = cli(config, "train", "--dataset", "wii", "--epochs", "10")
    assert trained.returncode == 0, trained.stdout + trained.stderr
    assert "split by device" in trained.stdout and "published wiimote v1" in trained.stdout
    v1_accuracy = float(re.search(r"accuracy (\d\.\d+) on \d+ windows", trained.stdout).group(1))
    assert v1_accuracy > 0.2  # ten classes: chance is 0.1
    out = run_demo(config, tmp_path, 60)
    assert "replaying dataset wii: 10 device(s) at 2x recorded speed (2000 readings/s)" in out
    figures, versions = demo_figures(out)
    assert figures["predictions"] > 0.5 * figures["readings"] / 8 and figures["reviews"] > 0 and figures["labels"] > 0
    assert 1 in versions and max(versions) >= 2, out[-2000:]  # learned from the answers, and the new version served
    print(f"wiimote: v1 held-out accuracy {v1_accuracy}; served per version {versions}; {figures['labels']} labels")


def test_cold_start_no_trained_version_and_a_first_one_from_the_answers(tmp_path):
    """No labeled data for the model: serving starts with version 0 (every class equally likely, every
    window unsure), review requests flow within the budget, simulated labelers answer them from the
    replayed ground truth, and the learning job publishes v1 once it beats the majority class on
    held-out answers; serving then swaps to it."""
    from model.registry import ModelRegistry

    config, csv_path = project(tmp_path)
    imported = cli(config, "data", "import", csv_path, "--dataset", "wii")  # replayed only: nothing is trained
    assert imported.returncode == 0, imported.stdout + imported.stderr
    out = run_demo(config, tmp_path, 75)
    assert "cold start: wiimote has no trained version" in out
    figures, versions = demo_figures(out)
    assert 0 in versions and max(versions) >= 1, out[-2000:]  # served untrained first, then learned versions
    first = ModelRegistry(str(tmp_path / "registry")).metadata("wiimote", 1)
    assert first.parent_version is None and "cold start" in first.note and "majority class" in first.note
    print(f"cold start: v1 after {first.data_seen} answers ({first.note}); served per version {versions}; "
          f"{figures['labels']} labels in all")
