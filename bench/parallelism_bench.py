"""Serving at parallelism 1, 2 and 4 on one machine: samples/s and samples per CPU-second of the job.

For each parallelism and message size, a fresh broker gets a preloaded backlog from 64 devices
(BasicMotions readings, one sample per message, or blocks of 50); the serving job (window 32, stride
8, ``serving.inference_shards`` = parallelism, the readings topic has 4 partitions) drains it, timed
from its first prediction to its last. Beside the wall-clock rate: the CPU seconds the job's process
tree used over the same interval (the MiniCluster JVM and its Python in thread mode), so the cost per
sample can be judged on a machine with fewer cores than the parallelism asks for. This machine has two
cores shared with the broker and the load: it cannot show linear scaling, and ratios above 1 at
parallelism 4 would only mean the job got a larger share of them.

With ``--stack 1,2`` the job also runs on a session cluster of as many TaskManager JVMs as its parallelism
(``bench.stack_job``: one subtask of each operator per TaskManager). On its own MiniCluster every subtask
runs in one JVM, and in thread mode their Python shares one interpreter and its lock; on separate
TaskManagers each subtask has an interpreter of its own. CPU there counts the JobManager and every
TaskManager.

Run: ``python bench/parallelism_bench.py [--parallelism 1,2,4] [--stack 1,2] [--sizes 1,50] [--patch 4]``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.blocks_bench import patch_registry  # noqa: E402
from bench.common import print_table, save  # noqa: E402
from bench.serving_bench import Scenario, drain_gauged, expected_windows, process_cpu_s, process_tree  # noqa: E402
from control.flink_rest import spread  # noqa: E402
from control.replayer import replay  # noqa: E402
from schemas import Topics  # noqa: E402

TOPICS = Topics()
DEVICES = 64


def job_cpu_s(pid: int) -> float:
    return sum(process_cpu_s(p) for p in process_tree(pid))


def measure(work: Path, parallelism: int, size: int, samples: int, registry: str, on_stack: bool = False) -> dict:
    """One drain; ``on_stack``: on a session cluster of ``parallelism`` TaskManagers instead of a MiniCluster."""
    options = dict(registry=registry, stride=8, inference_shards=parallelism)
    if on_stack:
        sc = Scenario(work, f"stack{parallelism}-s{size}", "stack", taskmanagers=parallelism, parallelism=parallelism,
                      **options)
        gauge = lambda: sum(process_cpu_s(pid) for pid in sc.job.pids())  # noqa: E731
    else:
        sc = Scenario(work, f"p{parallelism}-s{size}", "serving", parallelism=parallelism, **options)
        gauge = lambda: job_cpu_s(sc.job.process.pid)  # noqa: E731
    try:
        replay(sc.bootstrap, TOPICS.readings, rate=0, count=samples, n_devices=DEVICES, samples_per_message=size)
        expected = expected_windows(samples, DEVICES, 32, 8)
        got, seconds, cpu = drain_gauged(sc, expected, gauge)
        cluster = f"stack: {spread(sc.job.placement())}" if on_stack else "MiniCluster"  # where the subtasks ran
        timed = samples * got / expected - DEVICES * 32  # samples before the first full windows are not timed
        return {"parallelism": parallelism, "cluster": cluster, "samples_per_message": size, "samples": samples,
                "windows": got,
                "expected": expected, "seconds": seconds, "job_cpu_s": cpu, "samples_per_s": timed / seconds,
                "samples_per_cpu_s": timed / cpu, "cores_used": cpu / seconds}
    finally:
        sc.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--parallelism", default="1,2,4", help="on the job's own MiniCluster ('': none)")
    parser.add_argument("--stack", default="", help="on a session cluster of as many TaskManagers, e.g. 1,2")
    parser.add_argument("--sizes", default="1,50")
    parser.add_argument("--samples", type=int, default=300_000, help="samples per run with blocks (60,000 single)")
    parser.add_argument("--registry", default="var/registry")
    parser.add_argument("--patch", type=int, default=1,
                        help="samples per token of the served model (above 1: one trained here, in a registry of its own)")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="parallelism-bench-") as tmp:
        registry = patch_registry(Path(tmp) / f"patch{args.patch}", args.patch) if args.patch > 1 else args.registry
        for size in (int(s) for s in args.sizes.split(",")):
            samples = min(args.samples, 60_000 * size)
            runs = [(int(v), False) for v in args.parallelism.split(",") if v]
            runs += [(int(v), True) for v in args.stack.split(",") if v]
            for p, on_stack in runs:
                rows.append(measure(Path(tmp), p, size, samples, registry, on_stack))
                print(rows[-1], flush=True)
    base = {}
    for r in rows:  # each size's first row is the baseline
        base.setdefault(r["samples_per_message"], r)
    print_table("Serving at several parallelisms on this machine (backlog, 64 devices, window 32, stride 8)",
                ["samples per message", "parallelism", "cluster", "samples/s", "vs the first row", "job CPU cores busy",
                 "samples per job CPU-second", "vs the first row (per CPU-second)", "windows out/expected"],
                [[r["samples_per_message"], r["parallelism"], r["cluster"], r["samples_per_s"],
                  round(r["samples_per_s"] / base[r["samples_per_message"]]["samples_per_s"], 2),
                  round(r["cores_used"], 2), r["samples_per_cpu_s"],
                  round(r["samples_per_cpu_s"] / base[r["samples_per_message"]]["samples_per_cpu_s"], 2),
                  f"{r['windows']}/{r['expected']}"] for r in rows])
    print(f"results: {save('parallelism', {'rows': rows})}")


if __name__ == "__main__":
    main()
