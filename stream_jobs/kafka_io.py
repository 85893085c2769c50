"""Kafka I/O for the Flink jobs: the official KafkaSource/KafkaSink with sensorloop's helpers.

Sources hand Python ``b"topic partition offset timestamp\\n" + payload``, keyed by device id
(see ``JsonKeyedDeserializer``); every Python operator emits routed strings
``topic \\x1f key \\x1f json`` that one KafkaSink writes with the right topic and key (the serving
operators pack a call's outputs into one string, ``packed``; ``RoutedSplitter`` unpacks them before the sink).
"""

from __future__ import annotations

import struct
import time

from pyflink.common import Types, WatermarkStrategy
from pyflink.datastream import DataStream, KeyedStream, OutputTag, StreamExecutionEnvironment
from pyflink.datastream.connectors.base import DeliveryGuarantee
from pyflink.datastream.connectors.kafka import (
    KafkaOffsetsInitializer,
    KafkaSink,
    KafkaSource,
)
from pyflink.java_gateway import get_gateway

from operators.outgoing import Outgoing, dead_letter_out
from schemas import DeadLetter
from stream_jobs.flink_env import keyed_by_first_field

SEP = "\x1f"
RECORD_SEP = "\x1e"  # between the routed records of one packed output (RoutedSplitter)
GROUP_MARK = 0  # first byte of a ReadingGrouper record holding several envelopes (a topic name never starts so)
GROUP_MAX_BYTES = 8 * 1024 * 1024  # ReadingGrouper sends every group on when more than this is held
DEAD_LETTERS = OutputTag("dead-letters", Types.STRING())  # each job's side output for bad input


def routed(out: Outgoing) -> str:
    """An operator's output record as the routed sink's Java serializer reads it.

    >>> routed(Outgoing("predictions", "dev-1", b'{"a":1}')).split(SEP)
    ['predictions', 'dev-1', '{"a":1}']
    """
    return f"{out.topic}{SEP}{out.key or ''}{SEP}{out.payload.decode()}"


def packed(outgoing) -> list[str]:
    """A Python operator's outputs of one call as one record (``RECORD_SEP`` between routed records), which
    ``RoutedSplitter`` splits again in the sink's task: the operator's thread, the job's bound, hands Java one
    record per call instead of one per output. Neither separator occurs inside a record: ids hold no control
    characters and payloads are JSON, which escapes them.

    >>> packed([Outgoing("predictions", "dev-1", b'{"a":1}'), Outgoing("reviews", None, b'{}')])
    ['predictions\\x1fdev-1\\x1f{"a":1}\\x1ereviews\\x1f\\x1f{}']
    >>> packed([])
    []
    """
    return [RECORD_SEP.join(map(routed, outgoing))] if outgoing else []


def now_ms() -> int:
    return int(time.time() * 1000)


def dead_letter_record(dead_letters_topic: str, letter: DeadLetter) -> str:
    """A dead letter as a routed record, keyed by the topic the bad input came from."""
    return routed(dead_letter_out(dead_letters_topic, letter))


def split_envelope(data) -> tuple[str, int, int, int, bytes]:
    """``(topic, partition, offset, kafka timestamp ms, payload)`` of an enveloped source record
    (the bytes themselves, or the ``Row(key, bytes)`` of a keyed source).

    >>> split_envelope(b"labels 3 17 1700000000000\\n{}")
    ('labels', 3, 17, 1700000000000, b'{}')
    """
    if not isinstance(data, (bytes, bytearray)):
        data = data[1]
    head, _, payload = data.partition(b"\n")
    topic, partition, offset, timestamp = head.split(b" ")
    return topic.decode(), int(partition), int(offset), int(timestamp), payload


_LENGTH = struct.Struct(">I").unpack_from  # ReadingGrouper's 4-byte big-endian length before each field


def _prefixed(data: bytes, at: int) -> tuple[bytes, int]:
    """The bytes of the 4-byte big-endian length-prefixed field at ``at`` (``ReadingGrouper``'s framing), and
    where the next field starts."""
    (n,) = _LENGTH(data, at)
    return data[at + 4:at + 4 + n], at + 4 + n


