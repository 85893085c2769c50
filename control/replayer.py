"""Publish replayed real sensor readings to Kafka at a chosen rate."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterator

import orjson

from operators.replay import BlockPacker, DriftPlan, ReadingStream


@dataclass
class ReplayStats:
    sent: int = 0  # readings (samples)
    seconds: float = 0.0
    messages: int = 0  # Kafka messages: fewer than ``sent`` with sample blocks
    drift_at_ms: int | None = None  # the time stamped on the first reading a DriftPlan changed


# Readings gathered per partition for up to this long go out as one batch. Tansu's in-memory
# storage scans a partition's batches on every fetch that returns data, so a topic of one-record
# batches makes every consumer's fetch (the job's source included) cost more as it fills
# (bench/broker_bench.py measures it). The wait counts in the measured latency (the record's
# timestamp is taken when it is handed to the producer).
DEFAULT_LINGER_MS = 20


def make_producer(bootstrap: str, linger_ms: int = DEFAULT_LINGER_MS):
    from kafka import KafkaProducer

    return KafkaProducer(bootstrap_servers=bootstrap, linger_ms=linger_ms, batch_size=256 * 1024, acks=1,
                         enable_idempotence=False, max_in_flight_requests_per_connection=5)


def replay(bootstrap: str, topic: str, rate: float, count: int | None = None, duration_s: float | None = None,
           n_devices: int = 8, seed: int = 0, split: str = "test", drift: DriftPlan | None = None,
           device_prefix: str = "device", stop=None, stats: ReplayStats | None = None,
           linger_ms: int = DEFAULT_LINGER_MS, stream: Iterator[dict] | None = None,
           device_type: str | None = None, samples_per_message: int = 1) -> ReplayStats:
    """Send readings (timestamp = send time) until ``count`` readings or ``duration_s`` seconds.

    ``rate`` is readings per second across all devices (0 = as fast as possible). ``stream`` gives
    the readings (an imported dataset's ``recordings.store.DatasetStream``); else BasicMotions.
    ``device_type`` is stamped on every reading (it picks the model when several are served). With
    ``samples_per_message`` > 1 each device's readings go out as sample blocks of that many samples.
    """
    from model.datasets import load_basic_motions

    stats = stats or ReplayStats()
    if stream is None:
        stream = ReadingStream(load_basic_motions(split), n_devices, seed, drift, device_prefix)
    producer = make_producer(bootstrap, linger_ms)
    packer = BlockPacker(samples_per_message) if samples_per_message > 1 else None

    def send(message: dict) -> None:
        producer.send(topic, key=message["device_id"].encode(), value=orjson.dumps(message))
        stats.messages += 1

    started = time.perf_counter()
    try:
        while True:
            elapsed = time.perf_counter() - started
            if (count is not None and stats.sent >= count) or (duration_s is not None and elapsed >= duration_s):
                break
            if stop is not None and stop.is_set():
                break
            if rate > 0:
                due = int(elapsed * rate) + 1 - stats.sent
                if due <= 0:
                    time.sleep(min(0.002, (stats.sent + 1) / rate - elapsed))
                    continue
            else:
                due = 1000
            if count is not None:
                due = min(due, count - stats.sent)
            now = int(time.time() * 1000)
            for _ in range(due):
                reading = next(stream)
                reading["ts"] = now
                if drift is not None and stats.drift_at_ms is None and getattr(stream, "emitted", 0) > drift.after:
                    stats.drift_at_ms = now
                if device_type is not None:
                    reading["device_type"] = device_type
                message = reading if packer is None else packer.add(reading)
                if message is not None:
                    send(message)
            stats.sent += due
        for message in packer.drain() if packer is not None else ():
            send(message)
        producer.flush()
    finally:
        producer.close()
        stats.seconds = time.perf_counter() - started
    return stats
