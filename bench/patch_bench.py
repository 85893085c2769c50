"""Samples per encoder token (a model's ``patch``): what a window costs, and what the first model keeps.

For each patch, ONNX Runtime alone on one thread scores a random-weight BasicMotions network (window 32, six
channels) at each batch size (windows/s, the median of ``--rounds`` timed loops, the patches interleaved so the
machine's drift hits them alike), in the graph the export writes and in the graph it wrote before the encoder
was flattened (``model.flat_encoder``), per CPU-second and their ratio; then ``model.train.bootstrap`` trains the
first BasicMotions model at each patch and seed, as ``sensorloop setup --patch`` does, and reports its test
accuracy and training time (``--seeds 0``: the speeds only).

Run: ``python bench/patch_bench.py [--patches 1,2,4,8] [--batches 1,32,128,256] [--seeds 3]``; writes
bench/results/patch.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import print_table, save  # noqa: E402
from bench.inference_bench import timed_windows  # noqa: E402
from model.export import export_onnx  # noqa: E402
from model.network import WindowTransformer  # noqa: E402
from model.registry import ModelRegistry  # noqa: E402
from model.runtime import OnnxRunner  # noqa: E402
from model.spec import ModelSpec  # noqa: E402
from model.train import bootstrap  # noqa: E402


GRAPHS = ("flat", "nested")  # the encoder as exported now (model.flat_encoder) and as nn.TransformerEncoder exports


def speeds(patches: list[int], batches: list[int], rounds: int, seconds: float
           ) -> dict[tuple[int, str, int], tuple[float, float]]:
    """(windows/s, windows per CPU-second) by (patch, graph, batch): one random-weight network per patch,
    exported both ways (:data:`GRAPHS`)."""
    runners = {}
    for patch in patches:
        spec = ModelSpec(patch=patch)
        torch.manual_seed(0)
        net = WindowTransformer(spec).eval()
        for graph in GRAPHS:
            runners[patch, graph] = OnnxRunner(export_onnx(net, spec, flat_encoder=graph == "flat"), threads=1)
    x = {b: np.random.default_rng(0).normal(size=(b, 32, 6)).astype(np.float32) for b in batches}
    times: dict[tuple[int, str, int], list[tuple[float, float]]] = {}
    for _ in range(rounds):
        for batch in batches:
            for (patch, graph), runner in runners.items():
                times.setdefault((patch, graph, batch), []).append(timed_windows(runner, x[batch], seconds))
    return {key: (float(np.median([w for w, _ in v])), float(np.median([c for _, c in v]))) for key, v in times.items()}


def first_models(patches: list[int], seeds: int) -> dict[int, list[tuple[float, float]]]:
    """(test accuracy, training seconds) of the first BasicMotions model by patch, one per seed."""
    out: dict[int, list[tuple[float, float]]] = {}
    for patch in patches:
        for seed in range(seeds):
            with tempfile.TemporaryDirectory() as folder:
                result = bootstrap(ModelRegistry(folder), spec=ModelSpec(patch=patch), seed=seed)
            out.setdefault(patch, []).append((result.metadata.metrics["test_accuracy"], result.train_seconds))
            print(f"patch {patch} seed {seed}: accuracy {out[patch][-1][0]:.3f} in {out[patch][-1][1]:.1f}s",
                  flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--patches", default="1,2,4,8")
    parser.add_argument("--batches", default="1,32,128,256")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=0.7, help="length of one timed loop")
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    patches = [int(p) for p in args.patches.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    torch.set_num_threads(1)
    rate = speeds(patches, batches, args.rounds, args.seconds)
    print_table("ONNX Runtime, one thread: windows/s by samples per token (window 32, 6 channels)",
                ["batch", *[f"patch {p}" for p in patches]],
                [[b, *[round(rate[p, "flat", b][0]) for p in patches]] for b in batches])
    print_table("The encoder's graph: windows per CPU-second, flat (as exported now) / nested (nn.TransformerEncoder "
                "as exported before), and their ratio",
                ["batch", *[f"patch {p}" for p in patches]],
                [[b, *[f"{rate[p, 'flat', b][1]:,.0f} / {rate[p, 'nested', b][1]:,.0f} = "
                       f"{rate[p, 'flat', b][1] / rate[p, 'nested', b][1]:.2f}" for p in patches]] for b in batches])
    models = first_models(patches, args.seeds)
    if args.seeds:
        print_table(f"First BasicMotions model by samples per token ({args.seeds} seeds)",
                    ["patch", "test accuracy per seed", "training seconds"],
                    [[p, " / ".join(f"{a:.3f}" for a, _ in models[p]),
                      f"{min(s for _, s in models[p]):.1f}-{max(s for _, s in models[p]):.1f}"] for p in patches])
    payload = {"windows_per_s": [{"patch": p, "graph": g, "batch": b, "value": w, "per_cpu_s": c}
                                 for (p, g, b), (w, c) in rate.items()],
               "first_models": {str(p): v for p, v in models.items()}}
    print(f"results: {save('patch', payload)}")


if __name__ == "__main__":
    main()
