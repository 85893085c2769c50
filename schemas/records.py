"""One contract per topic. Each record decodes from JSON with validation that names the bad field.

>>> r = SensorReading.decode(b'{"device_id": "d1", "ts": 5, "values": [1, 2.5]}', channels=2)
>>> r.values, r.seq, r.label
([1.0, 2.5], None, None)
>>> SensorReading.decode(b'{"device_id": "d1", "ts": 5, "values": [1]}', channels=2)
Traceback (most recent call last):
...
schemas.base.SchemaError: values: expected 2 channels, got 1
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field, fields
from typing import Any, Mapping, Sequence

from schemas.base import (
    DEFAULT_MAX_BYTES,
    SCHEMA_VERSION,
    SchemaError,
    check_fields,
    check_version,
    decode_json,
    encode_json,
    finite_floats,
    require_choice,
    require_float,
    require_int,
    require_id,
    require_str,
)


@functools.cache
def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls))


class _Record:
    """Encode/decode helpers shared by every contract."""

    MAX_BYTES = DEFAULT_MAX_BYTES

    def to_dict(self) -> dict[str, Any]:
        """The record as a JSON-ready mapping without its unset (None) fields. It shares the
        record's lists and maps: ``dataclasses.asdict`` deep-copied them, which made encoding a
        prediction 14x and a review request 30x slower."""
        out: dict[str, Any] = {"schema_version": SCHEMA_VERSION}
        for name in _field_names(type(self)):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out

    def encode(self) -> bytes:
        return encode_json(self.to_dict())

    @classmethod
    def decode(cls, raw: bytes | str, **options):
        """Parse and validate one record (``options`` go to ``from_dict``)."""
        return cls.from_dict(decode_json(raw, cls.MAX_BYTES), **options)


def named_values(raw: Mapping[str, Any], channel_names: Sequence[str] | None) -> list:
    """A name -> value (or column) map in channel order; every configured channel present, no other.

    >>> named_values({"y": 2, "x": 1}, ["x", "y"])
    [1, 2]
    """
    if channel_names is None:
        raise SchemaError("values", "named channels need configured channel names")
    missing = [n for n in channel_names if n not in raw]
    if missing:
        raise SchemaError(f"values.{missing[0]}", "missing channel")
    extra = [n for n in raw if n not in channel_names]
    if extra:
        raise SchemaError(f"values.{extra[0]}", "unknown channel")
    return [raw[n] for n in channel_names]


@dataclass(slots=True)
class SensorReading(_Record):
    """One reading of one device: values per channel, event time in epoch ms.

    ``values`` may arrive as a list (channel order) or a name→value map; with a map,
    ``channel_names`` gives the order. ``label`` is optional ground truth.
    """

    device_id: str
    ts: int
    values: list[float]
    seq: int | None = None
    label: str | None = None
    device_type: str | None = None  # names the model that scores it, when several are served

    REQUIRED = ("device_id", "ts", "values")
    OPTIONAL = ("schema_version", "seq", "label", "device_type")

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any], channels: int | None = None,
                  channel_names: Sequence[str] | None = None, max_abs: float = math.inf) -> "SensorReading":
        check_fields(obj, cls.REQUIRED, cls.OPTIONAL)
        check_version(obj)
        device_id = require_id(obj, "device_id")
        ts = require_int(obj, "ts", minimum=0)
        raw = obj["values"]
        if isinstance(raw, dict):
            values = finite_floats(named_values(raw, channel_names), "values", max_abs)
        elif isinstance(raw, list):
            values = finite_floats(raw, "values", max_abs)
        else:
            raise SchemaError("values", f"must be a list or an object, got {type(raw).__name__}")
        expected = channels if channels is not None else (len(channel_names) if channel_names else None)
        if expected is not None and len(values) != expected:
            raise SchemaError("values", f"expected {expected} channels, got {len(values)}")
        seq = require_int(obj, "seq", minimum=0) if obj.get("seq") is not None else None
        label = require_str(obj, "label") if obj.get("label") is not None else None
        device_type = require_id(obj, "device_type") if obj.get("device_type") is not None else None
        return cls(device_id, ts, values, seq, label, device_type)

    @classmethod
    def decode(cls, raw: bytes | str, channels: int | None = None,
               channel_names: Sequence[str] | None = None,
               max_bytes: int = DEFAULT_MAX_BYTES, max_abs: float = math.inf) -> "SensorReading":
        return cls.from_dict(decode_json(raw, max_bytes), channels, channel_names, max_abs)


@dataclass(slots=True)
class Prediction(_Record):
    """What the serving job says about one window of one device: its class (``label``, ``confidence``,
    ``probabilities``) where the model classifies, its ``anomaly`` score where it has that head (a model
    with an anomaly head and no classify head gives only the score).

    >>> Prediction.decode(b'{"device_id": "d", "window_end": 9, "window_start": 0, "anomaly": 3.5, '
    ...                   b'"model_name": "m", "model_version": 2, "latency_ms": 1, "emitted_at": 9}').label is None
    True
    >>> Prediction.decode(b'{"device_id": "d", "window_end": 9, "window_start": 0, "model_name": "m", '
    ...                   b'"model_version": 2, "latency_ms": 1, "emitted_at": 9}')
    Traceback (most recent call last):
    ...
    schemas.base.SchemaError: label: missing (a prediction has a class, an anomaly score or both)
    """

    device_id: str
    window_end: int
    window_start: int
    label: str | None
    confidence: float | None
    probabilities: dict[str, float] | None
    model_name: str
    model_version: int
    latency_ms: float
    emitted_at: int
    truth: str | None = None
    anomaly: float | None = None  # the window's anomaly score, where the model has that head

    REQUIRED = ("device_id", "window_end", "window_start", "model_name", "model_version", "latency_ms", "emitted_at")
    OPTIONAL = ("schema_version", "truth", "anomaly", "label", "confidence", "probabilities")

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> "Prediction":
        check_fields(obj, cls.REQUIRED, cls.OPTIONAL)
        check_version(obj)
        classified = _classification(obj, "label", "a prediction has a class, an anomaly score or both")
        return cls(
            device_id=require_id(obj, "device_id"),
            window_end=require_int(obj, "window_end", 0),
            window_start=require_int(obj, "window_start", 0),
            label=classified[0],
            confidence=classified[1],
            probabilities=classified[2],
            model_name=require_id(obj, "model_name"),
            model_version=require_int(obj, "model_version", 0),  # 0: no trained version yet (cold start)
            latency_ms=require_float(obj, "latency_ms"),
            emitted_at=require_int(obj, "emitted_at", 0),
            truth=require_str(obj, "truth") if obj.get("truth") is not None else None,
            anomaly=require_float(obj, "anomaly") if obj.get("anomaly") is not None else None,
        )


@dataclass(slots=True)
class Forecast(_Record):
    """The next samples of one device's channels after a window, as a model with a forecast head expects them:
    ``values[i]`` is the sample ``interval_ms * (i + 1)`` after ``window_end``.

    >>> f = Forecast("d1", 900, 100.0, ["x"], [[1.5], [2.0]], "m", 3, 950)
    >>> Forecast.decode(f.encode()).values
    [[1.5], [2.0]]
    >>> Forecast.decode(b'{"device_id": "d1", "window_end": 9, "interval_ms": 0, "channels": ["x"], "values": [[1]],'
    ...                 b' "model_name": "m", "model_version": 1, "emitted_at": 9}')
    Traceback (most recent call last):
    ...
    schemas.base.SchemaError: interval_ms: must lie in [1e-06, None]
    """

    device_id: str
    window_end: int
    interval_ms: float
    channels: list[str]
    values: list[list[float]]
    model_name: str
    model_version: int
    emitted_at: int

    REQUIRED = ("device_id", "window_end", "interval_ms", "channels", "values", "model_name", "model_version",
                "emitted_at")
    OPTIONAL = ("schema_version",)

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> "Forecast":
        check_fields(obj, cls.REQUIRED, cls.OPTIONAL)
        check_version(obj)
        channels = obj["channels"]
        if not isinstance(channels, list) or not channels or not all(isinstance(c, str) for c in channels):
            raise SchemaError("channels", "must be a non-empty list of strings")
        rows = obj["values"]
        if not isinstance(rows, list) or not rows:
            raise SchemaError("values", "must be a non-empty list of rows")
        for i, row in enumerate(rows):
            if not isinstance(row, list) or len(row) != len(channels):
                raise SchemaError(f"values[{i}]", f"must be a list of {len(channels)} numbers")
        return cls(require_id(obj, "device_id"), require_int(obj, "window_end", 0),
                   require_float(obj, "interval_ms", 1e-6), channels,
                   [finite_floats(row, f"values[{i}]") for i, row in enumerate(rows)],
                   require_id(obj, "model_name"), require_int(obj, "model_version", 0),
                   require_int(obj, "emitted_at", 0))


@dataclass(slots=True)
class WindowSample(_Record):
    """A window serving passes to the learning side unlabeled (a share of them), for the self-supervised
    objectives of a model's anomaly and forecast heads; ``future`` holds the samples that followed it
    when the model forecasts.

    >>> w = WindowSample("d1", 900, 1000, ["x"], [[1.0], [2.0]], "m", 3, [[2.5]])
    >>> WindowSample.decode(w.encode(), shape=(2, 1), horizon=1).future
    [[2.5]]
    >>> WindowSample.decode(w.encode(), shape=(3, 1))
    Traceback (most recent call last):
    ...
    schemas.base.SchemaError: values: expected 3 rows of 1 channels, got 2 rows
    """

    device_id: str
    window_start: int
    window_end: int
    channels: list[str]
    values: list[list[float]]
    model_name: str
    model_version: int
    future: list[list[float]] | None = None

    MAX_BYTES = 1024 * 1024
    REQUIRED = ("device_id", "window_start", "window_end", "channels", "values", "model_name", "model_version")
    OPTIONAL = ("schema_version", "future")

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any], shape: tuple[int, int] | None = None,
                  horizon: int | None = None) -> "WindowSample":
        """With ``shape`` (window, channels) the values must have it; with ``horizon`` a ``future`` must have
        that many rows (a record without one is still a window to learn the other heads from)."""
        check_fields(obj, cls.REQUIRED, cls.OPTIONAL)
        check_version(obj)
        channels = obj["channels"]
        if not isinstance(channels, list) or not channels or not all(isinstance(c, str) for c in channels):
            raise SchemaError("channels", "must be a non-empty list of strings")
        values = _rows(obj["values"], "values", len(channels))
        if shape is not None and (len(values), len(channels)) != tuple(shape):
            raise SchemaError("values", f"expected {shape[0]} rows of {shape[1]} channels, got {len(values)} rows"
                              + ("" if len(channels) == shape[1] else f" of {len(channels)}"))
        future = None
        if obj.get("future") is not None:
            future = _rows(obj["future"], "future", len(channels))
            if horizon is not None and len(future) != horizon:
                raise SchemaError("future", f"expected {horizon} rows, got {len(future)}")
        return cls(require_id(obj, "device_id"), require_int(obj, "window_start", 0), require_int(obj, "window_end", 0),
                   channels, values, require_id(obj, "model_name"), require_int(obj, "model_version", 0), future)


def _classification(obj: Mapping[str, Any], label_field: str, why: str
                    ) -> tuple[str | None, float | None, dict[str, float] | None]:
    """A record's class, confidence and probabilities: all three, or none of them when it carries an anomaly
    score instead."""
    present = [k for k in (label_field, "confidence", "probabilities") if obj.get(k) is not None]
    if not present and obj.get("anomaly") is not None:
        return None, None, None
    for key in (label_field, "confidence", "probabilities"):
        if obj.get(key) is None:
            raise SchemaError(key, f"missing ({why})")
    probs = obj["probabilities"]
    if not isinstance(probs, dict) or (label_field == "label" and not probs):
        raise SchemaError("probabilities",
                          "must be a non-empty object" if label_field == "label" else "must be an object")
    return (require_str(obj, label_field), require_float(obj, "confidence", 0.0, 1.0),
            {k: require_float(probs, k, 0.0, 1.0) for k in probs})


def _rows(rows: Any, name: str, width: int) -> list[list[float]]:
    """A non-empty list of rows of ``width`` finite numbers each, naming the first bad one."""
    if not isinstance(rows, list) or not rows:
        raise SchemaError(name, "must be a non-empty list of rows")
    out = []
    for i, row in enumerate(rows):
        if not isinstance(row, list) or len(row) != width:
            raise SchemaError(f"{name}[{i}]", f"must be a list of {width} numbers")
        out.append(finite_floats(row, f"{name}[{i}]"))
    return out


@dataclass(slots=True)
class ReviewRequest(_Record):
    """A window the model was unsure about (or an audit sample), sent to labelers."""

    review_id: str
    device_id: str
    window_start: int
    window_end: int
    channels: list[str]
    values: list[list[float]]
    predicted: str | None  # None (with confidence and probabilities) for a model that does not classify
    confidence: float | None
    probabilities: dict[str, float] | None
    model_version: int
    reason: str
    created_at: int
    model_name: str | None = None  # None in records from before several models could be served
    shadow_predicted: str | None = None  # what the version in its shadow phase said about the window
    shadow_version: int | None = None
    anomaly: float | None = None  # the window's anomaly score, where the model has that head
    typical_range: list[list[float]] | None = None  # per channel [low, high] of normal windows (anomaly questions)

    MAX_BYTES = 1024 * 1024
    REASONS = ("low_confidence", "audit", "drift", "disagreement", "anomaly")
    REQUIRED = ("review_id", "device_id", "window_start", "window_end", "channels", "values", "model_version",
                "reason", "created_at")
    OPTIONAL = ("schema_version", "model_name", "shadow_predicted", "shadow_version", "anomaly", "predicted",
                "confidence", "probabilities", "typical_range")

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> "ReviewRequest":
        check_fields(obj, cls.REQUIRED, cls.OPTIONAL)
        check_version(obj)
        reason = require_choice(obj, "reason", cls.REASONS)
        channels = obj["channels"]
        if not isinstance(channels, list) or not all(isinstance(c, str) for c in channels):
            raise SchemaError("channels", "must be a list of strings")
        rows = obj["values"]
        if not isinstance(rows, list) or not rows:
            raise SchemaError("values", "must be a non-empty list of rows")
        values = []
        for i, row in enumerate(rows):
            if not isinstance(row, list) or len(row) != len(channels):
                raise SchemaError(f"values[{i}]", f"must be a list of {len(channels)} numbers")
            values.append(finite_floats(row, f"values[{i}]"))
        predicted, confidence, probabilities = _classification(obj, "predicted", "a request has a prediction, an "
                                                                                 "anomaly score or both")
        typical = obj.get("typical_range")
        if typical is not None:
            typical = _rows(typical, "typical_range", 2)
            if len(typical) != len(channels):
                raise SchemaError("typical_range", f"must hold one [low, high] per channel ({len(channels)})")
        return cls(
            review_id=require_id(obj, "review_id"),
            device_id=require_id(obj, "device_id"),
            window_start=require_int(obj, "window_start", 0),
            window_end=require_int(obj, "window_end", 0),
            channels=channels,
            values=values,
            predicted=predicted,
            confidence=confidence,
            probabilities=probabilities,
            model_version=require_int(obj, "model_version", 0),  # 0: no trained version yet (cold start)
            reason=reason,
            created_at=require_int(obj, "created_at", 0),
            model_name=require_id(obj, "model_name") if obj.get("model_name") is not None else None,
            shadow_predicted=require_str(obj, "shadow_predicted") if obj.get("shadow_predicted") is not None else None,
            shadow_version=require_int(obj, "shadow_version", 1) if obj.get("shadow_version") is not None else None,
            anomaly=require_float(obj, "anomaly") if obj.get("anomaly") is not None else None,
            typical_range=typical,
        )


@dataclass(slots=True)
class Label(_Record):
    """A labeler's answer to a review request (or a device's own ground truth). ``new_class`` says the
    answer names a class the model does not have yet, on purpose: only labelers allowed to
    (``labeling.class_creators``) may, and the name must be a plain one (``check_class_name``).
    An answer to an anomaly question carries a ``verdict`` (``normal`` / ``abnormal``) and may leave
    ``label`` out, or name the window's class too where the model classifies.

    >>> Label.decode(b'{"review_id": "d:1", "label": "cycling", "labeler": "ann", "answered_at": 5, '
    ...              b'"new_class": true}', classes=["run"]).new_class
    True
    >>> Label.decode(b'{"review_id": "d:1", "label": "cycling", "labeler": "ann", "answered_at": 5}',
    ...              classes=["run"])
    Traceback (most recent call last):
    ...
    schemas.base.SchemaError: label: unknown class 'cycling'; known: ['run']
    >>> Label.decode(b'{"review_id": "d:1", "verdict": "normal", "labeler": "ann", "answered_at": 5}').label
    ''
    >>> Label.decode(b'{"review_id": "d:1", "verdict": "odd", "labeler": "ann", "answered_at": 5}')
    Traceback (most recent call last):
    ...
    schemas.base.SchemaError: verdict: must be one of ('normal', 'abnormal')
    """

    review_id: str
    label: str
    labeler: str
    answered_at: int
    status: str = "answered"
    model_name: str | None = None  # the model of the review it answers (the labeling page fills it in)
    new_class: bool | None = None  # True: the label names a class the model lacks, on purpose
    verdict: str | None = None  # an anomaly question's answer: "normal" or "abnormal"

    STATUSES = ("answered", "skipped", "unsure")
    VERDICTS = ("normal", "abnormal")
    REQUIRED = ("review_id", "labeler", "answered_at")
    OPTIONAL = ("schema_version", "label", "status", "model_name", "new_class", "verdict")

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any], classes: Sequence[str] | None = None) -> "Label":
        check_fields(obj, cls.REQUIRED, cls.OPTIONAL)
        check_version(obj)
        status = require_choice(obj, "status", cls.STATUSES, default="answered")
        verdict = require_choice(obj, "verdict", cls.VERDICTS) if obj.get("verdict") is not None else None
        if verdict is None and "label" not in obj:
            raise SchemaError("label", "missing (an answer names a class, or gives an anomaly verdict)")
        label = require_str(obj, "label") if obj.get("label") not in (None, "") or verdict is None else ""
        new_class = obj.get("new_class")
        if new_class is not None and not isinstance(new_class, bool):
            raise SchemaError("new_class", "must be true or false")
        if new_class and status == "answered":
            check_class_name(label)
        elif status == "answered" and classes is not None and label and label not in classes:
            raise SchemaError("label", f"unknown class {label!r}; known: {list(classes)}")
        return cls(require_id(obj, "review_id"), label, require_id(obj, "labeler"),
                   require_int(obj, "answered_at", 0), status,
                   require_id(obj, "model_name") if obj.get("model_name") is not None else None,
                   True if new_class else None, verdict)


MAX_CLASS_NAME = 64


def check_class_name(name: str) -> str:
    """A new class's name: 1-64 printable characters, no surrounding spaces (it becomes a button, a
    metric's value and a key of every prediction's probabilities).

    >>> check_class_name("cycling")
    'cycling'
    >>> check_class_name(" cycling")
    Traceback (most recent call last):
    ...
    schemas.base.SchemaError: label: a new class name must be 1-64 printable characters without surrounding spaces
    """
    if (not isinstance(name, str) or not 0 < len(name) <= MAX_CLASS_NAME or name != name.strip()
            or not name.isprintable()):
        raise SchemaError("label", f"a new class name must be 1-{MAX_CLASS_NAME} printable characters without "
                                   "surrounding spaces")
    return name


@dataclass(slots=True)
class ModelSnapshot(_Record):
    """Announces a model version; the artifact itself lives in the registry."""

    model_name: str
    version: int
    artifact_uri: str
    sha256: str
    metrics: dict[str, float] = field(default_factory=dict)
    parent_version: int | None = None
    created_at: int = 0
    signature: str | None = None  # base64 Ed25519 signature (model.signing), when the publisher signs
    int8_sha256: str | None = None  # the version's INT8 graph (model-int8.onnx beside the artifact), if any
    stage: str | None = None  # None: serve it; "shadow": score it beside the version in service, do not
    #                           serve it; "withdrawn": stop shadowing it

    REQUIRED = ("model_name", "version", "artifact_uri", "sha256")
    OPTIONAL = ("schema_version", "metrics", "parent_version", "created_at", "signature", "int8_sha256", "stage")
    STAGES = ("shadow", "withdrawn")

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> "ModelSnapshot":
        check_fields(obj, cls.REQUIRED, cls.OPTIONAL)
        check_version(obj)
        sha = _sha256(obj, "sha256")
        int8_sha = _sha256(obj, "int8_sha256") if obj.get("int8_sha256") is not None else None
        metrics = obj.get("metrics") or {}
        if not isinstance(metrics, dict):
            raise SchemaError("metrics", "must be an object")
        return cls(
            model_name=require_id(obj, "model_name"),
            version=require_int(obj, "version", 1),
            artifact_uri=require_str(obj, "artifact_uri", max_len=4096),
            sha256=sha,
            metrics={k: require_float(metrics, k) for k in metrics},
            parent_version=require_int(obj, "parent_version", 1) if obj.get("parent_version") is not None else None,
            created_at=require_int(obj, "created_at", 0) if "created_at" in obj else 0,
            signature=require_str(obj, "signature", max_len=200) if obj.get("signature") is not None else None,
            int8_sha256=int8_sha,
            stage=require_choice(obj, "stage", cls.STAGES) if obj.get("stage") is not None else None,
        )


def _sha256(obj: Mapping[str, Any], name: str) -> str:
    value = require_str(obj, name)
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise SchemaError(name, "must be 64 lowercase hex digits")
    return value


@dataclass(slots=True)
class DriftEvent(_Record):
    """The learning path saw a drift: serving raises its review budget for a while."""

    model_name: str
    signal: str
    detected_at: int
    model_version: int
    boost_budget_per_minute: int
    boost_seconds: int
    error_rate: float | None = None

    SIGNALS = ("error", "confidence")
    REQUIRED = ("model_name", "signal", "detected_at", "model_version", "boost_budget_per_minute", "boost_seconds")
    OPTIONAL = ("schema_version", "error_rate")

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> "DriftEvent":
        check_fields(obj, cls.REQUIRED, cls.OPTIONAL)
        check_version(obj)
        signal = require_choice(obj, "signal", cls.SIGNALS)
        return cls(require_id(obj, "model_name"), signal, require_int(obj, "detected_at", 0),
                   require_int(obj, "model_version", 1), require_int(obj, "boost_budget_per_minute", 0),
                   require_int(obj, "boost_seconds", 0),
                   require_float(obj, "error_rate", 0.0, 1.0) if obj.get("error_rate") is not None else None)


@dataclass(slots=True)
class DeadLetter(_Record):
    """Bad input kept with where it came from and why it was refused."""

    source_topic: str
    partition: int
    offset: int
    reason: str
    raw: str
    field: str | None = None
    stage: str = "parse"
    failed_at: int = 0
    model_name: str | None = None  # the model the refused record was meant for, where known

    MAX_BYTES = 4 * 1024 * 1024

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> "DeadLetter":
        check_fields(obj, ("source_topic", "partition", "offset", "reason", "raw"),
                     ("schema_version", "field", "stage", "failed_at", "model_name"))
        return cls(require_str(obj, "source_topic"), require_int(obj, "partition"),
                   require_int(obj, "offset"), require_str(obj, "reason", 4096), str(obj["raw"]),
                   obj.get("field"), obj.get("stage", "parse"), int(obj.get("failed_at", 0)), obj.get("model_name"))
