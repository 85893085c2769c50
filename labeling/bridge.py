"""Kafka side of the labeling app: follows ``review-requests`` and ``labels``, publishes answers."""

from __future__ import annotations

import logging
import threading
import time

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.structs import OffsetAndMetadata

from infra.kafka_tools import partitions_of
from operators.parse import raw_text
from operators.review_queue import ReviewQueue
from schemas import DeadLetter, Label, ReviewRequest, SchemaError, Topics

log = logging.getLogger(__name__)


class LabelingBridge:
    """A background thread that keeps a :class:`ReviewQueue` in step with the topics.

    Review requests are read with the consumer group ``group_id`` from its committed
    offsets (the first unanswered request of each partition is what gets committed);
    ``labels`` is read from the beginning so answers given elsewhere are known too.
    Malformed requests and labels go to ``dead-letters``.
    """

    def __init__(self, bootstrap: str, queue: ReviewQueue, topics: Topics,
                 group_id: str = "sensorloop-labeling") -> None:
        self.bootstrap, self.queue, self.topics = bootstrap, queue, topics
        self.group_id = group_id
        self.lock = threading.RLock()
        self.stop_event = threading.Event()
        self.ready = threading.Event()
        self.producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=0, acks="all")
        self.thread = threading.Thread(target=self._run, name="labeling-bridge", daemon=True)

    def start(self) -> "LabelingBridge":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(timeout=10)
        self.producer.close()

    def publish(self, label: Label) -> None:
        """Write an answer to ``labels`` and wait for the broker to acknowledge it."""
        self.producer.send(self.topics.labels, key=label.review_id.encode(), value=label.encode()).get(timeout=10)
        with self.lock:
            self.queue.record(label)

    def _dead_letter(self, record, exc: Exception) -> None:
        letter = DeadLetter(record.topic, record.partition, record.offset, str(exc), raw_text(record.value or b""),
                            getattr(exc, "field", None), "labeling", int(time.time() * 1000))
        self.producer.send(self.topics.dead_letters, key=record.topic.encode(), value=letter.encode())
        log.warning("dead-lettered %s@%d:%d: %s", record.topic, record.partition, record.offset, exc)

    def _consumer(self) -> KafkaConsumer:
        consumer = KafkaConsumer(bootstrap_servers=self.bootstrap, group_id=self.group_id,
                                 enable_auto_commit=False, fetch_max_wait_ms=50)
        requests = partitions_of(consumer, [self.topics.review_requests])
        labels = partitions_of(consumer, [self.topics.labels])
        consumer.assign(requests + labels)
        consumer.seek_to_beginning(*labels)
        for tp in requests:
            committed = consumer.committed(tp)
            if committed is None:
                consumer.seek_to_beginning(tp)
            else:
                consumer.seek(tp, committed)
        return consumer

    def _handle(self, record) -> None:
        try:
            if record.topic == self.topics.review_requests:
                request = ReviewRequest.decode(record.value)
                with self.lock:
                    self.queue.add(request, record.partition, record.offset)
            else:
                label = Label.decode(record.value, classes=self.queue.all_classes)
                with self.lock:
                    self.queue.record(label)
        except SchemaError as exc:
            self._dead_letter(record, exc)

    def _commit(self, consumer: KafkaConsumer) -> None:
        with self.lock:
            offsets = self.queue.resume_offsets()
        if offsets:
            try:
                consumer.commit({TopicPartition(self.topics.review_requests, p): OffsetAndMetadata(o, "", -1)
                                 for p, o in offsets.items()})
            except Exception as exc:  # a failed commit only means re-reading answered requests later
                log.warning("offset commit failed: %s", exc)

    def _run(self) -> None:
        consumer = self._consumer()
        next_commit = time.monotonic() + 5
        try:
            while not self.stop_event.is_set():
                batch = consumer.poll(timeout_ms=200)
                for records in batch.values():
                    for record in records:
                        self._handle(record)
                if not batch:
                    self.ready.set()
                if time.monotonic() >= next_commit:
                    self._commit(consumer)
                    next_commit = time.monotonic() + 5
            self._commit(consumer)
        finally:
            consumer.close()
