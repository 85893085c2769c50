"""Counts a topic's records from its beginning and reports when the first and the last of them were produced
(their Kafka timestamps), so that a benchmark times a job by its output rather than by when a busy harness
got round to reading it. ``bench/serving_bench.drain`` runs it as a child process in a session of its own
whose scheduler autogroup yields the CPU to everything else (nice 19): counting tens of thousands of records
per second with kafka-python takes about half a core, which on two cores was taken from the job it measured.

Run: ``python bench/output_count.py BOOTSTRAP TOPIC EXPECTED [--timeout 600] [--idle 20]``; prints one JSON
line: ``{"count": n, "first_ms": ..., "last_ms": ...}``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from infra.kafka_tools import TopicTail  # noqa: E402


def count(bootstrap: str, topic: str, expected: int, timeout_s: float = 600.0, idle_s: float = 20.0) -> dict:
    """Read ``topic`` until ``expected`` records, ``idle_s`` without one after the first, or ``timeout_s``."""
    tail = TopicTail(bootstrap, [topic])
    got, first_ms, last_ms = 0, None, None
    deadline, idle_since = time.monotonic() + timeout_s, time.monotonic()
    try:
        while got < expected and time.monotonic() < deadline:
            batch = tail.poll(200)
            now = time.monotonic()
            if batch:
                stamps = [r.timestamp for r in batch]
                first_ms = min(stamps) if first_ms is None else min(first_ms, *stamps)
                last_ms = max(stamps) if last_ms is None else max(last_ms, *stamps)
                got, idle_since = got + len(batch), now
            elif first_ms is not None and now - idle_since > idle_s:
                break
    finally:
        tail.close()
    return {"count": got, "first_ms": first_ms, "last_ms": last_ms}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("bootstrap")
    parser.add_argument("topic")
    parser.add_argument("expected", type=int)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--idle", type=float, default=20.0)
    args = parser.parse_args()
    sys.stdout.write(orjson.dumps(count(args.bootstrap, args.topic, args.expected, args.timeout, args.idle)).decode()
                     + "\n")


if __name__ == "__main__":
    main()
