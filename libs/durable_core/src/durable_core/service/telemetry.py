"""Tracing set-up for the services (OpenTelemetry SDK, OTLP/gRPC exporter).

Tracing is configured by the standard ``OTEL_*`` variables: it is on when
``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) is set or
``OTEL_TRACES_EXPORTER`` names ``otlp`` (or ``console``); ``OTEL_TRACES_EXPORTER=none`` or
``OTEL_SDK_DISABLED=true`` turn it off. The exporter reads the rest (endpoint, headers,
``OTEL_BSP_*`` batching); ``OTEL_SERVICE_NAME`` defaults to the service's own name.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

__all__ = ["configure_tracing", "tracing_exporters"]

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

    Returns the provider (``shutdown()`` it on exit: that flushes the last spans), or None
    when tracing is off; the OpenTelemetry API then stays a no-op.
    """
    env = os.environ if env is None else env
    exporters = tracing_exporters(env)
    if not exporters:
        return None
    protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"
    )
    if "otlp" in exporters and protocol != "grpc":
        log.warning("OTLP protocol %r is not supported here; exporting over gRPC", protocol)
    service_name = env.get("OTEL_SERVICE_NAME") or default_service_name
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service_name}))
    for name in exporters:
        provider.add_span_processor(BatchSpanProcessor(_exporter(name)))
    trace.set_tracer_provider(provider)
    log.info("tracing: service %s, exporting spans via %s", service_name, ", ".join(exporters))
    return provider


def _exporter(name: str) -> SpanExporter:
    if name == "console":
        return ConsoleSpanExporter()
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()  # endpoint, headers, TLS and timeout from OTEL_EXPORTER_OTLP_*
