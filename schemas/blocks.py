"""Many samples of one device in one ``sensor-readings`` message (a sample block).

Devices that sample at 50-100 Hz send a block every fraction of a second. A block carries
``ts`` (the first sample's time, epoch ms) with ``interval_ms``, or ``ts`` as one time per sample
(strictly increasing); ``values`` as rows (``[[...], ...]``) or as named columns
(``{"acc_x": [...], ...}``); ``seq`` is the first sample's sequence number (the others follow on);
``label`` applies to every sample, ``labels`` gives one per sample (``null`` where unknown).
Every sample is checked before anything is used, and a bad one is named by its index.

>>> b = decode_reading(b'{"device_id": "d", "ts": 1000, "interval_ms": 20, "values": [[1, 2], [3, 4], [5, 6]]}',
...                    channel_names=["x", "y"])
>>> b.ts.tolist(), b.values.shape, len(b)
([1000, 1020, 1040], (3, 2), 3)
>>> decode_reading(b'{"device_id": "d", "ts": [5, 9], "values": {"x": [1, 2], "y": [3, "4"]}}', ["x", "y"])
Traceback (most recent call last):
...
schemas.base.SchemaError: values[1][1]: must be a number, got str
>>> decode_reading(b'{"device_id": "d", "ts": [5, 9], "values": [[1, 2], [3, 1e300]]}', ["x", "y"], max_abs=1e9)
Traceback (most recent call last):
...
schemas.base.SchemaError: values[1][1]: magnitude 1e+300 above the limit 1e+09
>>> decode_reading(b'{"device_id": "d", "ts": [5, 5], "values": [[1, 2], [3, 4]]}', ["x", "y"])
Traceback (most recent call last):
...
schemas.base.SchemaError: ts[1]: 5 is not after the sample before it (5)
>>> decode_reading(b'{"device_id": "d", "ts": 5, "values": [1, 2]}', ["x", "y"]).values  # one sample: a SensorReading
[1.0, 2.0]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import chain
from operator import lt, sub
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np

from schemas.base import (
    DEFAULT_MAX_BYTES,
    MAX_SAFE_INT,
    SCHEMA_VERSION,
    SchemaError,
    check_fields,
    check_version,
    decode_json,
    finite_floats,
    require_id,
    require_int,
    require_str,
)
from schemas.records import SensorReading, named_values

MAX_BLOCK_SAMPLES = 10_000


def is_block(obj: Mapping[str, Any]) -> bool:
    """Whether a decoded reading is a sample block (several samples, or the block form of one)."""
    values = obj.get("values")
    return ("interval_ms" in obj or "labels" in obj or isinstance(obj.get("ts"), list)
            or (isinstance(values, list) and bool(values) and isinstance(values[0], list))
            or (isinstance(values, dict) and any(isinstance(v, list) for v in values.values())))


@dataclass(slots=True)
class SampleBlock:
    """Samples of one device: ``ts`` [n] (epoch ms, increasing), ``values`` [n, channels]."""

    device_id: str
    ts: np.ndarray
    values: np.ndarray
    seq: int | None = None
    labels: list | None = None  # one per sample (None where unknown), or None when no sample has one
    device_type: str | None = None

    REQUIRED = ("device_id", "ts", "values")
    OPTIONAL = ("schema_version", "seq", "label", "labels", "device_type", "interval_ms")

    def __len__(self) -> int:
        return len(self.ts)

    def readings(self) -> list[SensorReading]:
        """The block as single-sample readings (the order and fields the windower's per-sample path takes)."""
        labels = self.labels or [None] * len(self)
        return [SensorReading(self.device_id, int(t), row.tolist(), None if self.seq is None else self.seq + k,
                              labels[k], self.device_type)
                for k, (t, row, _) in enumerate(zip(self.ts, self.values, labels))]

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any], channel_names: Sequence[str] | None = None, max_abs: float = math.inf,
                  max_samples: int = MAX_BLOCK_SAMPLES, no_bools: bool = False) -> "SampleBlock":
        """``no_bools``: the caller knows ``obj`` holds no JSON ``true`` or ``false`` (:func:`holds_no_bools` of
        the payload it was decoded from), so NumPy may read the numbers' types (it would take a bool for 1 or 0)."""
        check_fields(obj, cls.REQUIRED, cls.OPTIONAL)
        check_version(obj)
        device_id = require_id(obj, "device_id")
        rows = _rows(obj["values"], channel_names, max_samples)
        values = _matrix(rows, len(channel_names) if channel_names else len(rows[0]), max_abs, no_bools)
        ts = _times(obj, len(rows))
        seq = require_int(obj, "seq", minimum=0) if obj.get("seq") is not None else None
        labels = _labels(obj, len(rows))
        device_type = require_id(obj, "device_type") if obj.get("device_type") is not None else None
        return cls(device_id, ts, values, seq, labels, device_type)


