"""Shared machinery of the message contracts: orjson encode/decode and field validation."""

from __future__ import annotations

import json
import math
import re
from typing import Any, Iterable, Mapping

import orjson

SCHEMA_VERSION = 1
DEFAULT_MAX_BYTES = 64 * 1024


class SchemaError(ValueError):
    """A record that does not match its contract; ``field`` names the offending field.

    >>> str(SchemaError("ts", "must be an integer"))
    'ts: must be an integer'
    """

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def decode_json(raw: bytes | str, max_bytes: int = DEFAULT_MAX_BYTES) -> dict[str, Any]:
    """Parse one JSON object, refusing oversize payloads and non-objects.

    >>> decode_json(b'{"a": 1}')
    {'a': 1}
    >>> decode_json(b'[1]')
    Traceback (most recent call last):
    ...
    schemas.base.SchemaError: $: expected a JSON object, got list
    """
    size = len(raw)
    if size > max_bytes:
        raise SchemaError("$", f"message of {size} bytes exceeds the limit of {max_bytes}")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        obj = _with_non_finite_numbers(raw, exc)
        if obj is None:
            raise SchemaError("$", f"malformed JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise SchemaError("$", f"expected a JSON object, got {type(obj).__name__}")
    return obj


NON_FINITE_TOKENS = (b"NaN", b"Infinity", b"-Infinity")


def _with_non_finite_numbers(raw: bytes | str, error: orjson.JSONDecodeError) -> Any:
    """The payload parsed anyway when what stopped orjson is a ``NaN`` or ``Infinity`` number (which
    devices' JSON libraries do write), so that validation can name the value (``values[37][2]: must be
    finite``) instead of a character offset; None for anything else that is not JSON.

    >>> decode_json(b'{"v": [1, NaN]}')["v"][1] != decode_json(b'{"v": [1, NaN]}')["v"][1]
    True
    """
    data = raw.encode() if isinstance(raw, str) else raw
    if not data[error.pos:error.pos + 9].startswith(NON_FINITE_TOKENS):
        return None
    try:
        obj = json.loads(data)
        orjson.dumps(obj)  # anything else orjson refuses (lone surrogates, huge integers) stays refused
    except (ValueError, TypeError, orjson.JSONEncodeError):
        return None
    return obj


def encode_json(obj: Mapping[str, Any]) -> bytes:
    """Serialise a record to compact JSON; numpy arrays and scalars are accepted."""
    return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)


def check_fields(obj: Mapping[str, Any], required: Iterable[str], optional: Iterable[str]) -> None:
    """Refuse missing required fields and fields the contract does not know."""
    required = tuple(required)
    for name in required:
        if name not in obj:
            raise SchemaError(name, "missing required field")
    known = set(required) | set(optional)
    for name in obj:
        if name not in known:
            raise SchemaError(name, "unknown field")


def check_version(obj: Mapping[str, Any]) -> None:
    version = obj.get("schema_version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        raise SchemaError("schema_version", f"unsupported version {version!r}, expected {SCHEMA_VERSION}")


def require_str(obj: Mapping[str, Any], name: str, max_len: int = 256) -> str:
    value = obj[name]
    if not isinstance(value, str) or not value:
        raise SchemaError(name, "must be a non-empty string")
    if len(value) > max_len:
        raise SchemaError(name, f"longer than {max_len} characters")
    return value


def require_choice(obj: Mapping[str, Any], name: str, choices: tuple[str, ...], default: str | None = None) -> str:
    """A string that must be one of ``choices`` (``default`` when the field is absent).

    >>> require_choice({"signal": "vibes"}, "signal", ("error",))
    Traceback (most recent call last):
    ...
    schemas.base.SchemaError: signal: must be one of ('error',)
    """
    value = obj.get(name, default)
    if value not in choices:
        raise SchemaError(name, f"must be one of {choices}")
    return value


_CONTROL_CHARACTER = re.compile("[\x00-\x1f\x7f]")


def require_id(obj: Mapping[str, Any], name: str, max_len: int = 128) -> str:
    """An identifier (device, review, model, labeler): a string without control characters.

    >>> require_id({"id": "dev\x1f1"}, "id")
    Traceback (most recent call last):
    ...
    schemas.base.SchemaError: id: must not contain control characters
    """
    value = require_str(obj, name, max_len)
    if _CONTROL_CHARACTER.search(value):
        raise SchemaError(name, "must not contain control characters")
    return value


MAX_SAFE_INT = 2**53 - 1  # the largest integer every JSON reader keeps exactly (and far inside int64)


def require_int(obj: Mapping[str, Any], name: str, minimum: int | None = None, maximum: int = MAX_SAFE_INT) -> int:
    """An integer within ``[minimum, maximum]`` (by default at most 2**53 - 1).

    >>> require_int({"ts": 18446744073709551615}, "ts", minimum=0)
    Traceback (most recent call last):
    ...
    schemas.base.SchemaError: ts: must be <= 9007199254740991
    """
    value = obj[name]
    if isinstance(value, bool) or not isinstance(value, int):
        raise SchemaError(name, f"must be an integer, got {type(value).__name__}")
    if minimum is not None and value < minimum:
        raise SchemaError(name, f"must be >= {minimum}")
    if value > maximum:
        raise SchemaError(name, f"must be <= {maximum}")
    return value


def require_float(obj: Mapping[str, Any], name: str, low: float | None = None, high: float | None = None) -> float:
    value = obj[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SchemaError(name, f"must be a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise SchemaError(name, "must be finite")
    if (low is not None and value < low) or (high is not None and value > high):
        raise SchemaError(name, f"must lie in [{low}, {high}]")
    return value


_FLOATS = {float}


def finite_floats(values: Iterable[Any], name: str, max_abs: float = math.inf) -> list[float]:
    """Validate a sequence of finite numbers of magnitude at most ``max_abs``, naming the first bad element.

    >>> finite_floats([1, 1e308], "values", max_abs=1e9)
    Traceback (most recent call last):
    ...
    schemas.base.SchemaError: values[1]: magnitude 1e+308 above the limit 1e+09
    """
    if type(values) is list and set(map(type, values)) == _FLOATS:  # noqa: E721 (the common case, in C loops)
        # NaN or an infinity anywhere makes the sum non-finite; a finite sum clears every element
        if math.isfinite(sum(values)) and (max_abs == math.inf or max(map(abs, values)) <= max_abs):
            return list(values)
    out = []
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise SchemaError(f"{name}[{i}]", f"must be a number, got {type(v).__name__}")
        try:
            f = float(v)
        except OverflowError:  # an integer too large for a float
            raise SchemaError(f"{name}[{i}]", f"magnitude above the limit {max_abs:g}") from None
        if not math.isfinite(f):
            raise SchemaError(f"{name}[{i}]", "must be finite (NaN/inf refused)")
        if abs(f) > max_abs:
            raise SchemaError(f"{name}[{i}]", f"magnitude {abs(f):g} above the limit {max_abs:g}")
        out.append(f)
    return out
