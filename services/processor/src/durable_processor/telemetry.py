"""The processor's tracing (``durable_core.service``'s, named ``durable-processor``) and log
records with the invocation, step and trace ids of their context."""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import format_span_id, format_trace_id

from durable_core import Interceptor, StepInput, WorkflowInput
from durable_core.interceptors import StepNext, WorkflowNext
from durable_core.service import logs, telemetry
from durable_core.service.telemetry import tracing_exporters

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


def configure_tracing(
    default_service_name: str = DEFAULT_SERVICE_NAME, env: Mapping[str, str] | None = None
) -> TracerProvider | None:
    """Install an SDK tracer provider exporting as the ``OTEL_*`` variables say (see
    :func:`durable_core.service.telemetry.configure_tracing`); the service name defaults to ours."""
    return telemetry.configure_tracing(default_service_name, env)


# -- logs ----------------------------------------------------------------------------------------

_invocation: contextvars.ContextVar[str] = contextvars.ContextVar("durable_invocation", default="")
_step: contextvars.ContextVar[int] = contextvars.ContextVar("durable_step", default=0)

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s%(durable_context)s"


class LogContextInterceptor(Interceptor):
    """Makes the invocation id (and step) known to log records written during a run."""

    async def intercept_workflow(self, inp: WorkflowInput, nxt: WorkflowNext) -> Any:
        """Run the workflow with its invocation in the log context."""
        token = _invocation.set(inp.invocation_id)
        try:
            return await nxt(inp)
        finally:
            _invocation.reset(token)

    async def intercept_step(self, inp: StepInput, nxt: StepNext) -> Any:
        """Run one attempt of a step with its step in the log context."""
        token = _step.set(inp.step)
        try:
            return await nxt(inp)
        finally:
            _step.reset(token)


class LogContextFilter(logging.Filter):
    """Adds ``invocation_id``, ``step``, ``trace_id`` and ``span_id`` to every record, and
    ``durable_context``: them as `` [invocation_id=... trace_id=...]`` ("" when none is set)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Add the current invocation and trace ids to ``record``; never drops it."""
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
    logs.configure_logging(level, handler)
