"""The unified model's anomaly score and forecast next to established detectors and baselines, on the same
windows in one run, and whether the extra heads cost the classifier anything.

Data (all ship offline):

- ``UCR InternalBleeding16`` (aeon's KDD-TSAD 135): a real univariate series with one annotated anomaly
  (12 samples); its first 1,200 samples are the anomaly-free training part.
- ``Daphnet S06R02E0``: 9 body-worn accelerometer channels at 64 Hz. The excerpt aeon ships has no
  freezing-of-gait events (aeon's own loader says so), so faults are injected into its second half: a
  channel stuck at its last value, a spike train (every fourth sample, +6 standard deviations), a
  drifting offset (to +4 standard deviations), 4 s each, on random channels. The first half trains.
- ``BasicMotions`` (smartwatch IMU, 6 channels, 10 Hz): the test recordings with the same faults; the
  model is the demo's, with classify, anomaly and forecast heads, trained on the train recordings.

Detectors, each scoring sliding windows (stride 4) and giving a sample the highest score of the windows
that hold it: the model's ``anomaly_score`` (trained on the normal part, its score fitted there);
river's ``HalfSpaceTrees`` on per-channel window summaries (mean, deviation, min, max, mean absolute
step), learning the normal part first and then the test stream, scoring each window before learning
it; aeon's ``KMeansAD`` fitted on the normal part. ROC-AUC and PR-AUC per sample.

The model's score is also reported without its flatness part (a channel's deviation within the window),
and the share of windows scoring 3 or more per fault kind with and without it.

Forecast: mean absolute error of the next 8 samples per channel, on clean test windows, against
repeating the last sample and against the mean of the last 8.

What the loop adds: the test stream (with the same faults) goes through the learning job's ``LearningLoop``
as unlabeled windows, starting from the trained model; every window the model scores at 3 or more is asked
about, and a simulated labeler answers ``abnormal`` where the window holds an injected fault, ``normal``
elsewhere. The learner's network, fitted as a published version is, is then scored on the same test series
with faults injected afresh (other places, other channels), beside the model before, and beside the same
stream learned with no answers.

Classification: BasicMotions test accuracy with the classify head alone and with all three heads.

Run: ``python bench/anomaly_bench.py [--seeds 3]``; writes bench/results/anomaly.{json,png}.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import RESULTS, print_table, save  # noqa: E402
from model.datasets import load_basic_motions, sliding_windows  # noqa: E402
from model.network import WindowTransformer  # noqa: E402
from model.self_supervised import windows_with_future  # noqa: E402
from model.spec import BASIC_MOTIONS_CHANNELS, BASIC_MOTIONS_CLASSES, ModelSpec  # noqa: E402
from model.train import accuracy, encode_labels, fit, predict_proba  # noqa: E402

STRIDE = 4
HORIZON = 8
FAULTS = ("stuck", "spikes", "drift")


def inject_faults(series: np.ndarray, seconds: float, rate_hz: float, per_kind: int, seed: int
                  ) -> tuple[np.ndarray, np.ndarray, list[tuple[str, int, int, int]]]:
    """``series`` with ``per_kind`` faults of each kind placed at random, apart, on random channels; the
    sample labels (1 = faulty) and the faults as (kind, channel, start, end)."""
    rng = np.random.default_rng(seed)
    out, labels = series.copy(), np.zeros(len(series), np.int64)
    length = int(seconds * rate_hz)
    slots = rng.permutation(np.arange(1, len(series) // (2 * length) - 1))[:per_kind * len(FAULTS)]
    std = series.std(axis=0) + 1e-6
    placed = []
    for i, slot in enumerate(sorted(slots)):
        kind, channel = FAULTS[i % len(FAULTS)], int(rng.integers(series.shape[1]))
        start, end = int(slot * 2 * length), int(slot * 2 * length + length)
        if kind == "stuck":
            out[start:end, channel] = out[start, channel]
        elif kind == "spikes":
            out[start:end:4, channel] += 6 * std[channel]
        else:
            out[start:end, channel] += np.linspace(0, 4 * std[channel], end - start)
        labels[start:end] = 1
        placed.append((kind, channel, start, end))
    return out, labels, placed


def windows_of(series: np.ndarray, window: int, stride: int = STRIDE) -> tuple[np.ndarray, np.ndarray]:
    starts = np.arange(0, len(series) - window + 1, stride)
    return np.stack([series[s:s + window] for s in starts]).astype(np.float32), starts


def per_sample(window_scores: np.ndarray, starts: np.ndarray, window: int, n: int) -> np.ndarray:
    """Each sample gets the highest score of the windows that hold it."""
    out = np.full(n, -np.inf)
    for score, start in zip(window_scores, starts):
        np.maximum(out[start:start + window], score, out=out[start:start + window])
    out[np.isinf(out)] = np.min(window_scores)
    return out


def summaries(X: np.ndarray) -> np.ndarray:
    """Per-channel mean, deviation, min, max and mean absolute step of each window."""
    return np.concatenate([X.mean(1), X.std(1), X.min(1), X.max(1), np.abs(np.diff(X, axis=1)).mean(1)], axis=1)


def half_space_trees(train_windows: np.ndarray, test_windows: np.ndarray, seed: int) -> np.ndarray:
    """river's HalfSpaceTrees on window summaries scaled to [0, 1] by the normal part's range."""
    from river.anomaly import HalfSpaceTrees

    f_train, f_test = summaries(train_windows), summaries(test_windows)
    low, high = f_train.min(0), f_train.max(0)
    scale = lambda f: np.clip((f - low) / np.where(high > low, high - low, 1.0), 0, 1)  # noqa: E731
    hst = HalfSpaceTrees(n_trees=25, height=12, window_size=min(250, len(f_train)), seed=seed)
    for row in scale(f_train):
        hst.learn_one(dict(enumerate(row)))
    scores = []
    for row in scale(f_test):
        x = dict(enumerate(row))
        scores.append(hst.score_one(x))
        hst.learn_one(x)
    return np.asarray(scores)


def kmeans_ad(train: np.ndarray, test: np.ndarray, window: int, seed: int) -> np.ndarray:
    from aeon.anomaly_detection.series.distance_based import KMeansAD

    detector = KMeansAD(n_clusters=20, window_size=window, stride=STRIDE, random_state=seed)
    detector.fit(train.astype(np.float64), axis=0)
    return detector.predict(test.astype(np.float64), axis=0)


def train_model(spec: ModelSpec, X: np.ndarray, y: np.ndarray | None, F: np.ndarray, seed: int, epochs: int
                ) -> WindowTransformer:
    """Train on the first 80 % of the normal windows and fit the anomaly score on the rest (held out, as
    ``publish_version`` does with a version's held-out windows)."""
    torch.manual_seed(seed)
    cut = int(0.8 * len(X))
    net = WindowTransformer(spec)
    net.set_normalisation(X[:cut])
    fit(net, X[:cut], y[:cut] if y is not None else None, epochs=epochs, seed=seed,
        future=F[:cut] if F is not None else None)
    net.fit_anomaly_scale(X[cut:])
    return net.eval()


def without_flatness(net: WindowTransformer) -> WindowTransformer:
    """A copy of ``net`` whose anomaly score lacks the flatness part (as versions before it scored)."""
    import copy

    plain = copy.deepcopy(net)
    plain.flat_tails.zero_()
    return plain


@torch.inference_mode()
def model_scores(net: WindowTransformer, X: np.ndarray) -> np.ndarray:
    return np.concatenate([net.anomaly_score(torch.as_tensor(X[i:i + 512])).numpy() for i in range(0, len(X), 512)])


def auc(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    from sklearn.metrics import average_precision_score, roc_auc_score

    return float(roc_auc_score(labels, scores)), float(average_precision_score(labels, scores))


@torch.inference_mode()
def forecast_errors(net: WindowTransformer, series: np.ndarray, window: int) -> dict[str, list[float]]:
    """Mean absolute error of each channel's next ``HORIZON`` samples, per method."""
    X, F = windows_with_future(series, window, HORIZON, STRIDE)
    predicted = net.forecast(torch.as_tensor(X)).numpy()
    return {method: np.abs(guess - F).mean(axis=(0, 1)).tolist() for method, guess in (
        ("model", predicted), ("last value", X[:, -1:, :]), ("moving average (8)", X[:, -8:, :].mean(1, keepdims=True)))}


def after_the_loop(net: WindowTransformer, spec: ModelSpec, test: np.ndarray, labels: np.ndarray, window: int,
                   ask: bool, threshold: float = 3.0, max_score: float = 3.0) -> tuple[WindowTransformer, int]:
    """The learner's network after the test stream went through the learning loop as unlabeled windows (and,
    with ``ask``, answers to the windows scoring ``threshold`` or more), fitted as a published version is;
    and how many answers it took. ``max_score`` is ``learning.unlabeled_max_score`` (0: every window learned)."""
    import copy

    from operators.label_join import LabeledWindow
    from operators.learning import LearningLoop
    from schemas import WindowSample
    from settings import LearningSettings

    loop = LearningLoop(copy.deepcopy(net), spec, 1, LearningSettings(batch_size=16, seed=0, unlabeled_max_score=max_score))
    X, starts = windows_of(test, window)
    scores = model_scores(net, X)
    channels = list(spec.channels)
    answers = 0
    for i, (x, start) in enumerate(zip(X, starts)):
        loop.learn(WindowSample("device", int(start), int(start) + window - 1, channels, x.tolist(), "m", 1))
        if ask and scores[i] >= threshold:
            verdict = "abnormal" if labels[start:start + window].any() else "normal"
            loop.learn(LabeledWindow(f"device:{start}", "device", x, "", "", 1, ["labeler"], 0, "m", "anomaly",
                                     verdict=verdict))
            answers += 1
    learned = copy.deepcopy(loop.trainer.net).eval()
    confirmed = loop.trainer.confirmed_normal.all()[0] if len(loop.trainer.confirmed_normal) else None
    learned.fit_anomaly_scale(loop.trainer.unlabeled_memory.all()[0], confirmed=confirmed)
    return learned, answers


CHANNEL_NAMES = {"Daphnet": [f"{place}_{axis}" for place in ("ankle", "thigh", "trunk") for axis in "xyz"],
                 "BasicMotions": list(BASIC_MOTIONS_CHANNELS)}


def datasets(seed: int) -> dict[str, dict]:
    """Each dataset's normal training series, test series, sample labels and window."""
    from aeon.datasets import load_daphnet_s06r02e0, load_kdd_tsad_135

    out = {}
    x_train, _ = load_kdd_tsad_135(split="train")
    x_test, y_test = load_kdd_tsad_135(split="test")
    out["UCR InternalBleeding16"] = dict(train=np.asarray(x_train, np.float32).reshape(-1, 1),
                                         test=np.asarray(x_test, np.float32).reshape(-1, 1),
                                         labels=np.asarray(y_test, np.int64), window=64, faults=[])
    with warnings.catch_warnings():  # aeon 1.6 marks the loader deprecated: the excerpt has no labelled events
        warnings.simplefilter("ignore")
        daphnet, _ = load_daphnet_s06r02e0()
    daphnet = np.asarray(daphnet, np.float32)
    half = len(daphnet) // 2
    test, labels, placed = inject_faults(daphnet[half:], 4.0, 64.0, per_kind=2, seed=seed)
    out["Daphnet + injected faults"] = dict(train=daphnet[:half], test=test, clean=daphnet[half:], labels=labels,
                                            window=64, faults=placed)
    bm_train = np.concatenate(list(load_basic_motions("train").series))
    bm_clean = np.concatenate(list(load_basic_motions("test").series))
    test, labels, placed = inject_faults(bm_clean, 4.0, 10.0, per_kind=5, seed=seed)
    out["BasicMotions + injected faults"] = dict(train=bm_train, test=test, clean=bm_clean, labels=labels, window=32,
                                                 faults=placed)
    return out


def run(seeds: int, epochs: int) -> dict:
    results: dict = {"anomaly": {}, "forecast": {}, "classification": {}, "flagged": {}, "loop": {}, "by_kind": {}}
    plot_data = {}
    for seed in range(seeds):
        for name, d in datasets(seed).items():
            window, train, test = d["window"], d["train"], d["test"]
            channels = tuple(f"c{i}" for i in range(train.shape[1]))
            Xtr, _ = windows_of(train, window, 2)
            Ftr = None
            if "clean" in d:
                Xtr, Ftr = windows_with_future(train, window, HORIZON, 2)
            if name.startswith("BasicMotions"):
                spec = ModelSpec(tasks=("classify", "anomaly", "forecast"), horizon=HORIZON)
                parts = [windows_with_future(s, window, HORIZON, 2) for s in load_basic_motions("train").series]
                Xtr, Ftr = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
                rec = load_basic_motions("train")
                ytr = encode_labels(np.concatenate([[label] * len(p[0]) for p, label in zip(parts, rec.labels)]),
                                    BASIC_MOTIONS_CLASSES)
                recording = np.concatenate([[i] * len(p[0]) for i, p in enumerate(parts)])
                order = np.argsort(np.random.default_rng(seed).permutation(len(parts))[recording], kind="stable")
                Xtr, Ftr, ytr = Xtr[order], Ftr[order], ytr[order]  # whole recordings in a random order
            else:
                tasks = ("anomaly", "forecast") if Ftr is not None else ("anomaly",)
                spec = ModelSpec(window=window, channels=channels, classes=(), tasks=tasks,
                                 horizon=HORIZON if Ftr is not None else 0)
                ytr = None
            started = time.perf_counter()
            net = train_model(spec, Xtr, ytr, Ftr, seed, epochs)
            seconds = time.perf_counter() - started
            Xte, starts = windows_of(test, window)
            ours = model_scores(net, Xte)
            detectors = {"sensorloop model": per_sample(ours, starts, window, len(test)),
                         "river HalfSpaceTrees": per_sample(half_space_trees(windows_of(train, window)[0], Xte, seed),
                                                            starts, window, len(test)),
                         "aeon KMeansAD": kmeans_ad(train, test, window, seed)}
            for detector, scores in detectors.items():
                results["anomaly"].setdefault(name, {}).setdefault(detector, []).append(auc(d["labels"], scores))
            touched = np.asarray([d["labels"][s:s + window].any() for s in starts])  # windows holding an anomaly
            results["flagged"].setdefault(name, []).append(((ours[~touched] >= 3).mean(), (ours[touched] >= 3).mean()))
            if d["faults"]:  # each kind of fault caught at 3, with and without the score's flatness part
                without = model_scores(without_flatness(net), Xte)
                kinds = {"normal windows": ~touched}
                for kind in FAULTS:
                    kinds[kind] = np.asarray([any(k == kind and s < end and s + window > begin
                                                  for k, _, begin, end in d["faults"]) for s in starts])
                for kind, mask in kinds.items():
                    results["by_kind"].setdefault(name, {}).setdefault(kind, []).append(
                        ((ours[mask] >= 3).mean(), (without[mask] >= 3).mean()))
                results["anomaly"][name].setdefault("sensorloop model, without the flatness part", []).append(
                    auc(d["labels"], per_sample(without, starts, window, len(test))))
            if "clean" in d:
                results["forecast"].setdefault(name, []).append(forecast_errors(net, d["clean"], window))
                rate = 64.0 if name.startswith("Daphnet") else 10.0
                fresh, fresh_labels, _ = inject_faults(d["clean"], 4.0, rate, per_kind=len(d["faults"]) // 3,
                                                       seed=seed + 100)
                Xf, fresh_starts = windows_of(fresh, window)
                rows = {"before (the trained model)": (net, 0)}
                rows["after the stream, every window learned"] = after_the_loop(net, spec, test, d["labels"], window,
                                                                                ask=False, max_score=0.0)
                rows["after the stream, windows scoring 3+ set aside"] = after_the_loop(net, spec, test, d["labels"],
                                                                                        window, ask=False)
                rows["after the stream and the answers"] = after_the_loop(net, spec, test, d["labels"], window,
                                                                          ask=True)
                for label, (model, answers) in rows.items():
                    roc, pr = auc(fresh_labels, per_sample(model_scores(model, Xf), fresh_starts, window, len(fresh)))
                    results["loop"].setdefault(name, {}).setdefault(label, []).append((roc, pr, answers))
            print(f"seed {seed} {name}: trained in {seconds:.0f} s on {len(Xtr)} windows", flush=True)
            if seed == 0:
                plot_data[name] = (test, d["labels"], detectors["sensorloop model"])
    for seed in range(seeds):
        X, labels = sliding_windows(load_basic_motions("train"), 32, 4)
        Xte, labels_te = sliding_windows(load_basic_motions("test"), 32, 16)
        y, yte = encode_labels(labels, BASIC_MOTIONS_CLASSES), encode_labels(labels_te, BASIC_MOTIONS_CLASSES)
        for label, tasks in (("classify head alone", ("classify",)),
                             ("classify + anomaly + forecast", ("classify", "anomaly", "forecast"))):
            spec = ModelSpec(tasks=tasks, horizon=HORIZON if "forecast" in tasks else 0)
            torch.manual_seed(seed)
            net = WindowTransformer(spec)
            net.set_normalisation(X)
            if "forecast" in tasks:  # the same windows, each with the samples after it where the recording has them
                parts = [windows_with_future(s, 32, HORIZON, 4) for s in load_basic_motions("train").series]
                rec = load_basic_motions("train")
                Xf = np.concatenate([p[0] for p in parts])
                yf = encode_labels(np.concatenate([[lb] * len(p[0]) for p, lb in zip(parts, rec.labels)]),
                                   BASIC_MOTIONS_CLASSES)
                fit(net, Xf, yf, epochs=25, seed=seed, future=np.concatenate([p[1] for p in parts]))
            else:
                fit(net, X, y, epochs=25, seed=seed)
            results["classification"].setdefault(label, []).append(accuracy(predict_proba(net, Xte), yte))
    results["plot"] = plot(plot_data)
    return results


def plot(plot_data: dict) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(plot_data), 1, figsize=(9, 2.6 * len(plot_data)))
    for ax, (name, (series, labels, scores)) in zip(np.atleast_1d(axes), plot_data.items()):
        t = np.arange(len(series))
        ax.plot(t, np.clip(scores, -1, 8), lw=0.8, color="tab:red", label="anomaly score")
        ax.axhline(3.0, color="tab:red", ls=":", lw=0.8, label="threshold 3")
        edges = np.flatnonzero(np.diff(np.r_[0, labels, 0]))
        for start, end in zip(edges[::2], edges[1::2]):
            ax.axvspan(start, end, color="tab:orange", alpha=0.3, lw=0)
        ax.set_title(f"{name} (shaded: annotated or injected anomalies)", fontsize=9)
        ax.set_ylabel("score")
        ax.legend(fontsize=7, loc="upper right")
    np.atleast_1d(axes)[-1].set_xlabel("sample")
    fig.tight_layout()
    path = RESULTS / "anomaly.png"
    RESULTS.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def report(results: dict) -> None:
    def spread(values):
        values = np.asarray(values, float)
        return f"{values.mean():.3f}" + (f" ± {values.std():.3f}" if len(values) > 1 else "")

    rows = []
    for name, by_detector in results["anomaly"].items():
        for detector, pairs in by_detector.items():
            rows.append([name, detector, spread([p[0] for p in pairs]), spread([p[1] for p in pairs])])
    print_table("Anomaly detection, per sample (mean ± std over seeds)", ["data", "detector", "ROC-AUC", "PR-AUC"],
                rows)
    print_table("The model's windows at or above the default threshold (3)", ["data", "normal windows",
                                                                              "windows holding an anomaly"],
                [[name, spread([p[0] for p in v]), spread([p[1] for p in v])]
                 for name, v in results["flagged"].items()])
    print_table("Windows scoring 3 or more, by fault kind: with the flatness part / without it (mean over seeds)",
                ["data", "windows", "with", "without"],
                [[name, kind, spread([p[0] for p in v]), spread([p[1] for p in v])]
                 for name, by in results.get("by_kind", {}).items() for kind, v in by.items()])
    rows = []
    for name, by_stage in results["loop"].items():
        for stage, runs in by_stage.items():
            rows.append([name, stage, f"{np.mean([r[2] for r in runs]):.0f}", spread([r[0] for r in runs]),
                         spread([r[1] for r in runs])])
    print_table("What the loop adds: the model on faults injected afresh", ["data", "model", "answers", "ROC-AUC",
                                                                            "PR-AUC"], rows)
    rows, per_channel = [], []
    for name, runs in results["forecast"].items():
        methods = list(runs[0])
        for method in methods:
            rows.append([name, method, spread([np.mean(r[method]) for r in runs])])
        for c, channel in enumerate(CHANNEL_NAMES.get(name.split(" + ")[0], [])):
            per_channel.append([name.split(" + ")[0], channel] + [f"{np.mean([r[m][c] for r in runs]):.3f}"
                                                                  for m in methods])
    print_table(f"Forecast of the next {HORIZON} samples: mean absolute error (raw units)", ["data", "method", "MAE"],
                rows)
    print_table("The same per channel (mean over seeds)", ["data", "channel", "model", "last value",
                                                           "moving average (8)"], per_channel)
    print_table("BasicMotions test accuracy with and without the extra heads", ["model", "accuracy"],
                [[label, spread(v)] for label, v in results["classification"].items()])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args()
    results = run(args.seeds, args.epochs)
    report(results)
    save("anomaly", results)
    print(f"plot: {results['plot']}")


if __name__ == "__main__":
    main()