def _rows(raw: Any, channel_names: Sequence[str] | None, max_samples: int) -> list:
    """``values`` as a list of rows (columns are turned into rows), with the sample count checked."""
    if isinstance(raw, dict):
        columns = named_values(raw, channel_names)
        for name, column in zip(channel_names, columns):
            if not isinstance(column, list):
                raise SchemaError(f"values.{name}", f"must be a list of samples, got {type(column).__name__}")
            if len(column) != len(columns[0]):
                raise SchemaError(f"values.{name}", f"{len(column)} samples where {channel_names[0]} has "
                                                    f"{len(columns[0])}")
        rows = [list(row) for row in zip(*columns)]
    elif isinstance(raw, list):
        rows = raw
    else:
        raise SchemaError("values", f"must be a list of rows or an object of columns, got {type(raw).__name__}")
    if not rows:
        raise SchemaError("values", "a block needs at least one sample")
    if len(rows) > max_samples:
        raise SchemaError("values", f"a block of {len(rows)} samples; at most {max_samples} allowed")
    return rows


_NUMBERS = frozenset((float, int))
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _plain_matrix(flat: list, channels: int, max_abs: float) -> np.ndarray | None:
    """The usual block as a float32 [n, channels] array from its plain rows' flat values (:func:`_plain_rows`),
    checked in C loops: all finite (a finite sum clears every element) and within ``max_abs`` and float32's
    range; None for anything else, which :func:`_matrix` then checks value by value and names.

    >>> _plain_matrix([1, 2.5, 3, -4], 2, 10).tolist(), _plain_matrix([1, 2.5, 3, -40], 2, 10)
    ([[1.0, 2.5], [3.0, -4.0]], None)
    """
    if not flat:  # rows of no channels
        return None
    limit = min(max_abs, _FLOAT32_MAX)
    try:  # an integer too large for a float cannot be summed with floats or tested for finiteness
        if not (math.isfinite(sum(flat)) and max(flat) <= limit and min(flat) >= -limit):
            return None
    except OverflowError:
        return None
    return np.array(flat, np.float32).reshape(-1, channels)


def _plain_rows(rows: list, channels: int) -> list | None:
    """The rows' values as one flat list when every row is a list of ``channels`` JSON numbers (the common case,
    checked at C speed; bool and str are refused as in a single reading), else None."""
    if set(map(type, rows)) != {list} or set(map(len, rows)) != {channels}:
        return None
    flat = list(chain.from_iterable(rows))
    return flat if set(map(type, flat)) <= _NUMBERS else None


def holds_no_bools(raw: bytes | str) -> bool:
    """Whether a JSON payload cannot hold a boolean: neither literal is anywhere in it (one inside a string only
    makes this say False).

    >>> holds_no_bools(b'{"values": [[1, 0]]}'), holds_no_bools(b'{"values": [[1, false]]}')
    (True, False)
    """
    if isinstance(raw, str):
        return "true" not in raw and "false" not in raw
    return b"true" not in raw and b"false" not in raw


