"""Per-device input normalisation (``serving.device_normalisation_windows``): does re-expressing each
device's windows with the model's mean and deviation in place of the device's own help, frozen and while
learning, on people the model never saw and on sensors with another gain and offset?

Streams, each device's windows in the order it made them (one recording after another, in a random
order), devices interleaved at random, each window predicted before it may be learned from:
- **Wiimote gestures, unseen people**: PickupGestureWiimoteZ, a first model trained on devices 0-3, the
  stream made of devices 4-9 (ten gestures each);
- **BasicMotions, miscalibrated sensors**: the test recordings as ten devices of four recordings (one per
  activity) each, played twice; five of the devices send through a sensor with another gain (2-4) and
  offset (-3..3) per channel; the first model is the bootstrap model (train split).

The normalisation is exactly the serving job's (``operators.device_normalisation``): each window is
re-expressed by the statistics of the device's earlier windows once it has sent ``--warmup`` of them.
Learners: the first model frozen; the learning job's online learner (gradient steps with replay) asking
about 10 % of the windows by confidence; the LDA head the same way; as references on the windows as sent,
both learners and river ARF on per-channel window features learning from every label.

Run: ``python bench/device_normalisation_bench.py [--seeds 3 --warmup 8]``; writes
bench/results/device_normalisation.json.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import print_table, save, wiimote_by_device  # noqa: E402
from bench.label_efficiency_bench import LDA, run_strategy  # noqa: E402
from bench.learning_bench import bootstrap_net, features, run_river  # noqa: E402
from model.network import WindowTransformer  # noqa: E402
from model.spec import ModelSpec  # noqa: E402
from model.train import encode_labels, fit  # noqa: E402
from operators.device_normalisation import DeviceNormaliser, adapt  # noqa: E402

FRACTION = 0.1


def interleave(recordings: list[tuple[int, np.ndarray, np.ndarray]], rng) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(device, windows, labels)`` recordings into one stream: each device's recordings one after another
    in a random order, devices interleaved at random window by window."""
    queues: dict[int, list] = {}
    for i in rng.permutation(len(recordings)):
        device, X, y = recordings[i]
        queues.setdefault(device, []).extend(zip(X, y))
    X, y, devices = [], [], []
    while queues:
        device = list(queues)[rng.integers(len(queues))]
        window, label = queues[device].pop(0)
        X.append(window), y.append(label), devices.append(device)
        if not queues[device]:
            del queues[device]
    return np.stack(X), np.asarray(y), np.asarray(devices)


def wiimote(seed: int):
    classes, (Xtr, ltr, _), (X, labels, devices) = wiimote_by_device(4, with_devices=True)
    spec = ModelSpec(window=32, channels=("acc_z",), classes=classes, d_model=32, n_heads=4, n_layers=2, d_ff=64)
    torch.manual_seed(seed)
    net = WindowTransformer(spec)
    ytr, y = encode_labels(ltr, classes), encode_labels(labels, classes)
    net.set_normalisation(Xtr)
    fit(net, Xtr, ytr, epochs=25, seed=seed)
    keys = list(zip(labels, devices))  # one recording per gesture and device
    recordings = [(d, X[[k == (g, d) for k in keys]], y[[k == (g, d) for k in keys]]) for g, d in dict.fromkeys(keys)]
    return spec, net, Xtr, ytr, *interleave(recordings, np.random.default_rng(seed))


def miscalibrated_motions(seed: int):
    from model.datasets import load_basic_motions, sliding_windows

    spec = ModelSpec()
    torch.manual_seed(0)
    net = bootstrap_net(spec)
    Xtr, ltr = sliding_windows(load_basic_motions("train"), 32, 8)
    test = load_basic_motions("test")
    rng = np.random.default_rng(seed)
    recordings = []
    for device in range(10):
        gain, offset = rng.uniform(2.0, 4.0, 6), rng.uniform(-3.0, 3.0, 6)
        for i in [device + 10 * j for j in range(4)] * 2:  # the test split holds ten recordings per activity
            values = np.asarray(test.series[i], np.float32)
            if device % 2:
                values = (values * gain + offset).astype(np.float32)
            X = np.stack([values[s:s + 32] for s in range(0, len(values) - 31, 8)])
            recordings.append((device, X, encode_labels([str(test.labels[i])] * len(X), spec.classes)))
    return spec, net, Xtr, encode_labels(ltr, spec.classes), *interleave(recordings, rng)


