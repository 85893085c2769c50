"""Which served model a reading belongs to, when one pair of jobs serves several models.

A reading names its ``device_type`` (each model scores the types it declares, by default its own
name), or its device id matches a model's ``devices`` patterns; with a single model served, readings
that name no type go to it. Anything else is refused with the reason, never guessed.

>>> router = DeviceRouter({"wrist": "har", "knee": "gait"}, [("knee-*", "gait")])
>>> router.route("w1", "wrist"), router.route("knee-7", None)
('har', 'gait')
>>> router.route("w1", "ankle")
Traceback (most recent call last):
...
schemas.base.SchemaError: device_type: no served model takes device type 'ankle' (served types: knee, wrist)
>>> DeviceRouter({"har": "har"}).route("w1", None)
'har'
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from schemas import SchemaError
from settings import Config


@dataclass(frozen=True)
class ServedModel:
    """The input one served model takes: its channels, window and stride (in samples)."""

    name: str
    channels: tuple[str, ...]
    window: int
    stride: int


class DeviceRouter:
    """Maps a reading's device type (or, without one, its device id) to the model that scores it."""

    def __init__(self, device_types: Mapping[str, str], patterns: Sequence[tuple[str, str]] = ()) -> None:
        self.device_types = dict(device_types)
        self.patterns = list(patterns)
        self.models = sorted(set(self.device_types.values()) | {m for _, m in self.patterns})
        self.default = self.models[0] if len(self.models) == 1 else None

    def route(self, device_id: Any, device_type: Any) -> str:
        """The model for one reading; SchemaError (field ``device_type``) when none takes it."""
        if device_type is not None:
            if not isinstance(device_type, str):
                raise SchemaError("device_type", f"must be a string, got {type(device_type).__name__}")
            model = self.device_types.get(device_type)
            if model is None:
                raise SchemaError("device_type", f"no served model takes device type {device_type!r} "
                                                 f"(served types: {', '.join(sorted(self.device_types))})")
            return model
        if isinstance(device_id, str):
            for pattern, model in self.patterns:
                if pattern == "*" or fnmatch.fnmatchcase(device_id, pattern):
                    return model
        if self.default is not None:
            return self.default
        raise SchemaError("device_type", f"missing: {len(self.models)} models are served "
                                         f"({', '.join(self.models)}); a reading names its device_type, or its "
                                         "device id matches a models.<name>.devices pattern")

    @classmethod
    def for_config(cls, cfg: Config) -> "DeviceRouter":
        """For the models ``cfg`` serves: their device types, and the device id patterns they declare."""
        types: dict[str, str] = {}
        patterns: list[tuple[str, str]] = []
        for name in cfg.served_models:
            for kind in cfg.device_types_of(name):
                types.setdefault(kind, name)
            declared = cfg.models.get(name)
            patterns += [(p, name) for p in (declared.devices if declared is not None else ())]
        return cls(types, patterns)


def served_models(cfg: Config) -> list[ServedModel]:
    """The input of each model ``cfg`` serves: a declared model's channels, window and stride; an
    undeclared one's from its registry version (stride ``serving.stride``). The first served model
    that is ``registry.model_name`` also follows ``serving.window`` and a pinned ``serving.model_version``.
    ValueError when a model cannot serve the windows it would be given."""
    from model.registry import ArtifactError
    from operators.serving_model import input_mismatch, serving_spec

    out = []
    for name in cfg.served_models:
        primary = name == cfg.registry.model_name
        declared = cfg.models.get(name)
        try:
            spec = serving_spec(cfg.registry.path, name, (cfg.serving.model_version or None) if primary else None,
                                cfg.declared_spec(name))
        except ArtifactError as exc:  # no version and no declaration, or unreadable metadata
            raise ValueError(f"{name}: {exc}") from None
        window = cfg.serving.window if primary else declared.window if declared is not None else spec.window
        stride = cfg.serving.stride if primary else declared.stride if declared is not None else cfg.serving.stride
        mismatch = input_mismatch(spec, window, declared.channels if declared is not None else spec.channels)
        if not spec.has("classify") and not spec.has("anomaly"):
            mismatch = f"it has neither a classify nor an anomaly head ({', '.join(spec.tasks)} only)"
        if mismatch:
            raise ValueError(f"{name} cannot serve: {mismatch}")
        out.append(ServedModel(name, tuple(spec.channels), window, stride))
    return out
