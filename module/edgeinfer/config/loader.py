"""Resolving the configuration: defaults < TOML file < environment < command-line flags.

Each layer is merged in one place (:func:`load_config`). Unknown keys in the
file are errors rather than silently ignored: a typo in a fleet-wide config
must not quietly run with a default.
"""

from __future__ import annotations

import dataclasses
import difflib
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


#: Keys that say the same thing two ways: setting one in a layer overrides both below it.
EXCLUSIVE = (("broker", ("password", "password_file")), ("http", ("token", "token_file")))


def load_config(
    path: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, object] | None = None,
    warnings: list[str] | None = None,
) -> Config:
    """Resolve the configuration from file, environment and flags.

    Args:
        path: TOML file; when None, ``$EDGEINFER_CONFIG`` is used if set.
        env: the environment (``os.environ`` when None).
        overrides: dotted keys from the command line, e.g. ``{"broker.url": ...}``;
            None values are ignored.
        warnings: collects what deserves a warning (environment variables that
            look like a mistyped setting; never their values). Logging is not
            configured yet when the configuration is read, so the caller logs them.

    Raises:
        ConfigError: naming the key and the bad value.
    """
    env = os.environ if env is None else env
    layers: list[dict[str, dict[str, Any]]] = []
    path = path if path is not None else env.get(CONFIG_ENV) or None
    if path is not None:
        layers.append(_file_layer(Path(path)))
    layers.append(_env_layer(env, warnings if warnings is not None else []))
    flags: dict[str, dict[str, Any]] = {}
    for dotted, value in (overrides or {}).items():
        if value is not None:
            section, key = dotted.split(".", 1)
            flags.setdefault(section, {})[key] = value
    layers.append(flags)
    merged = _merge(layers)
    sections = {}
    for name, cls in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        values = {
            key: _coerce(f"{name}.{key}", val, hints[key]) for key, val in merged[name].items()
        }
        sections[name] = cls(**values)
    return Config(**sections)


def _merge(layers: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Lower layers first; a key of an exclusive pair set in a layer drops both from below."""
    merged: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    for layer in layers:
        for section, values in layer.items():
            for group_section, group in EXCLUSIVE:
                if section == group_section and any(k in values for k in group):
                    for key in group:
                        merged[section].pop(key, None)
            merged[section].update(values)
    return merged


def _file_layer(path: Path) -> dict[str, dict[str, Any]]:
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError("--config", str(path), f"a readable TOML file ({exc.strerror})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("--config", str(path), f"valid TOML ({exc})") from exc
    layer: dict[str, dict[str, Any]] = {}
    for section, values in data.items():
        if section not in SECTIONS or not isinstance(values, dict):
            raise ConfigError(section, values, f"a [section], one of {sorted(SECTIONS)}")
        for key, value in values.items():
            known = _keys(section)
            if key not in known:
                raise ConfigError(
                    f"{section}.{key}", value, f"a known key of [{section}]: {', '.join(known)}"
                )
            layer.setdefault(section, {})[key] = value
    return layer


def _env_layer(env: Mapping[str, str], warnings: list[str]) -> dict[str, dict[str, Any]]:
    """``EDGEINFER_<SECTION>_<KEY>`` variables; others with the prefix are not ours.

    Orchestrators set variables with our prefix (Kubernetes injects
    ``EDGEINFER_SERVICE_HOST`` for a Service named ``edgeinfer``), so an
    unknown one is ignored, not fatal; one close to a real setting is warned
    about, by name only: its value may be a secret.
    """
    every = [f"{ENV_PREFIX}{s.upper()}_{k.upper()}" for s in SECTIONS for k in _keys(s)]
    layer: dict[str, dict[str, Any]] = {}
    for name, raw in env.items():
        if not name.startswith(ENV_PREFIX) or name == CONFIG_ENV:
            continue
        section, _, key = name[len(ENV_PREFIX) :].lower().partition("_")
        if section in SECTIONS and key in _keys(section):
            layer.setdefault(section, {})[key] = raw
            continue
        close = difflib.get_close_matches(name, every, n=1, cutoff=0.85)
        if close:
            warnings.append(f"{name} is not a setting (did you mean {close[0]}?); ignored")
    return layer


def _keys(section: str) -> list[str]:
    return [f.name for f in dataclasses.fields(SECTIONS[section])]


def _coerce(key: str, value: object, kind: Any) -> object:
    """Return ``value`` as ``kind``; strings (from env or flags) are parsed."""
    if typing.get_origin(kind) is list:
        return _as_list(key, value)
    if typing.get_origin(kind) is dict:
        return _as_table(key, value)
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


def _as_table(key: str, value: object) -> dict[str, str]:
    """A TOML table of strings, or ``k=v,k=v`` from the environment."""
    if isinstance(value, str):
        pairs = [item.strip() for item in value.split(",") if item.strip()]
        if not all("=" in pair for pair in pairs):
            raise ConfigError(key, value, "name=value pairs, comma-separated (site=a,line=3)")
        value = {k.strip(): v.strip() for k, v in (pair.split("=", 1) for pair in pairs)}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ConfigError(key, value, 'a table of strings, e.g. {site = "a", line = "3"}')
    return {str(k): v for k, v in value.items()}


_PARSERS: dict[type, Callable[[str, object], object]] = {
    bool: _as_bool,
    int: _as_int,
    float: _as_float,
    str: _as_str,
}
