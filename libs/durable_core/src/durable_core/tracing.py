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
durable.wait <kind> [<name>]       INTERNAL  a wait from park to wake (between two runs)
```

A wait's span starts when the workflow began waiting (the wait's journal entry) and ends when
it completed (a sleep's wake time; the resolution, signal or child result's time). The run that
wakes up emits it, as a sibling of the runs: its first run after a suspension (it finds no entry
of a processor after the ``SUSPENDED`` one but its own claim), once per process. A run that
takes over from one that crashed after claiming emits none (no duplicates; that span is lost).

The parent of a run is the context carried by its command (``Command.metadata``) or, for
wake-ups, the one stored with the invocation (``ExecutionState.trace_context``). Steps that a
run only reads back from the journal are not intercepted, so a replay adds no duplicate spans:
every step span is of an executed attempt (``durable.replayed`` = false).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import grpc
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode, TracerProvider
from opentelemetry.util.types import AttributeValue

from durable_core._journal import PROCESSOR_KINDS
from durable_core._pb.durable.v1 import durable_pb2 as pb
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
    "WAIT_OUTCOME",
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
WAIT_OUTCOME = "durable.wait.outcome"  # waits: completed or failed (a rejected awakeable, ...)
_EMITTED = 10_000  # waits remembered per process, so a rerun of the same wake-up adds none

_STEP_SPAN_KINDS = {"call": SpanKind.CLIENT, "child": SpanKind.PRODUCER, "send": SpanKind.PRODUCER}


class TracingInterceptor(Interceptor):
    """Makes a span of each workflow run and each executed step attempt.

    Args:
        tracer_provider: where spans go; the global provider by default.
    """

    def __init__(self, tracer_provider: TracerProvider | None = None) -> None:
        from durable_core import __version__

        self._tracer = trace.get_tracer(INSTRUMENTATION, __version__, tracer_provider)
        self._emitted: OrderedDict[tuple[str, int, int], None] = OrderedDict()

    def _waits(self, inp: WorkflowInput) -> None:
        """Spans of the waits this wake-up ends (see the module docstring)."""
        for wait in waits_ended(inp.invocation_id, inp.journal):
            key = (inp.invocation_id, wait.step, wait.end_ns)
            if key in self._emitted:
                continue
            self._emitted[key] = None
            if len(self._emitted) > _EMITTED:
                self._emitted.popitem(last=False)
            span = self._tracer.start_span(
                wait.name,
                context=propagate.extract(inp.headers),
                kind=SpanKind.INTERNAL,
                start_time=wait.start_ns,
                attributes={
                    INVOCATION_ID: inp.invocation_id,
                    WORKFLOW: inp.workflow,
                    STEP: wait.step,
                    STEP_KIND: wait.kind,
                    STEP_NAME: wait.step_name,
                    WAIT_OUTCOME: wait.outcome,
                },
            )
            if wait.outcome != "completed":
                span.set_status(Status(StatusCode.ERROR, wait.outcome))
            span.end(end_time=wait.end_ns)

    async def intercept_workflow(self, inp: WorkflowInput, nxt: WorkflowNext) -> Any:
        """Run the workflow inside its ``durable.run`` span (joined to the invocation's trace)."""
        attributes: dict[str, AttributeValue] = {
            INVOCATION_ID: inp.invocation_id,
            WORKFLOW: inp.workflow,
            PARTITION_KEY: inp.partition_key,
            ATTEMPT: inp.attempt,
            RESUMED: inp.resumed,
        }
        self._waits(inp)
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
        """Run one attempt of a step inside its span; its context travels in the call's metadata."""
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


class EndedWait:
    """A wait that a wake-up ends: its span's name, times (ns since the epoch) and outcome."""

    __slots__ = ("end_ns", "kind", "name", "outcome", "start_ns", "step", "step_name")

    def __init__(
        self, step: int, kind: str, step_name: str, start_ns: int, end_ns: int, outcome: str
    ) -> None:
        self.step, self.kind, self.step_name = step, kind, step_name
        self.start_ns, self.end_ns, self.outcome = start_ns, end_ns, outcome
        self.name = (
            f"durable.wait {kind}" if kind == "sleep" else f"durable.wait {kind} {step_name}"
        )


def waits_ended(
    invocation_id: str, journal: Sequence[pb.JournalEntry], now: datetime | None = None
) -> list[EndedWait]:
    """The waits a run beginning with ``journal`` at ``now`` ends: those begun before the last
    ``SUSPENDED`` entry and completed after it, when no processor has written since but this
    run's claim (it is the first run after the suspension). A sleep due within the context's
    local timer counts: the server's timer fires up to a second early and the run waits out
    the rest itself. Pure: it reads the journal as durable_core.views does."""
    last = max((i for i, e in enumerate(journal) if e.kind == pb.ENTRY_KIND_SUSPENDED), default=-1)
    since = [e.kind for e in journal[last + 1 :] if e.kind in PROCESSOR_KINDS]
    # This run's own claim may be there; anything more is an earlier run's after the wake-up.
    if last < 0 or since not in ([], [pb.ENTRY_KIND_CLAIM]):
        return []
    from durable_core._journal import LOCAL_TIMER
    from durable_core.views import describe

    parked_ms = journal[last].timestamp_ms
    soon = (now or datetime.now(UTC)) + LOCAL_TIMER
    view = describe(pb.ExecutionState(invocation_id=invocation_id), journal, now=soon)
    out = []
    for s in view.steps:
        if not s.is_wait or s.started_at is None or s.finished_at is None:
            continue
        start_ms = int(s.started_at.timestamp() * 1000)
        end_ms = int(s.finished_at.timestamp() * 1000)
        if start_ms <= parked_ms <= end_ms:
            outcome = "completed" if s.failure is None else "failed"
            out.append(
                EndedWait(s.step, s.kind, s.name, start_ms * 1_000_000, end_ms * 1_000_000, outcome)
            )
    return out