def _typed_matrix(rows: list, channels: int, max_abs: float) -> np.ndarray | None:
    """The usual block as a float32 [n, channels] array, NumPy telling the values' types as it reads them (for rows
    that hold no bool, which it would read as a number): rows of ``channels`` JSON numbers give an integer or float
    array. Checked like :func:`_plain_matrix`; None for anything else, which :func:`_matrix` then checks value by
    value and names.

    >>> _typed_matrix([[1, 2.5], [3, -4]], 2, 10).tolist(), _typed_matrix([[1, "2"], [3, 4]], 2, 10)
    ([[1.0, 2.5], [3.0, -4.0]], None)
    """
    try:
        values = np.array(rows)
    except (ValueError, OverflowError, TypeError):  # ragged rows, an integer too large for a float
        return None
    if values.ndim != 2 or values.shape[1] != channels or not values.size or values.dtype.kind not in "fi":
        return None  # strings, nulls and objects give other kinds; unsigned: an integer beyond int64
    if values.dtype.kind == "i":
        values = values.astype(np.float64)  # the absolute value of int64's minimum is negative
    return _float32_within(values, max_abs)


def _float32_within(values: np.ndarray, max_abs: float) -> np.ndarray | None:
    """``values`` (floats) as float32 when all are finite and within ``max_abs`` and float32's range, else None.

    >>> _float32_within(np.array([1.5, -2.0]), 2.0).dtype, _float32_within(np.array([1.0, np.nan]), 2.0)
    (dtype('float32'), None)
    """
    peak = np.abs(values).max()  # NaN when any value is NaN: then no comparison holds
    return values.astype(np.float32) if peak <= max_abs and peak <= _FLOAT32_MAX else None


def _matrix(rows: list, channels: int, max_abs: float, no_bools: bool = False) -> np.ndarray:
    """The rows as a float32 [n, channels] array; the first bad sample or value is named. ``no_bools``: the rows
    hold no bool (NumPy may tell the types)."""
    if no_bools:
        fast = _typed_matrix(rows, channels, max_abs)
        if fast is not None:
            return fast
    flat = _plain_rows(rows, channels)
    if flat is None:
        _name_bad_row(rows, channels)
    else:
        fast = _plain_matrix(flat, channels, max_abs)
        if fast is not None:
            return fast
    try:
        values = np.asarray(rows, np.float64)
    except OverflowError:  # an integer beyond float range: find and name it
        for i, row in enumerate(rows):
            finite_floats(row, f"values[{i}]", max_abs)
        raise
    checked = _float32_within(values, max_abs)
    if checked is not None:
        return checked
    magnitude = np.abs(values)
    bad = ~np.isfinite(values) | (magnitude > max_abs)
    if bad.any():
        i, j = (int(k) for k in np.argwhere(bad)[0])
        finite_floats(rows[i], f"values[{i}]", max_abs)  # raises with the reason for that sample
        raise SchemaError(f"values[{i}][{j}]", "out of range")
    if (magnitude > _FLOAT32_MAX).any():
        raise SchemaError("values", "a value beyond float32 range")
    return values.astype(np.float32)


def _name_bad_row(rows: list, channels: int) -> None:
    """Raise for the first row that is not a list of ``channels`` numbers, or the first value in it that is
    not a number."""
    for i, row in enumerate(rows):
        if not isinstance(row, list):
            raise SchemaError(f"values[{i}]", f"must be a list of {channels} numbers, got {type(row).__name__}")
        if len(row) != channels:
            raise SchemaError(f"values[{i}]", f"expected {channels} channels, got {len(row)}")
        for j, v in enumerate(row):
            if type(v) is not float and type(v) is not int:  # bool and str are refused, as in a single reading
                raise SchemaError(f"values[{i}][{j}]", f"must be a number, got {type(v).__name__}")


