"""Configuration: `config.toml` -> frozen dataclasses, every error as FILE: key.path: reason.

- `schema`: the dataclasses (what a config holds; docs/config.md is the reference).
- `values`: `ConfigError`, sizes and durations, typed getters that record problems.
- `parse`: `load_config` / `parse_config`: one pass that reports every problem at once.
- `check`: rules across keys (duplicate listeners, shared GPIO pins, devices, endpoints).
- `depth`: the nesting bound checked before anything walks a file.

Everything the rest of the package uses is importable from `bridge.config` itself.
"""

from __future__ import annotations

from bridge.config.parse import load_config, parse_config
from bridge.config.schema import (
    DEFAULT_CONFIG_PATH,
    DEFAULT_STATE_DIR,
    AuditConfig,
    Config,
    Framing,
    GpioConfig,
    LineConfig,
    LinesConfig,
    LogConfig,
    OidcConfig,
    OidcGroup,
    PortConfig,
    ServerConfig,
    SshConfig,
)
from bridge.config.values import (
    ConfigError,
    is_loopback,
    parse_duration,
    parse_listen,
    parse_size,
    parse_syslog_url,
)

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "DEFAULT_STATE_DIR",
    "AuditConfig",
    "Config",
    "ConfigError",
    "Framing",
    "GpioConfig",
    "LineConfig",
    "LinesConfig",
    "LogConfig",
    "OidcConfig",
    "OidcGroup",
    "PortConfig",
    "ServerConfig",
    "SshConfig",
    "is_loopback",
    "load_config",
    "parse_config",
    "parse_duration",
    "parse_listen",
    "parse_size",
    "parse_syslog_url",
]
