"""One configuration for every sensorloop command and both jobs: a TOML file, then
``SENSORLOOP_<SECTION>_<KEY>`` environment variables, then flags, validated at start with errors that
name the key and where its value came from.

The file is ``--config``, else ``$SENSORLOOP_CONFIG``, else ``./sensorloop.toml`` when present.
Topic names keep their own prefix, ``SENSORLOOP_TOPIC_<NAME>``. Flags are ``section.key=value``
pairs (``--set`` on the jobs and ``serve``/``learn``; the CLI's own flags map onto the same keys).

>>> cfg = load_config(path=None, env={"SENSORLOOP_FLINK_PARALLELISM": "2"}, flags={"topics.readings": "imu"})
>>> cfg.flink.parallelism, cfg.topics.readings
(2, 'imu')
>>> load_config(path=None, env={"SENSORLOOP_SERVING_AUDIT_RATE": "lots"})
Traceback (most recent call last):
...
settings.config.ConfigError: invalid configuration:
  serving.audit_rate: expected a number, got 'lots' (from $SENSORLOOP_SERVING_AUDIT_RATE)
"""

from __future__ import annotations

import difflib
import os
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping

from schemas.topics import Topics
from settings.models import NAME, ModelDeclaration
from settings.sections import (
    BrokerSettings,
    DataSettings,
    FlinkSettings,
    LabelingSettings,
    LearningSettings,
    RegistrySettings,
    ServingSettings,
    StackSettings,
)

CONFIG_ENV = "SENSORLOOP_CONFIG"
DEFAULT_FILE = "sensorloop.toml"
FILE_SYSTEMS = ("file", "s3", "s3a", "s3p", "hdfs", "gs", "abfs", "abfss", "oss")


class ConfigError(ValueError):
    """Every problem found in a configuration, one per line."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid configuration:\n" + "\n".join(f"  {p}" for p in problems))


@dataclass(frozen=True)
class Config:
    """The whole configuration; each section is a frozen dataclass from ``settings.sections``."""

    broker: BrokerSettings = field(default_factory=BrokerSettings)
    topics: Topics = field(default_factory=Topics)
    registry: RegistrySettings = field(default_factory=RegistrySettings)
    flink: FlinkSettings = field(default_factory=FlinkSettings)
    stack: StackSettings = field(default_factory=StackSettings)
    serving: ServingSettings = field(default_factory=ServingSettings)
    learning: LearningSettings = field(default_factory=LearningSettings)
    labeling: LabelingSettings = field(default_factory=LabelingSettings)
    data: DataSettings = field(default_factory=DataSettings)
    models: dict[str, ModelDeclaration] = field(default_factory=dict)  # [models.<name>] tables

    @property
    def served_model(self) -> ModelDeclaration | None:
        """The declaration of ``registry.model_name``, when the configuration declares it."""
        return self.models.get(self.registry.model_name)

    @property
    def served_models(self) -> list[str]:
        """The models the jobs serve and train: ``serving.models``, or just ``registry.model_name``.

        >>> Config().served_models
        ['basic-motions']
        """
        return [n.strip() for n in self.serving.models.split(",") if n.strip()] or [self.registry.model_name]

    def device_types_of(self, model_name: str) -> tuple[str, ...]:
        """The ``device_type`` values whose readings ``model_name`` scores: its declaration's
        ``device_types``, else its own name.

        >>> Config().device_types_of("basic-motions")
        ('basic-motions',)
        """
        declared = self.models.get(model_name)
        return declared.device_types if declared is not None and declared.device_types else (model_name,)

    def precision_of(self, model_name: str) -> str:
        """``fp32`` or ``int8`` for one model: its declaration's ``precision``, else ``serving.precision``."""
        declared = self.models.get(model_name)
        return declared.precision if declared is not None and declared.precision else self.serving.precision

    def int8_check(self, model_name: str) -> float | None:
        """The INT8 agreement a new version of ``model_name`` must reach, or None when it gets no INT8 graph."""
        return self.learning.int8_min_agreement if self.precision_of(model_name) == "int8" else None

    def declared_spec(self, model_name: str) -> dict[str, Any] | None:
        """``model_name``'s declared spec, or None when the configuration does not declare it."""
        declared = self.models.get(model_name)
        return declared.spec_dict() if declared is not None else None

    def with_values(self, values: Mapping[str, Any], origin: str = "flags") -> "Config":
        """A copy with ``section.key`` values set (typed values or strings, as from a flag).

        >>> Config().with_values({"serving.window": "16", "broker.bootstrap": "kafka:9092"}).serving.window
        16
        """
        return _build(self, {}, "", {}, {k: (v, f"{origin} {k}") for k, v in values.items()})


