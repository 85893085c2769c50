"""One configuration for every sensorloop command: a TOML file plus ``SENSORLOOP_<SECTION>_<KEY>``
environment overrides, validated at start with errors that name the key and where its value came from.

Precedence, lowest first: built-in defaults, the file (``--config``, else ``$SENSORLOOP_CONFIG``, else
``./sensorloop.toml`` when present), environment variables, then command-line flags.
Topic names keep their own prefix, ``SENSORLOOP_TOPIC_<NAME>``.

>>> cfg = load_config(path=None, env={"SENSORLOOP_FLINK_PARALLELISM": "2"})
>>> cfg.flink.parallelism, cfg.topics.readings
(2, 'sensor-readings')
>>> load_config(path=None, env={"SENSORLOOP_SERVING_AUDIT_RATE": "lots"})
Traceback (most recent call last):
...
stream_jobs.config.ConfigError: invalid configuration:
  serving.audit_rate: expected a number, got 'lots' (from $SENSORLOOP_SERVING_AUDIT_RATE)
"""

from __future__ import annotations

import difflib
import os
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping

from infra.flink_cluster import C1_ONLY
from operators.config import ServingConfig
from operators.learning import LearningConfig
from schemas.topics import Topics

CONFIG_ENV = "SENSORLOOP_CONFIG"
DEFAULT_FILE = "sensorloop.toml"


class ConfigError(ValueError):
    """Every problem found in a configuration, one per line."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid configuration:\n" + "\n".join(f"  {p}" for p in problems))


@dataclass(frozen=True)
class BrokerSection:
    """Kafka: an existing cluster (``bootstrap``) or the embedded broker the stack starts."""

    bootstrap: str = ""  # empty: the embedded stack's broker
    embedded_port: int = 9092
    storage: str = "memory://tansu/"  # Tansu storage engine; s3://bucket/ keeps records across restarts


@dataclass(frozen=True)
class RegistrySection:
    """Where model versions live: a local folder, or a folder on shared storage mounted on every node."""

    path: str = "var/registry"
    model_name: str = "basic-motions"


@dataclass(frozen=True)
class FlinkSection:
    """Job runtime, and where jobs go: ``jobmanager`` empty means the embedded stack's Flink cluster."""

    jobmanager: str = ""  # host:port of a JobManager's REST API; empty: the embedded stack
    state_dir: str = "var/flink"  # checkpoints and savepoints: a path, file:// or s3:// URL
    parallelism: int = 1
    checkpoint_interval_ms: int = 5_000
    exactly_once: bool = False
    execution_mode: str = "thread"  # serving job; the learning job runs torch in process mode
    python_executable: str = ""  # Python on the TaskManagers; empty: this interpreter
    metrics_urls: str = ""  # comma-separated Prometheus /metrics URLs of the TaskManagers; empty: the stack's
    restart_attempts: int = 3
    bundle_time_ms: int = 5
    buffer_timeout_ms: int = 5


@dataclass(frozen=True)
class StackSection:
    """The embedded single-machine stack: broker + a Flink session cluster from the installed PyFlink."""

    run_dir: str = "var/stack"
    rest_port: int = 8081
    taskmanager_slots: int = 4
    taskmanager_memory: str = "2g"
    jobmanager_memory: str = "1g"
    prometheus_ports: str = "9249-9259"
    taskmanager_jvm_options: str = C1_ONLY  # "" for the JVM's defaults (C2: long runs, cores to spare)


@dataclass(frozen=True)
class LearningSection(LearningConfig):
    """The online trainer's knobs plus the label join's."""

    label_ttl_ms: int = 3_600_000
    answers_needed: int = 1


@dataclass(frozen=True)
class LabelingSection:
    host: str = "127.0.0.1"
    port: int = 8080
    lease_seconds: float = 120.0
    answers_needed: int = 1


SERVING_OWN = ("model_name", "registry", "stats_file")  # set from [registry] / per run, not in [serving]


