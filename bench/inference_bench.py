"""Inference throughput (windows/s) vs batch size: ONNX Runtime (FP32, and the INT8 graph that
``serving.precision = "int8"`` serves, ``model.quantize``) and torch eager, same model.

Run: ``python bench/inference_bench.py [--seconds 1.0]``; writes bench/results/inference.{json,png}.
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


def measure(seconds: float, batches: list[int]) -> list[dict]:
    spec = ModelSpec()
    net = WindowTransformer(spec).eval()
    fp32 = export_onnx(net, spec)
    onnx = OnnxRunner(fp32)
    int8 = OnnxRunner(quantize_int8(fp32))
    torch_runner = TorchRunner(net)
    rng = np.random.default_rng(0)
    rows = []
    for b in batches:
        x = rng.normal(size=(b, spec.window, spec.n_channels)).astype(np.float32)
        rows.append({"batch": b, "onnx": windows_per_second(onnx, x, seconds),
                     "onnx_int8": windows_per_second(int8, x, seconds),
                     "torch": windows_per_second(torch_runner, x, seconds), "provider": onnx.provider})
    return rows


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
    args = parser.parse_args()
    rows = measure(args.seconds, [int(b) for b in args.batches.split(",")])
    print_table("Inference throughput (windows/s)",
                ["batch", "ONNX Runtime", "ONNX Runtime INT8", "INT8 / FP32", "torch eager", "ONNX / torch"],
                [[r["batch"], r["onnx"], r["onnx_int8"], f"{r['onnx_int8'] / r['onnx']:.2f}x", r["torch"],
                  f"{r['onnx'] / r['torch']:.2f}x"] for r in rows])
    save("inference", {"rows": rows})
    try:
        plot(rows, RESULTS / "inference.png")
        print(f"plot: {RESULTS / 'inference.png'}")
    except ImportError:
        print("matplotlib not installed: no plot (pip install -e .[bench])")


if __name__ == "__main__":
    main()