def unpack_group(data) -> list[bytes]:
    """The envelopes of a record (its bytes, or the ``Row(key, bytes)`` of a keyed source) from
    ``ReadingGrouper``: the record itself when it is one envelope, else
    each length-prefixed envelope after the group mark.

    >>> unpack_group(b"readings 0 1 5\\n{}")
    [b'readings 0 1 5\\n{}']
    >>> unpack_group(b"\\x00" + (3).to_bytes(4, "big") + b"a\\nb" + (2).to_bytes(4, "big") + b"c\\n")
    [b'a\\nb', b'c\\n']
    """
    if not isinstance(data, (bytes, bytearray)):  # the Row(key, bytes) of a keyed source
        data = data[1]
    if not data or data[0] != GROUP_MARK:
        return [data]
    data = bytes(data)  # its envelopes as bytes
    envelopes, at, end = [], 1, len(data)
    while at < end:
        envelope, at = _prefixed(data, at)
        envelopes.append(envelope)
    return envelopes


CHECKPOINT_MARK = b"\x01"  # ReadingGrouper's record to a shard before each checkpoint barrier
SHARD_MARK = 2  # first byte of a ReadingGrouper record holding one shard's (key, envelope) pairs
QUIET_MARK = b"\x03"  # ReadingGrouper's record to a shard once the readings paused after its records (quiet_ms)


def unpack_shard_group(data: bytes) -> list[tuple[str, bytes]]:
    """The ``(key, envelope)`` pairs of a shard's group from ``ReadingGrouper`` (``shards > 0``): after the
    mark, each as a 4-byte big-endian length and the key's UTF-8 bytes, then a length and the envelope.

    >>> unpack_shard_group(b"\\x02" + (2).to_bytes(4, "big") + b"d1" + (3).to_bytes(4, "big") + b"a\\nb")
    [('d1', b'a\\nb')]
    """
    if not data or data[0] != SHARD_MARK:
        raise ValueError(f"not a shard group (first byte {data[:1]!r})")
    data = bytes(data)
    pairs, at, end = [], 1, len(data)
    while at < end:
        key, at = _prefixed(data, at)
        envelope, at = _prefixed(data, at)
        pairs.append((key.decode(), envelope))
    return pairs


