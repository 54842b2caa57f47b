"""What a run needs of its processor: a small environment instead of the whole Worker."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, TypeVar

from durable_core._grpc import ChannelPool
from durable_core._pb.durable.v1 import durable_pb2 as pb
from durable_core._transport import Delivery, Transport
from durable_core.engine._lease import ProcessorLease
from durable_core.interceptors import Interceptor
from durable_core.plugins import WorkflowRegistry

__all__ = ["TERMINAL", "RunEnv", "being_cancelled", "now_ms", "to_the_end", "wait_out"]

T = TypeVar("T")

TERMINAL = frozenset({pb.STATUS_COMPLETED, pb.STATUS_FAILED, pb.STATUS_CANCELLED})


@dataclass(frozen=True, slots=True)
class RunEnv:
    """What a run needs of its processor (and nothing else of it).

    Attributes:
        transport: the processor's transport.
        registry: the workflows it runs.
        interceptors: wrap each run and step, observe engine events.
        channels: gRPC channels for ``ctx.call``.
        processor_id: the processor's id (in journal writer ids and states).
        ack_wait: the consumer's ack wait, in seconds.
        lease: the processor's lease (its epoch when a run starts is the run's).
        leases_on: whether the processor keeps a lease (and run locks with it).
        stopping: set when the processor shuts down.
        holds: whether a run on a delivery, started under a lease epoch, may start a step.
        counted: tells the processor an invocation finished (True: completed).
        threads: where sync steps run (the processor's pool, made by ``Worker.run``).
    """

    transport: Transport
    registry: WorkflowRegistry
    interceptors: tuple[Interceptor, ...]
    channels: ChannelPool
    processor_id: str
    ack_wait: float
    lease: ProcessorLease
    leases_on: bool
    stopping: asyncio.Event
    holds: Callable[[Delivery, int], bool]
    counted: Callable[[bool], None]
    threads: Executor | None = None


def now_ms() -> int:
    """The wall clock in milliseconds."""
    return int(time.time() * 1000)


def being_cancelled() -> bool:
    """Whether someone cancelled the current task (the engine: a shutdown or a halt, or
    ``wait_for`` for a timeout), as opposed to code in it raising ``CancelledError`` of its
    own accord."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def wait_out(future: asyncio.Future[Any]) -> None:
    """Wait until ``future`` is done, through cancellations of the waiting task (they stay
    counted in its ``cancelling()``, for the caller to act on once it is)."""
    while not future.done():
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait({future})


async def to_the_end(task: asyncio.Task[T]) -> T:
    """``task``'s result, through cancellations of the waiting task: the work (a journal
    write, a finished step's outcome) runs to its end, and a cancellation that came
    meanwhile is raised after it (``task``'s own failure instead, if it failed)."""
    cancelled = await through_cancels(task)
    result = task.result()
    if cancelled:
        raise asyncio.CancelledError
    return result


async def through_cancels(
    task: asyncio.Task[Any], abandon: Callable[[], bool] | None = None
) -> bool:
    """Wait until ``task`` is done, through cancellations of the waiting task; whether one
    came (the caller raises it once it has what the task made). ``abandon``: asked at each
    cancellation; True cancels the work and raises the cancellation at once."""
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.cancelled():
                raise  # the work itself was cancelled (the event loop is closing)
            if abandon is not None and abandon():
                task.cancel()
                raise
            cancelled = True
    return cancelled
