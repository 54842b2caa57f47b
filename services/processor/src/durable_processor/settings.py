"""Processor settings: dynaconf (settings file + DURABLE_ environment), validated once."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from dynaconf import Dynaconf

from durable_core import ConfigError, EngineConfig, NatsConfig, WorkerConfig

DEFAULTS = Path(__file__).with_name("settings.toml")


@dataclass(frozen=True, slots=True)
class ProcessorSettings:
    """Everything the processor needs, typed and validated."""

    nats: NatsConfig
    engine: EngineConfig
    worker: WorkerConfig
    submit_test_command: bool
    log_level: str
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9464  # 0: no metrics endpoint


def _heartbeat(seconds: float) -> timedelta | None:
    """0 means the default (ack_wait / 3); a negative value turns heartbeats off."""
    if seconds == 0:
        return None
    return timedelta(seconds=max(seconds, 0))


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in {"1", "true", "yes", "on"}
    return bool(value)


def load_settings(overrides: Mapping[str, Any] | None = None) -> ProcessorSettings:
    """Read defaults, the optional DURABLE_SETTINGS_FILE, DURABLE_* variables, then overrides.

    Raises:
        ConfigError: a value is missing or invalid (the message names the setting).
    """
    env = os.environ
    files = [str(DEFAULTS)]
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
    # The seed's plain variable names keep working.
    if "NATS_URL" in env and "DURABLE_NATS_URL" not in env:
        s["nats_url"] = env["NATS_URL"]
    if "SUBMIT_TEST_COMMAND" in env and "DURABLE_SUBMIT_TEST_COMMAND" not in env:
        s["submit_test_command"] = env["SUBMIT_TEST_COMMAND"]
    for key, value in (overrides or {}).items():
        if value is not None:
            s[key] = value
    return build(s)


def build(s: Mapping[str, Any]) -> ProcessorSettings:
    """Validate a flat settings mapping into typed configuration."""

    def num(key: str, kind: type = int) -> Any:
        try:
            return kind(s[key])
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"setting {key!r} must be a number, got {s.get(key)!r}") from e

    def text(key: str) -> str | None:
        value = s.get(key)
        return str(value) if value not in (None, "") else None

    services = {str(k): str(v) for k, v in dict(s.get("services") or {}).items()}
    if text("default_service_address"):
        services["*"] = str(s["default_service_address"])
    heartbeat = num("heartbeat", float)
    nats = NatsConfig.from_settings(s, name="durable-processor")
    engine = EngineConfig(
        prefix=str(s.get("prefix", "durable")),
        replicas=num("replicas"),
        max_payload=num("max_payload"),
    )
    worker = WorkerConfig(
        max_concurrent=num("max_concurrent"),
        ack_wait=timedelta(seconds=num("ack_wait", float)),
        heartbeat=_heartbeat(heartbeat),
        consumer=str(s.get("consumer") or "processor"),
        services=services,
        processor_id=str(s.get("processor_id") or ""),
        shutdown_grace=timedelta(seconds=num("shutdown_grace", float)),
        lease_ttl=timedelta(seconds=num("lease_ttl", float)),
    )
    level = str(s.get("log_level") or "INFO").upper()
    if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise ConfigError(f"log_level must be DEBUG, INFO, WARNING or ERROR, not {level!r}")
    metrics_port = num("metrics_port")
    if not 0 <= metrics_port <= 65535:
        raise ConfigError(f"setting 'metrics_port' must be 0 (off) to 65535, got {metrics_port}")
    return ProcessorSettings(
        nats,
        engine,
        worker,
        _truthy(s.get("submit_test_command")),
        level,
        metrics_host=str(s.get("metrics_host") or "127.0.0.1"),
        metrics_port=metrics_port,
    )
