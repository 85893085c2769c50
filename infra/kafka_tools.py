"""Small kafka-python helpers for tools, tests and benchmarks (not used inside Flink).

Records are read by manual assignment from the beginning of every partition: counting by
consuming is reliable against any broker (Tansu's reported end offsets are not).
"""

from __future__ import annotations

import time
from typing import Callable, Iterable

from kafka import KafkaConsumer, KafkaProducer, TopicPartition


def partitions_of(consumer: KafkaConsumer, topics: Iterable[str], timeout_s: float = 10.0) -> list[TopicPartition]:
    found: list[TopicPartition] = []
    deadline = time.monotonic() + timeout_s
    for topic in topics:
        parts = consumer.partitions_for_topic(topic)
        while not parts and time.monotonic() < deadline:
            time.sleep(0.1)
            parts = consumer.partitions_for_topic(topic)
        if not parts:
            raise RuntimeError(f"topic {topic!r} has no partitions (does it exist?)")
        found.extend(TopicPartition(topic, p) for p in sorted(parts))
    return found


class TopicTail:
    """Follows topics from their beginning; ``poll`` returns what arrived since the last call."""

    def __init__(self, bootstrap: str, topics: Iterable[str], isolation_level: str = "read_uncommitted") -> None:
        self.consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                      isolation_level=isolation_level, fetch_max_wait_ms=10,
                                      max_poll_records=5000)
        parts = partitions_of(self.consumer, list(topics))
        self.consumer.assign(parts)
        self.consumer.seek_to_beginning(*parts)

    def poll(self, timeout_ms: int = 200) -> list:
        out = []
        for records in self.consumer.poll(timeout_ms=timeout_ms).values():
            out.extend(records)
        return out

    def close(self) -> None:
        self.consumer.close()


def read_until(bootstrap: str, topics: Iterable[str], done: Callable[[list], bool], timeout_s: float,
               isolation_level: str = "read_uncommitted") -> list:
    """Collect records from ``topics`` until ``done(records)`` or ``timeout_s`` passes."""
    tail = TopicTail(bootstrap, topics, isolation_level)
    records: list = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline and not done(records):
            records.extend(tail.poll(200))
        return records
    finally:
        tail.close()


def read_quiet(bootstrap: str, topics: Iterable[str], quiet_s: float = 3.0, timeout_s: float = 60.0,
               isolation_level: str = "read_uncommitted", first_s: float = 10.0) -> list:
    """Collect records until nothing new arrived for ``quiet_s`` seconds (before the first record, for
    ``first_s``: a first fetch from a broker that just started or is busy may take longer than the quiet)."""
    tail = TopicTail(bootstrap, topics, isolation_level)
    records: list = []
    deadline = time.monotonic() + timeout_s
    last_new = time.monotonic() + max(0.0, first_s - quiet_s)
    try:
        while time.monotonic() < deadline and time.monotonic() - last_new < quiet_s:
            batch = tail.poll(200)
            if batch:
                records.extend(batch)
                last_new = time.monotonic()
        return records
    finally:
        tail.close()


def produce(bootstrap: str, topic: str, items: Iterable[tuple[bytes | None, bytes]]) -> int:
    """Send ``(key, value)`` pairs and wait until all are acknowledged."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    n = 0
    try:
        for key, value in items:
            producer.send(topic, key=key, value=value)
            n += 1
        producer.flush()
    finally:
        producer.close()
    return n
