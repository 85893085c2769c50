"""The embedded broker alone: reading latency and broker CPU as the topic fills up.

The same sender and consumer as the serving benchmark (sender in its own process at a fixed
rate, a consumer following ``sensor-readings``), no Flink job. Every ``--every`` seconds it
prints how many records the topic holds, the latency of the readings received in that slice
(Kafka timestamp to receipt) and the broker process's CPU share. With Tansu's in-memory
storage the cost of a fetch grows with the records the topic holds, so latency and CPU climb
over a run; a broker that does not (Apache Kafka) shows flat rows.

Run: ``python bench/broker_bench.py [--rate 1000] [--seconds 60] [--bootstrap HOST:PORT]``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import RESULTS, line_plot, print_table, save  # noqa: E402
from bench.serving_bench import process_cpu_s, start_sender  # noqa: E402
from infra.broker import EmbeddedBroker, ensure_topics  # noqa: E402
from infra.kafka_tools import TopicTail  # noqa: E402
from schemas import Topics  # noqa: E402
from control.replayer import DEFAULT_LINGER_MS  # noqa: E402


def run(bootstrap: str, rate: float, seconds: float, every: float, broker_pid: int | None,
        linger_ms: int = DEFAULT_LINGER_MS) -> list[dict]:
    topic = Topics().readings
    tail = TopicTail(bootstrap, [topic])
    held = len(tail.poll(500))
    sender = start_sender(bootstrap, rate, seconds, stdout=subprocess.DEVNULL, linger_ms=linger_ms)
    rows: list[dict] = []
    latencies: list[float] = []
    slice_start, cpu_start = time.monotonic(), process_cpu_s(broker_pid)
    try:
        while sender.poll() is None:
            for record in tail.poll(100):
                latencies.append(time.time() * 1000 - record.timestamp)
            now = time.monotonic()
            if now - slice_start >= every and latencies:
                held += len(latencies)
                cpu = process_cpu_s(broker_pid)
                lat = np.asarray(latencies)
                rows.append({"records_held": held, "received": len(lat), "p50_ms": float(np.percentile(lat, 50)),
                             "p99_ms": float(np.percentile(lat, 99)),
                             "broker_cpu_pct": 100.0 * (cpu - cpu_start) / (now - slice_start)})
                print(rows[-1], flush=True)
                latencies, slice_start, cpu_start = [], now, cpu
    finally:
        sender.wait()
        tail.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--linger-ms", type=int, default=DEFAULT_LINGER_MS, help="the sender's batching wait")
    parser.add_argument("--every", type=float, default=10.0, help="seconds per row")
    parser.add_argument("--bootstrap", default=None, help="an existing broker (its CPU is not measured)")
    args = parser.parse_args()
    broker = None
    if args.bootstrap is None:
        broker = EmbeddedBroker(log_path=Path(tempfile.mkdtemp(prefix="sensorloop-broker-")) / "broker.log").start()
    bootstrap = args.bootstrap or broker.bootstrap
    try:
        ensure_topics(bootstrap, Topics())
        rows = run(bootstrap, args.rate, args.seconds, args.every, broker.process.pid if broker else None,
                   args.linger_ms)
    finally:
        if broker is not None:
            broker.stop()
    print_table(f"Broker alone at {args.rate:,.0f} readings/s: latency and broker CPU as the topic fills",
                ["records held", "received in slice", "p50 (ms)", "p99 (ms)", "broker CPU %"],
                [[r["records_held"], r["received"], r["p50_ms"], r["p99_ms"], f"{r['broker_cpu_pct']:.0f}"]
                 for r in rows])
    print(f"results: {save('broker', {'rate': args.rate, 'rows': rows})}")
    try:
        held = [r["records_held"] for r in rows]
        line_plot(RESULTS / "broker.png", [("p99", held, [r["p99_ms"] for r in rows], {"marker": "o"}),
                                           ("p50", held, [r["p50_ms"] for r in rows], {"marker": "x"})],
                  "records held by the topic", "latency (ms)", "Broker alone: reading latency vs records held")
    except ImportError:
        print("matplotlib not installed: no plot")


if __name__ == "__main__":
    main()