def normalised(X: np.ndarray, devices: np.ndarray, net, warmup: int, halflife: int = 0) -> np.ndarray:
    """The stream as the serving job would score it with the option on (the model's own input statistics)."""
    norm, stats, out = DeviceNormaliser(warmup, halflife), {}, X.copy()
    mean, std = net.mean.numpy(), net.std.numpy()
    for i, (window, device) in enumerate(zip(X, devices)):
        ref, stats[device] = norm.step(stats.get(device), window)
        if ref is not None:
            out[i] = adapt(window, ref, mean, std)
    return out


def frozen(net, X: np.ndarray, y: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return (net.eval()(torch.as_tensor(X)).argmax(-1).numpy() == y).astype(float)


def main() -> None:
    from river import forest

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=8, help="windows a device sends before it is normalised")
    parser.add_argument("--halflife", type=int, default=64, help="the half-life of the third variant (windows)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    variants = {"as sent": None, f"per device, after {args.warmup}": 0,
                f"per device, after {args.warmup}, half-life {args.halflife}": args.halflife}
    runs: dict[tuple[str, str, str], list[float]] = {}
    for stream, make in {"Wiimote gestures, unseen people": wiimote,
                         "BasicMotions, miscalibrated sensors": miscalibrated_motions}.items():
        for seed in range(args.seeds):
            spec, net0, Xtr, ytr, X, y, devices = make(seed)
            for variant, halflife in variants.items():
                Xs = X if halflife is None else normalised(X, devices, net0, args.warmup, halflife)
                results = {"first model, frozen": frozen(copy.deepcopy(net0), Xs, y),
                           "online learner, 10 % by confidence": run_strategy(net0, spec.n_classes, Xs, y, FRACTION,
                                                                              "confidence", seed=seed)[0],
                           "LDA head, 10 % by confidence": run_strategy(net0, spec.n_classes, Xs, y, FRACTION,
                                                                        "confidence", seed=seed, settings=LDA,
                                                                        warm=(Xtr, ytr))[0]}
                if halflife is None:  # the learners with every label, as ARF has them (as sent only)
                    results["online learner, every label"] = run_strategy(net0, spec.n_classes, X, y, 1.0, "random",
                                                                          seed=seed)[0]
                    results["LDA head, every label"] = run_strategy(net0, spec.n_classes, X, y, 1.0, "random",
                                                                    seed=seed, settings=LDA, warm=(Xtr, ytr))[0]
                for learner, hits in results.items():
                    runs.setdefault((stream, learner, variant), []).append(float(hits.mean()))
                    print(stream, seed, learner, variant, f"{hits.mean():.3f}", flush=True)
            hits, _ = run_river(lambda: forest.ARFClassifier(n_models=10, seed=0), features(Xtr), list(ytr),
                                features(X), list(y), 1.0)
            runs.setdefault((stream, "river ARF, every label", "as sent"), []).append(float(hits.mean()))
    learners = sorted({(s, learner) for s, learner, _ in runs}, key=lambda k: (k[0], k[1].startswith("river"), k[1]))
    rows = []
    for stream, learner in learners:
        cells = []
        for variant in variants:
            acc = np.asarray(runs.get((stream, learner, variant), []))
            cells.append(f"{acc.mean():.3f} ± {acc.std():.3f}" if len(acc) else "")
        rows.append([stream, learner, *cells])
    print_table(f"Prequential accuracy with and without per-device input normalisation ({args.seeds} seeds, mean ± sd)",
                ["stream", "learner", *variants], rows)
    save("device_normalisation", {"seeds": args.seeds, "warmup": args.warmup, "halflife": args.halflife,
                                  "runs": [{"stream": s, "learner": lr, "variant": v, "accuracy": a}
                                           for (s, lr, v), a in runs.items()]})


if __name__ == "__main__":
    main()
