"""Resolving the configuration: defaults < TOML file < environment < command-line flags.

Each layer is merged in one place (:func:`load_config`). Unknown keys in the
file are errors rather than silently ignored: a typo in a fleet-wide config
must not quietly run with a default.
"""

from __future__ import annotations

import dataclasses
import os
import re
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import tomllib

from edgeinfer.config.sections import SECTIONS, Config
from edgeinfer.errors import ConfigError

ENV_PREFIX = "EDGEINFER_"
#: Environment variable naming the TOML file, for containers that cannot pass flags.
CONFIG_ENV = "EDGEINFER_CONFIG"


def load_config(
    path: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, object] | None = None,
) -> Config:
    """Resolve the configuration from file, environment and flags.

    Args:
        path: TOML file; when None, ``$EDGEINFER_CONFIG`` is used if set.
        env: the environment (``os.environ`` when None).
        overrides: dotted keys from the command line, e.g. ``{"broker.url": ...}``;
            None values are ignored.

    Raises:
        ConfigError: naming the key and the bad value.
    """
    env = os.environ if env is None else env
    merged: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    path = path if path is not None else env.get(CONFIG_ENV) or None
    if path is not None:
        _merge_file(merged, Path(path))
    _merge_env(merged, env)
    for dotted, value in (overrides or {}).items():
        if value is not None:
            section, key = dotted.split(".", 1)
            merged[section][key] = value
    sections = {}
    for name, cls in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        values = {
            key: _coerce(f"{name}.{key}", val, hints[key]) for key, val in merged[name].items()
        }
        sections[name] = cls(**values)
    return Config(**sections)


def _merge_file(merged: dict[str, dict[str, Any]], path: Path) -> None:
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError("--config", str(path), f"a readable TOML file ({exc.strerror})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("--config", str(path), f"valid TOML ({exc})") from exc
    for section, values in data.items():
        if section not in SECTIONS or not isinstance(values, dict):
            raise ConfigError(section, values, f"a [section], one of {sorted(SECTIONS)}")
        for key, value in values.items():
            _check_known(section, key, value)
            merged[section][key] = value


def _merge_env(merged: dict[str, dict[str, Any]], env: Mapping[str, str]) -> None:
    for name, raw in env.items():
        if not name.startswith(ENV_PREFIX) or name == CONFIG_ENV:
            continue
        section, _, key = name[len(ENV_PREFIX) :].lower().partition("_")
        if section not in SECTIONS:
            raise ConfigError(
                name,
                raw,
                f"EDGEINFER_<SECTION>_<KEY> with SECTION one of "
                f"{sorted(s.upper() for s in SECTIONS)}",
            )
        _check_known(section, key, raw, label=name)
        merged[section][key] = raw


def _check_known(section: str, key: str, value: object, label: str | None = None) -> None:
    known = [f.name for f in dataclasses.fields(SECTIONS[section])]
    if key not in known:
        raise ConfigError(
            label or f"{section}.{key}", value, f"a known key of [{section}]: {', '.join(known)}"
        )


def _coerce(key: str, value: object, kind: Any) -> object:
    """Return ``value`` as ``kind``; strings (from env or flags) are parsed."""
    if typing.get_origin(kind) is list:
        return _as_list(key, value)
    parse: Callable[[str, object], object] = _PARSERS[kind]
    return parse(key, value)


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _as_bool(key: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in _TRUE + _FALSE:
        return value.lower() in _TRUE
    raise ConfigError(key, value, "true or false")


def _as_int(key: str, value: object) -> int:
    if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
        return int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(key, value, "an integer")
    return value


def _as_float(key: str, value: object) -> float:
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            raise ConfigError(key, value, "a number") from None
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ConfigError(key, value, "a number")
    return float(value)


def _as_str(key: str, value: object) -> str:
    if not isinstance(value, str):
        raise ConfigError(key, value, "a string")
    return value


def _as_list(key: str, value: object) -> list[str]:
    if isinstance(value, str):
        value = [item.strip() for item in value.split(",") if item.strip()]
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ConfigError(key, value, "a list of strings (comma-separated in the environment)")
    return list(value)


_PARSERS: dict[type, Callable[[str, object], object]] = {
    bool: _as_bool,
    int: _as_int,
    float: _as_float,
    str: _as_str,
}
