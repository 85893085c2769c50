"""Label efficiency: served (prequential) accuracy vs labels used, per query strategy, against random
sampling at the same budget and river's ARF and Hoeffding Adaptive Tree at the same label counts and
with every label, in one run.

Streams, each window predicted before it may be learned from:
- BasicMotions with a gyroscope calibration bias from the middle on (the demo's drift), from the
  bootstrap model (trained on the train split);
- PickupGestureWiimoteZ (a second real dataset: one accelerometer channel, ten gestures), split by
  device: a first model trained on the recordings of devices 0-3, the stream made of devices 4-9
  (people and recordings it never saw);
- river's SEA stream with an abrupt concept change (window of one step), from a model warmed up on
  its first 500 samples.

sensorloop's learner is the learning job's ``OnlineTrainer``, with either output layer: ``sgd`` (gradient
steps on the whole network with a replay reservoir, the default) or ``lda`` (streaming linear
discriminant analysis on the first model's encoder, started from the statistics of its training
windows, as ``bootstrap`` and ``train`` store them with a version). The query strategies
(``operators.routing.unsure`` scores: 1 - confidence, 1 - margin, normalised entropy) ask about a
window when its score is in the top ``fraction`` of the last 200 windows' scores, so every strategy
spends the same budget and only the choice of windows differs; ``random`` asks with probability
``fraction``. A token bucket caps every learner at ``fraction`` of the windows. river learners learn on
per-channel window features (mean, std, min, max) from a random sample of the same fraction, and
from every label.

Each stream is run with ``--seeds`` seeds (the stream's order, and for the Wiimote and SEA streams the
first model and the data); the table gives the mean and the spread.

With ``--heads``, three more learners: the same network with an anomaly head beside the classes (trained
with its self-supervised objective from the first model on), asking by confidence, learning from the
labels only, or also from 5 % or every window of the stream without its label (the learning job's
unlabeled windows): does the shared encoder's second objective cost the classes anything? With
``--summary``, three more on a network whose classify head also reads each channel's mean, deviation,
minimum and maximum over the window (``summary_features``; first model trained the same way): the
gradient learner by confidence and the LDA head by confidence and at random. ``--learners`` runs a
subset (name prefixes); ``--out`` names the result files. ``--patch 4`` builds every network of the 32-sample
streams with 4 samples per token (a quarter of the work per window; SEA is skipped).

Run: ``python bench/label_efficiency_bench.py [--fractions 0.05,0.1 --seeds 3 --heads --summary]``; writes
bench/results/label_efficiency.{json,png} (``--out``: another name).
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections import deque
from functools import partial
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import RESULTS, line_plot, print_table, save, wiimote_by_device  # noqa: E402
from bench.learning_bench import bootstrap_net, features, run_river, stream as basic_motions_stream  # noqa: E402
from model.augment import WindowAugmenter  # noqa: E402
from model.network import WindowTransformer  # noqa: E402
from model.online import OnlineTrainer  # noqa: E402
from model.spec import ModelSpec  # noqa: E402
from model.train import encode_labels, fit  # noqa: E402
from settings import LearningSettings  # noqa: E402

STRATEGIES = ("confidence", "margin", "entropy", "random")


def score(probs: np.ndarray, strategy: str) -> float:
    """How unsure a probability row is, higher = less sure (the routing strategies' quantities)."""
    if strategy == "confidence":
        return 1.0 - float(probs.max())
    if strategy == "margin":
        top = np.sort(probs)[-2:]
        return 1.0 - float(top[1] - top[0])
    p = probs[probs > 0]
    return float(-(p * np.log(p)).sum() / np.log(len(probs)))


SGD = LearningSettings(lr=2e-3, batch_size=8, replay_ratio=1.0, reservoir_capacity=500)
LDA = LearningSettings(head="lda", batch_size=8, lda_decay=0.0)
SERVED = LearningSettings(lr=2e-3, batch_size=8, replay_ratio=1.0, reservoir_capacity=500)  # the gate's defaults
SERVED_BEFORE = LearningSettings(lr=2e-3, batch_size=8, replay_ratio=1.0, reservoir_capacity=500, gate_every=32,
                                 min_holdout=30, gate_forgets_on_drift=False)  # the gate's defaults until 2026-12


class Asker:
    """Which windows are asked about: by ``strategy``, the windows whose score is in the top ``fraction`` of
    the last 200 (every strategy spends the same budget: ``fraction`` of the windows, at most 8 saved up),
    or a random ``fraction``."""

    def __init__(self, fraction: float, strategy: str, seed: int) -> None:
        self.fraction, self.strategy = fraction, strategy
        self.rng = np.random.default_rng(seed)
        self.recent: deque = deque(maxlen=200)
        self.budget, self.asked = 0.0, 0

    def asks(self, probs: np.ndarray) -> bool:
        self.budget = min(self.budget + self.fraction, 8.0)
        if self.strategy == "random":
            wanted = self.rng.random() < self.fraction
        else:
            s = score(probs, self.strategy)
            wanted = len(self.recent) < 20 or s >= np.quantile(self.recent, 1.0 - self.fraction)
            self.recent.append(s)
        if not wanted or self.budget < 1.0:
            return False
        self.budget -= 1.0
        self.asked += 1
        return True


def run_strategy(net0, n_classes: int, X: np.ndarray, y: np.ndarray, fraction: float, strategy: str,
                 seed: int = 1, settings: LearningSettings = SGD,
                 warm: tuple[np.ndarray, np.ndarray] | None = None,
                 unlabeled: float = 0.0) -> tuple[np.ndarray, int]:
    """Prequential hits and labels used by the online learner asking by ``strategy`` within ``fraction``
    (``warm``: the first model's training windows, which start an LDA head's statistics; ``unlabeled``: every
    share of the windows, picked at random, also goes to the self-supervised heads, as the learning job's
    unlabeled-windows input does)."""
    net = copy.deepcopy(net0)
    trainer = OnlineTrainer(net, n_classes, settings)
    if warm is not None:
        trainer.warm_start(*warm)
    unlabeled_rng = np.random.default_rng(seed + 1)
    asker = Asker(fraction, strategy, seed)
    hits = np.zeros(len(X))
    for i in range(len(X)):
        with torch.inference_mode():
            probs = torch.softmax(net.eval()(torch.as_tensor(X[i:i + 1])), -1).numpy()[0]
        hits[i] = probs.argmax() == y[i]
        if asker.asks(probs):
            trainer.learn_one(X[i], int(y[i]))
        if unlabeled and unlabeled_rng.random() < unlabeled:
            trainer.learn_unlabeled(X[i])
    return hits, asker.asked


def run_served(net0, spec: ModelSpec, X: np.ndarray, y: np.ndarray, fraction: float, strategy: str,
               seed: int = 1, settings: LearningSettings = SERVED,
               warm: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, int]:
    """Prequential hits of the *served* version and labels used, with the learning job's own ``LearningLoop``
    (the gate on held-out answers, its deployment rule): each window is predicted, and asked about by
    ``strategy``, by the version in service; a candidate the gate accepts serves from the next window on.
    ``warm``: the first model's training windows, which start an LDA head's statistics (as the statistics
    stored with a version start the learning job's)."""
    from operators.label_join import LabeledWindow
    from operators.learning import LearningLoop

    loop = LearningLoop(copy.deepcopy(net0), spec, 1, settings)
    if warm is not None and loop.trainer.lda is not None:
        loop.trainer.warm_start(*warm)
    served = copy.deepcopy(net0).eval()
    asker = Asker(fraction, strategy, seed)
    hits, version = np.zeros(len(X)), 1
    for i in range(len(X)):
        with torch.inference_mode():
            probs = torch.softmax(served(torch.as_tensor(X[i:i + 1])), -1).numpy()[0]
        hits[i] = probs.argmax() == y[i]
        if asker.asks(probs):
            reason = "audit" if strategy == "random" else "low_confidence"
            candidate = loop.learn(LabeledWindow(f"d:{i}", "d", X[i], spec.classes[int(y[i])],
                                                 spec.classes[int(probs.argmax())], version, ["sim"], 1000 * i,
                                                 reason=reason))
            if candidate is not None:
                version += 1
                loop.accepted(candidate, version)
                served = copy.deepcopy(candidate.net).eval()
    return hits, asker.asked


def wiimote_stream(seed: int = 0, tasks: tuple[str, ...] = ("classify",), summary: bool = False, augment: int = 0,
                   patch: int = 1):
    """Windows (32 samples, stride 8) of PickupGestureWiimoteZ; devices 0-3's recordings train the first
    model (``augment``: with that many augmented copies of each window per epoch, ``model.augment``), devices
    4-9's make the stream, in a shuffled order."""
    classes, (Xtr, train_labels), (X, labels) = wiimote_by_device(4)
    spec = ModelSpec(window=32, channels=("acc_z",), classes=classes, d_model=32, n_heads=4, n_layers=2, d_ff=64,
                     tasks=tasks, summary_features=summary, patch=patch)
    torch.manual_seed(seed)
    net = WindowTransformer(spec)
    ytr, y = encode_labels(train_labels, classes), encode_labels(labels, classes)
    net.set_normalisation(Xtr)
    fit(net, Xtr, ytr, epochs=25, seed=seed, augment_copies=augment)
    order = np.random.default_rng(seed).permutation(len(y))
    return spec, net, Xtr, ytr, X[order], y[order]


def sea_stream(seed: int = 0, tasks: tuple[str, ...] = ("classify",), summary: bool = False, n: int = 6000,
               warmup: int = 500):
    from river.datasets import synth

    data = synth.ConceptDriftStream(synth.SEA(seed=1 + 2 * seed, variant=0), synth.SEA(seed=2 + 2 * seed, variant=3),
                                    position=n // 2, width=50, seed=1 + seed)
    rows = [(np.asarray([[x[k] for k in sorted(x)]], np.float32), int(label)) for x, label in data.take(n + warmup)]
    X = np.stack([r for r, _ in rows])
    y = np.asarray([label for _, label in rows])
    spec = ModelSpec(window=1, channels=tuple(f"x{k}" for k in range(X.shape[2])), classes=("0", "1"), d_model=32,
                     n_heads=4, n_layers=1, d_ff=64, tasks=tasks, summary_features=summary)
    torch.manual_seed(seed)
    net = WindowTransformer(spec)
    net.set_normalisation(X[:warmup])
    fit(net, X[:warmup], y[:warmup], epochs=30, seed=seed)
    return spec, net, X[:warmup], y[:warmup], X[warmup:], y[warmup:]


def basic_motions(seed: int = 0, tasks: tuple[str, ...] = ("classify",), summary: bool = False, patch: int = 1):
    from model.datasets import load_basic_motions, sliding_windows

    spec = ModelSpec(tasks=tasks, summary_features=summary, patch=patch)
    torch.manual_seed(0)
    net = bootstrap_net(spec)
    X, labels, _ = basic_motions_stream(3, seed)
    Xtr, ytr = sliding_windows(load_basic_motions("train"), 32, 8)
    return spec, net, Xtr, encode_labels(ytr, spec.classes), X, encode_labels(labels, spec.classes)


HEADS = ("classify", "anomaly")
HEADS_LEARNERS = {"sensorloop + anomaly head, labels only, confidence": 0.0,
                  "sensorloop + anomaly head, 5 % of windows unlabeled, confidence": 0.05,
                  "sensorloop + anomaly head, every window unlabeled, confidence": 1.0}
SUMMARY_LEARNERS = {"sensorloop + window summary, confidence": (SGD, "confidence"),
                    "sensorloop LDA head + window summary, confidence": (LDA, "confidence"),
                    "sensorloop LDA head + window summary, random": (LDA, "random")}
SUMMARY_SERVED = {"sensorloop served + window summary, confidence": (SERVED, "confidence"),
                  "sensorloop served + window summary, random": (SERVED, "random"),
                  "sensorloop served, LDA head + window summary, confidence": (LDA, "confidence")}


def learners(fractions: list[float], heads: bool = False, summary: bool = False, augment: int = 0):
    """(name, fraction, run(spec, net0, Xtr, ytr, X, y) -> (hits, labeled)) of every learner compared; with
    ``heads``, also the learners whose network has an anomaly head beside the classes (trained with it from
    the start) and learns none, 5 % (``serving.unlabeled_share``'s default) or every window of the stream
    without its label too (their runs get that network); with ``summary``, the learners whose network's
    classify head also reads the window summary (``SUMMARY_LEARNERS``, their runs get that network); with
    ``augment``, also river ARF warmed on the first data with as many augmented copies as the network saw."""
    from river import forest, tree

    for fraction in fractions:
        for name, (settings, strategy) in SUMMARY_LEARNERS.items() if summary else ():
            yield (name, fraction, lambda s, n, Xtr, ytr, X, y, f=fraction, q=strategy, c=settings: run_strategy(
                n, s.n_classes, X, y, f, q, settings=c, warm=(Xtr, ytr) if c is LDA else None))
        for name, (settings, strategy) in SUMMARY_SERVED.items() if summary else ():
            yield (name, fraction, lambda s, n, Xtr, ytr, X, y, f=fraction, q=strategy, c=settings: run_served(
                n, s, X, y, f, q, seed=1, settings=c, warm=(Xtr, ytr)))
        for name, share in HEADS_LEARNERS.items() if heads else ():
            yield (name, fraction, lambda s, n, Xtr, ytr, X, y, f=fraction, u=share: run_strategy(
                n, s.n_classes, X, y, f, "confidence", unlabeled=u))
        for strategy in STRATEGIES:
            yield (f"sensorloop, {strategy}", fraction,
                   lambda s, n, Xtr, ytr, X, y, f=fraction, q=strategy: run_strategy(n, s.n_classes, X, y, f, q))
        for strategy in ("confidence", "random"):
            yield (f"sensorloop served (learning loop and gate), {strategy}", fraction,
                   lambda s, n, Xtr, ytr, X, y, f=fraction, q=strategy: run_served(n, s, X, y, f, q))
            yield (f"sensorloop served (the gate's former defaults), {strategy}", fraction,
                   lambda s, n, Xtr, ytr, X, y, f=fraction, q=strategy: run_served(n, s, X, y, f, q,
                                                                                    settings=SERVED_BEFORE))
        for strategy in ("confidence", "random"):
            yield (f"sensorloop LDA head, {strategy}", fraction,
                   lambda s, n, Xtr, ytr, X, y, f=fraction, q=strategy: run_strategy(n, s.n_classes, X, y, f, q,
                                                                                      settings=LDA, warm=(Xtr, ytr)))
    for name, factory in {"river ARF": lambda: forest.ARFClassifier(n_models=10, seed=0),
                          "river HAT": lambda: tree.HoeffdingAdaptiveTreeClassifier(seed=0)}.items():
        for fraction in (*fractions, 1.0):
            yield (f"{name} (window features), random", fraction,
                   lambda s, n, Xtr, ytr, X, y, f=fraction, m=factory: run_river(m, features(Xtr), list(ytr),
                                                                                  features(X), list(y), f))
    for fraction in (*fractions, 1.0) if augment else ():
        def warmed_on_copies(s, n, Xtr, ytr, X, y, f=fraction):
            Xa, ya = WindowAugmenter().expand(Xtr, ytr, augment, np.random.default_rng(0))
            return run_river(lambda: forest.ARFClassifier(n_models=10, seed=0), features(Xa), list(ya),
                             features(X), list(y), f)
        yield "river ARF (window features, augmented first data), random", fraction, warmed_on_copies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fractions", default="0.05,0.1")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--heads", action="store_true",
                        help=f"also the network with heads {', '.join(HEADS)} learning windows unlabeled")
    parser.add_argument("--summary", action="store_true",
                        help="also the learners on a network whose classify head reads the window summary")
    parser.add_argument("--patch", type=int, default=1,
                        help="samples per token of every network (the 32-sample streams; SEA's 1-sample windows "
                             "are skipped when it is above 1)")
    parser.add_argument("--out", default="label_efficiency", help="name of the result files in bench/results")
    parser.add_argument("--learners", default="",
                        help="run only the learners whose names start with one of these ('|'-separated)")
    parser.add_argument("--streams", default="", help="run only the streams whose names start with one of these "
                                                       "('|'-separated)")
    parser.add_argument("--augment", type=int, default=0,
                        help="the Wiimote first model trained with this many augmented copies per window")
    args = parser.parse_args()
    only = tuple(p for p in args.learners.split("|") if p)
    torch.set_num_threads(1)
    fractions = [float(f) for f in args.fractions.split(",")]
    streams = {"BasicMotions, gyroscope drift": partial(basic_motions, patch=args.patch),
               "Wiimote gestures, unseen devices": partial(wiimote_stream, augment=args.augment, patch=args.patch),
               "SEA, abrupt change": sea_stream}
    if args.patch > 1:
        print("SEA, abrupt change: skipped (its windows are 1 sample: nothing to patch)")
        del streams["SEA, abrupt change"]
    streams = {k: v for k, v in streams.items() if not args.streams or k.startswith(tuple(args.streams.split("|")))}
    runs: dict[tuple[str, str, float], list[tuple[float, int, float]]] = {}
    for name, make in streams.items():
        for seed in range(args.seeds):
            spec, net0, Xtr, ytr, X, y = make(seed)
            with_heads = make(seed, tasks=HEADS) if args.heads else None
            with_summary = make(seed, summary=True) if args.summary else None
            for learner, fraction, run in learners(fractions, args.heads, args.summary, args.augment):
                if only and not learner.startswith(only):
                    continue
                own = (with_heads if learner in HEADS_LEARNERS
                       else with_summary if learner in SUMMARY_LEARNERS or learner in SUMMARY_SERVED else None)
                torch.manual_seed(seed)  # dropout's draws: each run the same whichever learners ran before it
                hits, labeled = run(*(own or (spec, net0, Xtr, ytr, X, y)))
                runs.setdefault((name, learner, fraction), []).append(
                    (float(hits.mean()), labeled, float(hits[-len(hits) // 6:].mean())))
                print(name, seed, learner, fraction, labeled, f"{hits.mean():.3f}", flush=True)
    rows, results = [], []
    for (name, learner, fraction), values in runs.items():
        acc = np.asarray([v[0] for v in values])
        rows.append([name, learner, f"{fraction:.2f}", int(np.mean([v[1] for v in values])),
                     f"{acc.mean():.3f} ± {acc.std():.3f}", f"{np.mean([v[2] for v in values]):.3f}"])
        results.append({"stream": name, "learner": learner, "fraction": fraction,
                        "labeled": float(np.mean([v[1] for v in values])), "accuracy": float(acc.mean()),
                        "accuracy_sd": float(acc.std()), "runs": [v[0] for v in values]})
    print_table(f"Prequential accuracy vs labels used ({args.seeds} seeds: mean ± sd)",
                ["stream", "learner, query strategy", "label fraction", "labels used", "accuracy", "last sixth"], rows)
    save(args.out, {"seeds": args.seeds, "rows": results})
    series = []
    for name in streams:
        for learner in ("sensorloop, confidence", "sensorloop LDA head, confidence", "sensorloop, random",
                        "river ARF (window features), random"):
            points = sorted((r["labeled"], r["accuracy"]) for r in results
                            if r["stream"] == name and r["learner"] == learner)
            if points:
                series.append((f"{name}: {learner}", [p[0] for p in points], [p[1] for p in points], {"marker": "o"}))
    line_plot(RESULTS / f"{args.out}.png", series, "labels used", "prequential accuracy",
              "Accuracy vs labels", log2_x=True)
    print(f"plot: {RESULTS / f'{args.out}.png'}")


if __name__ == "__main__":
    main()
