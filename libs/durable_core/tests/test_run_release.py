"""How a run ends when it is stopped, and what is not taken for a stop.

A ``CancelledError`` that nothing cancelled (raised by a step's own code) is an ordinary step
failure, never the engine's shutdown; a sync step's thread is waited for before anything runs
after it (a retry, a hand-back); a shutdown arriving while a run is being halted is never
swallowed; a step outcome still deferred when shutdown releases the run is journaled.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import pytest

from durable_core import (
    Client,
    Context,
    EngineConfig,
    NatsConfig,
    RetryPolicy,
    StepFailedError,
    Worker,
    WorkerConfig,
)
from durable_core._pb.durable.v1 import durable_pb2 as pb
from durable_core._transport import Transport
from durable_core.engine import _writer
from durable_core.engine._attempt import halt
from durable_core.plugins import WorkflowRegistry
from durable_core.testing import NatsServer, replay_workflow

QUICK = RetryPolicy(initial_interval=timedelta(milliseconds=5), maximum_attempts=3)


@pytest.mark.parametrize("sync", [False, True], ids=["async", "sync"])
async def test_a_cancelled_error_raised_by_a_step_is_an_ordinary_attempt_failure(
    sync: bool,
) -> None:
    """Taken for a shutdown, the engine handed the command back at once and ran the step
    again, forever; now the retry policy decides, and the step fails for good."""
    calls = 0

    def cancels() -> None:
        nonlocal calls
        calls += 1
        raise asyncio.CancelledError("raised by the step itself")

    async def cancels_async() -> None:
        cancels()

    async def wf(ctx: Context) -> None:
        await ctx.run("cancels", cancels if sync else cancels_async, retry=QUICK)

    with pytest.raises(StepFailedError) as err:
        await replay_workflow(wf)
    assert err.value.error_type == "CancelledError"
    assert calls == 3


async def test_a_timed_out_sync_attempt_fails_at_its_deadline() -> None:
    """A sync step's thread cannot be stopped, and the run waits for it when the engine halts
    the run; the step's own timeout still fails the attempt at its deadline (a hung call
    must not hold the invocation for good)."""

    def slow() -> str:
        time.sleep(0.5)
        return "late"

    async def wf(ctx: Context) -> str:
        policy = RetryPolicy(initial_interval=timedelta(milliseconds=10), maximum_attempts=2)
        return await ctx.run("slow", slow, timeout=timedelta(milliseconds=50), retry=policy)

    began = time.monotonic()
    with pytest.raises(StepFailedError) as err:
        await replay_workflow(wf)
    assert err.value.error_type == "StepTimeoutError"
    assert time.monotonic() - began < 0.45  # two attempts of 50 ms, not two threads of 500


async def test_a_shutdown_while_a_run_is_halted_is_raised_after_the_workflow_stopped() -> None:
    """Shutdown cancels the run while it halts the workflow to run it again: the halt waits
    for the workflow to stop, then lets the cancellation through (it swallowed it, and the
    rerun executed new steps after the command had been handed back)."""
    ex: Any = SimpleNamespace(journal=SimpleNamespace(stopped=None), ctx=None)
    stopping, stopped = asyncio.Event(), asyncio.Event()

    async def workflow() -> None:
        try:
            await asyncio.Future()
        except asyncio.CancelledError:
            stopping.set()
            await asyncio.shield(asyncio.sleep(0.2))  # e.g. a step's thread ending
            stopped.set()
            raise

    task = asyncio.ensure_future(workflow())
    after: list[str] = []

    async def run() -> None:
        await halt(ex, task, "running again")
        after.append("rerun")

    runner = asyncio.create_task(run())
    await stopping.wait()
    runner.cancel()  # shutdown releases the run
    with pytest.raises(asyncio.CancelledError):
        await runner
    assert stopped.is_set() and task.done()
    assert after == []  # no rerun
    assert ex.journal.stopped is None


async def test_a_deferred_step_outcome_is_journaled_when_shutdown_releases_the_run(
    server: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A step's outcome is journaled with the run's next entry, or ``DEFER_S`` later. A
    shutdown that released the run in between dropped it, and the next processor ran the
    completed step again. The window is widened here so that the shutdown surely lands in it."""
    monkeypatch.setattr(_writer, "DEFER_S", 60.0)
    ran = asyncio.Event()

    async def step_then_wait(ctx: Context) -> None:
        async def once() -> str:
            ran.set()
            return "done"

        await ctx.run("once", once)
        await asyncio.Event().wait()  # awaits something that is no step: nothing flushes

    engine = EngineConfig(prefix="t" + uuid.uuid4().hex[:8])
    registry = WorkflowRegistry()
    registry.register(step_then_wait)
    transport = await Transport.connect(NatsConfig.from_url(server.url), engine, create=True)
    config = WorkerConfig(shutdown_grace=timedelta(seconds=0.2))
    worker = Worker(transport, registry, config)
    task = asyncio.create_task(worker.run())
    try:
        await asyncio.wait_for(worker.consuming.wait(), 20)
        async with await Client.connect(server.url, engine=engine) as client:
            inv = await client.invoke_async("step_then_wait")
            await asyncio.wait_for(ran.wait(), 20)
            await asyncio.sleep(0.1)  # the outcome is deferred by now
            worker.stop()
            await asyncio.wait_for(task, 30)
            records = await transport.read_journal(inv, current=True)
        steps = [(r.entry.kind, r.entry.name) for r in records if r.entry.step]
        assert steps == [(pb.ENTRY_KIND_RUN, "once")]
    finally:
        worker.stop()
        await asyncio.wait_for(task, 30)
        await transport.close()


