"""Turn raw Kafka payloads into validated readings or dead letters (never an exception)."""

from __future__ import annotations

import math
import time
from typing import Sequence

import orjson

from schemas import DeadLetter, SchemaError, SensorReading
from schemas.base import decode_json
from schemas.blocks import (
    MAX_BLOCK_SAMPLES,
    BlockRun,
    SampleBlock,
    decode_block_run,
    holds_no_bools,
    reading_from_dict,
)

RAW_PREVIEW_BYTES = 16 * 1024


def raw_text(raw: bytes) -> str:
    """Payload as text for a dead letter: UTF-8 where it decodes, escaped bytes where not,
    cut to a preview for oversize messages.

    >>> raw_text(b'ok')
    'ok'
    >>> raw_text(b'\\xff')
    '\\\\xff'
    """
    cut = raw[:RAW_PREVIEW_BYTES]
    text = cut.decode("utf-8", errors="backslashreplace")
    return text if len(raw) <= RAW_PREVIEW_BYTES else text + f"...[{len(raw) - RAW_PREVIEW_BYTES} more bytes]"


class ReadingParser:
    """Validates readings against the configured channels and bounds: values of magnitude at most
    ``max_abs``, and (when ``max_future_ms`` > 0) a timestamp at most that far ahead of the job's clock,
    so one reading dated in the future cannot make every later reading of its device "late".

    >>> p = ReadingParser(["x", "y"], source_topic="sensor-readings", max_abs=1e6, max_future_ms=60_000)
    >>> p.parse(b'{"device_id": "d", "ts": 1, "values": {"x": 1, "y": 2}}', 0, 7, now_ms=10).values
    [1.0, 2.0]
    >>> dl = p.parse(b'{"device_id": "d", "ts": 1, "values": [1, NaN]}', 0, 8)
    >>> dl.offset, dl.field, dl.reason
    (8, 'values[1]', 'values[1]: must be finite (NaN/inf refused)')
    >>> p.parse(b'{"device_id": "d", "ts": 4102444800000, "values": [1, 2]}', 0, 9, now_ms=1_800_000_000_000).reason
    'ts: 4102444800000 lies 2302444800 s ahead of the job clock (at most 60 s allowed)'
    """

    def __init__(self, channel_names: Sequence[str], source_topic: str, max_bytes: int = 64 * 1024,
                 max_abs: float = math.inf, max_future_ms: int = 0, model_name: str | None = None,
                 max_block_samples: int = MAX_BLOCK_SAMPLES) -> None:
        self.channel_names = list(channel_names)
        self.source_topic = source_topic
        self.max_bytes, self.max_abs, self.max_future_ms = max_bytes, max_abs, max_future_ms
        self.max_block_samples = max_block_samples
        self.model_name = model_name  # named in its dead letters when several models are served

    def parse(self, raw: bytes, partition: int, offset: int, now_ms: int | None = None
              ) -> SensorReading | SampleBlock | DeadLetter:
        try:
            obj = decode_json(raw, self.max_bytes)
        except SchemaError as exc:
            return self.dead_letter(raw, partition, offset, str(exc), exc.field)
        return self.parse_object(obj, raw, partition, offset, now_ms)

    def parse_object(self, obj: dict, raw: bytes, partition: int, offset: int,
                     now_ms: int | None = None) -> SensorReading | SampleBlock | DeadLetter:
        """As ``parse``, for a payload already decoded (``raw`` is kept for the dead letter); a sample
        block (``schemas.blocks``) is checked sample by sample."""
        try:
            reading = reading_from_dict(obj, self.channel_names, self.max_abs, self.max_block_samples,
                                        holds_no_bools(raw))
        except SchemaError as exc:
            return self.dead_letter(raw, partition, offset, str(exc), exc.field)
        last = reading.ts if isinstance(reading, SensorReading) else int(reading.ts[-1])
        if self.max_future_ms and now_ms is not None and last - now_ms > self.max_future_ms:
            return self.dead_letter(raw, partition, offset,
                                    f"ts: {last} lies {(last - now_ms) // 1000} s ahead of the job clock "
                                    f"(at most {self.max_future_ms // 1000} s allowed)", "ts")
        return reading

    def parse_run(self, objs: list[dict], now_ms: int | None = None) -> BlockRun | None:
        """Decoded sample blocks (or single readings) of one device that carry on one another, checked and joined
        at once (:func:`schemas.blocks.decode_block_run`; the payloads hold no JSON bool); None when any is of
        another kind or would be refused: then ``parse_object`` on each names what is wrong."""
        run = decode_block_run(objs, self.channel_names, self.max_abs, self.max_block_samples)
        if run is None or (self.max_future_ms and now_ms is not None
                           and int(run.block.ts[-1]) - now_ms > self.max_future_ms):
            return None
        return run

    def dead_letter(self, raw: bytes, partition: int, offset: int, reason: str,
                    field: str | None = None, stage: str = "parse") -> DeadLetter:
        return DeadLetter(self.source_topic, partition, offset, reason, raw_text(raw), field, stage,
                          int(time.time() * 1000), self.model_name)