def sections() -> list:
    """The settings sections' fields of ``Config`` (every field but ``models``)."""
    return [f for f in fields(Config) if f.name != "models"]


def _env_prefix(section: str) -> str:
    return "SENSORLOOP_TOPIC_" if section == "topics" else f"SENSORLOOP_{section.upper()}_"


def _coerce(value: Any, default: Any, from_text: bool) -> Any:
    """``value`` as the type of ``default``; raises ValueError with the expected type."""
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        words = ("1", "true", "yes", "on", "0", "false", "no", "off")
        if from_text and isinstance(value, str) and value.lower() in words:
            return value.lower() in words[:4]
        raise ValueError("expected true or false")
    for kind, name in ((int, "an integer"), (float, "a number")):
        if isinstance(default, kind):
            if isinstance(value, (int, float) if kind is float else int) and not isinstance(value, bool):
                return kind(value)
            if from_text and isinstance(value, str):
                try:
                    return kind(value)
                except ValueError:
                    pass
            raise ValueError(f"expected {name}")
    if isinstance(value, str):
        return value
    raise ValueError("expected a string")


def _check_across(cfg: Config) -> list[str]:
    """Checks no single section can make on its own."""
    problems = []
    ports = {"broker.embedded_port": cfg.broker.embedded_port, "stack.rest_port": cfg.stack.rest_port,
             "stack.rpc_port": cfg.stack.rpc_port, "labeling.port": cfg.labeling.port}
    problems += [f"{k}: port must lie in 1..65535, got {v}" for k, v in ports.items() if not 0 < v < 65536]
    if cfg.flink.jobmanager and ":" not in cfg.flink.jobmanager.removeprefix("http://").removeprefix("https://"):
        problems.append(f"flink.jobmanager: expected host:port of the REST API, got {cfg.flink.jobmanager!r}")
    scheme = cfg.flink.state_dir.split("://", 1)[0] if "://" in cfg.flink.state_dir else "file"
    if scheme not in FILE_SYSTEMS:
        problems.append(f"flink.state_dir: unsupported file system {scheme!r} in {cfg.flink.state_dir!r}")
    low, _, high = cfg.stack.prometheus_ports.partition("-")
    if not (low.isdigit() and (not high or (high.isdigit() and int(high) >= int(low)))):
        problems.append(f"stack.prometheus_ports: expected a port or a range like 9249-9259, "
                        f"got {cfg.stack.prometheus_ports!r}")
    elif (count := int(high or low) - int(low) + 1) < cfg.stack.taskmanagers + 1:
        problems.append(f"stack.prometheus_ports: {cfg.stack.prometheus_ports} holds {count} port"
                        f"{'s' if count > 1 else ''}; the JobManager and {cfg.stack.taskmanagers} TaskManagers "
                        f"need {cfg.stack.taskmanagers + 1}")
    sizes = {"stack.taskmanager_memory": cfg.stack.taskmanager_memory,
             "stack.jobmanager_memory": cfg.stack.jobmanager_memory,
             "flink.local_taskmanager_memory": cfg.flink.local_taskmanager_memory}
    for name, value in sizes.items():
        low = value.lower()
        if not (low[:-1].isdigit() and low[-1:] in ("k", "m", "g")) and not low.removesuffix("mb").removesuffix(
                "gb").isdigit():
            problems.append(f"{name}: expected a size like 2g or 1536m, got {value!r}")
    names = cfg.topics.all()
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        problems.append(f"topics: two topics share the name {', '.join(duplicates)}")
    return problems + _check_served(cfg)


