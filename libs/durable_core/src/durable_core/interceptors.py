"""Interceptors: the one seam around workflow runs and executed steps.

Tracing, metrics and logging plug in here instead of being sprinkled through the engine.
Inputs are dataclasses so that new fields never break existing interceptors. Steps read back
from the journal during replay are not intercepted: they did not run.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Interceptor", "StepInput", "WorkflowInput", "chain_steps", "chain_workflows"]


@dataclass(slots=True)
class WorkflowInput:
    """One run of a workflow in a processor (a first run or a continuation after replay)."""

    invocation_id: str
    workflow: str
    partition_key: str
    attempt: int
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class StepInput:
    """One attempt of one executed step.

    Attributes:
        kind: ``"call"`` or ``"run"``.
        name: method path for calls, the user's name for runs.
        headers: outgoing metadata; for calls they are sent as gRPC metadata, so an
            interceptor can add e.g. ``traceparent``.
    """

    invocation_id: str
    workflow: str
    step: int
    kind: str
    name: str
    attempt: int
    headers: dict[str, str] = field(default_factory=dict)


StepNext = Callable[[StepInput], Awaitable[Any]]
WorkflowNext = Callable[[WorkflowInput], Awaitable[Any]]


class Interceptor:
    """Base class: override either method and call ``nxt`` to continue the chain."""

    async def intercept_workflow(self, inp: WorkflowInput, nxt: WorkflowNext) -> Any:
        return await nxt(inp)

    async def intercept_step(self, inp: StepInput, nxt: StepNext) -> Any:
        return await nxt(inp)


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
