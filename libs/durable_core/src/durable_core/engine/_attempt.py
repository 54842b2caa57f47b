"""One attempt at the workflow's code: build its context, run it until it returns, fails,
parks every step or is interrupted, and say how the run ends (``Finish`` or ``Suspend``).

The engine's signals pass through (``Rerun`` to run again with new entries, ``EngineFailure``
for NATS trouble the workflow let through); the execution acts on the outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from durable_core._pb.durable.v1 import durable_pb2 as pb
from durable_core._transport import is_engine_error
from durable_core.engine._context import RunContext
from durable_core.engine._env import being_cancelled, now_ms, wait_out
from durable_core.engine._signals import BadInputError, Diverged, EngineFailure, Halted, Rerun
from durable_core.errors import (
    InvalidInputError,
    InvocationCancelledError,
    NonDeterminismError,
    StepFailedError,
    SuspendExecution,
)
from durable_core.interceptors import WorkflowInput, chain_workflows

if TYPE_CHECKING:
    from durable_core.engine._execution import Execution

__all__ = ["Block", "Finish", "Suspend", "run_once", "timed_out"]

# A run that would suspend or block this close to its execution timeout waits for it and
# fails instead: the deadline's own wake-up comes up to a second early.
_DEADLINE_NEAR_MS = 2000


@dataclass(frozen=True, slots=True)
class Finish:
    """The invocation ends: journal the final entry with this status."""

    status: int
    output: pb.Payload | None = None
    failure: pb.Failure | None = None
    failed_steps: tuple[int, ...] = ()  # FAILED: the step failures the workflow let through


@dataclass(frozen=True, slots=True)
class Suspend:
    """Every step is parked (the waits are the execution's): suspend until a wake-up."""


@dataclass(frozen=True, slots=True)
class Block:
    """The replay diverged from the journal (the code changed under the invocation): never a
    failure; the invocation waits, pinned to the version it ran on (see ``Execution``)."""

    error: NonDeterminismError


async def run_once(ex: Execution) -> Finish | Suspend | Block:
    """Run the workflow from the start (replaying the journal) until it ends or parks.

    Raises:
        Rerun: new entries arrived while it waited; run it again to see them.
        SuspendExecution: an engine signal stopped the run (lost claim, lost hold, ...).
    """
    env = ex.env
    state = ex.state.state if ex.state is not None else None
    name = ex.cmd.workflow or (state.workflow if state is not None else "")
    if name not in env.registry:
        message = env.registry.unknown_message(name)
        return Finish(pb.STATUS_FAILED, failure=pb.Failure(type="UnknownWorkflow", message=message))
    wf = env.registry.get(name)
    deadline = state.deadline_ms if state is not None else 0
    if deadline and now_ms() >= deadline:
        return Finish(pb.STATUS_FAILED, failure=timed_out(deadline))
    args = state.args if state is not None else ex.cmd.args
    created = state.created_at_ms if state is not None else 0
    ex.waits, ex.rerun = (), False
    ex.interrupt.clear()
    entries = ex.journal.entries
    ctx = RunContext(
        invocation_id=ex.id,
        workflow=name,
        partition_key=ex.cmd.partition_key,
        machine=ex.journal.machine,
        journal=ex,
        channels=env.channels,
        start_time_ms=created or ex.cmd.created_at_ms or now_ms(),
        interceptors=env.interceptors,
        attempt=ex.delivery.num_delivered,
        default_retry=wf.retry,
        payloads=ex.t.payloads,
        payload_limit=ex.t.payload_limit,
        threads=env.threads,
    )
    ex.ctx = ctx

    async def body(_: WorkflowInput) -> Any:
        ctx.enter()  # this task runs the workflow's own code; tasks it starts are branches
        if not wf.takes_input:
            return await wf.fn(ctx)
        try:
            value = await ctx._load(args, wf.input_type)
        except InvalidInputError as e:
            raise BadInputError(f"input of {name} does not match its declared type: {e}") from e
        return await wf.fn(ctx, value)

    run = chain_workflows(env.interceptors, body)
    # Wake-ups, hand-overs and timers carry no metadata: the invocation keeps its trace.
    headers = dict(state.trace_context) if state is not None else {}
    headers.update(ex.cmd.metadata)
    ctx.pass_on(headers)
    if not entries:  # the first run: how long it waited for a processor
        ex.observe("started", seconds=max(now_ms() - ex.due_ms(), 0) / 1000)
    inp = WorkflowInput(
        ex.id,
        name,
        ex.cmd.partition_key,
        ex.delivery.num_delivered,
        headers,
        resumed=bool(entries),
        journal=tuple(entries),
    )
    task: asyncio.Future[Any] = asyncio.ensure_future(run(inp))
    ex.task = task
    ex.cancelling_run = False
    interrupted = asyncio.create_task(ex.interrupt.wait())
    waiting: set[asyncio.Future[Any]] = {task, interrupted}
    expiry = None
    if deadline:
        expiry = asyncio.create_task(asyncio.sleep((deadline - now_ms()) / 1000))
        waiting.add(expiry)
    try:
        while True:
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if not _suspending(ex, task, interrupted) or await ctx.still_parked(task):
                break
            # Not a suspension after all: a branch went on (a step, or the workflow's end).
            # It parks again, or the run ends, in its own time.
            ex.interrupt.clear()
            ex.waits = ()
            waiting.discard(interrupted)
            interrupted = asyncio.create_task(ex.interrupt.wait())
            waiting.add(interrupted)
    except asyncio.CancelledError:
        # Shutdown released this run (its command goes back at once): the workflow's own
        # task must not go on behind it (its deferred outcome: Execution._run_until_done).
        await halt(ex, task, "released")
        raise
    finally:
        interrupted.cancel()
        if expiry is not None:
            expiry.cancel()
    if task.done() and ctx.open_branches(task):
        await halt(ex, task, "ending")  # the branches the workflow left behind
    diverged = ctx.steps.nondeterminism
    if diverged is not None:  # whatever the workflow did with the error, the run ends here
        if task.done():
            with contextlib.suppress(BaseException):
                task.result()
        else:
            await halt(ex, task, "diverged from its journal")
        if isinstance(ex.journal.stopped, Diverged):
            ex.journal.stopped = None  # the engine's own entries go on (SUSPENDED)
        ex.children = list(ctx.steps.children)
        if deadline and deadline - now_ms() < _DEADLINE_NEAR_MS:
            # Blocked, it would only wait: its deadline's wake-up, early, would replay it and
            # block it again, each time journaling the block, until the deadline.
            return await _fail_at(deadline)
        return Block(diverged)
    if expiry is not None and expiry.done() and not expiry.cancelled() and not task.done():
        # Stop where it is and fail, on time: a step's thread is not waited for.
        await halt(ex, task, "past its execution timeout", hand_over=False)
        return Finish(pb.STATUS_FAILED, failure=timed_out(deadline))
    if not task.done():
        await halt(ex, task, "running again" if ex.rerun else "suspending")
        ex.children = list(ctx.steps.children)
        if ex.rerun:
            raise Rerun
        if deadline and deadline - now_ms() < _DEADLINE_NEAR_MS:
            return await _fail_at(deadline)  # it comes before any wake-up could
        return Suspend()
    ex.children = list(ctx.steps.children)
    return await _outcome(ex, task, ctx)


def _suspending(ex: Execution, task: asyncio.Future[Any], interrupted: asyncio.Future[Any]) -> bool:
    """Whether the run was interrupted only because every step it has asked for parked, or
    to run again for news: either way it ends once no branch moves (``still_parked``). A
    rerun at once cut short the step a branch had just started after its last outcome's
    write took the news in, and the rerun ran it again. So does a run being cancelled: a
    wait the cancellation had yet to reach still counted as parked, and the run suspended on
    it, with no wake-up to come."""
    return (
        interrupted.done()
        and not task.done()
        and (bool(ex.waits) or ex.rerun)
        and ex.journal.stopped is None
    )


async def halt(
    ex: Execution, task: asyncio.Future[Any], why: str, *, hand_over: bool = True
) -> None:
    """Cancel the workflow's task and wait for it to end, refusing every step it tries
    meanwhile: a workflow that swallows the cancellation (``except BaseException``) must not
    run another step. The engine's own entries (suspension, failure) go on after.
    ``hand_over``: see ``Halted``."""
    halted = Halted(f"this run is {why}", hand_over=hand_over)
    if ex.journal.stopped is None:
        ex.journal.stopped = halted
    # Its branches too: a task the workflow started and did not await to its end (raced with
    # asyncio.wait, or left behind when it returned) went on after the run: parked, it was
    # destroyed pending at every suspension; in a step, it ran beside the next run and both
    # executed its next step, or it journaled steps after the invocation's final entry.
    tasks = [task] + (ex.ctx.open_branches(task) if ex.ctx is not None else [])
    for each in tasks:
        each.cancel()
    # Released by shutdown meanwhile: the workflow still stops first (a sync step's thread may
    # hold it: see RunContext._in_thread), then the release goes on below.
    for each in tasks:
        await wait_out(each)
        with contextlib.suppress(BaseException):
            each.result()
    if ex.journal.stopped is halted:
        ex.journal.stopped = None
    if being_cancelled():
        # Shutdown released this run while it waited: never swallow that (a rerun after
        # it ran new steps with the command already handed back).
        raise asyncio.CancelledError


async def _outcome(ex: Execution, task: asyncio.Future[Any], ctx: RunContext) -> Finish:
    """How a run whose workflow returned (or raised) ends."""
    if ctx.payload_error is not None:
        # A stored value could not be read back: release the run, whatever the workflow
        # made of the error (it may have caught it and returned something else).
        with contextlib.suppress(BaseException):
            task.result()
        raise EngineFailure(ctx.payload_error) from ctx.payload_error
    try:
        result = task.result()
    except InvocationCancelledError:
        return _cancelled()
    except asyncio.CancelledError as e:
        if ex.cancelling_run:
            raise Rerun from None  # interrupted off a step boundary: deliver it on replay
        if being_cancelled():
            raise  # shutdown released this run meanwhile
        # The workflow's own code raised it (the engine cancels the workflow only to halt
        # it, never reaching here, or for a cancel): it failed. Taken for a shutdown, its
        # command went back at once and ran again, forever.
        return Finish(pb.STATUS_FAILED, failure=_failure(e))
    except SuspendExecution:
        raise  # the engine's own control flow (LostClaim, Finished, Rerun, ...)
    except BaseExceptionGroup as group:
        # A TaskGroup's (its branches' errors): the engine's signal or the cancellation in it
        # is acted on as it would be alone. A cancellation wrapped so was taken for a crash
        # of the run: never acked, the invocation was redelivered and cancelled again for good.
        signal = _first(group, SuspendExecution)
        if signal is not None:
            raise signal from None
        if _first(group, InvocationCancelledError) is not None:
            return _cancelled()
        if ex.cancelling_run and _first(group, asyncio.CancelledError) is not None:
            raise Rerun from None
        return Finish(pb.STATUS_FAILED, failure=_failure(group), failed_steps=ctx.escaped(group))
    except Exception as e:  # the workflow failed: journal why
        if is_engine_error(e):
            # A NATS error the workflow let through (a write of the engine's own that
            # NATS refused): release the run, never journal it as the workflow's failure.
            raise EngineFailure(e) from e
        return Finish(pb.STATUS_FAILED, failure=_failure(e), failed_steps=ctx.escaped(e))
    try:
        output = await ctx._stored(result)
    except InvalidInputError as e:
        return Finish(pb.STATUS_FAILED, failure=pb.Failure(type="InvalidOutput", message=str(e)))
    if ctx.steps.cancel_delivered:  # it handled the cancellation and returned: still cancelled
        return Finish(pb.STATUS_CANCELLED, output=output)
    return Finish(pb.STATUS_COMPLETED, output=output)


def _cancelled() -> Finish:
    failure = pb.Failure(type="InvocationCancelledError", message="cancelled by request")
    return Finish(pb.STATUS_CANCELLED, failure=failure)


def _first(group: BaseExceptionGroup[Any], kind: type[BaseException]) -> BaseException | None:
    """The first ``kind`` among ``group``'s leaves, at any depth."""
    for e in group.exceptions:
        found = _first(e, kind) if isinstance(e, BaseExceptionGroup) else e
        if isinstance(found, kind):
            return found
    return None


def _failure(e: BaseException) -> pb.Failure:
    if isinstance(e, BadInputError):
        return pb.Failure(type="InvalidInputError", message=str(e))
    failure = pb.Failure(type=type(e).__name__, message=str(e) or type(e).__name__)
    if isinstance(e, StepFailedError):
        failure.step, failure.code = e.step, e.code
    return failure


async def _fail_at(deadline_ms: int) -> Finish:
    """Wait for the execution timeout, then fail: it is near, and nothing else could come first."""
    await asyncio.sleep(max(deadline_ms - now_ms(), 0) / 1000)
    return Finish(pb.STATUS_FAILED, failure=timed_out(deadline_ms))


def timed_out(deadline_ms: int) -> pb.Failure:
    """The failure of an invocation past its execution timeout."""
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(deadline_ms / 1000))
    return pb.Failure(
        type="ExecutionTimeoutError", message=f"execution timeout: not finished by {when}"
    )
