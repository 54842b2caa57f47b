"""OpenTelemetry tracing: one interceptor turns workflow runs and executed steps into spans.

Register it with the worker (``Worker(..., interceptors=[TracingInterceptor()])``; the processor
does). It uses only ``opentelemetry-api``: without an SDK configured the spans are no-ops, yet
the incoming trace context is still passed on to the services. With one, an invocation is one
trace:

```
durable.invoke <workflow>          PRODUCER  the client (Client.invoke / invoke_async)
└── durable.workflow <workflow>    CONSUMER  each run in a processor (first run, each wake-up)
    ├── durable.call <Service/Method>  CLIENT  └── the service's SERVER span (gRPC metadata)
    ├── durable.run <name>         INTERNAL
    ├── durable.sleep / durable.awakeable <id> / durable.signal <name> / durable.state <key>
    └── durable.child <workflow>   PRODUCER  └── durable.workflow <workflow> (the child's runs)
```

The parent of a run is the context carried by its command (``Command.metadata``) or, for
wake-ups, the one stored with the invocation (``ExecutionState.trace_context``). Steps that a
run only reads back from the journal are not intercepted, so a replay adds no duplicate spans:
every step span is of an executed attempt (``durable.replayed`` = false).
"""

from __future__ import annotations

from typing import Any

import grpc
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode, TracerProvider
from opentelemetry.util.types import AttributeValue

from durable_core.interceptors import (
    Interceptor,
    StepInput,
    StepNext,
    WorkflowInput,
    WorkflowNext,
    outcome_of,
)

__all__ = [
    "ATTEMPT",
    "INVOCATION_ID",
    "OUTCOME",
    "PARTITION_KEY",
    "REPLAYED",
    "RESUMED",
    "STEP",
    "STEP_KIND",
    "STEP_NAME",
    "WORKFLOW",
    "TracingInterceptor",
]

INSTRUMENTATION = "durable_core"

# Span attributes.
INVOCATION_ID = "durable.invocation_id"
WORKFLOW = "durable.workflow"
PARTITION_KEY = "durable.partition_key"
ATTEMPT = "durable.attempt"  # runs: delivery count of the command; steps: attempt of the step
RESUMED = "durable.resumed"  # runs: the journal already held entries (replayed first)
OUTCOME = "durable.outcome"  # runs: completed, failed, suspended or abandoned
STEP = "durable.step"
STEP_KIND = "durable.step.kind"
STEP_NAME = "durable.step.name"
REPLAYED = "durable.replayed"  # steps: always false; replayed steps make no span

_STEP_SPAN_KINDS = {"call": SpanKind.CLIENT, "child": SpanKind.PRODUCER, "send": SpanKind.PRODUCER}


class TracingInterceptor(Interceptor):
    """Makes a span of each workflow run and each executed step attempt.

    Args:
        tracer_provider: where spans go; the global provider by default.
    """

    def __init__(self, tracer_provider: TracerProvider | None = None) -> None:
        from durable_core import __version__

        self._tracer = trace.get_tracer(INSTRUMENTATION, __version__, tracer_provider)

    async def intercept_workflow(self, inp: WorkflowInput, nxt: WorkflowNext) -> Any:
        attributes: dict[str, AttributeValue] = {
            INVOCATION_ID: inp.invocation_id,
            WORKFLOW: inp.workflow,
            PARTITION_KEY: inp.partition_key,
            ATTEMPT: inp.attempt,
            RESUMED: inp.resumed,
        }
        with self._tracer.start_as_current_span(
            f"durable.workflow {inp.workflow}",
            context=propagate.extract(inp.headers),
            kind=SpanKind.CONSUMER,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                result = await nxt(inp)
            except BaseException as e:
                outcome = outcome_of(e)
                span.set_attribute(OUTCOME, outcome)
                if outcome == "failed":
                    _record_failure(span, e)
                raise
            span.set_attribute(OUTCOME, "completed")
            return result

    async def intercept_step(self, inp: StepInput, nxt: StepNext) -> Any:
        attributes: dict[str, AttributeValue] = {
            INVOCATION_ID: inp.invocation_id,
            WORKFLOW: inp.workflow,
            STEP: inp.step,
            STEP_KIND: inp.kind,
            STEP_NAME: inp.name,
            ATTEMPT: inp.attempt,
            REPLAYED: False,
        }
        if inp.kind == "call":
            service, _, method = inp.name.lstrip("/").partition("/")
            attributes.update({"rpc.system": "grpc", "rpc.service": service, "rpc.method": method})
        with self._tracer.start_as_current_span(
            _step_span_name(inp),
            kind=_STEP_SPAN_KINDS.get(inp.kind, SpanKind.INTERNAL),
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            propagate.inject(inp.headers)  # the call's gRPC metadata, a child's command
            try:
                return await nxt(inp)
            except Exception as e:
                if isinstance(e, grpc.aio.AioRpcError):
                    span.set_attribute("rpc.grpc.status_code", e.code().value[0])
                _record_failure(span, e)
                raise


def _step_span_name(inp: StepInput) -> str:
    name = inp.name.lstrip("/") if inp.kind == "call" else inp.name
    return f"durable.{inp.kind}" if not name or name == inp.kind else f"durable.{inp.kind} {name}"


def _record_failure(span: trace.Span, e: BaseException) -> None:
    span.record_exception(e)
    span.set_status(Status(StatusCode.ERROR, f"{type(e).__name__}: {e}"))
