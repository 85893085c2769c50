"""What each delivery mode of the serving job costs, and what a crash does in each.

For the at-least-once sink (the default) and the exactly-once (transactional) sink, each on a fresh
broker, with checkpoints every second:

- latency: 16 devices at 400 readings/s for 20 s; from a reading's send time to the moment a
  ``read_committed`` consumer (what a downstream consumer of an exactly-once topic must use) sees the
  prediction of the window that reading ends;
- crash: the same stream, the job killed with SIGKILL half-way and restarted from its newest
  retained checkpoint while the devices keep sending; the windows expected, delivered, duplicated
  and lost, and the seconds from the kill to the first prediction of a window that ended after it.

Run: ``python bench/delivery_bench.py [--rate 400] [--seconds 20]``.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import print_table, save  # noqa: E402
from control.flink_rest import FlinkRest  # noqa: E402
from control.launcher import JobProcess, serving_job  # noqa: E402
from infra.broker import EmbeddedBroker, ensure_topics, free_port  # noqa: E402
from infra.kafka_tools import TopicTail  # noqa: E402
from model.datasets import load_basic_motions  # noqa: E402
from operators.replay import ReadingStream  # noqa: E402
from schemas import Topics  # noqa: E402

TOPICS = Topics()
WINDOW, STRIDE, DEVICES = 32, 8, 16


class Sender(threading.Thread):
    """Sends replayed readings at ``rate`` for ``seconds``, stamped with their send time, and keeps
    which windows they make (device, end timestamp)."""

    def __init__(self, bootstrap: str, rate: float, seconds: float) -> None:
        super().__init__(daemon=True)
        self.bootstrap, self.rate, self.seconds = bootstrap, rate, seconds
        self.sent_at: dict[tuple[str, int], float] = {}  # window key -> send time (s) of its last reading
        self.windows: set[tuple[str, int]] = set()

    def run(self) -> None:
        from kafka import KafkaProducer

        stream = ReadingStream(load_basic_motions("test"), n_devices=DEVICES, seed=0)
        producer = KafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=20)
        counts: dict[str, int] = {}
        started, sent, last_ts = time.perf_counter(), 0, 0
        while (elapsed := time.perf_counter() - started) < self.seconds:
            if sent >= elapsed * self.rate:
                time.sleep(0.002)
                continue
            reading = next(stream)
            now = time.time()
            last_ts = max(last_ts + 1, int(now * 1000))  # strictly increasing per device (and overall)
            reading["ts"] = last_ts
            producer.send(TOPICS.readings, key=reading["device_id"].encode(), value=orjson.dumps(reading))
            n = counts[reading["device_id"]] = counts.get(reading["device_id"], 0) + 1
            if n >= WINDOW and (n - WINDOW) % STRIDE == 0:
                key = (reading["device_id"], last_ts)
                self.windows.add(key)
                self.sent_at[key] = now
            sent += 1
        producer.flush()
        producer.close()


def start_job(bootstrap: str, work: Path, name: str, exactly_once: bool, restore: str = "") -> JobProcess:
    port = free_port()
    options = dict(registry=str(REGISTRY), state_dir=str(work / "flink"), checkpoint_interval_ms=1000,
                   exactly_once=exactly_once, group_id="delivery-bench", rest_port=port, confidence_drift_delta=0.0)
    if restore:
        options["savepoint_path"] = restore
    job = serving_job(bootstrap, work / f"{name}.log", **options).start()
    FlinkRest(f"localhost:{port}", timeout_s=2).wait_all_tasks_running(job.alive)
    return job


def newest_checkpoint(work: Path) -> str:
    found = sorted((work / "flink" / "checkpoints" / "serving").glob("*/chk-*/_metadata"),
                   key=lambda p: int(p.parent.name.split("-")[1]))
    if not found:
        raise RuntimeError(f"no completed checkpoint under {work}")
    return str(found[-1].parent)


def collect(tail: TopicTail, seen: list, until, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not until():
        for record in tail.poll(200):
            p = orjson.loads(record.value)
            seen.append(((p["device_id"], p["window_end"]), time.time()))


def run_mode(bootstrap_work: Path, exactly_once: bool, rate: float, seconds: float) -> dict:
    mode = "exactly-once" if exactly_once else "at-least-once"
    out: dict = {"mode": mode}
    for phase in ("latency", "crash"):
        work = bootstrap_work / f"{mode}-{phase}"
        work.mkdir(parents=True)
        with EmbeddedBroker(log_path=work / "broker.log") as broker:
            ensure_topics(broker.bootstrap, TOPICS)
            job = start_job(broker.bootstrap, work, "job", exactly_once)
            tail = TopicTail(broker.bootstrap, [TOPICS.predictions], "read_committed")
            sender = Sender(broker.bootstrap, rate, seconds)
            seen: list = []
            killed_at = None
            try:
                sender.start()
                if phase == "crash":
                    collect(tail, seen, lambda: len(seen) >= 0.4 * rate * seconds / STRIDE, seconds)
                    time.sleep(1.5)  # a checkpoint after those
                    killed_at = time.time()
                    os.killpg(job.process.pid, signal.SIGKILL)
                    job.process.wait()
                    job = start_job(broker.bootstrap, work, "job-restarted", exactly_once, newest_checkpoint(work))
                collect(tail, seen, lambda: not sender.is_alive(), seconds + 60)  # read while the devices send
                sender.join()
                collect(tail, seen, lambda: len({k for k, _ in seen}) >= len(sender.windows), 120)
                collect(tail, seen, lambda: False, 4)  # late duplicates, if any
            finally:
                job.stop()
                tail.close()
        keys = [k for k, _ in seen]
        if phase == "latency":
            lat = [(at - sender.sent_at[k]) * 1000 for k, at in seen if k in sender.sent_at]
            out.update(predictions=len(keys), p50_ms=float(np.percentile(lat, 50)),
                       p99_ms=float(np.percentile(lat, 99)))
        else:
            after = [at for k, at in seen if sender.sent_at.get(k, 0) > killed_at]  # windows ended after the kill
            out.update(expected=len(sender.windows), delivered=len(keys), unique=len(set(keys)),
                       duplicates=len(keys) - len(set(keys)), lost=len(sender.windows - set(keys)),
                       recovery_s=(min(after) - killed_at) if after else None)
    return out


REGISTRY = Path("var/registry")


def main() -> None:
    global REGISTRY
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=400.0, help="readings per second (all devices)")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--registry", default="var/registry")
    args = parser.parse_args()
    REGISTRY = Path(args.registry).resolve()
    with tempfile.TemporaryDirectory(prefix="sensorloop-delivery-") as tmp:
        rows = [run_mode(Path(tmp), exactly_once, args.rate, args.seconds) for exactly_once in (False, True)]
    table = [[r["mode"], r["predictions"], r["p50_ms"], r["p99_ms"], r["expected"], r["delivered"], r["duplicates"],
              r["lost"], "-" if r["recovery_s"] is None else r["recovery_s"]] for r in rows]
    print_table(f"Delivery modes: latency at {args.rate:.0f} readings/s as a read_committed consumer sees it, "
                "and a SIGKILL half-way with a restart from the newest checkpoint (1 s interval)",
                ["sink", "predictions", "p50 ms", "p99 ms", "windows expected", "delivered", "duplicates", "lost",
                 "kill -> first prediction (s)"], table)
    print(f"results: {save('delivery', {'rate': args.rate, 'seconds': args.seconds, 'rows': rows})}")


if __name__ == "__main__":
    main()