class RoutedParser:
    """Parses readings for several served models: the payload is decoded once, the router picks the
    model (``operators.model_routing.DeviceRouter``), and that model's parser checks its channels.

    >>> from operators.model_routing import DeviceRouter
    >>> p = RoutedParser({"a": ReadingParser(["x"], "r", model_name="a"),
    ...                   "b": ReadingParser(["x", "y"], "r", model_name="b")}, DeviceRouter({"a": "a", "b": "b"}))
    >>> model, reading = p.parse(b'{"device_id": "d", "device_type": "b", "ts": 1, "values": [1, 2]}', 0, 1)
    >>> model, reading.values
    ('b', [1.0, 2.0])
    >>> letter = p.parse(b'{"device_id": "d", "device_type": "a", "ts": 1, "values": [1, 2]}', 0, 2)
    >>> letter.model_name, letter.reason
    ('a', 'values: expected 1 channels, got 2')
    >>> p.parse(b'{"device_id": "d", "ts": 1, "values": [1]}', 0, 3).field
    'device_type'
    """

    def __init__(self, parsers: dict[str, ReadingParser], router) -> None:
        self.parsers, self.router = parsers, router
        self.fallback = next(iter(parsers.values()))

    def parse(self, raw: bytes, partition: int, offset: int, now_ms: int | None = None
              ) -> tuple[str, SensorReading | SampleBlock] | DeadLetter:
        try:
            obj = decode_json(raw, self.fallback.max_bytes)  # every model's parser has the job's size limit
            model = self.router.route(obj.get("device_id"), obj.get("device_type"))
        except SchemaError as exc:
            letter = self.fallback.dead_letter(raw, partition, offset, str(exc), exc.field)
            letter.model_name = None
            return letter
        reading = self.parsers[model].parse_object(obj, raw, partition, offset, now_ms)
        return reading if isinstance(reading, DeadLetter) else (model, reading)

    def parse_run(self, payloads: list[bytes], now_ms: int | None = None) -> tuple[str, BlockRun] | None:
        """Sample blocks or single readings of one device, one per payload, each carrying on the one before: their
        model and the samples joined (``ReadingParser.parse_run``), or None where any payload is not such a
        message or would be refused (then ``parse`` on each names what is wrong).

        >>> from operators.model_routing import DeviceRouter
        >>> p = RoutedParser({"a": ReadingParser(["x"], "r")}, DeviceRouter({}, [("*", "a")]))
        >>> model, run = p.parse_run([b'{"device_id": "d", "ts": [1, 2], "values": [[1], [2]]}',
        ...                           b'{"device_id": "d", "ts": [3], "values": [[3]]}'])
        >>> model, run.block.values.ravel().tolist(), run.ends
        ('a', [1.0, 2.0, 3.0], [2, 3])
        >>> p.parse_run([b'{"device_id": "d", "ts": [1], "values": [[true]]}']) is None
        True
        """
        if max(map(len, payloads)) > self.fallback.max_bytes or not holds_no_bools(b"".join(payloads)):
            return None  # (a bool made of two payloads' bytes only sends them the longer way)
        try:
            objs = list(map(orjson.loads, payloads))
            if set(map(type, objs)) != {dict}:
                return None
            model = self.router.route(objs[0].get("device_id"), objs[0].get("device_type"))
        except (orjson.JSONDecodeError, SchemaError):
            return None
        run = self.parsers[model].parse_run(objs, now_ms)
        return None if run is None else (model, run)

    def dead_letter(self, model: str | None, raw: bytes, partition: int, offset: int, reason: str,
                    field: str | None = None, stage: str = "parse") -> DeadLetter:
        return (self.parsers[model] if model in self.parsers else self.fallback).dead_letter(
            raw, partition, offset, reason, field, stage)