async def test_a_sync_step_still_running_does_not_hold_an_invocation_past_its_timeout(
    local_engine: Callable[..., Any],
) -> None:
    """A run halted to hand the invocation over waits for a sync step's thread (it must not
    run beside its rerun), but one halted at its execution timeout ends the invocation: a
    hung thread held it RUNNING past its deadline."""

    async def hangs(ctx: Context) -> None:
        await ctx.run("hung", time.sleep, 6.0)

    async with local_engine(hangs) as (client, _):
        began = time.monotonic()
        inv = await client.invoke_async("hangs", execution_timeout=timedelta(seconds=1))
        result = await client.wait(inv, timeout=20)
        took = time.monotonic() - began
    assert result.failure is not None and result.failure.type == "ExecutionTimeoutError"
    assert took < 4.0, took


async def test_commands_a_stopping_worker_fetched_but_never_ran_go_back_at_once(
    server: NatsServer,
) -> None:
    """A graceful stop waits for its open pull request to run out, and what it brought
    meanwhile is handed back: the requests were forgotten first, so no delivery's bound was
    known, none counted as surely held, and the NAK was left out; each command then waited
    out its ack wait (30 s) before the next worker ran it."""
    first_step: dict[str, float] = {}

    async def quick(ctx: Context) -> None:
        await ctx.run("s", lambda: first_step.setdefault(ctx.invocation_id, time.monotonic()))

    engine = EngineConfig(prefix="t" + uuid.uuid4().hex[:8])
    registry = WorkflowRegistry()
    registry.register(quick)
    transport = await Transport.connect(NatsConfig.from_url(server.url), engine, create=True)
    workers = [Worker(transport, registry, WorkerConfig()) for _ in range(2)]
    task = asyncio.create_task(workers[0].run())
    submitted: dict[str, float] = {}
    try:
        await asyncio.wait_for(workers[0].consuming.wait(), 20)
        async with await Client.connect(server.url, engine=engine) as client:

            async def feed() -> None:
                for i in range(40):
                    submitted[f"q{i}"] = time.monotonic()
                    await client.invoke_async(quick, id=f"q{i}", queue_unserved=True)
                    await asyncio.sleep(0.01)

            feeding = asyncio.create_task(feed())
            await asyncio.sleep(0.15)
            workers[0].stop()  # while commands keep coming
            await asyncio.wait_for(task, 30)
            task = asyncio.create_task(workers[1].run())
            await feeding
            for inv in submitted:
                await client.wait(inv, timeout=25)
        slowest = max(first_step[i] - submitted[i] for i in submitted)
        assert slowest < 10, f"a command waited {slowest:.1f}s: left to its ack wait"
    finally:
        for worker in workers:
            worker.stop()
        await asyncio.wait_for(task, 30)
        await transport.close()
