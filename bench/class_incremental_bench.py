"""Class-incremental learning: classes arrive one or two at a time, and the learner must keep the old
ones. Average accuracy and backward transfer for plain fine-tuning, EWC, distillation (learning without
forgetting), replay and their combinations, in one run, the way the continual-learning literature
reports them.

The learner is the learning job's ``OnlineTrainer`` exactly as it runs there: mini-batches of 8 labeled
windows, a class-balanced replay reservoir, the output layer grown (``add_classes``) when a task brings
classes the network lacks, and ``consolidate()`` at each task's end (the EWC anchor and the
distillation teacher). Each task's windows are seen in ``--epochs`` shuffled passes. After each task
the network is tested on the held-out windows of every task so far, predicting among every class seen
so far (one head: class-incremental, not task-incremental).

- BasicMotions (smartwatch IMU, 6 channels): four tasks of one class each; train split to learn, test
  split to test.
- PickupGestureWiimoteZ (one accelerometer channel, ten gestures): five tasks of two gestures each;
  devices 0-6's recordings to learn, devices 7-9's to test.

``LDA head`` is the learner's ``head = "lda"``: the network learns the first task as ``replay`` does
(gradient steps), then its encoder stays fixed and the output layer is streaming LDA on its features
(one pass per task: a label's effect does not depend on when it came, so there is nothing to forget
in the head; what the fixed encoder never learned to tell apart stays mixed).

``joint`` is the upper bound: the same network trained on all tasks' windows at once.
ACC = mean over tasks of the final accuracy on that task; BWT = mean over all but the last task of
(final accuracy - accuracy right after learning it): negative is forgetting.

Run: ``python bench/class_incremental_bench.py [--seeds 3 --epochs 5]``; writes
bench/results/class_incremental.{json,png}.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import RESULTS, print_table, save, wiimote_by_device  # noqa: E402
from model.datasets import load_basic_motions, sliding_windows  # noqa: E402
from model.network import WindowTransformer  # noqa: E402
from model.online import OnlineTrainer  # noqa: E402
from model.spec import ModelSpec  # noqa: E402
from model.train import fit  # noqa: E402
from settings import LearningSettings  # noqa: E402

EWC, DISTILL = 100.0, 1.0
METHODS = {  # name -> (replay_ratio, ewc_strength, distill_strength)
    "fine-tuning": (0.0, 0.0, 0.0),
    "EWC": (0.0, EWC, 0.0),
    "distillation (LwF)": (0.0, 0.0, DISTILL),
    "EWC + distillation": (0.0, EWC, DISTILL),
    "replay": (1.0, 0.0, 0.0),
    "replay + EWC": (1.0, EWC, 0.0),
    "replay + distillation": (1.0, 0.0, DISTILL),
    "replay + EWC + distillation": (1.0, EWC, DISTILL),
    "LDA head (encoder of task 1)": None,
}


class Split:
    """Windows to learn and to test, with class names, cut into tasks of class groups."""

    def __init__(self, name: str, spec: ModelSpec, Xtr, ytr, Xte, yte, tasks: list[list[str]]) -> None:
        self.name, self.spec, self.tasks = name, spec, tasks
        self.Xtr, self.ytr, self.Xte, self.yte = Xtr, np.asarray(ytr), Xte, np.asarray(yte)


def basic_motions() -> Split:
    Xtr, ytr = sliding_windows(load_basic_motions("train"), 32, 8)
    Xte, yte = sliding_windows(load_basic_motions("test"), 32, 8)
    spec = ModelSpec()
    return Split("BasicMotions, 4 tasks of 1 class", spec, Xtr, ytr, Xte, yte, [[c] for c in spec.classes])


def wiimote() -> Split:
    classes, (Xtr, ytr), (Xte, yte) = wiimote_by_device(7)
    spec = ModelSpec(window=32, channels=("acc_z",), classes=classes, d_model=32, n_heads=4, n_layers=2, d_ff=64)
    tasks = [list(classes[i:i + 2]) for i in range(0, len(classes), 2)]
    return Split("Wiimote gestures, 5 tasks of 2 classes", spec, Xtr, ytr, Xte, yte, tasks)


def task_windows(X: np.ndarray, y: np.ndarray, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    mask = np.isin(y, classes)
    return X[mask], y[mask]


def accuracy_on(net: torch.nn.Module, X: np.ndarray, y: np.ndarray) -> float:
    with torch.inference_mode():
        predicted = net.eval()(torch.as_tensor(X)).argmax(-1).numpy()
    names = np.asarray(net.spec.classes)
    return float((names[predicted] == y).mean())


def run_method(split: Split, settings: LearningSettings, epochs: int, seed: int, lda: bool = False) -> np.ndarray:
    """The accuracy matrix ``R[i, j]``: accuracy on task j's test windows after learning task i."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    first = split.tasks[0]
    net = WindowTransformer(ModelSpec.from_dict({**split.spec.to_dict(), "classes": first}))
    net.set_normalisation(task_windows(split.Xtr, split.ytr, first)[0])  # what a cold start fits on
    trainer = OnlineTrainer(net, len(first), settings)
    T = len(split.tasks)
    R = np.full((T, T), np.nan)
    for i, classes in enumerate(split.tasks):
        trainer.add_classes(classes)
        X, y = task_windows(split.Xtr, split.ytr, classes)
        index = {c: k for k, c in enumerate(net.spec.classes)}
        for _ in range(1 if trainer.lda is not None else epochs):
            for k in rng.permutation(len(y)):
                trainer.learn_one(X[k], index[y[k]])
        trainer.update()
        trainer.consolidate()
        if lda and trainer.lda is None:  # the encoder of task 1 from now on, the head from class statistics
            trainer = OnlineTrainer(net, len(net.spec.classes), LearningSettings(head="lda", batch_size=8))
            trainer.warm_start(X, np.asarray([index[c] for c in y]))
        for j in range(i + 1):
            R[i, j] = accuracy_on(net, *task_windows(split.Xte, split.yte, split.tasks[j]))
    return R


