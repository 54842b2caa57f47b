"""A pause and a cancel meeting retries, compensation and each other, on a real server."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any, cast

import pytest

from durable_core import (
    Context,
    InvocationCancelledError,
    RetryPolicy,
    TerminalError,
    Worker,
    WorkerConfig,
    WorkflowRegistry,
)
from durable_core._pb.durable.v1 import durable_pb2 as pb
from durable_core._transport import Transport
from durable_core.testing import assert_eventually_async

STARTS: list[float] = []
RAN: list[str] = []
FAILS: list[int] = [0]


def flaky_first(_: int) -> str:
    STARTS.append(time.monotonic())
    time.sleep(0.3)
    if len(STARTS) == 1:
        raise ValueError("the first attempt fails")
    return "ok"


async def retried_step(ctx: Context, x: int) -> list[str]:
    backoff = RetryPolicy(initial_interval=timedelta(milliseconds=300))
    return [await ctx.run("flaky", flaky_first, x, retry=backoff), await ctx.run("b", lambda: "b")]


async def test_a_pause_holds_a_steps_next_attempt(local_engine: Callable[..., Any]) -> None:
    """Paused while a step's first attempt ran, which then failed: the next attempt, after
    a backoff waited in process, started while paused."""
    async with local_engine(retried_step) as (client, _):
        await client.invoke_async("retried_step", 1, id="pz-attempt")

        async def began() -> bool:
            return bool(STARTS)

        await assert_eventually_async(began, 10, "the first attempt")
        await asyncio.sleep(0.05)
        await client.pause("pz-attempt")
        paused = time.monotonic()
        await asyncio.sleep(1.5)
        assert len(STARTS) == 1, "an attempt started while paused"
        await client.resume("pz-attempt")
        assert (await client.wait("pz-attempt", timeout=15)).output == ["ok", "b"]
        assert STARTS[1] > paused + 1.5


async def charge_then_sleep(ctx: Context, _: int) -> str:
    try:
        await ctx.run("charge", lambda: "c")
        await ctx.sleep(timedelta(seconds=30))
        return "done"
    except InvocationCancelledError:
        await ctx.run("refund", lambda: RAN.append("refund") or "r")
        raise


async def test_a_cancel_of_a_paused_invocation_ends_it_and_compensates(
    local_engine: Callable[..., Any],
) -> None:
    """The compensation step met the pause and parked: the invocation stayed paused, with
    its cancel accepted, until someone resumed it."""
    async with local_engine(charge_then_sleep) as (client, _):
        await client.invoke_async("charge_then_sleep", 1, id="pz-cancel")
        await asyncio.sleep(0.8)
        await client.pause("pz-cancel")
        await asyncio.sleep(0.3)
        await client.cancel("pz-cancel")
        assert (await client.wait("pz-cancel", timeout=10)).status == "cancelled"
        assert RAN == ["refund"]


async def sleeps_long(ctx: Context, _: int) -> str:
    await ctx.sleep(timedelta(seconds=600))
    return "woke"


async def test_a_paused_sleeping_invocation_fails_at_its_execution_timeout(
    local_engine: Callable[..., Any],
) -> None:
    """The deadline's wake-up comes up to a second early (server schedules are whole
    seconds): it found the invocation paused and not yet past its deadline, was acked, and
    nothing woke it again until the sleep's end (outside-in: 44 of 60 paused sleepers failed
    late, 20 s late and more). Three deadlines at different fractions of a second."""
    async with local_engine(sleeps_long) as (client, _):
        ids = [f"pz-deadline-{i}" for i in range(3)]
        started = time.monotonic()
        for i, inv in enumerate(ids):
            await client.invoke_async(
                "sleeps_long", i, id=inv, execution_timeout=timedelta(seconds=3)
            )
            await asyncio.sleep(0.3)
        for inv in ids:
            await assert_eventually_async(
                lambda inv=inv: _status(client, inv, "suspended"), 5, f"{inv} asleep"
            )
            assert await client.pause(inv) == "paused"
        for inv in ids:
            result = await client.wait(inv, timeout=15)
            assert result.status == "failed", result
            assert result.failure is not None
            assert result.failure.type == "ExecutionTimeoutError"
        assert time.monotonic() - started < 3.6 + 2.5  # the last deadline, and a margin


async def _status(client: Any, inv: str, want: str) -> bool:
    return bool((await client.get_summary(inv)).status == want)


async def fail_once() -> str:
    await asyncio.sleep(0.3)
    if FAILS[0]:
        FAILS[0] -= 1
        raise TerminalError("planned")
    return "ok"


async def failing_then_more(ctx: Context, _: int) -> list[str]:
    return [await ctx.run("f", fail_once), await ctx.run("after", lambda: "b")]


async def test_a_pause_the_failure_ended_does_not_hold_the_retry(
    local_engine: Callable[..., Any],
) -> None:
    """Paused while its step ran, which failed for good: a failed invocation cannot be
    resumed, and its retry parked paused by the pause from before, for good."""
    FAILS[0] = 1
    async with local_engine(failing_then_more) as (client, _):
        await client.invoke_async("failing_then_more", 1, id="pz-retry")
        await asyncio.sleep(0.1)
        await client.pause("pz-retry")
        assert (await client.wait("pz-retry", timeout=10)).status == "failed"
        await client.retry("pz-retry")
        assert (await client.wait("pz-retry", timeout=10)).output == ["ok", "b"]


async def charge_first(ctx: Context, _: int) -> str:
    try:
        return await ctx.run("charge", lambda: RAN.append("charge") or "c")
    except InvocationCancelledError:
        await ctx.run("refund", lambda: RAN.append("refund") or "r")
        raise


async def test_a_cancel_while_the_run_sets_out_runs_no_step(
    local_engine: Callable[..., Any],
) -> None:
    """Cancelled once the run's RUNNING write had landed but before the processor heard so
    (its workflow task not made yet): the interrupt found no task to cancel, and the first
    step ran after ``cancel()`` had answered."""
    RAN.clear()
    async with local_engine(charge_first) as (client, t):
        update, landed = t.update_state, asyncio.Event()

        async def late_answer(st: Any, revision: int) -> Any:
            rec = await update(st, revision)
            if st.status == pb.STATUS_RUNNING and not landed.is_set():
                landed.set()
                await asyncio.sleep(0.5)  # landed; the processor has not heard yet
            return rec

        t.update_state = late_answer  # the processor's own connection; not the client's
        await client.invoke_async("charge_first", 1, id="pz-setout")
        await asyncio.wait_for(landed.wait(), 10)
        assert await client.cancel("pz-setout") == "running"
        assert (await client.wait("pz-setout", timeout=10)).status == "cancelled"
        assert RAN == ["refund"], "a step ran after the cancel had answered"


BLOCKED: list[float] = []


def blocking(i: int) -> int:
    BLOCKED.append(time.monotonic())
    time.sleep(0.8)
    return i


async def many_sync_steps(ctx: Context, n: int) -> list[int]:
    outs = await asyncio.gather(
        *(ctx.run(f"s{i}", blocking, i) for i in range(n)), return_exceptions=True
    )
    for out in outs:
        if isinstance(out, BaseException):
            raise out
    return cast(list[int], outs)


async def test_a_sync_step_waiting_for_a_thread_never_runs_once_cancelled(
    local_engine: Callable[..., Any],
) -> None:
    """Forty sync steps at once: the loop's default pool (min(32, cores + 4) threads) queued
    the rest, and those started after the cancel had answered, long after the invocation
    ended cancelled. Now each execution slot has a thread, and a queued one never starts."""
    BLOCKED.clear()
    async with local_engine(many_sync_steps, worker=WorkerConfig(max_concurrent=8)) as (
        client,
        _,
    ):
        await client.invoke_async("many_sync_steps", 40, id="pz-threads")

        async def began() -> bool:
            return bool(BLOCKED)

        await assert_eventually_async(began, 10, "the first sync step")
        await asyncio.sleep(0.2)
        running = len(BLOCKED)
        assert await client.cancel("pz-threads") == "running"
        assert (await client.wait("pz-threads", timeout=10)).status == "cancelled"
        await asyncio.sleep(1.2)  # the threads that ran have ended
        assert len(BLOCKED) == running, "a sync step started after the cancel"


MARKS: list[tuple[float, str]] = []


def mark(name: str) -> str:
    MARKS.append((time.monotonic(), name))
    return name


async def own_code_first(ctx: Context, _: int) -> str:
    await asyncio.sleep(0.3)  # the workflow's own code, before its first step
    try:
        await ctx.run("charge", mark, "charge")
        await ctx.run("ship", mark, "ship")
    except InvocationCancelledError:
        await ctx.run("refund", mark, "refund")
        raise
    return "done"


@pytest.mark.parametrize("verb", ["pause", "cancel"])
async def test_a_run_that_set_out_and_journaled_nothing_is_told_and_waited_for(
    local_engine: Callable[..., Any], verb: str
) -> None:
    """Running (its state said so) but with an empty journal: the request took it for no run
    in flight, answered "running" without telling the run (a pause) or waiting for its
    processor (a cancel), and the first step started after the answer."""
    MARKS.clear()
    inv = f"pz-own-{verb}"
    async with local_engine(own_code_first) as (client, _):
        await client.invoke_async("own_code_first", 1, id=inv)

        async def running() -> bool:
            return str((await client.get_summary(inv)).status) == "running"

        await assert_eventually_async(running, 10, "the run set out")
        assert str(await getattr(client, verb)(inv)) == "running"
        answered = time.monotonic()
        await asyncio.sleep(1.0)
        late = [name for at, name in MARKS if at > answered and name != "refund"]
        assert not late, f"steps started after {verb}() answered: {late}"
        if verb == "pause":
            await client.resume(inv)
            assert (await client.wait(inv, timeout=10)).output == "done"
        else:
            assert (await client.wait(inv, timeout=10)).status == "cancelled"
            assert [name for _, name in MARKS] == ["refund"]


def sleeps_past_its_timeout() -> str:
    time.sleep(1.5)
    return "late"


async def timed_out_then_fallback(ctx: Context, _: int) -> str:
    no_retry = RetryPolicy(maximum_attempts=1)
    with contextlib.suppress(TerminalError):  # the step's failure after its one attempt
        await ctx.run(
            "slow", sleeps_past_its_timeout, timeout=timedelta(seconds=0.5), retry=no_retry
        )
    return await ctx.run("fallback", lambda: "fallback", timeout=timedelta(seconds=1))


async def test_a_timed_out_sync_step_leaves_threads_for_the_next(
    local_engine: Callable[..., Any],
) -> None:
    """A timed-out sync step keeps its thread: with one thread per execution slot and one
    slot, the next sync step waited for it, timed out and never ran."""
    async with local_engine(timed_out_then_fallback, worker=WorkerConfig(max_concurrent=1)) as (
        client,
        _,
    ):
        await client.invoke_async("timed_out_then_fallback", 1, id="pz-starve")
        assert (await client.wait("pz-starve", timeout=20)).output == "fallback"


class _Execution:
    """What ``Worker._on_control`` sees of an execution."""

    def __init__(self, running_workflow: bool) -> None:
        self.ctx = object() if running_workflow else None
        self.told: list[str] = []

    def cancel_now(self) -> None:
        self.told.append("cancel")

    def look_again(self) -> None:
        self.told.append("pause")


async def test_only_a_processor_running_the_workflow_answers_a_pause_or_cancel(
    transport: Transport,
) -> None:
    """Every processor with an execution of the invocation answered, one that only handled a
    wake-up (about to end "not idle") too: with several processors, the sender took that
    answer while the processor running the workflow had not had the request yet."""
    worker = Worker(transport, WorkflowRegistry(), WorkerConfig())
    waking, running = _Execution(False), _Execution(True)
    worker._running["inv"] = {waking}  # type: ignore[assignment]
    assert worker._on_control("inv", "pause") is False
    worker._running["inv"] = {waking, running}  # type: ignore[assignment]
    assert worker._on_control("inv", "cancel") is True
    assert waking.told == ["pause", "cancel"] and running.told == ["cancel"]


async def test_a_resume_of_an_invocation_paused_before_it_ran_answers_pending(
    local_engine: Callable[..., Any],
) -> None:
    """Paused before it ran (here: before it was due), then resumed: the answer was
    ``paused``, and ``durable status`` said paused until a processor took it up (for good
    with none running its workflow). The journal says resumed: it is pending, then runs."""

    async def later(ctx: Context) -> str:
        return "ran"

    async with local_engine(later) as (client, _):
        inv = await client.invoke_async("later", delay=timedelta(seconds=3))
        assert (await client.pause(inv)).value == "paused"
        assert (await client.describe(inv)).status == "paused"
        assert (await client.resume(inv)).value == "pending"
        assert (await client.describe(inv)).status == "pending"
        assert (await client.wait(inv, timeout=20)).output == "ran"


async def test_a_timer_that_fires_while_paused_runs_nothing(
    local_engine: Callable[..., Any],
) -> None:
    """Paused while suspended on a sleep, a workflow that returned right after it completed
    when the timer fired, with no resume (the timer's wake-up ran it, and no step came to
    hold it). The wake-up now leaves it paused; the resume runs it."""
    ran: list[str] = []

    async def nap(ctx: Context) -> str:
        await ctx.sleep(timedelta(seconds=3))
        ran.append("after the sleep")
        return "woke"

    async with local_engine(nap) as (client, t):
        inv = await client.invoke_async("nap")

        async def suspended() -> bool:
            return (await client.get_summary(inv)).status.value == "suspended"

        await assert_eventually_async(suspended, 10, "asleep")
        assert (await client.pause(inv)).value == "paused"
        await asyncio.sleep(4.5)  # the timer fired 1.5 s ago (2 s: schedules are whole s)
        assert ran == [] and (await client.describe(inv)).status == "paused"
        kinds = [r.entry.kind for r in await t.read_journal(inv)]
        assert pb.ENTRY_KIND_CLAIM not in kinds[kinds.index(pb.ENTRY_KIND_PAUSE_REQUEST) :]
        assert (await client.resume(inv)).value in ("pending", "running", "completed")
        assert (await client.wait(inv, timeout=20)).output == "woke"
        assert ran == ["after the sleep"]
