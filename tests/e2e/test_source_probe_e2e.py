"""The serving job's source probe (``stream_jobs.source_probe.KafkaRecordProbe``) against the real broker,
on sample-block-sized records: it fetches at most ``PROBE_FETCH_BYTES`` per partition, far less than one
record batch here, and still finds the record at an offset the job read (the broker returns a first batch
whole), and says plainly when there is none."""

from __future__ import annotations

import pytest
from kafka import KafkaProducer

from infra.broker import EmbeddedBroker, create_topics
from stream_jobs.source_probe import PROBE_FETCH_BYTES, KafkaRecordProbe

pytestmark = pytest.mark.e2e


def test_the_probe_finds_records_in_batches_larger_than_its_fetch_size(tmp_path):
    broker = EmbeddedBroker(log_path=tmp_path / "broker.log").start()
    probe = KafkaRecordProbe(broker.bootstrap, "blocks", timeout_ms=3_000)
    try:
        create_topics(broker.bootstrap, {"blocks": 2})
        record = b"x" * (4 * PROBE_FETCH_BYTES)  # a 50-sample block is about this size
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=50, batch_size=256 * 1024)
        for i in range(400):  # 200 a partition, in batches of many records
            producer.send("blocks", value=record, partition=i % 2)
        producer.flush()
        producer.close()
        found = probe({0: 0, 1: 0})
        assert set(found) == {0, 1} and all(found.values()), found
        middle = probe({0: 77, 1: 120})
        assert middle == {0: True, 1: True}
        # past the end of a partition, or a partition the topic does not have: no such record
        assert probe({0: 10_000, 1: 3, 7: 0}) == {0: False, 1: True, 7: False}
    finally:
        probe.close()
        broker.stop()
