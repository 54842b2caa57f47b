"""How every service reads its settings: built-in defaults, an optional file, the environment."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

from dynaconf import Dynaconf  # type: ignore[import-untyped]
from dynaconf.utils.parse_conf import (  # type: ignore[import-untyped]
    boolean_fix,
    parse_conf_data,
)

from durable_core.errors import ConfigError

__all__ = [
    "check_log_level",
    "check_metrics_port",
    "check_settings_file",
    "duration",
    "number",
    "read_settings",
    "truthy",
]

LOG_LEVELS = frozenset({"DEBUG", "INFO", "WARNING", "ERROR"})

# Text settings are taken from their DURABLE_ variable exactly as given: credentials always,
# and every setting whose value in the files is text (``prefix``, ``consumer``, URLs...).
# Dynaconf would read ``007`` as 7, ``1e3`` as 1000.0, strip quotes, and evaluate or refuse a
# leading ``@`` (``@format``, ``@json``...): a valid password would log in as another string,
# DURABLE_PREFIX=007 would open the engine "7", or the service would stop on a parse error.
VERBATIM = frozenset({"nats_user", "nats_password", "nats_token", "inspector_token"})
PREFIX = "DURABLE_"
# The formats dynaconf reads without extras (it skips any other file silently).
SETTINGS_SUFFIXES = frozenset({".json", ".py", ".tml", ".toml", ".yaml", ".yml"})


def read_settings(
    defaults: Path,
    overrides: Mapping[str, Any] | None = None,
    plain: tuple[str, ...] = ("nats_url",),
) -> dict[str, Any]:
    """The flat settings: ``defaults`` (a TOML file), then the file named by
    ``DURABLE_SETTINGS_FILE``, then ``DURABLE_*`` variables, then the non-None ``overrides``
    (flags). Keys are lower-case. The ``plain`` settings are also read from their variable
    without the prefix (``NATS_URL``) when the prefixed one is unset."""
    env = os.environ
    files = [str(defaults)]
    if env.get("DURABLE_SETTINGS_FILE"):
        files.append(check_settings_file(env["DURABLE_SETTINGS_FILE"]))
    raw = _files(files)
    try:
        loaded = raw.as_dict()
    except Exception as e:
        raise ConfigError(f"cannot read the settings files {', '.join(files)}: {e}") from e
    text = VERBATIM | {k.lower() for k, v in loaded.items() if isinstance(v, str)}
    verbatim: dict[str, str] = {}
    parsed: dict[str, Any] = {}
    for name, value in env.items():
        if not name.startswith(PREFIX) or len(name) == len(PREFIX):
            continue
        key = name[len(PREFIX) :]
        if key.lower() in text:
            verbatim[key.lower()] = value
        else:  # as dynaconf's own environment loader reads it (TOML values, KEY__SUB nesting)
            parsed[key] = parse_conf_data(boolean_fix(value), tomlfy=True, box_settings=raw)
    if parsed:
        raw.update(parsed)
    s: dict[str, Any] = {k.lower(): v for k, v in raw.as_dict().items()}
    s.update(verbatim)
    for key in plain:
        name = key.upper()
        if name in env and f"DURABLE_{name}" not in env:
            s[key] = env[name]
    for key, value in (overrides or {}).items():
        if value is not None:
            s[key] = value
    return s


def _files(files: list[str]) -> Any:
    return Dynaconf(
        envvar_prefix="DURABLE",
        settings_files=files,
        environments=False,
        merge_enabled=True,
        load_dotenv=False,
        loaders=[],  # the files only: the environment is read by read_settings
    )


def check_settings_file(path: str) -> str:
    """``path`` (DURABLE_SETTINGS_FILE), once it is known to be a readable settings file that
    parses; else ConfigError naming it. Dynaconf skips a missing file, and a file of a format
    it does not read, without a word: a wrong path in a deployment left its settings (the
    replicas of the streams, say) at their defaults."""
    where = f"DURABLE_SETTINGS_FILE={path}"
    file = Path(path)
    if not file.is_file():
        what = "is a directory" if file.is_dir() else "does not exist"
        raise ConfigError(f"{where}: the settings file {what}")
    if not os.access(file, os.R_OK):
        raise ConfigError(f"{where}: the settings file is not readable")
    if file.suffix.lower() not in SETTINGS_SUFFIXES:
        raise ConfigError(
            f"{where}: a settings file must be {', '.join(sorted(SETTINGS_SUFFIXES))}, "
            f"not {file.suffix or 'without an extension'}"
        )
    if file.suffix.lower() == ".py":
        return path  # not run twice: read_settings names the files if it fails
    try:
        _files([path]).as_dict()
    except Exception as e:
        raise ConfigError(f"{where}: cannot parse the settings file: {e}") from e
    return path


def number(s: Mapping[str, Any], key: str, kind: type = int) -> Any:
    """Setting ``key`` as an ``int`` or a ``float``: ConfigError naming it if missing, not a
    number (a boolean is not one: ``true`` would be 1), not finite (nan, inf), or, for an
    ``int``, not whole (``2.5`` shards would have been 2, for good)."""
    value = s.get(key)
    try:
        if isinstance(value, bool):
            raise TypeError("a boolean")
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise ValueError("not a whole number")
        out = kind(value)
        if not math.isfinite(out):
            raise ValueError("not finite")
    except (TypeError, ValueError, OverflowError) as e:
        what = "a whole number" if kind is int else "a number"
        raise ConfigError(f"setting {key!r} must be {what}, got {value!r}") from e
    return out


def duration(s: Mapping[str, Any], key: str) -> timedelta:
    """Setting ``key``, in seconds, as a timedelta: ConfigError naming it if it is not a
    finite number or is beyond what a timedelta holds (1e20 s)."""
    value = number(s, key, float)
    try:
        return timedelta(seconds=value)
    except OverflowError as e:
        raise ConfigError(f"setting {key!r} is out of range, got {s.get(key)!r}") from e


def truthy(value: Any) -> bool:
    """A boolean setting: ``1``, ``true``, ``yes`` or ``on`` from the environment, or a bool."""
    if isinstance(value, str):
        return value.strip().lower() in {"1", "true", "yes", "on"}
    return bool(value)


def check_log_level(s: Mapping[str, Any]) -> str:
    """The ``log_level`` setting, upper-case (INFO when unset); ConfigError if unknown."""
    level = str(s.get("log_level") or "INFO").upper()
    if level not in LOG_LEVELS:
        raise ConfigError(f"log_level must be DEBUG, INFO, WARNING or ERROR, not {level!r}")
    return level


def check_metrics_port(port: int) -> int:
    """The ``metrics_port`` setting (0 turns the endpoint off); ConfigError if out of range."""
    if not 0 <= port <= 65535:
        raise ConfigError(f"setting 'metrics_port' must be 0 (off) to 65535, got {port}")
    return port
