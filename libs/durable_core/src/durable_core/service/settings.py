"""How every service reads its settings: built-in defaults, an optional file, the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dynaconf import Dynaconf  # type: ignore[import-untyped]

from durable_core.errors import ConfigError

__all__ = ["check_log_level", "check_metrics_port", "read_settings", "truthy"]

LOG_LEVELS = frozenset({"DEBUG", "INFO", "WARNING", "ERROR"})


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
        files.append(env["DURABLE_SETTINGS_FILE"])
    raw = Dynaconf(
        envvar_prefix="DURABLE",
        settings_files=files,
        environments=False,
        merge_enabled=True,
        load_dotenv=False,
    )
    s: dict[str, Any] = {k.lower(): v for k, v in raw.as_dict().items()}
    for key in plain:
        name = key.upper()
        if name in env and f"DURABLE_{name}" not in env:
            s[key] = env[name]
    for key, value in (overrides or {}).items():
        if value is not None:
            s[key] = value
    return s


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