def _times(obj: Mapping[str, Any], n: int) -> np.ndarray:
    """One time per sample: ``ts`` as a list, or ``ts`` + k * ``interval_ms``; strictly increasing."""
    raw = obj["ts"]
    if isinstance(raw, list):
        if "interval_ms" in obj:
            raise SchemaError("interval_ms", "give either a ts per sample or interval_ms, not both")
        if len(raw) != n:
            raise SchemaError("ts", f"{len(raw)} times for {n} samples")
        if set(map(type, raw)) == {int}:  # the common case, checked at C speed
            if all(map(lt, raw, raw[1:])) and raw[0] >= 0 and raw[-1] <= MAX_SAFE_INT:
                return np.array(raw, np.int64)
            if min(raw) >= 0 and max(raw) <= MAX_SAFE_INT:
                return _increasing(np.asarray(raw, np.int64))  # names the first time not after the one before
        ts = [require_int({f"ts[{k}]": t}, f"ts[{k}]", minimum=0) for k, t in enumerate(raw)]
    else:
        first = require_int(obj, "ts", minimum=0)
        if "interval_ms" not in obj:
            if n > 1:
                raise SchemaError("ts", f"a block of {n} samples needs interval_ms or a ts per sample")
            ts = [first]
        else:
            interval = obj["interval_ms"]
            if isinstance(interval, bool) or not isinstance(interval, (int, float)) or not interval > 0 \
                    or not math.isfinite(interval):
                raise SchemaError("interval_ms", f"must be a positive number of milliseconds, got {interval!r}")
            last = first + int(round((n - 1) * interval))
            require_int({"ts": last}, "ts", minimum=0)  # the last sample's time stays a safe integer
            if type(interval) is int:  # whole milliseconds: increasing by construction
                return np.arange(first, last + 1, interval, dtype=np.int64)
            ts = first + np.round(np.arange(n) * float(interval)).astype(np.int64)  # round half to even, as round()
    return _increasing(np.asarray(ts, np.int64))


def _increasing(ts: np.ndarray) -> np.ndarray:
    """``ts`` when strictly increasing; else the first sample that is not after the one before it is named."""
    steps = np.diff(ts)
    if steps.size and steps.min() <= 0:
        k = int(np.argmax(steps <= 0)) + 1
        raise SchemaError(f"ts[{k}]", f"{int(ts[k])} is not after the sample before it ({int(ts[k - 1])})")
    return ts


def _labels(obj: Mapping[str, Any], n: int) -> list | None:
    if obj.get("label") is not None and obj.get("labels") is not None:
        raise SchemaError("labels", "give either label (every sample) or labels (one per sample), not both")
    if obj.get("label") is not None:
        return [require_str(obj, "label")] * n
    raw = obj.get("labels")
    if raw is None:
        return None
    if not isinstance(raw, list) or len(raw) != n:
        raise SchemaError("labels", f"must be a list of {n} labels (null where unknown)")
    return [None if v is None else require_str({f"labels[{k}]": v}, f"labels[{k}]") for k, v in enumerate(raw)]


class BlockRun(NamedTuple):
    """Blocks of one device that carry on one another, joined: ``block`` holds every sample, ``ends`` the sample
    index after each message's last."""

    block: SampleBlock
    ends: list[int]


_RUN_FIELDS = frozenset(SampleBlock.REQUIRED + SampleBlock.OPTIONAL)
_RUN_REQUIRED = frozenset(SampleBlock.REQUIRED)


