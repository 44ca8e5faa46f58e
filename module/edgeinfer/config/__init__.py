"""Configuration: frozen, validated sections and the one place they are resolved.

Precedence, highest first: command-line flags, ``EDGEINFER_<SECTION>_<KEY>``
environment variables, the TOML file, the defaults.
"""

from edgeinfer.config.http import HttpConfig
from edgeinfer.config.loader import CONFIG_ENV, ENV_PREFIX, load_config
from edgeinfer.config.sections import (
    SECTIONS,
    BrokerConfig,
    Config,
    LogConfig,
    ModelConfig,
    ModuleConfig,
    PipelineConfig,
    TopicsConfig,
    UpdatesConfig,
)
from edgeinfer.config.streams import StreamsConfig

__all__ = [
    "CONFIG_ENV",
    "ENV_PREFIX",
    "SECTIONS",
    "BrokerConfig",
    "Config",
    "HttpConfig",
    "LogConfig",
    "ModelConfig",
    "ModuleConfig",
    "PipelineConfig",
    "StreamsConfig",
    "TopicsConfig",
    "UpdatesConfig",
    "load_config",
]
