"""Processor settings: dynaconf (settings file + DURABLE_ environment), validated once."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from durable_core import ConfigError, EngineConfig, NatsConfig, WorkerConfig
from durable_core.service.settings import (
    check_log_level,
    check_metrics_port,
    duration,
    number,
    read_settings,
    truthy,
)

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
    load_plugins: tuple[str, ...] | None = None  # installed plugins to load; None: all


def _heartbeat(seconds: float) -> timedelta | None:
    """0 means the default (ack_wait / 6); a negative value turns heartbeats off."""
    if seconds == 0:
        return None
    try:
        return timedelta(seconds=max(seconds, 0))
    except OverflowError as e:
        raise ConfigError(f"setting 'heartbeat' is out of range, got {seconds!r}") from e


def _services(value: Any) -> dict[str, str]:
    """The ``services`` table (service name -> host:port); ConfigError if it is not one."""
    if value in (None, ""):
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(
            "setting 'services' must be a table of service name -> host:port (in the settings "
            f"file, or DURABLE_SERVICES__<name>=host:port), got {value!r}"
        )
    return {str(k): str(v) for k, v in value.items()}


def load_settings(overrides: Mapping[str, Any] | None = None) -> ProcessorSettings:
    """Read defaults, the optional DURABLE_SETTINGS_FILE, DURABLE_* variables, then overrides.

    Raises:
        ConfigError: a value is missing or invalid (the message names the setting).
    """
    # SUBMIT_TEST_COMMAND: the seed's plain variable name keeps working.
    return build(read_settings(DEFAULTS, overrides, plain=("nats_url", "submit_test_command")))


def build(s: Mapping[str, Any]) -> ProcessorSettings:
    """Validate a flat settings mapping into typed configuration."""

    def num(key: str, kind: type = int) -> Any:
        return number(s, key, kind)

    def seconds(key: str) -> timedelta:
        return duration(s, key)

    def text(key: str) -> str | None:
        value = s.get(key)
        return str(value) if value not in (None, "") else None

    services = _services(s.get("services"))
    if text("default_service_address"):
        services["*"] = str(s["default_service_address"])
    heartbeat = _heartbeat(num("heartbeat", float))
    grace = seconds("shutdown_grace")
    if grace < timedelta(0):
        raise ConfigError(
            f"setting 'shutdown_grace' must be 0 or more seconds, got {s['shutdown_grace']!r}"
        )
    nats = NatsConfig.from_settings(s, name="durable-processor")
    engine = EngineConfig(
        prefix=str(s.get("prefix", "durable")),
        replicas=num("replicas"),
        shards=num("shards"),
        max_payload=num("max_payload"),
        payload_threshold=num("payload_threshold"),
        max_object_size=num("max_object_size"),
    )
    worker = WorkerConfig(
        max_concurrent=num("max_concurrent"),
        ack_wait=seconds("ack_wait"),
        heartbeat=heartbeat,
        consumer=str(s.get("consumer") or "processor"),
        services=services,
        processor_id=str(s.get("processor_id") or ""),
        shutdown_grace=grace,
        lease_ttl=seconds("lease_ttl"),
    )
    level = check_log_level(s)
    plugins = _plugins(s.get("load_plugins"))
    metrics_port = check_metrics_port(num("metrics_port"))
    return ProcessorSettings(
        nats,
        engine,
        worker,
        truthy(s.get("submit_test_command")),
        level,
        metrics_host=str(s.get("metrics_host") or "127.0.0.1"),
        metrics_port=metrics_port,
        load_plugins=plugins,
    )


def _plugins(value: Any) -> tuple[str, ...] | None:
    """``"*"``/empty: every installed plugin; ``"none"``: none; else the comma-separated
    entry-point names to load."""
    text = ",".join(value) if isinstance(value, list | tuple) else str(value or "").strip()
    if text in ("", "*"):
        return None
    if text.lower() == "none":
        return ()
    return tuple(sorted({p.strip() for p in text.split(",") if p.strip()}))