def keyed_source(env: StreamExecutionEnvironment, bootstrap: str, topics: list[str], group_id: str,
                 name: str, key_field: str = "device_id", from_committed: bool = True,
                 group: tuple[int, int] = (1, 0), shards: int = 0, *, fetch_wait_ms: int,
                 quiet_ms: int = 0) -> KeyedStream:
    """KafkaSource over ``topics`` keyed by a top-level JSON field of the payload, read in Java.

    Elements are the enveloped bytes; the source resumes from committed offsets (and from
    checkpointed ones when restored). ``name`` is also the source's uid, which keys its offsets
    in savepoints. ``group = (most messages, most milliseconds)``: when both allow it, messages of
    one key are grouped in Java (``ReadingGrouper``, stateless: it sends everything on before each
    checkpoint) into records that ``unpack_group`` splits. With ``shards > 0`` the stream is keyed by
    shard instead (an INT: the CRC-32 of the key modulo ``shards``), always through the grouper, whose
    records ``unpack_shard_group`` splits, with a ``CHECKPOINT_MARK`` record before each checkpoint and, with
    ``quiet_ms > 0``, a ``QUIET_MARK`` record to every shard it sent records of once no record has come for
    ``quiet_ms`` (the input paused: a burst ended).
    ``fetch_wait_ms``: how long the broker may hold a fetch that finds nothing (``broker.fetch_wait_ms`` for
    readings, ``broker.rare_fetch_wait_ms`` for rare records: the embedded broker answers only when the wait
    ends, so a source polls at this period and costs the job and the broker CPU even while nothing comes)."""
    jvm = get_gateway().jvm
    if from_committed:  # PyFlink's own helper points at the shaded SQL-connector class
        offsets = KafkaOffsetsInitializer(
            jvm.org.apache.flink.connector.kafka.source.enumerator.initializer.OffsetsInitializer
            .committedOffsets(jvm.org.apache.kafka.clients.consumer.OffsetResetStrategy.EARLIEST))
    else:
        offsets = KafkaOffsetsInitializer.earliest()
    builder = (KafkaSource.builder()
               .set_bootstrap_servers(bootstrap)
               .set_topics(*topics)
               .set_group_id(group_id)
               .set_starting_offsets(offsets)
               .set_property("partition.discovery.interval.ms", "10000")
               .set_property("fetch.max.wait.ms", str(fetch_wait_ms))
               .set_property("commit.offsets.on.checkpoint", "true"))
    builder._j_builder.setDeserializer(jvm.io.sensorloop.flink.JsonKeyedDeserializer(key_field))
    payload_type = Types.PRIMITIVE_ARRAY(Types.BYTE())
    rows = env.from_source(builder.build(), WatermarkStrategy.no_watermarks(), name,
                           type_info=Types.ROW([Types.STRING(), payload_type])).uid(name)
    most, wait_ms = group
    if shards > 0:
        grouper = jvm.io.sensorloop.flink.ReadingGrouper(most, wait_ms, GROUP_MAX_BYTES, shards, quiet_ms)
        row_type = Types.ROW([Types.INT(), payload_type]).get_java_type_info()
        j_rows = rows._j_data_stream.transform(f"{name}-shard-groups", row_type, grouper)
        return keyed_by_first_field(DataStream(j_rows.uid(f"{name}-shard-groups")), Types.INT(), payload_type)
    if most > 1 and wait_ms > 0:
        grouper = jvm.io.sensorloop.flink.ReadingGrouper(most, wait_ms, GROUP_MAX_BYTES)
        j_rows = rows._j_data_stream.transform(f"{name}-groups", rows._j_data_stream.getType(), grouper)
        rows = DataStream(j_rows.uid(f"{name}-groups"))
    return keyed_by_first_field(rows, Types.STRING(), payload_type)


def batched(builder):
    """A KafkaSink builder whose producer batches up to 256 KB per partition, sent after at most 2 ms. Kafka's
    16 KB default made a produce request of every few dozen predictions: draining blocks of 50 samples, the
    embedded broker used 0.15-0.17 of a core with it and 0.11-0.13 with 256 KB (a batch still leaves after
    ``linger.ms``, so latency is unchanged). Every sink here, the pass-through baseline's too, is built so."""
    return builder.set_property("linger.ms", "2").set_property("batch.size", str(256 * 1024))


def sink_routed(out: DataStream, bootstrap: str, exactly_once: bool, transactional_prefix: str) -> None:
    """Write a job's routed records, packed (``packed``) or not, with ``routed_sink``: ``RoutedSplitter`` unpacks
    them first, in the sink's task."""
    split = out._j_data_stream.flatMap(get_gateway().jvm.io.sensorloop.flink.RoutedSplitter(),
                                       Types.STRING().get_java_type_info())
    unpacked = DataStream(split.name("kafka-out-unpack").uid("kafka-out-unpack"))
    unpacked.sink_to(routed_sink(bootstrap, exactly_once, transactional_prefix)).name("kafka-out").uid("kafka-out")


def routed_sink(bootstrap: str, exactly_once: bool = False, transactional_prefix: str = "sensorloop") -> KafkaSink:
    """One KafkaSink for every output topic; topic and key come from the routed record."""
    builder = KafkaSink.builder().set_bootstrap_servers(bootstrap)
    builder._j_builder.setRecordSerializer(get_gateway().jvm.io.sensorloop.flink.RoutedRecordSerializer())
    if exactly_once:
        builder.set_delivery_guarantee(DeliveryGuarantee.EXACTLY_ONCE)
        builder.set_transactional_id_prefix(transactional_prefix)
        builder.set_property("transaction.timeout.ms", "600000")
    else:
        builder.set_delivery_guarantee(DeliveryGuarantee.AT_LEAST_ONCE)
    return batched(builder).build()
