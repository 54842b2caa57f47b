"""Tracing set-up (OpenTelemetry SDK, OTLP/gRPC exporter) and log records with trace ids.

Tracing is configured by the standard ``OTEL_*`` variables: it is on when
``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) is set or
``OTEL_TRACES_EXPORTER`` names ``otlp`` (or ``console``); ``OTEL_TRACES_EXPORTER=none`` or
``OTEL_SDK_DISABLED=true`` turn it off. The exporter reads the rest (endpoint, headers,
``OTEL_BSP_*`` batching); ``OTEL_SERVICE_NAME`` defaults to ``durable-processor``.
"""

from __future__ import annotations

import contextvars
import logging
import os
from collections.abc import Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace import format_span_id, format_trace_id

from durable_core import Interceptor, StepInput, WorkflowInput
from durable_core.interceptors import StepNext, WorkflowNext

__all__ = [
    "LOG_FORMAT",
    "LogContextFilter",
    "LogContextInterceptor",
    "configure_logging",
    "configure_tracing",
    "tracing_exporters",
]

log = logging.getLogger(__name__)

DEFAULT_SERVICE_NAME = "durable-processor"


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
    default_service_name: str = DEFAULT_SERVICE_NAME, env: Mapping[str, str] | None = None
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


# -- logs ----------------------------------------------------------------------------------------

_invocation: contextvars.ContextVar[str] = contextvars.ContextVar("durable_invocation", default="")
_step: contextvars.ContextVar[int] = contextvars.ContextVar("durable_step", default=0)

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s%(durable_context)s"


class LogContextInterceptor(Interceptor):
    """Makes the invocation id (and step) known to log records written during a run."""

    async def intercept_workflow(self, inp: WorkflowInput, nxt: WorkflowNext) -> Any:
        token = _invocation.set(inp.invocation_id)
        try:
            return await nxt(inp)
        finally:
            _invocation.reset(token)

    async def intercept_step(self, inp: StepInput, nxt: StepNext) -> Any:
        token = _step.set(inp.step)
        try:
            return await nxt(inp)
        finally:
            _step.reset(token)


class LogContextFilter(logging.Filter):
    """Adds ``invocation_id``, ``step``, ``trace_id`` and ``span_id`` to every record, and
    ``durable_context``: them as `` [invocation_id=... trace_id=...]`` ("" when none is set)."""

    def filter(self, record: logging.LogRecord) -> bool:
        invocation_id, step = _invocation.get(), _step.get()
        span_context = trace.get_current_span().get_span_context()
        trace_id = format_trace_id(span_context.trace_id) if span_context.is_valid else ""
        span_id = format_span_id(span_context.span_id) if span_context.is_valid else ""
        record.invocation_id, record.step = invocation_id, step
        record.trace_id, record.span_id = trace_id, span_id
        fields = [
            f"invocation_id={invocation_id}" if invocation_id else "",
            f"step={step}" if step else "",
            f"trace_id={trace_id} span_id={span_id}" if trace_id else "",
        ]
        text = " ".join(f for f in fields if f)
        record.durable_context = f" [{text}]" if text else ""
        return True


def configure_logging(level: str) -> None:
    """Log to stderr with the invocation and trace ids of the record's context."""
    handler = logging.StreamHandler()
    handler.addFilter(LogContextFilter())
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logging.basicConfig(level=level, handlers=[handler])
    logging.getLogger("nats").setLevel(logging.WARNING)