def decode_block_run(objs: Sequence[Mapping[str, Any]], channel_names: Sequence[str], max_abs: float = math.inf,
                     max_samples: int = MAX_BLOCK_SAMPLES) -> BlockRun | None:
    """Several decoded sample blocks (or single readings, blocks of one sample here) of one device, checked and
    joined at once, when each is the usual kind (rows of JSON numbers, no bools: the caller has looked at the
    payloads' bytes) and each carries on the one before (the same device and type, times increasing across them,
    ``seq`` continuing; single readings that carry ``seq`` may share a time, as one by one). None for anything
    else: then each is decoded alone (:func:`reading_from_dict`), which names what is wrong with which. Every
    message accepted here is one ``reading_from_dict`` accepts, with the same samples.

    >>> run = decode_block_run([{"device_id": "d", "ts": [1, 2], "values": [[1, 2], [3, 4]], "seq": 0},
    ...                         {"device_id": "d", "ts": 5, "interval_ms": 1, "values": [[5, 6]], "seq": 2}],
    ...                        ["x", "y"])
    >>> run.block.ts.tolist(), run.block.values.tolist(), run.block.seq, run.ends
    ([1, 2, 5], [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], 0, [2, 3])
    >>> decode_block_run([{"device_id": "d", "ts": 7, "values": [1, 2]},
    ...                   {"device_id": "d", "ts": 9, "values": [3, 4]}], ["x", "y"]).block.ts.tolist()
    [7, 9]
    >>> decode_block_run([{"device_id": "d", "ts": [1, 2], "values": [[1, 2], [3, 4]]},
    ...                   {"device_id": "d", "ts": [2, 3], "values": [[5, 6], [7, 8]]}], ["x", "y"]) is None
    True
    """
    first = objs[0]
    device_id, device_type, seq = first.get("device_id"), first.get("device_type"), first.get("seq")
    singles = True  # every message a single reading so far
    rows: list = []
    times: list = []  # the times of each block: its ts list, or an array from ts and interval_ms
    labels: list = []
    ends: list[int] = []
    try:
        require_id(first, "device_id")
        if device_type is not None:
            require_id(first, "device_type")
        for obj in objs:
            fields = obj.keys()
            if not (fields <= _RUN_FIELDS and fields >= _RUN_REQUIRED) or obj.get("schema_version", SCHEMA_VERSION) \
                    != SCHEMA_VERSION or obj["device_id"] != device_id or obj.get("device_type") != device_type:
                return None
            block_rows, ts = obj["values"], obj["ts"]
            n = len(block_rows) if type(block_rows) is list else 0
            if not n:
                return None
            if type(block_rows[0]) is not list:  # a single reading: one sample, its time an integer
                if type(ts) is not int or "interval_ms" in obj or "labels" in obj:
                    return None  # (interval_ms or labels would make it a block of rows that are not lists)
                block_rows, ts, n = [block_rows], [ts], 1
            elif n > max_samples:
                return None
            else:
                singles = False
            block_seq = obj.get("seq")
            if seq is None:
                if block_seq is not None:
                    return None
            elif type(block_seq) is not int or block_seq != seq + (ends[-1] if ends else 0) \
                    or not 0 <= block_seq <= MAX_SAFE_INT:
                return None  # not an integer, or not carrying on the block before
            if type(ts) is list:
                if len(ts) != n or "interval_ms" in obj:
                    return None
                times.append(ts)
            else:
                times.append(_times(obj, n))
            labels.append(_labels(obj, n))
            rows += block_rows
            ends.append(ends[-1] + n if ends else n)
        flat_times = [t for block in times if type(block) is list for t in block]
        if set(map(type, flat_times)) - {int}:
            return None
        if len(flat_times) == ends[-1]:  # every block gave its times as a list
            ts = np.array(flat_times, np.int64)
        else:
            ts = np.concatenate([np.asarray(block, np.int64) for block in times])
    except (SchemaError, OverflowError):
        return None
    # times increase; single readings that carry sequence numbers may share one (they are used in seq order)
    if len(ts) > 1 and np.diff(ts).min() < (0 if singles and seq is not None else 1):
        return None
    if ts[0] < 0 or ts[-1] > MAX_SAFE_INT:
        return None
    values = _typed_matrix(rows, len(channel_names), max_abs)
    if values is None:
        return None
    joined = None
    if any(labels):
        joined = [label for part, n in zip(labels, map(sub, ends, [0] + ends[:-1]))
                  for label in (part or [None] * n)]
    return BlockRun(SampleBlock(device_id, ts, values, seq, joined, device_type), ends)


def decode_reading(raw: bytes | str, channel_names: Sequence[str] | None = None, max_bytes: int = DEFAULT_MAX_BYTES,
                   max_abs: float = math.inf, max_samples: int = MAX_BLOCK_SAMPLES) -> SensorReading | SampleBlock:
    """A single reading or a sample block, whichever the payload is."""
    return reading_from_dict(decode_json(raw, max_bytes), channel_names, max_abs, max_samples, holds_no_bools(raw))


def reading_from_dict(obj: Mapping[str, Any], channel_names: Sequence[str] | None = None, max_abs: float = math.inf,
                      max_samples: int = MAX_BLOCK_SAMPLES, no_bools: bool = False) -> SensorReading | SampleBlock:
    """A single reading or a sample block (``no_bools``: as :meth:`SampleBlock.from_dict`)."""
    if is_block(obj):
        return SampleBlock.from_dict(obj, channel_names, max_abs, max_samples, no_bools)
    return SensorReading.from_dict(obj, channel_names=channel_names, max_abs=max_abs)
