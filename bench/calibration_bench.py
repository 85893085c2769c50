"""Calibration on people the model never saw: expected calibration error (ECE) before and after the
temperature, and after the temperature with one bias per class (``learning.calibration =
"temperature_bias"``), and what ``"auto"`` chooses (``model.calibration.biases_help``), next to the ECE a
perfectly calibrated model reaches by chance on as many windows (``model.calibration.ece_noise``, 95th
percentile).

PickupGestureWiimoteZ as in the label-efficiency benchmark: a first model trained on devices 0-3, scored
on the windows of devices 4-9 (896 windows; also their first 285, the size of a held-out set in the README
earlier). Everything cross-fitted the way versions are (``model.calibration.calibrate``).

Run: ``python bench/calibration_bench.py [--seeds 3]``; writes bench/results/calibration.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import print_table, save  # noqa: E402
from bench.label_efficiency_bench import wiimote_stream  # noqa: E402
from model.calibration import biases_help, calibrate, class_bias_of  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows, results = [], []
    for seed in range(args.seeds):
        spec, net, _, _, X, y = wiimote_stream(seed)
        with torch.inference_mode():
            logits = net.eval()(torch.as_tensor(X)).numpy()
        for n in (285, len(y)):
            plain, biased = calibrate(logits[:n], y[:n]), calibrate(logits[:n], y[:n], "temperature_bias")
            bias = class_bias_of(biased, spec.n_classes)
            accuracy = float((logits[:n].argmax(1) == y[:n]).mean())
            accuracy_biased = float((logits[:n] / biased["temperature"] + bias).argmax(1).__eq__(y[:n]).mean())
            auto = biases_help(logits[:n], y[:n])  # learning.calibration = "auto"
            chosen = biased if auto else plain
            rows.append([seed, n, f"{accuracy:.3f}", f"{plain['ece_before']:.3f}", f"{plain['ece_after']:.3f}",
                         f"{plain['ece_noise']:.3f}", f"{biased['ece_after']:.3f}", f"{biased['ece_noise']:.3f}",
                         f"{accuracy_biased:.3f}", "biases" if auto else "temperature", f"{chosen['ece_after']:.3f}"])
            results.append({"seed": seed, "windows": n, "accuracy": accuracy, "ece_before": plain["ece_before"],
                            "ece_temperature": plain["ece_after"], "ece_noise_temperature": plain["ece_noise"],
                            "ece_temperature_bias": biased["ece_after"],
                            "ece_noise_temperature_bias": biased["ece_noise"],
                            "accuracy_with_bias": accuracy_biased, "auto_chose_biases": auto,
                            "ece_auto": chosen["ece_after"]})
    print_table("Wiimote, six unseen people: ECE (10 bins, cross-fitted)",
                ["seed", "windows", "accuracy", "ECE uncalibrated", "ECE temperature", "its chance level (95th pct.)",
                 "ECE temperature + bias", "its chance level", "accuracy with the biases", "auto chose",
                 "ECE auto"], rows)
    save("calibration", {"seeds": args.seeds, "rows": results})


if __name__ == "__main__":
    main()
