"""Run simulated labelers against a broker until stopped (``sensorloop simulate-labelers``)."""

from __future__ import annotations

import threading
import time

import orjson
from kafka import KafkaProducer

from infra.kafka_tools import TopicTail
from operators.simulated_labelers import SimulatedLabelers
from schemas import Topics


def run_simulated_labelers(bootstrap: str, classes: list[str], delay_ms: int = 500, error_rate: float = 0.0,
                           stop: threading.Event | None = None, duration_s: float | None = None) -> int:
    """Answer review requests until ``stop`` is set or ``duration_s`` passes; returns answers given."""
    topics = Topics.from_env()
    labelers = SimulatedLabelers(classes, delay_ms, error_rate)
    tail = TopicTail(bootstrap, [topics.predictions, topics.review_requests])
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    started = time.monotonic()
    try:
        while not (stop is not None and stop.is_set()):
            if duration_s is not None and time.monotonic() - started > duration_s:
                break
            now = int(time.time() * 1000)
            for record in tail.poll(100):
                try:
                    body = orjson.loads(record.value)
                    if record.topic == topics.predictions:
                        labelers.on_prediction(body, now)
                    else:
                        labelers.on_request(body, now)
                except (orjson.JSONDecodeError, KeyError, TypeError):
                    continue  # malformed records are the jobs' to dead-letter; a labeler just skips them
            for label in labelers.due(int(time.time() * 1000)):
                producer.send(topics.labels, key=label.review_id.encode(), value=label.encode())
        producer.flush()
    finally:
        tail.close()
        producer.close()
    return labelers.answered
