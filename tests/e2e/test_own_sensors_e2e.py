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

pytestmark = pytest.mark.e2e


def cli(config, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "control.cli", "--config", str(config), *args],
                          capture_output=True, text=True, timeout=timeout)


def test_own_sensors_from_a_csv_to_a_served_learning_model(tmp_path):
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
    check = cli(config, "config", "check")
    assert check.returncode == 0, check.stdout + check.stderr
    imported = cli(config, "data", "import", csv_path, "--dataset", "wii")
    assert imported.returncode == 0 and "imported dataset wii" in imported.stdout, imported.stdout + imported.stderr
    trained = cli(config, "train", "--dataset", "wii", "--epochs", "10")
    assert trained.returncode == 0, trained.stdout + trained.stderr
    assert "split by device" in trained.stdout and "published wiimote v1" in trained.stdout
    v1_accuracy = float(re.search(r"accuracy (\d\.\d+) on \d+ windows", trained.stdout).group(1))
    assert v1_accuracy > 0.2  # ten classes: chance is 0.1
    demo = cli(config, "demo", "--dataset", "wii", "--speed", "2", "--duration", "60", "--drain", "8",
               "--interval", "2", "--run-dir", str(tmp_path / "demo"), timeout=400)
    out = demo.stdout
    assert demo.returncode == 0, out[-3000:] + demo.stderr[-3000:]
    assert "replaying dataset wii: 10 device(s) at 2x recorded speed (2000 readings/s)" in out
    done = re.search(r"done: (\d+) readings -> (\d+) predictions, (\d+) review requests, (\d+) dead letters, "
                     r"(\d+) labels", out)
    readings, predictions, reviews, dead, labels = map(int, done.groups())
    assert predictions > 0.5 * readings / 8 and reviews > 0 and labels > 0
    versions = {int(v): float(a) for v, a in re.findall(r"model v(\d+): accuracy (\d\.\d+) on \d+ windows", out)}
    assert 1 in versions and max(versions) >= 2, out[-2000:]  # learned from the answers, and the new version served
    print(f"wiimote: v1 held-out accuracy {v1_accuracy}; served per version {versions}; {labels} labels")
