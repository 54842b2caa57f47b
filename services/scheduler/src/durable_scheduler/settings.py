"""Scheduler settings: dynaconf (settings file + DURABLE_ environment), validated once."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from durable_core import ConfigError, EngineConfig, NatsConfig
from durable_core.service.settings import (
    check_log_level,
    check_metrics_port,
    duration,
    number,
    read_settings,
)

DEFAULTS = Path(__file__).with_name("settings.toml")


@dataclass(frozen=True, slots=True)
class SchedulerSettings:
    """Everything the scheduler needs, typed and validated.

    Attributes:
        consumer: the durable tick consumer, shared by every replica.
        ack_wait: how long a tick may stay unacknowledged before it goes to another replica
            (a replica that died holding it).
        max_concurrent: ticks handled at once by this replica.
        shutdown_grace: how long SIGTERM waits for the ticks being handled.
        retention_sweep: how often the retention sweep runs (the period itself is
            ``engine.retention``, setting ``retention`` in seconds).
        expired_note_for: how long an expired execution's note ("expired", how it ended) is
            kept before the server drops it (setting ``expired_note_ttl`` in seconds; 0 or
            None: as long as ``retention``, decided by the janitor).
        stranded_sweep: how often to look for invocations RUNNING under a command that no
            processor holds (``durable_scheduler.stranded``); 0 turns it off.
        stranded_after: how long such a state must be unchanged before it is suspected (it
            is rescued when seen so again ``stranded_sweep`` later).
        schedule_sweep: how often to arm active schedules the server does not fire (a create
            or resume that failed between its record write and its arm) and disarm paused ones
            it still fires (``durable_scheduler.schedule_sweep``); 0 turns it off.
    """

    nats: NatsConfig
    engine: EngineConfig
    consumer: str = "scheduler"
    ack_wait: timedelta = timedelta(seconds=10)
    max_concurrent: int = 16
    shutdown_grace: timedelta = timedelta(seconds=10)
    retention_sweep: timedelta = timedelta(hours=1)
    expired_note_for: timedelta | None = None
    stranded_sweep: timedelta = timedelta(seconds=30)
    stranded_after: timedelta = timedelta(seconds=60)
    schedule_sweep: timedelta = timedelta(seconds=30)
    log_level: str = "INFO"
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9465  # 0: no metrics endpoint


def load_settings(overrides: Mapping[str, Any] | None = None) -> SchedulerSettings:
    """Read defaults, the optional DURABLE_SETTINGS_FILE, DURABLE_* variables, then overrides.

    Raises:
        ConfigError: a value is missing or invalid (the message names the setting).
    """
    return build(read_settings(DEFAULTS, overrides))


def build(s: Mapping[str, Any]) -> SchedulerSettings:
    """Validate a flat settings mapping into typed configuration."""

    def num(key: str, kind: type = int) -> Any:
        return number(s, key, kind)

    def seconds(key: str) -> float:
        """A duration setting in seconds: a finite number a timedelta holds, or ConfigError."""
        duration(s, key)
        return float(number(s, key, float))

    nats = NatsConfig.from_settings(s, name="durable-scheduler")
    retention = seconds("retention")
    if retention < 1:
        raise ConfigError(f"setting 'retention' must be at least 1 second, got {retention}")
    # Replicas and the payload limit are read from the streams the processors created.
    grace_s = seconds("payload_grace")
    if grace_s < 0:
        raise ConfigError(f"setting 'payload_grace' must be at least 0 s, got {grace_s}")
    engine = EngineConfig(
        prefix=str(s.get("prefix", "durable")),
        retention=timedelta(seconds=retention),
        payload_grace=timedelta(seconds=grace_s),
    )
    ack_wait = seconds("ack_wait")
    if ack_wait < 1:
        raise ConfigError(f"setting 'ack_wait' must be at least 1 second, got {ack_wait}")
    max_concurrent = num("max_concurrent")
    if not 1 <= max_concurrent <= 10_000:
        raise ConfigError(f"setting 'max_concurrent' must be 1..10000, got {max_concurrent}")
    grace = seconds("shutdown_grace")
    if grace < 0:
        raise ConfigError(f"setting 'shutdown_grace' must be 0 or more seconds, got {grace}")
    sweep = seconds("retention_sweep")
    if sweep < 0.1:
        raise ConfigError(f"setting 'retention_sweep' must be at least 0.1 s, got {sweep}")
    note_ttl = seconds("expired_note_ttl")
    if note_ttl != 0 and note_ttl < 1:
        raise ConfigError(f"setting 'expired_note_ttl' must be 0 or at least 1 s, got {note_ttl}")
    stranded_sweep = seconds("stranded_sweep")
    stranded_after = seconds("stranded_after")
    if stranded_sweep != 0 and stranded_sweep < 0.1:
        raise ConfigError(
            f"setting 'stranded_sweep' must be 0 or at least 0.1 s, got {stranded_sweep}"
        )
    if stranded_after < 1:
        raise ConfigError(f"setting 'stranded_after' must be at least 1 s, got {stranded_after}")
    schedule_sweep = seconds("schedule_sweep")
    if schedule_sweep != 0 and schedule_sweep < 0.1:
        raise ConfigError(
            f"setting 'schedule_sweep' must be 0 or at least 0.1 s, got {schedule_sweep}"
        )
    level = check_log_level(s)
    metrics_port = check_metrics_port(num("metrics_port"))
    return SchedulerSettings(
        nats=nats,
        engine=engine,
        consumer=str(s.get("consumer") or "scheduler"),
        ack_wait=timedelta(seconds=ack_wait),
        max_concurrent=max_concurrent,
        shutdown_grace=timedelta(seconds=grace),
        retention_sweep=timedelta(seconds=sweep),
        expired_note_for=timedelta(seconds=note_ttl) if note_ttl else None,
        stranded_sweep=timedelta(seconds=stranded_sweep),
        stranded_after=timedelta(seconds=stranded_after),
        schedule_sweep=timedelta(seconds=schedule_sweep),
        log_level=level,
        metrics_host=str(s.get("metrics_host") or "127.0.0.1"),
        metrics_port=metrics_port,
    )
