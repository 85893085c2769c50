"""Learning benchmark on river's drifting synthetic streams: the same online learner sensorloop's
learning job runs (replay reservoir, confidence-routed labels within a label fraction) against river's
ARF and Hoeffding Adaptive Tree, prequentially, on the same samples.

Streams (river.datasets.synth, seeded): SEA with an abrupt concept change (variant 0 -> 3), Hyperplane
with continuous drift, RandomRBFDrift (moving centroids), Agrawal with a concept change (function 0 -> 2).
Each learner gets the same first ``--warmup`` labeled samples, then predicts every sample before it
may learn from it. sensorloop's network is the WindowTransformer with a window of one step and the
stream's features as channels (normalisation from the warm-up); labels go to the least confident
samples (plus a small audit share), at most ``fraction`` of them; river learners get a random sample of
the same fraction, and every label.

Run: ``python bench/synthetic_learning_bench.py [--samples 6000]``; writes bench/results/synthetic_learning.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import print_table, save  # noqa: E402
from bench.learning_bench import accuracies, run_ours, run_river  # noqa: E402
from model.network import WindowTransformer  # noqa: E402
from model.spec import ModelSpec  # noqa: E402
from model.train import encode_labels, fit  # noqa: E402


def streams(n: int) -> dict:
    """name -> (river dataset iterator, index of the concept change or None for continuous drift)."""
    from river.datasets import synth

    half = n // 2
    return {
        "SEA, abrupt change": (synth.ConceptDriftStream(synth.SEA(seed=1, variant=0), synth.SEA(seed=2, variant=3),
                                                        position=half, width=50, seed=1), half),
        "Hyperplane, continuous": (synth.Hyperplane(seed=1, n_features=10, n_drift_features=5, mag_change=0.001,
                                                    noise_percentage=0.05), half),
        "RandomRBFDrift": (synth.RandomRBFDrift(seed_model=1, seed_sample=1, n_classes=3, n_features=10,
                                                n_centroids=30, change_speed=0.001, n_drift_centroids=30), half),
        "Agrawal, abrupt change": (synth.ConceptDriftStream(synth.Agrawal(classification_function=0, seed=1),
                                                            synth.Agrawal(classification_function=2, seed=2),
                                                            position=half, width=50, seed=1), half),
    }


def take(dataset, n: int) -> tuple[list[dict], list[str]]:
    xs, ys = [], []
    for x, y in dataset.take(n):
        xs.append({k: float(v) for k, v in x.items()})
        ys.append(str(int(y)))
    return xs, ys


def warm_net(spec: ModelSpec, X: np.ndarray, y: list[str]) -> WindowTransformer:
    torch.manual_seed(0)
    net = WindowTransformer(spec)
    net.set_normalisation(X)
    fit(net, X, encode_labels(y, spec.classes), epochs=30, seed=0)
    return net


def main() -> None:
    from river import forest, tree

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=6000)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--fractions", default="0.05,0.1,1.0")
    args = parser.parse_args()
    torch.set_num_threads(1)
    fractions = [float(f) for f in args.fractions.split(",")]
    results, table = {}, []
    for name, (dataset, change_at) in streams(args.warmup + args.samples).items():
        xs, ys = take(dataset, args.warmup + args.samples)
        keys = sorted(xs[0])
        matrix = np.asarray([[x[k] for k in keys] for x in xs], np.float32)[:, None, :]  # [n, window 1, features]
        classes = tuple(sorted(set(ys), key=int))
        spec = ModelSpec(window=1, channels=tuple(keys), classes=classes, d_model=32, n_heads=2, n_layers=1,
                         d_ff=64, dropout=0.0)
        w = args.warmup
        net0 = warm_net(spec, matrix[:w], ys[:w])
        drift_at = change_at - w
        rows = []
        for fraction in fractions:
            started = time.perf_counter()
            hits, labeled, _ = run_ours(net0, spec, matrix[w:], ys[w:], fraction)
            rows.append(["sensorloop (Transformer, replay)", f"{fraction:.2f}", labeled, *accuracies(hits, drift_at),
                         f"{time.perf_counter() - started:.1f}"])
        baselines = {"river ARF": lambda: forest.ARFClassifier(n_models=10, seed=0),
                     "river HAT": lambda: tree.HoeffdingAdaptiveTreeClassifier(seed=0)}
        for base, factory in baselines.items():
            for fraction in (0.1, 1.0):
                started = time.perf_counter()
                hits, labeled = run_river(factory, xs[:w], ys[:w], xs[w:], ys[w:], fraction)
                rows.append([base, f"{fraction:.2f}", labeled, *accuracies(hits, drift_at),
                             f"{time.perf_counter() - started:.1f}"])
        print_table(f"{name}: prequential accuracy on {args.samples} samples (change at {drift_at})",
                    ["learner", "label fraction", "labeled", "overall", "100 after change", "last sixth", "seconds"],
                    rows)
        results[name] = rows
        table.append(name)
    save("synthetic_learning", {"args": vars(args), "results": results})


if __name__ == "__main__":
    main()
