"""What an idle serving job costs: CPU of the job and of its broker while no reading arrives, with the
announcements source polling every ``broker.rare_fetch_wait_ms`` (250 ms, the default) and, as the
baseline, every 10 ms like the readings source, in one run.

Each case starts a fresh broker and the serving job, sends a few seconds of readings so the job has
served (its first prediction arrived), waits ``--settle`` seconds, then measures ``--seconds`` seconds of
silence: the CPU the job's threads and the broker used, per core, and the job's busiest threads. Cases
alternate ``--repeats`` times (the machine is shared and noisy). The embedded broker answers a waiting fetch
only when its wait ends, so every source keeps asking; an idle fleet costs what this table shows.

Run: ``python bench/idle_bench.py [--seconds 20] [--repeats 2]``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import print_table, save  # noqa: E402
from bench.serving_bench import CpuSplit, Scenario, process_tree, wait_first_output  # noqa: E402
from control.replayer import replay  # noqa: E402
from infra.kafka_tools import TopicTail  # noqa: E402
from schemas import Topics  # noqa: E402

CASES = {"announcements every 250 ms (default)": {}, "announcements every 10 ms": {"rare_fetch_wait_ms": 10}}


def idle_cost(work: Path, name: str, seconds: float, settle: float, **options) -> dict:
    """Cores used by the serving job and its broker during ``seconds`` of silence after it has served."""
    sc = Scenario(work, name, "serving", **options)
    try:
        sc.start_job()
        tail = TopicTail(sc.bootstrap, [sc.out_topic])
        stop = threading.Event()
        sender = threading.Thread(target=replay, kwargs=dict(bootstrap=sc.bootstrap, topic=Topics().readings,
                                                             rate=200, stop=stop, n_devices=8), daemon=True)
        sender.start()
        wait_first_output(sc, tail)
        stop.set()
        sender.join()
        tail.close()
        time.sleep(settle)
        cpu = CpuSplit({"job": process_tree(sc.job.process.pid), "broker": [sc.broker.process.pid]})
        time.sleep(seconds)
        split = cpu.stop()  # % of one core; the job's busiest threads by name (as the kernel cut them)
        return {"job_cores": split["job"] / 100, "broker_cores": split["broker"] / 100,
                "busiest": ", ".join(f"{name.strip()} {pct / 100:.2f}" for name, pct in split["job_threads"].items())}
    finally:
        sc.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds of silence measured per case")
    parser.add_argument("--settle", type=float, default=10.0, help="seconds after the last reading before measuring")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--registry", default="var/registry")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="idle-bench-") as tmp:
        for repeat in range(args.repeats):
            for i, (case, options) in enumerate(CASES.items()):
                got = idle_cost(Path(tmp), f"idle-{repeat}-{i}", args.seconds, args.settle,
                                registry=args.registry, **options)
                print(case, got, flush=True)
                rows.append({"case": case, "repeat": repeat + 1, **got})
    print_table("An idle serving job (cores; the two cases alternate)",
                ["case", "run", "job", "broker", "job + broker", "busiest threads of the job"],
                [[r["case"], r["repeat"], r["job_cores"], r["broker_cores"], r["job_cores"] + r["broker_cores"],
                  r["busiest"]] for r in rows])
    print(f"results: {save('idle', {'rows': rows, 'seconds': args.seconds})}")


if __name__ == "__main__":
    main()
