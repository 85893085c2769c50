"""sensorloop's configuration: one validated ``Config`` that every command and both jobs load
(file, then environment, then flags), with one settings class per concern."""

from settings.config import Config, ConfigError, load_config, parse_assignments, to_toml
from settings.sections import (
    C1_ONLY,
    BrokerSettings,
    FlinkSettings,
    LabelingSettings,
    LearningSettings,
    RegistrySettings,
    ServingSettings,
    StackSettings,
)

__all__ = ["C1_ONLY", "BrokerSettings", "Config", "ConfigError", "FlinkSettings", "LabelingSettings",
           "LearningSettings", "RegistrySettings", "ServingSettings", "StackSettings", "load_config",
           "parse_assignments", "to_toml"]
