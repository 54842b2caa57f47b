"""The durable context handed to every workflow: its steps and deterministic helpers.

``Context`` is the workflow's whole view of the engine, an abstract class (Restate's model): the
engine passes its implementation (``durable_core.engine._context``), and nothing of asyncio,
gRPC or the journal shows through. Every step (``call``, ``run``, ``sleep``, waits, state,
other invocations) is journaled before the workflow moves past it; on replay its recorded
outcome is returned without running it again.
"""

from __future__ import annotations

import abc
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any, TypeVar, overload

from durable_core._grpc import MethodRef
from durable_core.retry import RetryPolicy

__all__ = ["Awakeable", "Context"]

Req = TypeVar("Req")
Resp = TypeVar("Resp")
T = TypeVar("T")


class Context(abc.ABC):
    """What a workflow uses to act durably.

    Every step (``call``, ``run``) is journaled before the workflow moves past it; on replay
    its recorded result is returned without running it again. The helpers ``now``, ``uuid``
    and ``random`` give the same answers on every replay.
    """

    # -- identity --------------------------------------------------------------------------

    @property
    @abc.abstractmethod
    def invocation_id(self) -> str:
        """This invocation's id."""

    @property
    @abc.abstractmethod
    def workflow(self) -> str:
        """The workflow's registered name."""

    @property
    @abc.abstractmethod
    def partition_key(self) -> str:
        """The partition key the invocation was submitted with."""

    @property
    @abc.abstractmethod
    def is_replaying(self) -> bool:
        """True while the workflow is re-reading steps that are already journaled."""

    # -- deterministic helpers -------------------------------------------------------------

    @abc.abstractmethod
    def now(self) -> datetime:
        """The current time as the journal knows it (UTC).

        It is the time of the last journaled step the workflow has passed (or the time the
        invocation was submitted), so a replay sees the same value as the first run.
        """

    @abc.abstractmethod
    def uuid(self) -> uuid.UUID:
        """A UUID (version 4 layout) that is the same on every replay."""

    @abc.abstractmethod
    def random(self) -> float:
        """A float in [0, 1) from a generator seeded by the invocation id."""

    # -- changing code under running invocations -------------------------------------------

    @abc.abstractmethod
    def patched(self, change_id: str) -> bool:
        """Whether this invocation takes the new code of a change (Temporal's ``patched``).

        Put a change to a workflow's steps behind it, so invocations that recorded steps with
        the old code replay them with the old code::

            if ctx.patched("charge-in-cents"):
                charge = await ctx.run("charge_cents", charge_cents, order)   # new code
            else:
                charge = await ctx.run("charge", charge, order)               # old code

        Running fresh at this point, it journals a marker (a PATCH entry named
        ``change_id``, no step) and returns True. Replaying, it returns True if the journal
        holds that marker here (an earlier run took the new branch), and False if it does
        not although steps were recorded past this point (code from before the change
        recorded them). One change id answers the same throughout a run. Once no invocation
        that started before the change is left, remove the old branch and keep the call (or
        the new branch alone: markers nobody asks for are ignored).

        A change not put behind ``patched`` that makes a replay diverge does not fail the
        invocation: it becomes ``blocked``, pinned to the version it ran on (see the README,
        "Upgrading workflow code under running invocations").

        Args:
            change_id: names the change; a non-empty string of at most 256 characters.

        Raises:
            InvalidInputError: the change id is not such a string.
        """

    # -- steps -----------------------------------------------------------------------------

    @abc.abstractmethod
    async def call(
        self,
        method: MethodRef[Req, Resp],
        request: Req,
        *,
        timeout: timedelta | float | None = timedelta(seconds=30),
        retry: RetryPolicy | None = None,
    ) -> Resp:
        """Call a unary gRPC method durably.

        The call carries the metadata ``idempotency-key: <invocation_id>:<step>``, the same on
        every attempt, so the service can apply its effect once.

        Args:
            method: a method of a ``grpc_service(StubClass)``, e.g. ``hello.SayHello``.
            request: the request message.
            timeout: deadline of each attempt.
            retry: how to retry transient failures (UNAVAILABLE, DEADLINE_EXCEEDED, ...).

        Raises:
            StepFailedError: the call failed for good; ``code`` holds the gRPC status name.
        """

    @abc.abstractmethod
    async def run(
        self,
        name: str,
        fn: Callable[..., T] | Callable[..., Awaitable[T]],
        *args: Any,
        retry: RetryPolicy | None = None,
        timeout: timedelta | None = None,
        **kwargs: Any,
    ) -> T:
        """Run a local side effect durably and journal its result.

        ``fn`` may be sync (it runs in a thread) or async. Its result must be JSON-compatible,
        bytes, a protobuf message or None. Raise TerminalError to fail without retrying.
        ``timeout`` bounds each attempt: an attempt over it raises StepTimeoutError, which the
        retry policy sees like any other failure.

        Raises:
            StepFailedError: the function failed for good.
        """

    # -- timers ----------------------------------------------------------------------------

    @abc.abstractmethod
    async def sleep(self, duration: timedelta) -> None:
        """Sleep durably, from a second to years.

        While asleep the workflow holds no processor slot and no unacknowledged message; the
        server (JetStream message scheduling) wakes it on time, even if every processor
        restarted meanwhile. ``now()`` afterwards is at least the recorded wake time.

        Raises:
            InvalidInputError: a negative duration, or one over ten years.
        """

    # -- awakeables and signals ------------------------------------------------------------

    @abc.abstractmethod
    def awakeable(self) -> Awakeable:
        """A handle something outside can complete, with an id that is the same on replay.

        Hand ``aw.id`` to the outside world (for instance from a ``ctx.run`` step), then
        ``await aw.result()``; ``client.resolve_awakeable(id, payload)`` or
        ``reject_awakeable(id, reason)`` completes it, before or after the wait.
        """

    @overload
    async def wait_for_signal(self, name: str, as_type: type[T]) -> T: ...
    @overload
    async def wait_for_signal(self, name: str, as_type: Any = None) -> Any: ...
    @abc.abstractmethod
    async def wait_for_signal(self, name: str, as_type: Any = None) -> Any:
        """Wait for the next signal called ``name`` (``client.signal(id, name, payload)``).

        Signals sent before the wait are kept and delivered in the order they arrived. With
        ``as_type`` (a dataclass, protobuf message, pydantic model or JSON type) the payload
        is converted to it, and typed so.
        """

    # -- state -----------------------------------------------------------------------------

    @overload
    def get(self, key: str, default: T, *, as_type: type[T]) -> T: ...
    @overload
    def get(self, key: str, default: None = None, *, as_type: type[T]) -> T | None: ...
    @overload
    def get(self, key: str, default: Any = None, *, as_type: Any = None) -> Any: ...
    @abc.abstractmethod
    def get(self, key: str, default: Any = None, *, as_type: Any = None) -> Any:
        """The value last set for ``key`` in this invocation (journaled, so replay agrees),
        or ``default``; converted to ``as_type`` when given."""

    @abc.abstractmethod
    async def set(self, key: str, value: Any) -> None:
        """Set ``key`` to a JSON value, bytes or protobuf message, durably."""

    @abc.abstractmethod
    async def clear(self, key: str) -> None:
        """Remove ``key``, durably."""

    # -- other invocations -----------------------------------------------------------------

    @overload
    async def invoke(
        self,
        workflow: str,
        args: Any = None,
        *,
        partition_key: str | None = None,
        as_type: type[T],
    ) -> T: ...
    @overload
    async def invoke(
        self,
        workflow: str,
        args: Any = None,
        *,
        partition_key: str | None = None,
        as_type: Any = None,
    ) -> Any: ...
    @abc.abstractmethod
    async def invoke(
        self,
        workflow: str,
        args: Any = None,
        *,
        partition_key: str | None = None,
        as_type: Any = None,
    ) -> Any:
        """Run a child workflow and wait for its result (suspending meanwhile); with
        ``as_type`` the result is converted to it, and typed so.

        Raises:
            ChildWorkflowError: the child failed; the message carries its error.
        """

    @abc.abstractmethod
    async def start(
        self, workflow: str, args: Any = None, *, partition_key: str | None = None
    ) -> str:
        """Start a child workflow without waiting; returns its invocation id."""

    @abc.abstractmethod
    async def send(
        self,
        workflow: str,
        args: Any = None,
        *,
        delay: timedelta | None = None,
        partition_key: str | None = None,
    ) -> str:
        """Submit another invocation, optionally delayed; a replay never sends it twice."""


class Awakeable:
    """A promise that something outside the workflow completes (see ``Context.awakeable``).

    Args:
        awakeable_id: the id to hand out (the same on every replay).
        wait: what ``result`` awaits (the context's wait for the resolution).
    """

    def __init__(self, awakeable_id: str, wait: Callable[[Any], Awaitable[Any]]) -> None:
        self.id = awakeable_id
        self._wait = wait

    @overload
    async def result(self, as_type: type[T]) -> T: ...
    @overload
    async def result(self, as_type: Any = None) -> Any: ...
    async def result(self, as_type: Any = None) -> Any:
        """Wait for the resolution's payload (suspending meanwhile); with ``as_type`` it is
        converted to it, and typed so.

        Raises:
            AwakeableRejectedError: it was rejected; the message carries the reason.
        """
        return await self._wait(as_type)

    def __repr__(self) -> str:
        return f"Awakeable({self.id})"