def _serving_fields() -> list:
    return [f for f in fields(ServingConfig) if f.name not in SERVING_OWN]


@dataclass(frozen=True)
class Config:
    """The whole configuration; each section is a frozen dataclass."""

    broker: BrokerSection = field(default_factory=BrokerSection)
    topics: Topics = field(default_factory=Topics)
    registry: RegistrySection = field(default_factory=RegistrySection)
    flink: FlinkSection = field(default_factory=FlinkSection)
    stack: StackSection = field(default_factory=StackSection)
    serving: ServingConfig = field(default_factory=ServingConfig)
    learning: LearningSection = field(default_factory=LearningSection)
    labeling: LabelingSection = field(default_factory=LabelingSection)

    def serving_config(self) -> ServingConfig:
        return replace(self.serving, model_name=self.registry.model_name, registry=self.registry.path)


def _env_prefix(section: str) -> str:
    return "SENSORLOOP_TOPIC_" if section == "topics" else f"SENSORLOOP_{section.upper()}_"


def _section_fields(section: str, cls) -> list:
    return _serving_fields() if section == "serving" else list(fields(cls))


def _coerce(value: Any, default: Any, from_env: bool) -> Any:
    """``value`` as the type of ``default``; raises ValueError with the expected type."""
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if from_env and isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return value.lower() in ("1", "true", "yes", "on")
        raise ValueError("expected true or false")
    if isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if from_env and isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ValueError("expected an integer")
    if isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if from_env and isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ValueError("expected a number")
    if isinstance(value, str):
        return value
    raise ValueError("expected a string")


def _check_ranges(cfg: Config) -> list[str]:
    problems = []
    ports = {"broker.embedded_port": cfg.broker.embedded_port, "stack.rest_port": cfg.stack.rest_port,
             "labeling.port": cfg.labeling.port}
    problems += [f"{k}: port must lie in 1..65535, got {v}" for k, v in ports.items() if not 0 < v < 65536]
    positive = {"flink.parallelism": cfg.flink.parallelism, "flink.checkpoint_interval_ms": cfg.flink.checkpoint_interval_ms,
                "stack.taskmanager_slots": cfg.stack.taskmanager_slots,
                "learning.answers_needed": cfg.learning.answers_needed,
                "labeling.answers_needed": cfg.labeling.answers_needed, "learning.batch_size": cfg.learning.batch_size,
                "learning.reservoir_capacity": cfg.learning.reservoir_capacity}
    problems += [f"{k}: must be >= 1, got {v}" for k, v in positive.items() if v < 1]
    if cfg.flink.execution_mode not in ("thread", "process"):
        problems.append(f"flink.execution_mode: must be 'thread' or 'process', got {cfg.flink.execution_mode!r}")
    if cfg.flink.jobmanager and ":" not in cfg.flink.jobmanager.removeprefix("http://").removeprefix("https://"):
        problems.append(f"flink.jobmanager: expected host:port of the REST API, got {cfg.flink.jobmanager!r}")
    scheme = cfg.flink.state_dir.split("://", 1)[0] if "://" in cfg.flink.state_dir else "file"
    if scheme not in ("file", "s3", "s3a", "s3p", "hdfs", "gs", "abfs", "abfss", "oss"):
        problems.append(f"flink.state_dir: unsupported file system {scheme!r} in {cfg.flink.state_dir!r}")
    low, _, high = cfg.stack.prometheus_ports.partition("-")
    if not (low.isdigit() and (not high or (high.isdigit() and int(high) >= int(low)))):
        problems.append(f"stack.prometheus_ports: expected a port or a range like 9249-9259, "
                        f"got {cfg.stack.prometheus_ports!r}")
    for name in ("taskmanager_memory", "jobmanager_memory"):
        value = getattr(cfg.stack, name).lower()
        if not (value[:-1].isdigit() and value[-1] in "kmg") and not value.removesuffix("mb").removesuffix("gb").isdigit():
            problems.append(f"stack.{name}: expected a size like 2g or 1536m, got {getattr(cfg.stack, name)!r}")
    names = cfg.topics.all()
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        problems.append(f"topics: two topics share the name {', '.join(duplicates)}")
    return problems


