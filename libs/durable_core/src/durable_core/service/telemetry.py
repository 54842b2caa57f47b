"""Tracing set-up for the services (OpenTelemetry SDK, OTLP exporter over gRPC or HTTP).

Tracing is configured by the standard ``OTEL_*`` variables: it is on when
``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) is set or
``OTEL_TRACES_EXPORTER`` names ``otlp`` (or ``console``); ``OTEL_TRACES_EXPORTER=none`` or
``OTEL_SDK_DISABLED=true`` turn it off. ``OTEL_EXPORTER_OTLP_PROTOCOL`` (or its ``_TRACES_``
form) picks ``grpc`` (the default, port 4317) or ``http/protobuf`` (port 4318); any other value is
refused at start-up rather than exporting nowhere. The exporter reads the rest (endpoint, headers,
``OTEL_BSP_*`` batching); ``OTEL_SERVICE_NAME`` defaults to the service's own name.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping

from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

from durable_core.errors import ConfigError

__all__ = [
    "OTLP_PROTOCOLS",
    "configure_tracing",
    "otlp_protocol",
    "shutdown_tracing",
    "tracing_exporters",
]

# How long a service waits at exit for its last spans to be exported (see shutdown_tracing).
SHUTDOWN_S = 5.0

# The OTLP transports the services can export over (OTEL_EXPORTER_OTLP_PROTOCOL).
OTLP_PROTOCOLS = ("grpc", "http/protobuf")

log = logging.getLogger(__name__)


def tracing_exporters(env: Mapping[str, str] | None = None) -> list[str]:
    """The span exporters the ``OTEL_*`` variables ask for (``otlp``, ``console``), or []."""
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    names = [n.strip().lower() for n in env.get("OTEL_TRACES_EXPORTER", "").split(",")]
    names = [n for n in names if n]
    if "none" in names:
        return []
    if not names and (
        env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    ):
        names = ["otlp"]
    unknown = [n for n in names if n not in ("otlp", "console")]
    if unknown:
        log.warning("OTEL_TRACES_EXPORTER: ignoring unsupported exporter(s) %s", unknown)
    return [n for n in names if n in ("otlp", "console")]


def configure_tracing(
    default_service_name: str, env: Mapping[str, str] | None = None
) -> TracerProvider | None:
    """Install an SDK tracer provider exporting as the ``OTEL_*`` variables say.

    Returns the provider (``shutdown_tracing`` it on exit: that flushes the last spans), or None
    when tracing is off; the OpenTelemetry API then stays a no-op.
    """
    env = os.environ if env is None else env
    exporters = tracing_exporters(env)
    if not exporters:
        return None
    protocol = otlp_protocol(env) if "otlp" in exporters else ""
    service_name = env.get("OTEL_SERVICE_NAME") or default_service_name
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service_name}))
    for name in exporters:
        provider.add_span_processor(BatchSpanProcessor(_exporter(name, protocol)))
    trace.set_tracer_provider(provider)
    log.info("tracing: service %s, exporting spans via %s", service_name, ", ".join(exporters))
    return provider


def shutdown_tracing(provider: TracerProvider | None, timeout: float = SHUTDOWN_S) -> bool:
    """Export the spans still batched and stop, giving up after ``timeout`` seconds; False
    then (the spans left are lost). The SDK's own shutdown waits up to 30 s for a collector
    that does not answer, and retries one that refuses for 6 s: a service stopping (SIGTERM,
    within its grace period) or a CLI command ending must not wait on telemetry."""
    if provider is None:
        return True
    done = threading.Thread(target=provider.shutdown, name="otel-shutdown", daemon=True)
    done.start()
    done.join(timeout)
    if done.is_alive():
        log.warning(
            "tracing: the collector did not take the last spans within %.0f s; they are lost",
            timeout,
        )
        return False
    return True


def otlp_protocol(env: Mapping[str, str]) -> str:
    """The OTLP transport the ``OTEL_*`` variables ask for: ``grpc`` or ``http/protobuf``.

    Raises:
        ConfigError: another value (``http/json``, a typo): refused, not silently replaced.
    """
    protocol = (
        env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "grpc"
    ).strip()
    if protocol not in OTLP_PROTOCOLS:
        raise ConfigError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r} is not supported: use "
            + " or ".join(OTLP_PROTOCOLS)
        )
    return protocol


def _exporter(name: str, protocol: str) -> SpanExporter:
    if name == "console":
        return ConsoleSpanExporter()
    # Endpoint, headers, TLS and timeout come from OTEL_EXPORTER_OTLP_* in either exporter.
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter as HttpExporter,
        )

        return HttpExporter()
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()