def _check_served(cfg: Config) -> list[str]:
    """Served model names are ids, each served once, and no device type is claimed by two models."""
    problems, served = [], cfg.served_models
    for name in served:
        if not NAME.fullmatch(name):
            problems.append(f"serving.models: {name!r} is not a model name (letters, digits, '.', '_', '-')")
    repeated = sorted({n for n in served if served.count(n) > 1})
    if repeated:
        problems.append(f"serving.models: {', '.join(repeated)} listed twice")
    owner: dict[str, str] = {}
    for name in dict.fromkeys(served):
        for kind in cfg.device_types_of(name):
            if kind in owner:
                problems.append(f"models.{name}.device_types: {kind!r} is already {owner[kind]}'s device type")
            owner.setdefault(kind, name)
    return problems


def _read_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    try:
        return tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError([f"config file {str(path)!r} does not exist"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: not valid TOML: {exc}"]) from None


def _build(base: Config, data: dict[str, Any], source: str, env: Mapping[str, str],
           flags: Mapping[str, tuple[Any, str]]) -> Config:
    """``base`` with the file's ``data``, then ``env``, then ``flags`` (``section.key -> (value, origin)``)."""
    problems: list[str] = []
    by_name = {f.name: f for f in sections()}
    names = {name: [f.name for f in fields(section.default_factory)] for name, section in by_name.items()}
    for name in data:
        if name not in by_name and name != "models":
            hint = difflib.get_close_matches(name, list(by_name) + ["models"], n=1)
            problems.append(f"[{name}]: unknown section in {source}" + (f" (did you mean [{hint[0]}]?)" if hint else ""))
    for key in flags:
        section, _, setting = key.partition(".")
        if setting not in names.get(section, []):
            hint = difflib.get_close_matches(key, [f"{s}.{k}" for s, keys in names.items() for k in keys], n=1)
            problems.append(f"{flags[key][1]}: no setting {key}" + (f" (did you mean {hint[0]}?)" if hint else ""))
    built: dict[str, Any] = {}
    for name in by_name:
        current = getattr(base, name)
        table = data.get(name, {})
        if not isinstance(table, dict):
            problems.append(f"{name}: expected a [{name}] table in {source}")
            table = {}
        known = names[name]
        for key in table:
            if key not in known:
                hint = difflib.get_close_matches(key, known, n=1)
                problems.append(f"{name}.{key}: unknown key in {source}" + (f" (did you mean {hint[0]}?)" if hint else ""))
        values: dict[str, Any] = {}
        for key in sorted(known):
            env_key = _env_prefix(name) + key.upper()
            if f"{name}.{key}" in flags:
                (raw, origin), from_text = flags[f"{name}.{key}"], True
            elif env_key in env:
                raw, origin, from_text = env[env_key], f"${env_key}", True
            elif key in table:
                raw, origin, from_text = table[key], source, False
            else:
                continue
            try:
                values[key] = _coerce(raw, getattr(current, key), from_text)
            except ValueError as exc:
                problems.append(f"{name}.{key}: {exc}, got {raw!r} (from {origin})")
        try:
            built[name] = replace(current, **values)
        except (ValueError, TypeError) as exc:
            problems.append(f"[{name}]: {exc}")
            built[name] = current
    for key in sorted(env):
        for name, known in names.items():
            prefix = _env_prefix(name)
            if key.startswith(prefix):
                setting = key[len(prefix):].lower()
                if setting not in known:
                    hint = difflib.get_close_matches(setting, known, n=1)
                    problems.append(f"${key}: no setting {name}.{setting}"
                                    + (f" (did you mean ${prefix}{hint[0].upper()}?)" if hint else ""))
    models = dict(base.models)
    declared = data.get("models", {})
    if not isinstance(declared, dict) or not all(isinstance(t, dict) for t in declared.values()):
        problems.append(f"models: expected [models.<name>] tables in {source}")
        declared = {}
    for model_name, table in declared.items():
        try:
            models[model_name] = ModelDeclaration.from_table(model_name, table)
        except ValueError as exc:
            problems += [f"models.{model_name}.{p} (from {source})" for p in str(exc).split("; ")]
    served = models.get(built["registry"].model_name)
    if served is not None:  # the served model's window and stride, unless set explicitly to the same
        explicit = {k: v for k, v in _explicit(built["serving"], base.serving).items() if k in ("window", "stride")}
        for key, value in explicit.items():
            if value != getattr(served, key):
                problems.append(f"serving.{key}: {value} differs from models.{served.name}.{key} "
                                f"({getattr(served, key)}); leave serving.{key} unset to follow the model")
        built["serving"] = replace(built["serving"], window=served.window, stride=served.stride)
    cfg = Config(**built, models=models)
    problems += _check_across(cfg)
    if problems:
        raise ConfigError(problems)
    return cfg


def _explicit(section: Any, base: Any) -> dict[str, Any]:
    """The fields of ``section`` that differ from their defaults and from ``base``."""
    default = type(section)()
    return {f.name: getattr(section, f.name) for f in fields(section)
            if getattr(section, f.name) != getattr(default, f.name) and getattr(section, f.name) != getattr(base, f.name)}


def config_file(path: str | os.PathLike[str] | None, env: Mapping[str, str]) -> str | os.PathLike[str] | None:
    """The file a command reads: ``path``; ``""`` means ``$SENSORLOOP_CONFIG`` then ``./sensorloop.toml``."""
    if path == "":
        return env.get(CONFIG_ENV) or (DEFAULT_FILE if Path(DEFAULT_FILE).is_file() else None)
    return path


def load_config(path: str | os.PathLike[str] | None = "", env: Mapping[str, str] | None = None,
                flags: Mapping[str, Any] | None = None, base: Mapping[str, Any] | None = None) -> Config:
    """Defaults ← ``base`` (a command's own defaults) ← file ← environment ← ``flags``
    (``{"section.key": value}``). ``path=""`` looks up ``$SENSORLOOP_CONFIG`` then ``./sensorloop.toml``;
    ``path=None`` reads no file. Raises ``ConfigError`` listing every problem.

    >>> load_config(None, {}, base={"serving.window": 16}).serving.window
    16
    """
    env = os.environ if env is None else env
    path = config_file(path, env)
    data = _read_file(path) if path is not None else {}
    source = str(path) if path is not None else "built-in defaults"
    tagged = {k: (v, f"flag {k}") for k, v in (flags or {}).items()}
    start = Config().with_values(base, "the command's defaults") if base else Config()
    return _build(start, data, source, env, tagged)


def parse_assignments(pairs: list[str]) -> dict[str, str]:
    """``["serving.window=16"]`` as ``{"serving.window": "16"}``; raises ConfigError on a pair without ``=``.

    >>> parse_assignments(["serving.window=16", "topics.readings=a=b"])
    {'serving.window': '16', 'topics.readings': 'a=b'}
    """
    out, problems = {}, []
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or "." not in key:
            problems.append(f"--set {pair!r}: expected section.key=value")
        else:
            out[key.strip()] = value
    if problems:
        raise ConfigError(problems)
    return out


def to_toml(cfg: Config) -> str:
    """The configuration as a TOML file (``sensorloop config show`` prints it; jobs read it back).

    >>> load_config(path=None, flags={"serving.confidence_threshold": "0.9"}) == Config().with_values(
    ...     {"serving.confidence_threshold": 0.9})
    True
    """
    lines: list[str] = []
    tables = [(section.name, {f.name: getattr(getattr(cfg, section.name), f.name)
                              for f in fields(getattr(cfg, section.name))}) for section in sections()]
    tables += [(f"models.{name}", model.to_table()) for name, model in cfg.models.items()]
    for name, table in tables:
        lines.append(f"[{name}]")
        lines += [f"{key} = {_toml_value(value)}" for key, value in table.items()]
        lines.append("")
    return "\n".join(lines)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'
