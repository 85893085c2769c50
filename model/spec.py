"""What a model looks like from the outside: window shape, channels, classes, sizes."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

BASIC_MOTIONS_CHANNELS = ["acc_x", "acc_y", "acc_z", "gyr_x", "gyr_y", "gyr_z"]
BASIC_MOTIONS_CLASSES = ["badminton", "running", "standing", "walking"]
TASKS = ("classify", "anomaly", "forecast")  # the heads a model may have on its one encoder
SUMMARY_STATISTICS = 4  # per channel, with summary_features: mean, deviation, minimum, maximum of the window


@dataclass(frozen=True)
class ModelSpec:
    """Shape and size of a window model: its ``tasks`` (heads on one encoder, from :data:`TASKS`), and for
    ``forecast`` the ``horizon`` (samples per channel it forecasts after a window). With
    ``summary_features`` the classify head reads, beside the encoder's features, each channel's mean,
    deviation, minimum and maximum over the (normalised) window. ``patch`` samples make one token of the
    encoder (``window / patch`` tokens): a larger patch scores a window for a fraction of the work.

    >>> spec = ModelSpec()
    >>> spec.window, len(spec.channels), spec.classes[0], spec.tasks
    (32, 6, 'badminton', ('classify',))
    >>> ModelSpec.from_dict(spec.to_dict()) == spec
    True
    >>> ModelSpec(classes=(), tasks=("anomaly",)).has("classify")
    False
    >>> ModelSpec(tasks=("forecast", "speak"))
    Traceback (most recent call last):
    ...
    ValueError: tasks: unknown task 'speak' (known: classify, anomaly, forecast); forecast: horizon must be at least 1 sample
    >>> ModelSpec(window=30, patch=4)
    Traceback (most recent call last):
    ...
    ValueError: patch: 4 samples per token does not divide the window (30)
    >>> ModelSpec(patch=4).tokens
    8
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
    tasks: tuple[str, ...] = ("classify",)
    horizon: int = 0
    summary_features: bool = False
    patch: int = 1

    def __post_init__(self) -> None:
        problems = [f"tasks: unknown task {t!r} (known: {', '.join(TASKS)})" for t in self.tasks if t not in TASKS]
        if self.patch < 1 or self.window % self.patch:
            problems.append(f"patch: {self.patch} samples per token does not divide the window ({self.window})")
        if not self.tasks:
            problems.append("tasks: a model needs at least one of " + ", ".join(TASKS))
        if len(set(self.tasks)) != len(self.tasks):
            problems.append(f"tasks: {list(self.tasks)} names a task twice")
        if "classify" in self.tasks and not self.classes:
            problems.append("classify: the model has no classes")
        if "forecast" in self.tasks and self.horizon < 1:
            problems.append("forecast: horizon must be at least 1 sample")
        if problems:
            raise ValueError("; ".join(problems))

    def has(self, task: str) -> bool:
        """Whether the model has the head of ``task``."""
        return task in self.tasks

    @property
    def n_channels(self) -> int:
        return len(self.channels)

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def tokens(self) -> int:
        """How many tokens the encoder reads per window (``patch`` samples each)."""
        return self.window // self.patch

    @property
    def class_features(self) -> int:
        """How many features the classify head reads."""
        return self.d_model + (SUMMARY_STATISTICS * self.n_channels if self.summary_features else 0)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["channels"] = list(self.channels)
        out["classes"] = list(self.classes)
        out["tasks"] = list(self.tasks)
        return out

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> "ModelSpec":
        obj = dict(obj)
        obj["channels"] = tuple(obj["channels"])
        obj["classes"] = tuple(obj["classes"])
        obj["tasks"] = tuple(obj.get("tasks", ("classify",)))  # versions from before the other heads classify
        return cls(**obj)


OUTPUTS = {"classify": "probabilities", "anomaly": "anomaly", "forecast": "forecast"}  # task -> graph output


def output_names(spec: ModelSpec) -> list[str]:
    """The exported graph's outputs, in the order of :data:`OUTPUTS`.

    >>> output_names(ModelSpec(tasks=("forecast", "classify"), horizon=4))
    ['probabilities', 'forecast']
    """
    return [name for task, name in OUTPUTS.items() if spec.has(task)]
