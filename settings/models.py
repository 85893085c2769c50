"""Models declared in configuration (``[models.<name>]``): a user's own channels, sample rate,
window, classes and network size, instead of the built-in BasicMotions constants.

>>> m = ModelDeclaration.from_table("gestures", {"channels": ["acc_z"], "sample_rate_hz": 100,
...     "window": "0.32s", "stride": 8, "classes": ["1", "2", "3"]})
>>> m.window, m.stride, m.channels, m.spec_dict()["classes"]
(32, 8, ('acc_z',), ['1', '2', '3'])
>>> ModelDeclaration.from_table("bad", {"channels": ["a", "a"], "sample_rate_hz": 50, "window": 8,
...     "stride": 16, "classes": ["x"]})
Traceback (most recent call last):
...
ValueError: channels: 'a' appears twice; classes: at least two are needed, got ['x']; stride: 16 is longer than the window (8): samples would be skipped
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Any, Mapping

from model.spec import TASKS

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
KEYS = ("channels", "units", "sample_rate_hz", "window", "stride", "classes", "d_model", "n_heads", "n_layers",
        "d_ff", "dropout", "device_types", "devices", "precision", "tasks", "forecast_horizon", "summary_features",
        "patch")


def _samples(value: Any, rate: float, key: str) -> int:
    """``128`` samples, or ``"2.56s"`` / ``"500ms"`` at ``rate`` Hz."""
    if isinstance(value, bool):
        raise ValueError(f"{key}: expected a number of samples or a duration like \"2.5s\", got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(ms|s)\s*", value)
        if match:
            seconds = float(match.group(1)) / (1000 if match.group(2) == "ms" else 1)
            return int(round(seconds * rate))
    raise ValueError(f"{key}: expected a number of samples or a duration like \"2.5s\", got {value!r}")


def _names(value: Any, key: str, problems: list[str]) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        problems.append(f"{key}: expected a list of names, got {value!r}")
        return ()
    for name in sorted({v for v in value if value.count(v) > 1}):
        problems.append(f"{key}: {name!r} appears twice")
    return tuple(value)


@dataclass(frozen=True)
class ModelDeclaration:
    """One declared model; ``window`` and ``stride`` in samples."""

    name: str
    channels: tuple[str, ...]
    classes: tuple[str, ...]
    sample_rate_hz: float
    window: int
    stride: int
    units: tuple[str, ...] = ()
    d_model: int = 64
    n_heads: int = 4
    n_layers: int = 2
    d_ff: int = 128
    dropout: float = 0.1
    device_types: tuple[str, ...] = ()  # a reading's "device_type" values this model scores (default: its name)
    devices: tuple[str, ...] = ()  # device id patterns (fnmatch, e.g. "wrist-*") for readings without a type
    precision: str = ""  # "fp32" or "int8" for this model; "" follows serving.precision
    tasks: tuple[str, ...] = ("classify",)  # its heads: classify, anomaly, forecast (model.spec.TASKS)
    forecast_horizon: int = 0  # samples per channel the forecast head predicts after a window
    summary_features: bool = False  # the classify head also reads each channel's mean, deviation, min and max
    patch: int = 1  # samples per token of the encoder (window / patch tokens: a larger patch is cheaper to score)

    @classmethod
    def from_table(cls, name: str, table: Mapping[str, Any]) -> "ModelDeclaration":
        """Validate a ``[models.<name>]`` table; ValueError lists every problem (``; ``-separated)."""
        problems: list[str] = []
        if not NAME.fullmatch(name):
            problems.append(f"name {name!r}: letters, digits, '.', '_' and '-' only, at most 64")
        for key in table:
            if key not in KEYS:
                hint = difflib.get_close_matches(key, KEYS, n=1)
                problems.append(f"{key}: unknown key" + (f" (did you mean {hint[0]}?)" if hint else ""))
        tasks = _names(table.get("tasks", ["classify"]), "tasks", problems)
        for task in tasks:
            if task not in TASKS:
                problems.append(f"tasks: unknown task {task!r} (known: {', '.join(TASKS)})")
        if "tasks" in table and not tasks and not any(p.startswith("tasks") for p in problems):
            problems.append(f"tasks: a model needs at least one of {', '.join(TASKS)}")
        classifies = "classify" in tasks
        for key in ("channels", "classes", "sample_rate_hz", "window", "stride"):
            if key not in table and (key != "classes" or classifies):
                problems.append(f"{key}: missing")
        channels = _names(table.get("channels", []), "channels", problems)
        classes = _names(table.get("classes", []), "classes", problems)
        if classifies and "classes" in table and len(classes) < 2 and not any(p.startswith("classes") for p in problems):
            problems.append(f"classes: at least two are needed, got {list(classes)}")
        units = _names(table.get("units", []), "units", []) if "units" in table else ()
        if units and len(units) != len(channels):
            problems.append(f"units: {len(units)} given for {len(channels)} channels")
        rate = table.get("sample_rate_hz", 1.0)
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not rate > 0:
            problems.append(f"sample_rate_hz: expected a positive number, got {rate!r}")
            rate = 1.0
        window = stride = 1
        try:
            window = _samples(table.get("window", 1), float(rate), "window")
            stride = _samples(table.get("stride", 1), float(rate), "stride")
        except ValueError as exc:
            problems.append(str(exc))
        if window < 2:
            problems.append(f"window: at least 2 samples, got {window}")
        if stride < 1:
            problems.append(f"stride: at least 1 sample, got {stride}")
        elif stride > window >= 2:
            problems.append(f"stride: {stride} is longer than the window ({window}): samples would be skipped")
        sizes = {k: table.get(k, getattr(cls, k)) for k in ("d_model", "n_heads", "n_layers", "d_ff")}
        for key, value in sizes.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                problems.append(f"{key}: expected a positive integer, got {value!r}")
        if not problems and sizes["d_model"] % sizes["n_heads"]:
            problems.append(f"d_model: {sizes['d_model']} is not a multiple of n_heads ({sizes['n_heads']})")
        dropout = table.get("dropout", 0.1)
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            problems.append(f"dropout: expected a number in [0, 1), got {dropout!r}")
        device_types = _names(table.get("device_types", []), "device_types", problems)
        for kind in device_types:
            if not NAME.fullmatch(kind):
                problems.append(f"device_types: {kind!r}: letters, digits, '.', '_' and '-' only, at most 64")
        devices = _names(table.get("devices", []), "devices", problems)
        horizon = 0
        if "forecast" in tasks or "forecast_horizon" in table:
            try:
                horizon = _samples(table.get("forecast_horizon", 0), float(rate), "forecast_horizon")
            except ValueError as exc:
                problems.append(str(exc))
            if "forecast" in tasks and horizon < 1:
                problems.append(f"forecast_horizon: a forecast head needs at least 1 sample, got {horizon}")
        summary = table.get("summary_features", False)
        if not isinstance(summary, bool):
            problems.append(f"summary_features: expected true or false, got {summary!r}")
        patch = table.get("patch", 1)
        if isinstance(patch, bool) or not isinstance(patch, int) or patch < 1:
            problems.append(f"patch: expected a positive integer, got {patch!r}")
        elif window >= 2 and window % patch:
            problems.append(f"patch: {patch} samples per token does not divide the window ({window} samples)")
        precision = table.get("precision", "")
        if precision not in ("", "fp32", "int8"):
            problems.append(f"precision: expected \"fp32\" or \"int8\", got {precision!r}")
        if problems:
            raise ValueError("; ".join(problems))
        return cls(name, channels, classes, float(rate), window, stride, units, dropout=float(dropout),
                   device_types=device_types, devices=devices, precision=precision, tasks=tasks,
                   forecast_horizon=horizon, summary_features=summary is True, patch=patch, **sizes)

    def spec_dict(self) -> dict[str, Any]:
        """The registry's model spec (``model.spec.ModelSpec.from_dict`` reads it)."""
        return {"window": self.window, "channels": list(self.channels), "classes": list(self.classes),
                "d_model": self.d_model, "n_heads": self.n_heads, "n_layers": self.n_layers, "d_ff": self.d_ff,
                "dropout": self.dropout, "extra": {"sample_rate_hz": self.sample_rate_hz, "stride": self.stride,
                                                   "units": list(self.units)},
                "tasks": list(self.tasks), "horizon": self.forecast_horizon,
                "summary_features": self.summary_features, "patch": self.patch}

    def to_table(self) -> dict[str, Any]:
        """The TOML table it came from, window and stride in samples."""
        table: dict[str, Any] = {"channels": list(self.channels), "classes": list(self.classes),
                                 "sample_rate_hz": self.sample_rate_hz, "window": self.window, "stride": self.stride,
                                 "d_model": self.d_model, "n_heads": self.n_heads, "n_layers": self.n_layers,
                                 "d_ff": self.d_ff, "dropout": self.dropout}
        if self.units:
            table["units"] = list(self.units)
        if self.device_types:
            table["device_types"] = list(self.device_types)
        if self.devices:
            table["devices"] = list(self.devices)
        if self.precision:
            table["precision"] = self.precision
        if self.tasks != ("classify",):
            table["tasks"] = list(self.tasks)
        if self.forecast_horizon:
            table["forecast_horizon"] = self.forecast_horizon
        if self.summary_features:
            table["summary_features"] = True
        if self.patch != 1:
            table["patch"] = self.patch
        return table