def load_config(path: str | os.PathLike[str] | None = "", env: Mapping[str, str] | None = None) -> Config:
    """Defaults ← file ← environment. ``path=""`` looks up ``$SENSORLOOP_CONFIG`` then ``./sensorloop.toml``;
    ``path=None`` reads no file. Raises ``ConfigError`` listing every problem."""
    env = os.environ if env is None else env
    data: dict[str, Any] = {}
    source = "built-in defaults"
    if path == "":
        path = env.get(CONFIG_ENV) or (DEFAULT_FILE if Path(DEFAULT_FILE).is_file() else None)
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError([f"config file {str(path)!r} does not exist"]) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([f"{path}: not valid TOML: {exc}"]) from None
        source = str(path)
    problems: list[str] = []
    sections = {f.name: f for f in fields(Config)}
    for name in data:
        if name not in sections:
            hint = difflib.get_close_matches(name, sections, n=1)
            problems.append(f"[{name}]: unknown section in {source}" + (f" (did you mean [{hint[0]}]?)" if hint else ""))
    built: dict[str, Any] = {}
    for name, section_field in sections.items():
        cls = section_field.default_factory
        defaults = cls()
        table = data.get(name, {})
        if not isinstance(table, dict):
            problems.append(f"{name}: expected a [{name}] table in {source}")
            table = {}
        known = {f.name: f for f in _section_fields(name, cls)}
        for key in table:
            if key not in known:
                hint = difflib.get_close_matches(key, known, n=1)
                problems.append(f"{name}.{key}: unknown key in {source}" + (f" (did you mean {hint[0]}?)" if hint else ""))
        values: dict[str, Any] = {}
        for key, f in known.items():
            default = getattr(defaults, key)
            env_key = _env_prefix(name) + key.upper()
            raw, origin, from_env = None, None, False
            if env_key in env:
                raw, origin, from_env = env[env_key], f"${env_key}", True
            elif key in table:
                raw, origin = table[key], source
            if origin is None:
                continue
            try:
                values[key] = _coerce(raw, default, from_env)
            except ValueError as exc:
                problems.append(f"{name}.{key}: {exc}, got {raw!r} (from {origin})")
        try:
            built[name] = replace(defaults, **values)
        except (ValueError, TypeError) as exc:
            problems.append(f"[{name}]: {exc}")
            built[name] = defaults
    for key in sorted(env):
        for name, section_field in sections.items():
            prefix = _env_prefix(name)
            if key.startswith(prefix):
                known = [f.name for f in _section_fields(name, section_field.default_factory)]
                setting = key[len(prefix):].lower()
                if setting not in known:
                    hint = difflib.get_close_matches(setting, known, n=1)
                    problems.append(f"${key}: no setting {name}.{setting}"
                                    + (f" (did you mean ${prefix}{hint[0].upper()}?)" if hint else ""))
    cfg = Config(**built)
    problems += _check_ranges(cfg)
    if problems:
        raise ConfigError(problems)
    return cfg


def to_toml(cfg: Config) -> str:
    """The configuration as a TOML file (``sensorloop config show`` prints it)."""
    lines: list[str] = []
    for section in fields(Config):
        value = getattr(cfg, section.name)
        lines.append(f"[{section.name}]")
        for f in _section_fields(section.name, type(value)):
            v = getattr(value, f.name)
            if isinstance(v, bool):
                text = "true" if v else "false"
            elif isinstance(v, (int, float)):
                text = repr(v)
            else:
                text = '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'
            lines.append(f"{f.name} = {text}")
        lines.append("")
    return "\n".join(lines)

