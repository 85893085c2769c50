"""What a model looks like from the outside: window shape, channels, classes, sizes."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

BASIC_MOTIONS_CHANNELS = ["acc_x", "acc_y", "acc_z", "gyr_x", "gyr_y", "gyr_z"]
BASIC_MOTIONS_CLASSES = ["badminton", "running", "standing", "walking"]


@dataclass(frozen=True)
class ModelSpec:
    """Shape and size of a window classifier.

    >>> spec = ModelSpec()
    >>> spec.window, len(spec.channels), spec.classes[0]
    (32, 6, 'badminton')
    >>> ModelSpec.from_dict(spec.to_dict()) == spec
    True
    """

    window: int = 32
    channels: tuple[str, ...] = tuple(BASIC_MOTIONS_CHANNELS)
    classes: tuple[str, ...] = tuple(BASIC_MOTIONS_CLASSES)
    d_model: int = 64
    n_heads: int = 4
    n_layers: int = 2
    d_ff: int = 128
    dropout: float = 0.1
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def n_channels(self) -> int:
        return len(self.channels)

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["channels"] = list(self.channels)
        out["classes"] = list(self.classes)
        return out

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> "ModelSpec":
        obj = dict(obj)
        obj["channels"] = tuple(obj["channels"])
        obj["classes"] = tuple(obj["classes"])
        return cls(**obj)
