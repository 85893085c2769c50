"""Turn raw Kafka payloads into validated readings or dead letters (never an exception)."""

from __future__ import annotations

import time
from typing import Sequence

from schemas import DeadLetter, SchemaError, SensorReading

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
    """Validates readings against the configured channels.

    >>> p = ReadingParser(["x", "y"], source_topic="sensor-readings")
    >>> p.parse(b'{"device_id": "d", "ts": 1, "values": {"x": 1, "y": 2}}', 0, 7).values
    [1.0, 2.0]
    >>> dl = p.parse(b'{"device_id": "d", "ts": 1, "values": [1, NaN]}', 0, 8)
    >>> dl.offset, dl.field, dl.reason.startswith("$: malformed JSON")
    (8, '$', True)
    """

    def __init__(self, channel_names: Sequence[str], source_topic: str,
                 max_bytes: int = 64 * 1024) -> None:
        self.channel_names = list(channel_names)
        self.source_topic = source_topic
        self.max_bytes = max_bytes

    def parse(self, raw: bytes, partition: int, offset: int) -> SensorReading | DeadLetter:
        try:
            return SensorReading.decode(raw, channel_names=self.channel_names, max_bytes=self.max_bytes)
        except SchemaError as exc:
            return self.dead_letter(raw, partition, offset, str(exc), exc.field)

    def dead_letter(self, raw: bytes, partition: int, offset: int, reason: str,
                    field: str | None = None, stage: str = "parse") -> DeadLetter:
        return DeadLetter(self.source_topic, partition, offset, reason, raw_text(raw), field, stage,
                          int(time.time() * 1000))
