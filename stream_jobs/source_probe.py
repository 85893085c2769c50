"""Asks the broker, from a thread beside a job's operator, whether records the job read still exist
(``operators.source_watch.SourceWatch`` decides what that means)."""

from __future__ import annotations

import logging
import threading
import time

from operators.source_watch import SourceReset, SourceWatch

log = logging.getLogger(__name__)
PROBE_FETCH_BYTES = 1024  # per partition; a record batch larger than this still comes whole (KIP-74)


class KafkaRecordProbe:
    """``probe({partition: offset})``: per partition True when the broker returns that very record,
    False when it has no such record (or the topic is gone), None when the broker cannot be asked."""

    def __init__(self, bootstrap: str, topic: str, timeout_ms: int = 1_000, group_id: str | None = None) -> None:
        self.bootstrap, self.topic, self.timeout_ms, self.group_id = bootstrap, topic, timeout_ms, group_id
        self.consumer = None

    def _consumer(self):
        if self.consumer is None:
            from kafka import KafkaConsumer

            # it shares the job's Python interpreter with the operators: it fetches little (the broker still
            # returns a whole first batch) and skips the client's pure-Python CRC check of what it fetched,
            # which took a tenth of the interpreter on a busy topic; only the records' offsets are used
            # with the job's group id it can read the group's committed offsets; it only assigns partitions to
            # itself, so it never joins the group, and it never commits
            self.consumer = KafkaConsumer(bootstrap_servers=self.bootstrap, group_id=self.group_id,
                                          enable_auto_commit=False,
                                          auto_offset_reset="latest", request_timeout_ms=self.timeout_ms + 4_000,
                                          fetch_max_wait_ms=50, max_partition_fetch_bytes=PROBE_FETCH_BYTES,
                                          check_crcs=False, max_poll_records=64)
        return self.consumer

    def __call__(self, positions: dict[int, int]) -> dict[int, bool | None]:
        from kafka import TopicPartition
        from kafka.errors import KafkaError

        answers: dict[int, bool | None] = {}
        try:
            consumer = self._consumer()
            partitions = consumer.partitions_for_topic(self.topic) or set()
            wanted = {TopicPartition(self.topic, p): o for p, o in positions.items() if p in partitions}
            answers = {p: False for p in positions if p not in partitions}
            consumer.assign(list(wanted))
            for tp, offset in wanted.items():
                consumer.seek(tp, offset)
            deadline = time.monotonic() + self.timeout_ms / 1000
            while len(answers) < len(positions) and time.monotonic() < deadline:
                for tp, records in consumer.poll(timeout_ms=100).items():
                    if tp.partition not in answers and records:
                        answers[tp.partition] = records[0].offset == wanted[tp]
        except (KafkaError, OSError, ValueError) as exc:
            log.debug("source probe of %s: %s", self.topic, exc)
            self.close()
            return {}
        # a partition with no record at or after the offset within the time: the broker has none there
        return {p: answers.get(p, False) for p in positions}

    def committed(self) -> dict[int, int]:
        """``{partition: offset}`` the job's consumer group committed on the topic (the next offset to read);
        {} without a group id or when the broker cannot be asked."""
        if self.group_id is None:
            return {}
        from kafka import TopicPartition
        from kafka.errors import KafkaError

        try:
            consumer = self._consumer()
            offsets = {p: consumer.committed(TopicPartition(self.topic, p), timeout_ms=self.timeout_ms)
                       for p in sorted(consumer.partitions_for_topic(self.topic) or ())}
        except (KafkaError, OSError, ValueError) as exc:
            log.debug("committed offsets of %s: %s", self.topic, exc)
            self.close()
            return {}
        return {p: o for p, o in offsets.items() if o is not None}

    def close(self) -> None:
        if self.consumer is not None:
            try:
                self.consumer.close()
            except Exception:  # noqa: BLE001 - closing a broken client must not fail the job
                pass
            self.consumer = None


def report(reset: SourceReset) -> None:
    log.error("source stalled or reset: %s. Recover: see the README's 'A stalled source'", reset.message())


class SourceWatchThread:
    """Checks ``watch`` against the broker every ``interval_s`` on a daemon thread; logs each reset. A probe with
    the job's group id also has partitions not read yet checked at the offsets the group committed."""

    def __init__(self, watch: SourceWatch, probe: KafkaRecordProbe, interval_s: float) -> None:
        self.watch, self.probe, self.interval_s = watch, probe, interval_s
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"source-watch-{watch.topic}", daemon=True)

    def start(self) -> "SourceWatchThread":
        self.thread.start()
        return self

    def _run(self) -> None:
        while not self.stop_event.wait(self.interval_s):
            try:
                for reset in self.watch.check(self.probe, self.probe.committed):
                    report(reset)
            except Exception:  # noqa: BLE001 - the watch must never take the job down
                log.exception("source watch check failed")
        self.probe.close()

    def stop(self) -> None:
        self.stop_event.set()
