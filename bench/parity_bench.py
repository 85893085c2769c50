"""The serving job against the plain consumer a user would write, in alternating pairs.

``bench/blocks_bench.py`` runs each side once per size, minutes apart, so a busy stretch of this shared machine
can fall on one side only: its serving / plain ratio moved from 0.67 to 0.94 between two runs of the same code.
Here each size is drained by the plain consumer and the serving job back to back, ``--pairs`` times, the order
flipped every pair (plain first, then the job first, ...), and the ratio is taken within each pair; the median of
the pairs is the figure to quote. The latency runs (``--latency-sizes``, 1,000 messages/s) are paired the same way
and give each side's median p99 and the pairs' p99 differences.

``--precision int8``: both sides score with the INT8 graph of a model trained here (``serving.precision = "int8"``
for the job). ``--precision-sizes 50``: the job alone drains each of these sizes with the FP32 and the INT8 graph
of that model, in alternating pairs (what INT8 buys it).

Run: ``python bench/parity_bench.py [--sizes 1,10,50] [--pairs 3] [--samples 600000] [--patch 4]
[--latency-sizes 25] [--latency-pairs 3] [--precision fp32]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.blocks_bench import measure, patch_registry  # noqa: E402
from bench.common import print_table, save  # noqa: E402
from bench.serving_bench import measure_latency  # noqa: E402


def pair_order(pairs: int, sides: tuple[str, str] = ("plain", "serving")) -> list[tuple[str, str]]:
    """The two sides of each pair, the first side flipping from pair to pair.

    >>> pair_order(3)
    [('plain', 'serving'), ('serving', 'plain'), ('plain', 'serving')]
    >>> pair_order(2, ("fp32", "int8"))
    [('fp32', 'int8'), ('int8', 'fp32')]
    """
    return [sides if i % 2 == 0 else sides[::-1] for i in range(pairs)]


def summary(values: list[float]) -> str:
    """The median, then every value in run order.

    >>> summary([1.0, 0.91, 1.12])
    '1.00 (1.00, 0.91, 1.12)'
    """
    return f"{statistics.median(values):.2f} ({', '.join(f'{v:.2f}' for v in values)})"


def throughput_pairs(work: Path, size: int, samples: int, registry: str, pairs: int, stride: int,
                     precision: str = "fp32") -> dict:
    """Drains of the same backlog by the plain consumer and by the serving job, in alternating pairs (both
    scoring with the ``precision`` graph)."""
    runs: list[dict[str, float]] = []
    details: list[dict[str, dict]] = []  # each run's whole result: cores, mean batch, the model's rate in the job
    for first, second in pair_order(pairs):
        got = {kind: measure(work, kind, size, samples, registry, f"-pair{len(runs)}", stride=stride,
                             precision=precision)
               for kind in (first, second)}
        runs.append({kind: r["samples_per_s"] for kind, r in got.items()})
        details.append(got)
        print({"samples_per_message": size, **runs[-1], "ratio": round(runs[-1]["serving"] / runs[-1]["plain"], 3)},
              flush=True)
    return {"samples_per_message": size, "samples": samples, "runs": runs, "details": details,
            "ratios": [r["serving"] / r["plain"] for r in runs]}


def precision_pairs(work: Path, size: int, samples: int, registry: str, pairs: int, stride: int) -> dict:
    """Drains of the same backlog by the serving job with ``serving.precision`` FP32 and INT8, in alternating
    pairs: what the INT8 graph buys the job itself."""
    runs: list[dict[str, float]] = []
    for order in pair_order(pairs, ("fp32", "int8")):
        runs.append({precision: measure(work, "serving", size, samples, registry, f"-{precision}{len(runs)}",
                                        stride=stride, precision=precision)["samples_per_s"] for precision in order})
        print({"samples_per_message": size, **runs[-1], "int8/fp32": round(runs[-1]["int8"] / runs[-1]["fp32"], 3)},
              flush=True)
    return {"samples_per_message": size, "samples": samples, "runs": runs,
            "ratios": [r["int8"] / r["fp32"] for r in runs]}


def latency_pairs(work: Path, size: int, messages_per_s: int, registry: str, pairs: int,
                  seconds: float = 20.0, precision: str = "fp32") -> dict:
    """p50/p99 (message timestamp -> prediction received) of the serving job and the plain consumer at the same
    rate, in alternating pairs."""
    runs: list[dict[str, tuple[float, float]]] = []
    for first, second in pair_order(pairs):
        got = {}
        for kind in (first, second):
            r = measure_latency(work, kind, messages_per_s * size, seconds, registry, tag=f"-b{size}-pair{len(runs)}",
                                stride=8, samples_per_message=size, precision=precision)
            got[kind] = (r["p50_ms"], r["p99_ms"])
        runs.append(got)
        print({"samples_per_message": size, **got}, flush=True)
    return {"samples_per_message": size, "messages_per_s": messages_per_s, "runs": runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="1,10,50", help="samples per message of the drains")
    parser.add_argument("--pairs", type=int, default=3, help="pairs per size")
    parser.add_argument("--samples", type=int, default=600_000, help="samples per drain (at most 200,000 messages)")
    parser.add_argument("--registry", default="var/registry")
    parser.add_argument("--patch", type=int, default=1,
                        help="samples per token of the served model (above 1: one trained here, in a registry of its own)")
    parser.add_argument("--stride", type=int, default=8)
    parser.add_argument("--latency-sizes", default="25", help="samples per message of the latency pairs")
    parser.add_argument("--latency-pairs", type=int, default=3)
    parser.add_argument("--latency-rate", type=int, default=1000, help="messages per second of the latency pairs")
    parser.add_argument("--precision", choices=("fp32", "int8"), default="fp32",
                        help="the graph both sides score with (int8: a model trained here with its INT8 graph)")
    parser.add_argument("--precision-sizes", default="",
                        help="samples per message of drains by the job in FP32 and in INT8, in alternating pairs")
    args = parser.parse_args()
    keep = tempfile.TemporaryDirectory(prefix="parity-registry-")
    int8 = args.precision == "int8" or bool(args.precision_sizes)
    registry = (patch_registry(Path(keep.name) / f"patch{args.patch}", args.patch, int8)
                if args.patch > 1 or int8 else args.registry)
    throughput, latency, precision = [], [], []
    with tempfile.TemporaryDirectory(prefix="parity-bench-") as tmp:
        for size in (int(s) for s in args.precision_sizes.split(",") if s):
            precision.append(precision_pairs(Path(tmp), size, min(args.samples, 200_000 * size), registry,
                                             args.pairs, args.stride))
        for size in (int(s) for s in args.sizes.split(",") if s):
            throughput.append(throughput_pairs(Path(tmp), size, min(args.samples, 200_000 * size), registry,
                                               args.pairs, args.stride, args.precision))
        for size in (int(s) for s in args.latency_sizes.split(",") if s):
            latency.append(latency_pairs(Path(tmp), size, args.latency_rate, registry, args.latency_pairs,
                                         precision=args.precision))
    if throughput:
        print_table(f"Serving job / plain consumer, samples/s, {args.pairs} alternating pairs per size (median, then "
                    f"each pair; samples per token {args.patch}, {args.precision.upper()})",
                    ["samples per message", "serving / plain", "serving samples/s", "plain samples/s",
                     "pairs the job moved more"],
                    [[t["samples_per_message"], summary(t["ratios"]),
                      summary([r["serving"] / 1000 for r in t["runs"]]) + " k",
                      summary([r["plain"] / 1000 for r in t["runs"]]) + " k",
                      f"{sum(x >= 1 for x in t['ratios'])} of {len(t['ratios'])}"] for t in throughput])
    if precision:
        print_table(f"Serving job, INT8 / FP32 graph, samples/s, {args.pairs} alternating pairs per size (median, then "
                    f"each pair; samples per token {args.patch})",
                    ["samples per message", "INT8 / FP32", "INT8 samples/s", "FP32 samples/s"],
                    [[t["samples_per_message"], summary(t["ratios"]),
                      summary([r["int8"] / 1000 for r in t["runs"]]) + " k",
                      summary([r["fp32"] / 1000 for r in t["runs"]]) + " k"] for t in precision])
    if latency:
        print_table(f"p99 ms at {args.latency_rate:,} messages/s, {args.latency_pairs} alternating pairs (median, then "
                    "each pair)",
                    ["samples per message", "serving p99", "plain p99", "serving p99 - plain p99",
                     "serving p50", "plain p50"],
                    [[t["samples_per_message"], summary([r["serving"][1] for r in t["runs"]]),
                      summary([r["plain"][1] for r in t["runs"]]),
                      summary([r["serving"][1] - r["plain"][1] for r in t["runs"]]),
                      summary([r["serving"][0] for r in t["runs"]]), summary([r["plain"][0] for r in t["runs"]])]
                     for t in latency])
    saved = save("parity" if args.precision == "fp32" else f"parity_{args.precision}",
                 {"patch": args.patch, "precision": args.precision, "throughput": throughput, "latency": latency,
                  "precision_pairs": precision})
    print(f"results: {saved}")


if __name__ == "__main__":
    main()