def joint(split: Split, epochs: int, seed: int) -> float:
    torch.manual_seed(seed)
    net = WindowTransformer(split.spec)
    net.set_normalisation(split.Xtr)
    index = {c: k for k, c in enumerate(split.spec.classes)}
    fit(net, split.Xtr, np.asarray([index[c] for c in split.ytr]), epochs=epochs * len(split.tasks), seed=seed)
    return float(np.mean([accuracy_on(net, *task_windows(split.Xte, split.yte, t)) for t in split.tasks]))


def summary(R: np.ndarray) -> tuple[float, float]:
    """(ACC, BWT) of an accuracy matrix."""
    T = len(R)
    acc = float(np.mean(R[-1]))
    bwt = float(np.mean([R[-1, j] - R[j, j] for j in range(T - 1)])) if T > 1 else 0.0
    return acc, bwt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=5, help="shuffled passes over each task's windows")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows, results = [], []
    for split in (basic_motions(), wiimote()):
        for method, weights in METHODS.items():
            replay, ewc, distill = weights or (1.0, 0.0, 0.0)
            settings = LearningSettings(lr=2e-3, batch_size=8, replay_ratio=replay, ewc_strength=ewc,
                                        distill_strength=distill, reservoir_capacity=200, class_balanced=True)
            runs = [run_method(split, settings, args.epochs, seed, lda=weights is None) for seed in range(args.seeds)]
            accs, bwts = zip(*(summary(R) for R in runs))
            curve = [float(np.mean([np.nanmean(R[i, :i + 1]) for R in runs])) for i in range(len(split.tasks))]
            rows.append([split.name, method, f"{np.mean(accs):.3f} ± {np.std(accs):.3f}",
                         f"{np.mean(bwts):+.3f} ± {np.std(bwts):.3f}",
                         f"{np.mean([R[-1, -1] for R in runs]):.3f}"])
            results.append({"dataset": split.name, "method": method, "acc": float(np.mean(accs)),
                            "bwt": float(np.mean(bwts)), "seen_accuracy_after_each_task": curve,
                            "matrices": [R.tolist() for R in runs]})
            print(rows[-1], flush=True)
        upper = [joint(split, args.epochs, seed) for seed in range(args.seeds)]
        rows.append([split.name, "joint (all classes at once, upper bound)",
                     f"{np.mean(upper):.3f} ± {np.std(upper):.3f}", "", ""])
        results.append({"dataset": split.name, "method": "joint", "acc": float(np.mean(upper))})
        print(rows[-1], flush=True)
    print_table(f"Class-incremental learning ({args.seeds} seeds, {args.epochs} passes per task, reservoir 200)",
                ["dataset", "method", "ACC", "BWT", "last task"], rows)
    save("class_incremental", {"seeds": args.seeds, "epochs": args.epochs, "rows": results})
    plot(results)


def plot(results: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(r["dataset"] for r in results))
    fig, axes = plt.subplots(1, len(datasets), figsize=(11, 3.8))
    for ax, name in zip(axes, datasets):
        for r in results:
            if r["dataset"] == name and "seen_accuracy_after_each_task" in r:
                curve = r["seen_accuracy_after_each_task"]
                ax.plot(range(1, len(curve) + 1), curve, marker="o", label=r["method"])
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("tasks learned")
        ax.set_ylabel("accuracy on the tasks so far")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    path = RESULTS / "class_incremental.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
