"""Inspector settings: dynaconf (settings file + DURABLE_ environment), validated once.

The same NATS setting names as the processor's; the reading and the shared checks are
``durable_core.service.settings``'s.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from durable_core import ConfigError, EngineConfig, NatsConfig
from durable_core.service.settings import check_log_level, read_settings, truthy

DEFAULTS = Path(__file__).with_name("settings.toml")


@dataclass(frozen=True, slots=True)
class InspectorSettings:
    """Everything the inspector needs, typed and validated.

    Attributes:
        nats: how to reach NATS.
        engine: the engine's prefix (and limits) whose executions are shown.
        host, port: where the HTTP server listens (loopback by default).
        token: when not None, every page and API call must present it.
        allowed_hosts: without a token, the host names (``Host``, any port) besides localhost,
            127.0.0.1, [::1] and ``host`` that requests may name the inspector by (the
            defence against DNS rebinding); ``*`` for any.
        jaeger_url: base URL of the Jaeger UI, for trace links (no trailing slash).
        jaeger_service: the service a trace search looks in (the processor's OTEL_SERVICE_NAME),
            when an invocation has no trace id.
        load_plugins: import the installed workflow plugins, so that protobuf payloads of their
            services decode to JSON instead of hex.
        log_level: DEBUG, INFO, WARNING or ERROR.
        reconcile_interval: seconds between re-reads of the state bucket that reconcile the
            index with it (a watch that fell behind can miss a short-lived delete marker);
            stretched for a big bucket, and done at once after the process stood still.
    """

    nats: NatsConfig
    engine: EngineConfig
    host: str = "127.0.0.1"
    port: int = 8080
    token: str | None = None
    allowed_hosts: tuple[str, ...] = ()
    jaeger_url: str = "http://127.0.0.1:16686"
    jaeger_service: str = "durable-processor"
    load_plugins: bool = True
    log_level: str = "INFO"
    reconcile_interval: float = 300.0


def load_settings(overrides: Mapping[str, Any] | None = None) -> InspectorSettings:
    """Read defaults, the optional DURABLE_SETTINGS_FILE, DURABLE_* variables, then overrides.

    Raises:
        ConfigError: a value is missing or invalid (the message names the setting).
    """
    return build(read_settings(DEFAULTS, overrides))


def build(s: Mapping[str, Any]) -> InspectorSettings:
    """Validate a flat settings mapping into typed configuration."""

    def num(key: str) -> int:
        try:
            return int(s[key])
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"setting {key!r} must be a whole number, got {s.get(key)!r}") from e

    def text(key: str) -> str | None:
        value = s.get(key)
        return str(value) if value not in (None, "") else None

    nats = NatsConfig.from_settings(s, name="durable-inspector")
    # Replicas and the payload limit are read from the streams the processors created.
    engine = EngineConfig(prefix=str(s.get("prefix", "durable")))
    port = num("inspector_port")
    if not 0 <= port <= 65535:
        raise ConfigError(f"inspector_port must be 0..65535 (0 = any free port), not {port}")
    host = text("inspector_host")
    if host is None:
        raise ConfigError("inspector_host is empty (use 127.0.0.1, or 0.0.0.0 for every interface)")
    jaeger = (text("jaeger_url") or "").rstrip("/")
    parts = urlsplit(jaeger)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"jaeger_url must be an http(s) URL, not {s.get('jaeger_url')!r}")
    level = check_log_level(s)
    reconcile = num("inspector_reconcile_interval")
    if not 10 <= reconcile <= 86400:
        raise ConfigError(
            f"inspector_reconcile_interval must be 10..86400 seconds, not {reconcile}"
        )
    allowed = s.get("inspector_allowed_hosts") or ()
    if isinstance(allowed, str):
        allowed = allowed.replace(",", " ").split()
    if not isinstance(allowed, list | tuple) or not all(
        isinstance(h, str) and h and "/" not in h for h in allowed
    ):
        raise ConfigError(
            "inspector_allowed_hosts must be host names, comma-separated "
            f"(e.g. inspector.example.com,inspector), not {s.get('inspector_allowed_hosts')!r}"
        )
    return InspectorSettings(
        nats=nats,
        engine=engine,
        host=host,
        port=port,
        token=text("inspector_token"),
        allowed_hosts=tuple(h.strip() for h in allowed),
        jaeger_url=jaeger,
        jaeger_service=text("jaeger_service") or "durable-processor",
        load_plugins=truthy(s.get("inspector_load_plugins", True)),
        log_level=level,
        reconcile_interval=float(reconcile),
    )
