"""The loop a user would write instead of the serving job: one Python process with the Kafka client,
orjson, a NumPy ring per device and ONNX Runtime micro-batches, producing the same predictions topic.

It is the honest baseline for ``blocks_bench.py``: no Flink, so no checkpointed window state (a crash
loses every device's ring and the offsets it had not committed), no exactly-once output, no
rescaling, no dead letters (a bad record is skipped), no model swaps, no review routing.

It asks the broker to answer a fetch within 20 ms (``fetch_max_wait_ms``; kafka-python's default of 500 ms
held its p50 at about 150 ms at 1,000 messages/s on the embedded broker), as a user after low latency would.
Each prediction carries ``latency_ms`` as the job's do: from the Kafka timestamp of the message that completed
its window to when it was produced. Run alone: ``python bench/plain_consumer.py --bootstrap HOST:PORT
--expected N`` (a backlog from the start), or ``--follow`` (from the end of the topic, until stopped: the
latency runs of ``blocks_bench.py``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from model.registry import ModelRegistry  # noqa: E402
from model.runtime import OnnxRunner  # noqa: E402
from schemas import Topics  # noqa: E402


class PlainRun(NamedTuple):
    """What :func:`run` did: predictions sent, seconds from the first to the last, and how much the
    ``gauge`` given to it grew in between (NaN without one)."""

    sent: int
    seconds: float
    gauge_grew: float | dict[str, float] = float("nan")


def run(bootstrap: str, expected: int, registry: str = "var/registry", window: int = 32, stride: int = 8,
        max_batch: int = 64, timeout_s: float = 600.0, idle_s: float = 20.0,
        gauge: Callable[[], dict[str, float]] | None = None, follow: bool = False,
        precision: str = "fp32") -> PlainRun:
    """Consume the readings topic from the start until ``expected`` predictions are out (or it goes
    quiet). ``gauge`` (e.g. CPU seconds by name) is read at the first prediction and after the last.
    ``follow``: from the end of the topic, until the process is stopped. ``precision="int8"`` scores with
    the version's INT8 graph (as the job does with ``serving.precision = "int8"``)."""
    from kafka import KafkaConsumer, KafkaProducer

    topics = Topics()
    loaded = ModelRegistry(registry).load("basic-motions", int8=precision == "int8")
    if precision == "int8" and loaded.int8_bytes is None:
        raise SystemExit(f"basic-motions v{loaded.metadata.version} in {registry} has no INT8 graph")
    classes = loaded.metadata.spec["classes"]
    runner = OnnxRunner(loaded.int8_bytes if precision == "int8" else loaded.onnx_bytes, prefer="cpu", threads=1)
    consumer = KafkaConsumer(topics.readings, bootstrap_servers=bootstrap, group_id=None,
                             auto_offset_reset="latest" if follow else "earliest", enable_auto_commit=False,
                             max_poll_records=5000, fetch_max_bytes=64 * 1024 * 1024, fetch_max_wait_ms=20)
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, batch_size=256 * 1024, acks=1)
    rings: dict[str, list] = {}  # device -> [ring array, samples seen, ring of timestamps]
    pending: list[tuple[str, int, np.ndarray, int]] = []  # device, window end, window, Kafka timestamp
    sent, first, last = 0, None, None
    at_first, at_last = None, None

    def flush() -> None:
        nonlocal sent, first, last, at_first, at_last
        if not pending:
            return
        probs = runner.predict_proba(np.stack([w for _, _, w, _ in pending]))
        now = int(time.time() * 1000)
        for (device, end, _, ingest), row in zip(pending, probs):
            top = int(row.argmax())
            producer.send(topics.predictions, key=device.encode(), value=orjson.dumps(
                {"device_id": device, "window_end": end, "label": classes[top], "confidence": float(row[top]),
                 "model_name": "basic-motions", "emitted_at": now, "latency_ms": max(0, now - ingest)}))
        sent += len(pending)
        pending.clear()
        if first is None and gauge is not None:
            at_first = gauge()
        first, last = first or time.monotonic(), time.monotonic()
        if gauge is not None and sent >= expected:
            at_last = gauge()

    if follow:
        expected, timeout_s, idle_s = sys.maxsize, float("inf"), float("inf")
    started = quiet_since = time.monotonic()
    try:
        while sent < expected and time.monotonic() - started < timeout_s:
            batch = consumer.poll(timeout_ms=100)
            if not batch:
                flush()
                if first is not None and time.monotonic() - quiet_since > idle_s:
                    break
                continue
            quiet_since = time.monotonic()
            for records in batch.values():
                for record in records:
                    try:
                        obj = orjson.loads(record.value)
                        device = obj["device_id"]
                        rows = obj["values"]
                        if rows and isinstance(rows[0], list):  # a sample block
                            values = np.asarray(rows, np.float32)
                            ts = obj["ts"] if isinstance(obj["ts"], list) else [obj["ts"]] * len(rows)
                        else:
                            values, ts = np.asarray([rows], np.float32), [obj["ts"]]
                    except (ValueError, KeyError, TypeError):
                        continue  # a bad record is skipped: nobody hears of it
                    state = rings.get(device)
                    if state is None:
                        state = rings[device] = [np.zeros((window, values.shape[1]), np.float32), 0]
                    ring = state[0]
                    for row, t in zip(values, ts):
                        ring[state[1] % window] = row
                        state[1] += 1
                        n = state[1]
                        if n >= window and (n - window) % stride == 0:
                            oldest = n % window
                            pending.append((device, int(t), np.concatenate((ring[oldest:], ring[:oldest])),
                                            record.timestamp))
                            if len(pending) >= max_batch:
                                flush()
            flush()
    finally:
        producer.flush()
        producer.close()
        consumer.close()
    seconds = (last - first) if first and last and last > first else float("nan")
    if at_first is None or at_last is None:
        return PlainRun(sent, seconds)
    return PlainRun(sent, seconds, {k: at_last[k] - at_first[k] for k in at_first})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--expected", type=int, default=0, help="predictions to wait for (a backlog)")
    parser.add_argument("--follow", action="store_true", help="from the end of the topic, until stopped")
    parser.add_argument("--registry", default="var/registry")
    parser.add_argument("--stride", type=int, default=8)
    parser.add_argument("--precision", choices=("fp32", "int8"), default="fp32")
    args = parser.parse_args()
    if not args.follow and args.expected < 1:
        parser.error("--expected N (a backlog) or --follow")
    sent, seconds, _ = run(args.bootstrap, args.expected, args.registry, stride=args.stride, follow=args.follow,
                           precision=args.precision)
    print(f"{sent} predictions in {seconds:.2f} s ({sent / seconds:,.0f}/s)")


if __name__ == "__main__":
    main()
