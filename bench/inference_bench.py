"""Inference throughput (windows/s) vs batch size: ONNX Runtime (FP32, and the INT8 graph that
``serving.precision = "int8"`` serves, ``model.quantize``) and torch eager, same model (random weights;
``--patch 4``: an encoder that reads 4 samples per token). INT8 against FP32 is given per wall-clock second
and per CPU-second of the measuring thread (ONNX Runtime runs on it with one intra-op thread).

Then the trained model in ``--registry`` (its latest BasicMotions version) and its INT8 graph on BasicMotions'
held-out windows (window 32, stride 16): accuracy of each, how often they predict the same class, and the
largest difference of any class probability; and how far each graph's probabilities for a window move with the
windows batched beside it (held-out windows at stride 8 in 20 shuffled orders, batches of 64, against each
window scored alone).

Run: ``python bench/inference_bench.py [--seconds 1.0] [--patch 1] [--registry var/registry]``; writes
bench/results/inference.{json,png}.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import RESULTS, line_plot, print_table, save  # noqa: E402
from model.export import export_onnx  # noqa: E402
from model.network import WindowTransformer  # noqa: E402
from model.quantize import quantize_int8  # noqa: E402
from model.runtime import OnnxRunner, TorchRunner  # noqa: E402
from model.spec import ModelSpec  # noqa: E402

BATCHES = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]


def windows_per_second(runner, batch: np.ndarray, seconds: float) -> float:
    return timed_windows(runner, batch, seconds)[0]


def timed_windows(runner, batch: np.ndarray, seconds: float) -> tuple[float, float]:
    """Windows per wall-clock second and per CPU-second of this thread (ONNX Runtime with one intra-op thread
    computes on the calling thread, so the second is what the model costs whatever else the machine runs)."""
    runner.predict_proba(batch)  # warm-up
    done, started, cpu = 0, time.perf_counter(), time.thread_time()
    while time.perf_counter() - started < seconds:
        runner.predict_proba(batch)
        done += len(batch)
    return done / (time.perf_counter() - started), done / max(time.thread_time() - cpu, 1e-9)


def measure(seconds: float, batches: list[int], patch: int = 1) -> list[dict]:
    spec = ModelSpec(patch=patch)
    net = WindowTransformer(spec).eval()
    fp32 = export_onnx(net, spec)
    onnx = OnnxRunner(fp32, threads=1)
    int8 = OnnxRunner(quantize_int8(fp32), threads=1)
    torch_runner = TorchRunner(net)
    rng = np.random.default_rng(0)
    rows = []
    for b in batches:
        x = rng.normal(size=(b, spec.window, spec.n_channels)).astype(np.float32)
        (onnx_wall, onnx_cpu), (int8_wall, int8_cpu) = timed_windows(onnx, x, seconds), timed_windows(int8, x, seconds)
        rows.append({"batch": b, "onnx": onnx_wall, "onnx_int8": int8_wall, "onnx_cpu": onnx_cpu,
                     "onnx_int8_cpu": int8_cpu, "torch": windows_per_second(torch_runner, x, seconds),
                     "provider": onnx.provider})
    return rows


def trained_agreement(registry: str) -> dict:
    """The registry's latest BasicMotions version and its INT8 graph (made here, as a publish makes it) on the
    held-out windows: accuracy of each, the share of windows with the same class, the largest probability
    difference."""
    from model.datasets import load_basic_motions, sliding_windows
    from model.quantize import compare, probabilities
    from model.registry import ModelRegistry
    from model.train import encode_labels

    loaded = ModelRegistry(registry).load("basic-motions")
    spec = ModelSpec.from_dict(loaded.metadata.spec)
    X, labels = sliding_windows(load_basic_motions("test"), spec.window, 16)
    y = np.asarray(encode_labels(labels, spec.classes))
    int8 = quantize_int8(loaded.onnx_bytes)
    graphs = {"fp32": loaded.onnx_bytes, "int8": int8}
    probs = {name: probabilities(graph, X.astype(np.float32)) for name, graph in graphs.items()}
    check = compare(probs["fp32"], probs["int8"])
    accuracy = {name: float((p.argmax(1) == y).mean()) for name, p in probs.items()}
    dense, _ = sliding_windows(load_basic_motions("test"), spec.window, 8)
    moved = {name: batch_dependence(graph, dense.astype(np.float32)) for name, graph in graphs.items()}
    return {"batch_dependence": moved, "version": loaded.metadata.version, "patch": spec.patch,
            "windows": check.windows,
            "fp32_accuracy": accuracy["fp32"], "int8_accuracy": accuracy["int8"], "same_class": check.top1,
            "max_prob_diff": check.max_prob_diff, "fp32_kb": len(loaded.onnx_bytes) / 1024, "int8_kb": len(int8) / 1024}


def batch_dependence(graph: bytes, X: np.ndarray, batch: int = 64, shuffles: int = 20) -> dict:
    """How far a graph's probabilities for a window move with its batch-mates: ``X`` in ``shuffles`` random orders,
    scored in batches of ``batch``, against each window scored alone (largest, 99th percentile and median move of
    a window's largest-moving probability; windows whose class changed, of all scored)."""
    from model.runtime import OnnxRunner

    runner = OnnxRunner(graph, prefer="cpu", threads=1)
    alone = np.concatenate([runner.predict_proba(x[None]) for x in X])
    rng, moved, changed = np.random.default_rng(0), [], 0
    for _ in range(shuffles):
        order = rng.permutation(len(X))
        for k in range(0, len(X), batch):
            part = order[k:k + batch]
            probs = runner.predict_proba(X[part])
            moved.append(np.abs(probs - alone[part]).max(axis=1))
            changed += int((probs.argmax(1) != alone[part].argmax(1)).sum())
    moved = np.concatenate(moved)
    return {"largest": float(moved.max()), "p99": float(np.percentile(moved, 99)), "median": float(np.median(moved)),
            "class_changed": changed, "scored": len(moved)}


def plot(rows: list[dict], path: Path) -> None:
    batches = [r["batch"] for r in rows]
    line_plot(path, [(f"ONNX Runtime ({rows[0]['provider']})", batches, [r["onnx"] for r in rows], {"marker": "o"}),
                     ("ONNX Runtime, INT8", batches, [r["onnx_int8"] for r in rows], {"marker": "s"}),
                     ("torch eager", batches, [r["torch"] for r in rows], {"marker": "o"})],
              "batch size (windows)", "windows / s", "Window classifier inference throughput", log2_x=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=1.0, help="measuring time per point")
    parser.add_argument("--batches", default=",".join(map(str, BATCHES)))
    parser.add_argument("--patch", type=int, default=1, help="samples per token of the random-weight model")
    parser.add_argument("--registry", default="var/registry", help="the trained model's registry ('' to skip it)")
    args = parser.parse_args()
    rows = measure(args.seconds, [int(b) for b in args.batches.split(",")], args.patch)
    print_table(f"Inference throughput (windows/s), {args.patch} sample(s) per token",
                ["batch", "ONNX Runtime", "ONNX Runtime INT8", "INT8 / FP32", "INT8 / FP32 per CPU-second",
                 "torch eager", "ONNX / torch"],
                [[r["batch"], r["onnx"], r["onnx_int8"], f"{r['onnx_int8'] / r['onnx']:.2f}x",
                  f"{r['onnx_int8_cpu'] / r['onnx_cpu']:.2f}x", r["torch"], f"{r['onnx'] / r['torch']:.2f}x"]
                 for r in rows])
    trained = trained_agreement(args.registry) if args.registry else None
    if trained:
        print_table(f"Trained model v{trained['version']} ({trained['patch']} sample(s) per token) on "
                    f"{trained['windows']} held-out windows",
                    ["graph", "accuracy", "same class as FP32", "largest probability difference", "size (KB)"],
                    [["FP32", f"{trained['fp32_accuracy']:.3f}", "", "", f"{trained['fp32_kb']:.0f}"],
                     ["INT8", f"{trained['int8_accuracy']:.3f}", f"{trained['same_class']:.3f}",
                      f"{trained['max_prob_diff']:.4f}", f"{trained['int8_kb']:.0f}"]])
        moved = trained["batch_dependence"]
        print_table("How far a window's probabilities move with its batch-mates (shuffled batches of 64 against "
                    "each window alone)",
                    ["graph", "largest", "p99", "median", "class changed"],
                    [[name.upper(), f"{m['largest']:.2g}", f"{m['p99']:.2g}", f"{m['median']:.2g}",
                      f"{m['class_changed']} of {m['scored']:,}"] for name, m in moved.items()])
    save("inference", {"rows": rows, "patch": args.patch, "trained": trained})
    try:
        plot(rows, RESULTS / "inference.png")
        print(f"plot: {RESULTS / 'inference.png'}")
    except ImportError:
        print("matplotlib not installed: no plot (pip install -e .[bench])")


if __name__ == "__main__":
    main()
