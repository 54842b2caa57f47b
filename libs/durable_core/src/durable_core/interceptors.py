"""Interceptors: the one seam around workflow runs and executed steps.

Tracing, metrics and logging plug in here instead of being sprinkled through the engine.
Inputs are dataclasses so that new fields never break existing interceptors. Steps read back
from the journal during replay are not intercepted: they did not run. ``outcome_of`` tells an
interceptor how a workflow run ended from what ``nxt`` raised.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from durable_core._pb.durable.v1 import durable_pb2 as pb
from durable_core.errors import InvocationCancelledError, NonDeterminismError, SuspendExecution

__all__ = [
    "EngineEvent",
    "Interceptor",
    "RunOutcome",
    "StepInput",
    "WorkflowInput",
    "chain_steps",
    "chain_workflows",
    "outcome_of",
]


@dataclass(slots=True)
class WorkflowInput:
    """One run of a workflow in a processor (a first run or a continuation after replay).

    Attributes:
        attempt: the delivery count of the command that started this run.
        headers: the invocation's propagation headers (W3C ``traceparent``, ``tracestate``):
            those of the command, else those stored with the invocation (wake-ups carry none).
        resumed: the journal already held entries when this run began (a wake-up, a
            redelivery after a crash): the run replays them before going on. False for the
            first run of an invocation.
        journal: the entries the run begins with (read-only; the tracing interceptor draws
            the waits that completed since the last run from it).
    """

    invocation_id: str
    workflow: str
    partition_key: str
    attempt: int
    headers: dict[str, str] = field(default_factory=dict)
    resumed: bool = False
    journal: Sequence[pb.JournalEntry] = ()


@dataclass(slots=True)
class StepInput:
    """One attempt of one executed step.

    Attributes:
        kind: ``"call"`` or ``"run"``; or, for the journaling of a step that waits or
            submits, ``"sleep"``, ``"awakeable"``, ``"signal"``, ``"child"`` (``ctx.invoke``,
            ``ctx.start``), ``"send"`` or ``"state"`` (``ctx.set``, ``ctx.clear``). Those
            are intercepted once, when first executed; the wait itself is not inside.
        name: method path for calls, the user's name for runs, the awakeable id, signal
            name, child's workflow or state key; ``"sleep"`` for sleeps.
        attempt: 1, 2, ... for retried calls and runs; always 1 for the other kinds.
        headers: outgoing propagation headers. For calls they are sent as gRPC metadata;
            for children and sends they travel with the new invocation (its command's
            metadata and its stored trace context). An interceptor adds e.g. ``traceparent``.
    """

    invocation_id: str
    workflow: str
    step: int
    kind: str
    name: str
    attempt: int
    headers: dict[str, str] = field(default_factory=dict)


EventKind = Literal["delivered", "started", "appended", "finished", "blocked"]


@dataclass(slots=True)
class EngineEvent:
    """Something the engine did for an invocation, told to ``Interceptor.observe`` (metrics).

    Attributes:
        kind: ``"delivered"`` (a command reached this processor: ``attempt`` is its delivery
            count), ``"started"`` (the first run of an invocation began: ``seconds`` since it
            was due, its creation or its delayed start), ``"appended"`` (a journal append:
            ``entry`` is the entry's kind, ``seconds`` the append) or ``"finished"`` (the final
            entry is journaled: ``status`` is completed, failed or cancelled, ``seconds`` the
            time since it was due) or ``"blocked"`` (the replay diverged from the journal: the
            invocation waits for the version it is pinned to, or an operator).
    """

    kind: EventKind
    invocation_id: str
    workflow: str
    seconds: float = 0.0
    status: str = ""
    entry: str = ""
    attempt: int = 0


StepNext = Callable[[StepInput], Awaitable[Any]]
WorkflowNext = Callable[[WorkflowInput], Awaitable[Any]]

RunOutcome = Literal["completed", "failed", "cancelled", "suspended", "abandoned", "blocked"]


def outcome_of(exc: BaseException | None) -> RunOutcome:
    """How a workflow run ended, from what ``nxt`` raised in ``intercept_workflow``.

    - ``"completed"``: it returned (``exc`` is None);
    - ``"suspended"``: the engine stopped the run because every step is parked (it cancels
      the run; a wake-up continues it later), or the processor is shutting down;
    - ``"abandoned"``: the engine's own control flow stopped it (a ``SuspendExecution``):
      another processor took the invocation over, it finished elsewhere, new journal entries
      make it run again, or this processor lost its hold on the command;
    - ``"cancelled"``: the invocation was cancelled and the workflow let the cancellation out;
    - ``"blocked"``: the replay diverged from the journal (``NonDeterminismError``): the
      engine blocks the invocation, never fails it;
    - ``"failed"``: anything else; the engine journals the invocation as failed.
    """
    if exc is None:
        return "completed"
    if isinstance(exc, NonDeterminismError):
        return "blocked"
    if isinstance(exc, InvocationCancelledError):
        return "cancelled"
    if isinstance(exc, SuspendExecution):
        return "abandoned"  # every engine signal (the worker's _LostClaim, _Finished, ...)
    if isinstance(exc, asyncio.CancelledError):
        return "suspended"
    return "failed"


_log = logging.getLogger(__name__)


class Interceptor:
    """Base class: override either method and call ``nxt`` to continue the chain; override
    ``observe`` to be told what the engine did (final statuses, appends, redeliveries)."""

    async def intercept_workflow(self, inp: WorkflowInput, nxt: WorkflowNext) -> Any:
        """Run the workflow: pass ``inp`` on to ``nxt`` unchanged."""
        return await nxt(inp)

    async def intercept_step(self, inp: StepInput, nxt: StepNext) -> Any:
        """Run one attempt of a step: pass ``inp`` on to ``nxt`` unchanged."""
        return await nxt(inp)

    def observe(self, event: EngineEvent) -> None:
        """Called synchronously on the engine's path: keep it cheap. An exception is logged
        and ignored (metrics never stop an invocation)."""


def observe(interceptors: Sequence[Interceptor], event: EngineEvent) -> None:
    """Tell every interceptor; one that raises is logged, never in the engine's way."""
    for icp in interceptors:
        try:
            icp.observe(event)
        except Exception:  # noqa: BLE001 - observation must not break the engine
            _log.exception("%s.observe(%s) failed", type(icp).__name__, event.kind)


def chain_steps(interceptors: Sequence[Interceptor], last: StepNext) -> StepNext:
    """Compose the step interceptors around ``last`` (the first listed runs outermost)."""
    fn = last
    for icp in reversed(interceptors):
        fn = _bind_step(icp, fn)
    return fn


def chain_workflows(interceptors: Sequence[Interceptor], last: WorkflowNext) -> WorkflowNext:
    """Compose the workflow interceptors around ``last``."""
    fn = last
    for icp in reversed(interceptors):
        fn = _bind_workflow(icp, fn)
    return fn


def _bind_step(icp: Interceptor, nxt: StepNext) -> StepNext:
    async def call(inp: StepInput) -> Any:
        return await icp.intercept_step(inp, nxt)

    return call


def _bind_workflow(icp: Interceptor, nxt: WorkflowNext) -> WorkflowNext:
    async def call(inp: WorkflowInput) -> Any:
        return await icp.intercept_workflow(inp, nxt)

    return call
