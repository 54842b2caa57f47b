"""Test doubles for the inspector's unit tests: synthetic summaries and a fake client (no NATS)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from durable_core import (
    EngineConfig,
    ExecutionSummary,
    Failure,
    InvalidInputError,
    NatsConfig,
    NotFoundError,
    Status,
    UnknownWorkflowError,
)
from durable_core._codec import encode
from durable_core._pb.durable.v1 import durable_pb2 as pb
from durable_core.views import InvocationView, describe
from durable_inspector.settings import InspectorSettings

T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def summary(
    invocation_id: str,
    *,
    workflow: str = "wf",
    status: Status = Status.RUNNING,
    created: float = 0,
    updated: float | None = None,
    key: str | None = None,
    revision: int = 1,
    trace_id: str = "",
    failure: Failure | None = None,
    journal_length: int = 0,
) -> ExecutionSummary:
    """A synthetic summary; ``created``/``updated`` are seconds after T0."""
    return ExecutionSummary(
        invocation_id=invocation_id,
        workflow=workflow,
        status=status,
        partition_key=invocation_id if key is None else key,
        created_at=T0 + timedelta(seconds=created),
        updated_at=T0 + timedelta(seconds=created if updated is None else updated),
        failure=failure,
        journal_length=journal_length,
        parent_id="",
        trace_id=trace_id,
        revision=revision,
    )


def deleted(invocation_id: str) -> ExecutionSummary:
    return ExecutionSummary(
        invocation_id, "", Status.UNKNOWN, "", None, None, None, 0, "", "", 0, deleted=True
    )


def step(
    n: int, name: str, value: Any, *, ms: float = 12.5, failure: Failure | None = None
) -> pb.JournalEntry:
    """A journaled run step that finished ``n`` seconds after T0 and took ``ms``."""
    entry = pb.JournalEntry(
        kind=pb.ENTRY_KIND_RUN,
        step=n,
        name=name,
        output=encode(value),
        attempts=1,
        duration_us=int(ms * 1000),
        timestamp_ms=_ms(T0 + timedelta(seconds=n)),
    )
    if failure is not None:
        entry.failure.CopyFrom(pb.Failure(type=failure.type, message=failure.message, step=n))
    return entry


def _ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


def result(
    invocation_id: str,
    *,
    workflow: str = "wf",
    status: Status = Status.COMPLETED,
    steps: tuple[pb.JournalEntry, ...] = (),
    output: Any = None,
    failure: Failure | None = None,
    journal: tuple[pb.JournalEntry, ...] = (),
    **state: Any,
) -> InvocationView:
    """The view of an execution with these steps (and other ``journal`` entries after them)."""
    fields: dict[str, Any] = {
        "invocation_id": invocation_id,
        "workflow": workflow,
        "status": getattr(pb, f"STATUS_{status.value.upper()}"),
        "args": encode({"n": 1}),
        "partition_key": invocation_id,
        "created_at_ms": _ms(T0),
        "updated_at_ms": _ms(T0 + timedelta(seconds=len(steps) + 1)),
    }
    st = pb.ExecutionState(**{**fields, **state})
    if output is not None:
        st.output.CopyFrom(encode(output))
    if failure is not None:
        st.failure.CopyFrom(
            pb.Failure(type=failure.type, message=failure.message, step=failure.step)
        )
    return describe(st, [*steps, *journal], now=T0 + timedelta(minutes=1))


class FakeClient:
    """The Client methods the inspector uses, over in-memory data.

    ``watch_executions`` yields ``snapshot``, then ``None``, then whatever ``push`` sends.
    Lifecycle methods exist only when given (``FakeClient(pause=async_fn)``), like a library
    version that has them.
    """

    def __init__(self, snapshot: Sequence[ExecutionSummary] = (), **methods: Callable[..., Any]):
        self.snapshot = list(snapshot)
        self.results: dict[str, InvocationView] = {}
        self.invoked: list[tuple[Any, ...]] = []
        self.served: set[str] | None = None  # None: every workflow is served
        self.hold = asyncio.Event()
        self.hold.set()
        self._live: asyncio.Queue[ExecutionSummary] | None = None
        for name, fn in methods.items():
            setattr(self, name, fn)

    def push(self, s: ExecutionSummary) -> None:
        """Send a live change (call it in the app's event loop)."""
        assert self._live is not None, "the watch has not started"
        self._live.put_nowait(s)

    async def watch_executions(self) -> AsyncIterator[ExecutionSummary | None]:
        self._live = asyncio.Queue()
        for s in self.snapshot:
            yield s
        await self.hold.wait()
        yield None
        while True:
            yield await self._live.get()

    async def describe(self, invocation_id: str) -> InvocationView:
        if " " in invocation_id or "." in invocation_id:
            raise InvalidInputError(f"invalid invocation id {invocation_id!r}")
        if invocation_id not in self.results:
            raise NotFoundError(f"no invocation with id {invocation_id}")
        return self.results[invocation_id]

    def follow(self, invocation_id: str) -> Any:
        """What ``Client.follow`` gives: ``describe`` of one invocation, again and again."""
        client = self

        class _Follower:
            async def describe(self) -> InvocationView:
                return await client.describe(invocation_id)

        return _Follower()

    async def invoke_async(
        self,
        workflow: str,
        args: Any = None,
        *,
        id: str | None = None,
        partition_key: str | None = None,
        queue_unserved: bool = False,
    ) -> str:
        if " " in workflow:
            raise InvalidInputError(f"invalid workflow name {workflow!r}")
        if self.served is not None and workflow not in self.served and not queue_unserved:
            raise UnknownWorkflowError(workflow, sorted(self.served))
        self.invoked.append((workflow, args, id, partition_key))
        return id or f"gen{len(self.invoked)}"

    async def close(self) -> None:
        pass


def settings(token: str | None = None) -> InspectorSettings:
    return InspectorSettings(
        nats=NatsConfig(),
        engine=EngineConfig(),
        token=token,
        allowed_hosts=("testserver",),  # the host Starlette's TestClient names
        jaeger_url="http://jaeger.test:16686",
        load_plugins=False,
    )
