"""Learning benchmark: prequential accuracy vs fraction of windows labeled, against river baselines.

Stream: BasicMotions test recordings cut into windows (32 x 6, stride 8), several shuffled passes,
with a +2.0 gyroscope calibration bias from the middle on. Every window is first predicted
(prequential), then maybe learned from:
- sensorloop: the bootstrap Transformer (trained on the train split) learning online (replay
  reservoir, EWC) from the windows the review router picks (lowest confidence first, plus a
  small audit sample), capped at the label fraction;
- river ARF and Hoeffding Adaptive Tree on per-channel window features (mean, std, min, max),
  warm-started on the same train split, learning from a random sample of the same fraction,
  and from every label.
Also: labeled windows per second the online trainer sustains.

Run: ``python bench/learning_bench.py [--passes 3]``; writes bench/results/learning.{json,png}.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import RESULTS, line_plot, print_table, save  # noqa: E402
from model.datasets import load_basic_motions, sliding_windows  # noqa: E402
from model.network import WindowTransformer  # noqa: E402
from model.online import OnlineTrainer  # noqa: E402
from settings import LearningSettings  # noqa: E402
from model.spec import ModelSpec  # noqa: E402
from model.train import encode_labels, fit  # noqa: E402


def stream(passes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, int]:
    X, y = sliding_windows(load_basic_motions("test"), 32, 8)
    rng = np.random.default_rng(seed)
    order = np.concatenate([rng.permutation(len(X)) for _ in range(passes)])
    Xs, ys = X[order].copy(), y[order]
    drift_at = len(Xs) // 2
    Xs[drift_at:, :, 3:] += 2.0
    return Xs, ys, drift_at


def features(X: np.ndarray) -> list[dict]:
    f = np.concatenate([X.mean(1), X.std(1), X.min(1), X.max(1)], axis=1)
    return [{f"f{i}": float(v) for i, v in enumerate(row)} for row in f]


def bootstrap_net(spec: ModelSpec) -> WindowTransformer:
    X, labels = sliding_windows(load_basic_motions("train"), spec.window, 4)
    net = WindowTransformer(spec)
    net.set_normalisation(X)
    fit(net, X, encode_labels(labels, spec.classes), epochs=25, seed=0)
    return net


def run_ours(net0, spec, X, y, fraction: float, threshold: float = 0.9) -> tuple[np.ndarray, int, float]:
    import copy

    net = copy.deepcopy(net0)
    trainer = OnlineTrainer(net, spec.n_classes, LearningSettings(lr=2e-3, batch_size=8, replay_ratio=1.0,
                                                              ewc_strength=0.0, reservoir_capacity=500))
    yi = encode_labels(y, spec.classes)
    hits = np.zeros(len(X))
    labeled, budget, learn_s = 0, 0.0, 0.0
    rng = np.random.default_rng(1)
    for i in range(len(X)):
        with torch.inference_mode():
            probs = torch.softmax(net.eval()(torch.as_tensor(X[i:i + 1])), -1).numpy()[0]
        hits[i] = probs.argmax() == yi[i]
        budget = min(budget + fraction, 8.0)  # a token bucket: at most `fraction` of windows labeled
        wanted = fraction >= 1.0 or probs.max() < threshold or rng.random() < 0.02
        if wanted and budget >= 1.0:
            budget -= 1.0
            labeled += 1
            started = time.perf_counter()
            trainer.learn_one(X[i], int(yi[i]))
            learn_s += time.perf_counter() - started
    return hits, labeled, labeled / learn_s if learn_s else float("nan")


def run_river(model_factory, Xtrain_f, ytrain, X_f, y, fraction: float) -> tuple[np.ndarray, int]:
    model = model_factory()
    for x, label in zip(Xtrain_f, ytrain):
        model.learn_one(x, label)
    rng = np.random.default_rng(2)
    hits = np.zeros(len(X_f))
    labeled = 0
    for i, (x, label) in enumerate(zip(X_f, y)):
        hits[i] = model.predict_one(x) == label
        if fraction >= 1.0 or rng.random() < fraction:
            model.learn_one(x, label)
            labeled += 1
    return hits, labeled


def accuracies(hits: np.ndarray, drift_at: int) -> list[str]:
    """Overall, first 100 windows after the drift, and the last sixth of the stream."""
    return [f"{hits.mean():.3f}", f"{hits[drift_at:drift_at + 100].mean():.3f}", f"{hits[-len(hits) // 6:].mean():.3f}"]


def main() -> None:
    from river import forest, tree

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--fractions", default="0.05,0.1,0.25,1.0")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    spec = ModelSpec()
    X, y, drift_at = stream(args.passes)
    net0 = bootstrap_net(spec)
    Xtr, ytr = sliding_windows(load_basic_motions("train"), 32, 8)
    Xtr_f, X_f = features(Xtr), features(X)
    rows, curves = [], {}
    fractions = [float(f) for f in args.fractions.split(",")]
    for fraction in fractions:
        hits, labeled, rate = run_ours(net0, spec, X, y, fraction)
        rows.append(["sensorloop (Transformer, replay)", f"{fraction:.2f}", labeled, *accuracies(hits, drift_at),
                     f"{rate:,.0f}"])
        curves[f"sensorloop {int(fraction * 100)}% labeled"] = hits
    baselines = {"river ARF": lambda: forest.ARFClassifier(n_models=10, seed=0),
                 "river HAT": lambda: tree.HoeffdingAdaptiveTreeClassifier(seed=0)}
    for name, factory in baselines.items():
        for fraction in (0.1, 1.0):
            hits, labeled = run_river(factory, Xtr_f, list(ytr), X_f, list(y), fraction)
            rows.append([name + " (window features)", f"{fraction:.2f}", labeled, *accuracies(hits, drift_at), "-"])
            curves[f"{name} {int(fraction * 100)}% labeled"] = hits
    print_table(f"Prequential accuracy on {len(X)} BasicMotions windows, gyroscope drift at window {drift_at}",
                ["learner", "label fraction", "labeled", "overall", "100 windows after drift", "last sixth",
                 "labels/s learned"],
                rows)
    save("learning", {"windows": len(X), "drift_at": drift_at,
                      "rows": rows})
    try:
        window = 60
        kernel = np.ones(window) / window
        chosen = [k for k in curves if k.endswith("10% labeled") or k.endswith("100% labeled")]
        series = [(k, list(range(window - 1, len(X))), list(np.convolve(curves[k], kernel, "valid")), {})
                  for k in chosen]
        line_plot(RESULTS / "learning.png", series, "window (drift in the middle)",
                  f"accuracy (rolling {window})", "Prequential accuracy over time")
        print(f"plot: {RESULTS / 'learning.png'}")
    except ImportError:
        print("matplotlib not installed: no plot")


if __name__ == "__main__":
    main()
