"""News (a signal, a cancellation) reaching the journal while a run has steps in flight, on a
real server: the run sees it once nothing runs, and never sends a step again for it."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from durable_core import Context, InvocationCancelledError
from durable_core._pb.durable.v1 import durable_pb2 as pb
from durable_core.testing import assert_eventually_async

RUNS: Counter[str] = Counter()


async def step(name: str, secs: float) -> str:
    RUNS[name] += 1
    await asyncio.sleep(secs)
    return name


async def _ends_after_a_cancel(client: Any, workflow: str, arg: Any, inv: str, secs: float) -> str:
    """Invoke ``workflow``, cancel it ``secs`` later; the status it ends with."""
    await client.invoke_async(workflow, arg, id=inv)
    await asyncio.sleep(secs)
    await client.cancel(inv)
    return str((await client.wait(inv, timeout=15)).status)


async def a_step_beside_a_wait(ctx: Context, tag: str) -> list[Any]:
    return list(await asyncio.gather(ctx.wait_for_signal("go"), ctx.run(tag, step, tag, 1.0)))


async def two_steps_beside_a_wait(ctx: Context, tag: str) -> list[Any]:
    async def worker() -> str:
        first = await ctx.run(f"{tag}-a", step, f"{tag}-a", 1.0)
        return first + await ctx.run(f"{tag}-b", step, f"{tag}-b", 1.0)

    return list(await asyncio.gather(ctx.wait_for_signal("go"), worker()))


async def code_between_steps(ctx: Context, tag: str) -> str:
    first = await ctx.run(f"{tag}-a", step, f"{tag}-a", 0.1)
    await asyncio.sleep(1.0)  # the workflow's own code, not a step
    return first + await ctx.run(f"{tag}-charge", step, f"{tag}-charge", 0.1)


async def test_a_signal_taken_in_with_the_last_outcome_before_a_suspension_wakes_the_run(
    local_engine: Callable[..., Any],
) -> None:
    """The signal landed while the step ran; the write of the step's deferred outcome at the
    suspension took it in, and the SUSPENDED entry went on after it: the invocation stayed
    suspended with what it waited for in its journal (no wake-up: the one the signal
    published had met the run in flight)."""
    async with local_engine(a_step_beside_a_wait) as (client, _):
        inv = await client.invoke_async("a_step_beside_a_wait", "lone", id="news-lone")
        await asyncio.sleep(0.3)
        await client.signal(inv, "go", 7)
        assert (await client.wait(inv, timeout=10)).output == [7, "lone"]
        assert RUNS["lone"] == 1


async def test_news_before_a_branchs_next_step_never_cuts_that_step_short(
    local_engine: Callable[..., Any],
) -> None:
    """The signal was taken in by the write of a branch's first outcome, before its second
    step: the run went again at once, without the settle a suspension waits for, and
    cancelled the second step just started, which the rerun ran again."""
    async with local_engine(two_steps_beside_a_wait) as (client, _):
        inv = await client.invoke_async("two_steps_beside_a_wait", "pair", id="news-pair")
        await asyncio.sleep(0.3)
        await client.signal(inv, "go", 7)
        assert (await client.wait(inv, timeout=15)).output == [7, "pair-apair-b"]
        assert (RUNS["pair-a"], RUNS["pair-b"]) == (1, 1)


async def test_a_cancel_between_steps_is_delivered_at_the_next_step(
    local_engine: Callable[..., Any],
) -> None:
    """Cancelled while its own code ran between two steps, the run went again to deliver the
    cancellation on replay, on a journal without the request it had not read: the next step
    (a charge) ran and the invocation completed."""
    async with local_engine(code_between_steps) as (client, _):
        status = await _ends_after_a_cancel(
            client, "code_between_steps", "between", "news-between", 0.5
        )
        assert status == "cancelled"
        assert RUNS["between-a"] == 1
        assert RUNS["between-charge"] == 0


async def branches_in_a_task_group(ctx: Context, tag: str) -> list[Any]:
    async with asyncio.TaskGroup() as tg:
        signal = tg.create_task(ctx.wait_for_signal("go"))
        ran = tg.create_task(ctx.run(tag, step, tag, 0.05))
    return [signal.result(), ran.result()]


async def _wait_all(*coros: Any) -> list[Any]:
    """Each in a task of its own, raced with ``asyncio.wait`` until all are done (which does
    not cancel them when its caller is cancelled); every task's exception is retrieved: one
    left unretrieved is logged from its finalizer, which on Python 3.11.7 may run inside the
    AST parser and make it raise SystemError."""
    tasks = [asyncio.create_task(c) for c in coros]
    pending = set(tasks)
    while pending:
        _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
    for error in [t.exception() for t in tasks]:
        if error is not None:
            raise error
    return [t.result() for t in tasks]


async def branches_raced_with_wait(ctx: Context, tag: str) -> list[Any]:
    async def nap() -> str:
        await ctx.sleep(timedelta(milliseconds=2500))
        return "nap"

    async def branch() -> list[Any]:
        await ctx.sleep(timedelta(milliseconds=2700))  # parks on a server-side timer
        return await _wait_all(nap(), ctx.run(tag, step, tag, 0.3))

    return await _wait_all(branch())


async def steps_beside_a_wait(ctx: Context, tag: str) -> list[Any]:
    async def worker() -> list[str]:
        out = []
        for i in range(6):
            out.append(await ctx.run(f"{tag}-{i}", step, f"{tag}-{i}", 0.1))
            await ctx.sleep(timedelta(milliseconds=300))
        return out

    return list(await asyncio.gather(ctx.wait_for_signal("go"), worker()))


async def test_a_cancel_ends_branches_raced_with_asyncio_wait(
    local_engine: Callable[..., Any],
) -> None:
    """The engine cancelled only the workflow's own task: a branch awaited through
    ``asyncio.wait`` went on beside the run that replayed it, and both took its next steps
    (each journaled twice, the step run twice)."""
    async with local_engine(branches_raced_with_wait) as (client, t):
        inv = await client.invoke_async("branches_raced_with_wait", "raced", id="news-raced")
        await asyncio.sleep(1.5)
        await client.cancel(inv)
        assert (await client.wait(inv, timeout=20)).status == "cancelled"
        await asyncio.sleep(1.0)  # anything still going would journal by now
        records = await t.read_journal(inv)
        steps = [(r.entry.kind, r.entry.step) for r in records if r.entry.step]
        assert len(steps) == len(set(steps)), steps
        assert RUNS["raced"] <= 1


async def test_no_step_is_journaled_after_a_cancelled_invocation_ended(
    local_engine: Callable[..., Any],
) -> None:
    """The cancellation was delivered at the wait; gather raised it without cancelling the
    branch of steps beside it, which ran on and journaled after the final entry."""
    async with local_engine(steps_beside_a_wait) as (client, t):
        inv = await client.invoke_async("steps_beside_a_wait", "beside", id="news-beside")
        await asyncio.sleep(0.5)
        await client.cancel(inv)
        assert (await client.wait(inv, timeout=20)).status == "cancelled"
        await asyncio.sleep(2.5)  # the branch's remaining steps would be journaled by now
        kinds = [r.entry.kind for r in await t.read_journal(inv)]
        assert kinds[-1] == pb.ENTRY_KIND_CANCELLED, kinds


async def two_steps_then_compensate(ctx: Context, tag: str) -> str:
    try:
        await asyncio.gather(
            ctx.run(f"{tag}-a", step, f"{tag}-a", 1.0), ctx.run(f"{tag}-b", step, f"{tag}-b", 1.0)
        )
    except InvocationCancelledError:
        await ctx.run(f"{tag}-undo", step, f"{tag}-undo", 0.05)
        raise
    return "done"


async def test_every_step_a_cancel_interrupts_ends_cancelled_and_never_runs_again(
    local_engine: Callable[..., Any],
) -> None:
    """Two steps in flight when the invocation was cancelled: the first interrupted took the
    cancellation, the other was interrupted with nothing journaled, and the replay that
    delivered the cancellation ran it again, after the cancel, beside the compensation."""
    async with local_engine(two_steps_then_compensate) as (client, _):
        status = await _ends_after_a_cancel(
            client, "two_steps_then_compensate", "both", "news-both", 0.4
        )
        assert status == "cancelled"
        assert (RUNS["both-a"], RUNS["both-b"], RUNS["both-undo"]) == (1, 1, 1)


async def a_short_sleep(ctx: Context, secs: float) -> str:
    await ctx.sleep(timedelta(seconds=secs))
    return "slept"


async def a_sleep_beside_a_wait_nested(ctx: Context, _: str) -> list[Any]:
    async def sleeper() -> str:
        await ctx.sleep(timedelta(milliseconds=1500))
        return "slept"

    async def branch() -> list[Any]:
        return list(await asyncio.gather(sleeper(), ctx.wait_for_signal("x")))

    return list(await asyncio.gather(branch()))


async def two_waits_raced(ctx: Context, _: str) -> list[Any]:
    return await _wait_all(ctx.wait_for_signal("a"), ctx.wait_for_signal("b"))


async def test_a_cancel_during_a_sleep_waited_in_process_ends_the_invocation_cancelled(
    local_engine: Callable[..., Any],
) -> None:
    """A sleep with less than the in-process bound left took no cancellation: the run that
    replayed it after the cancel slept it out, and the invocation completed."""
    async with local_engine(a_short_sleep) as (client, _):
        running = await client.invoke_async("a_short_sleep", 1.5, id="news-nap")
        suspended = await client.invoke_async("a_short_sleep", 3.0, id="news-nap-long")
        await asyncio.sleep(0.5)
        await client.cancel(running)
        await asyncio.sleep(1.1)  # the other has 1.4 s left: its wake-up's run waits in process
        await client.cancel(suspended)
        for inv in (running, suspended):
            assert (await client.wait(inv, timeout=15)).status == "cancelled"


@pytest.mark.parametrize(
    "workflow",
    [
        # A TaskGroup wraps the branch's InvocationCancelledError in a BaseExceptionGroup,
        # which the engine took for a crash of the run: never acked, redelivered every ack
        # wait and cancelled again, for good.
        branches_in_a_task_group,
        # The cancelled in-process sleep asked for a suspension while the signal wait beside
        # it, one gather further down, still counted as parked: the run suspended on that
        # wait, and nothing was to wake it.
        a_sleep_beside_a_wait_nested,
    ],
    ids=lambda wf: wf.__name__,
)
async def test_a_cancel_while_running_ends_the_invocation_cancelled(
    local_engine: Callable[..., Any], workflow: Callable[..., Any]
) -> None:
    name = workflow.__name__
    async with local_engine(workflow) as (client, _):
        status = await _ends_after_a_cancel(client, name, "x", f"news-{name}", 0.5)
        assert status == "cancelled"


async def test_a_cancel_reaches_every_wait_of_a_suspended_invocation(
    local_engine: Callable[..., Any],
) -> None:
    """Delivered at the first wait the replay met, the cancellation left the other branch's
    wait parked, and the workflow (awaiting both) suspended on it for good."""
    async with local_engine(two_waits_raced) as (client, _):
        inv = await client.invoke_async("two_waits_raced", "w", id="news-two-waits")
        deadline = asyncio.get_running_loop().time() + 10
        while (await client.describe(inv)).status != "suspended":
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.1)
        await client.cancel(inv)
        assert (await client.wait(inv, timeout=15)).status == "cancelled"


async def big_step(tag: str) -> str:
    RUNS[tag] += 1
    return "x" * (400 * 1024)  # above the 256 KiB threshold: stored in the object store


def _slow_puts(t: Any, secs: float) -> asyncio.Event:
    """Make ``t``'s object store writes start ``secs`` late; the event is set at the first."""
    put, storing = t.payloads.put, asyncio.Event()

    async def slow_put(owner: str, source: Any) -> Any:
        storing.set()
        await asyncio.sleep(secs)
        return await put(owner, source)

    t.payloads.put = slow_put
    return storing


async def a_large_result_then_a_charge(ctx: Context, tag: str) -> int:
    big = await ctx.run(f"{tag}-big", big_step, f"{tag}-big")
    return len(big) + len(await ctx.run(f"{tag}-charge", step, f"{tag}-charge", 0.05))


async def test_a_cancel_during_a_large_results_store_keeps_the_steps_outcome(
    local_engine: Callable[..., Any],
) -> None:
    """The step had run; the cancellation came while its result was written to the object
    store, and cut the store short with it: the outcome was dropped, and the replay took the
    step for one in flight at the cancel (cancelled, though it had run)."""
    async with local_engine(a_large_result_then_a_charge) as (client, t):
        storing = _slow_puts(t, 0.6)  # the object store written slowly: the cancel lands
        inv = await client.invoke_async("a_large_result_then_a_charge", "big", id="news-big")
        await asyncio.wait_for(storing.wait(), 10)
        await client.cancel(inv)
        assert (await client.wait(inv, timeout=15)).status == "cancelled"
        entries = [r.entry for r in await t.read_journal(inv)]
        big = [e for e in entries if e.name == "big-big" and e.kind == pb.ENTRY_KIND_RUN]
        assert big and not big[-1].HasField("failure"), entries
        assert big[-1].output.HasField("ref")  # the stored result, not a cancellation
        assert (RUNS["big-big"], RUNS["big-charge"]) == (1, 0)


async def own_code_beside_a_wait(ctx: Context, tag: str) -> list[Any]:
    async def later() -> str:
        await asyncio.sleep(1.0)  # the workflow's own code, not a step
        return await ctx.run(f"{tag}-charge", step, f"{tag}-charge", 0.05)

    try:
        return await _wait_all(ctx.wait_for_signal("go"), later())
    except InvocationCancelledError:
        await ctx.run(f"{tag}-undo", step, f"{tag}-undo", 0.05)
        raise


async def test_a_branch_the_cancel_never_reached_takes_no_new_step_after_it(
    local_engine: Callable[..., Any],
) -> None:
    """The cancellation was delivered at the wait, and the branch beside it was in its own
    code. The run went again; the branch asked for its next step after the delivery (which
    the rerun replayed at the wait), and a step asked after the delivery was taken for
    compensation: the charge ran after the cancel."""
    async with local_engine(own_code_beside_a_wait) as (client, _):
        status = await _ends_after_a_cancel(
            client, "own_code_beside_a_wait", "own", "news-own", 0.5
        )
        await asyncio.sleep(1.0)  # the branch's step would have run by now
        assert status == "cancelled"
        assert (RUNS["own-charge"], RUNS["own-undo"]) == (0, 1)


async def notify_then_charge(ctx: Context, tag: str) -> str:
    notify = asyncio.create_task(ctx.run(f"{tag}-notify", step, f"{tag}-notify", 1.0))
    try:
        await asyncio.sleep(1.0)  # the workflow's own code, not a step
        return await ctx.run(f"{tag}-charge", step, f"{tag}-charge", 0.05)
    finally:
        with contextlib.suppress(BaseException):  # retrieved: see _wait_all
            await notify


async def sibling_compensates(ctx: Context, tag: str) -> str:
    fetch = asyncio.create_task(ctx.run(f"{tag}-fetch", step, f"{tag}-fetch", 1.0))

    async def process() -> str:
        try:
            await fetch
            return await ctx.run(f"{tag}-process", step, f"{tag}-process", 0.05)
        except InvocationCancelledError:
            await ctx.run(f"{tag}-cleanup", step, f"{tag}-cleanup", 0.05)
            raise

    return await asyncio.create_task(process())


async def test_a_cancel_a_started_task_took_never_lets_its_parent_take_new_steps(
    local_engine: Callable[..., Any],
) -> None:
    """The step a started task ran took the cancellation while the workflow was in its own
    code; the cancellation raised there made the workflow count as having seen it, and its
    next step (the charge) ran after the cancel."""
    async with local_engine(notify_then_charge) as (client, _):
        status = await _ends_after_a_cancel(client, "notify_then_charge", "nc", "news-nc", 0.5)
        await asyncio.sleep(1.0)
        assert status == "cancelled"
        assert (RUNS["nc-notify"], RUNS["nc-charge"]) == (1, 0)


async def test_a_task_that_catches_the_cancel_another_raised_compensates(
    local_engine: Callable[..., Any],
) -> None:
    """The cancellation was raised in the task that ran the fetch; the task awaiting it
    caught it and cleaned up, and its clean-up step was cancelled as if it had never seen
    the cancellation."""
    async with local_engine(sibling_compensates) as (client, _):
        status = await _ends_after_a_cancel(client, "sibling_compensates", "sc", "news-sc", 0.5)
        assert status == "cancelled"
        assert (RUNS["sc-fetch"], RUNS["sc-process"], RUNS["sc-cleanup"]) == (1, 0, 1)


async def test_a_halt_during_a_large_results_store_stops_the_run_on_time(
    local_engine: Callable[..., Any],
) -> None:
    """A large result's store runs to its end through the invocation's cancellation, but
    not through a halt of the run: one past its execution timeout must stop where it is
    and fail on time, not wait for the object store."""
    async with local_engine(a_large_result_then_a_charge) as (client, t):
        storing = _slow_puts(t, 6)
        started = time.monotonic()
        inv = await client.invoke_async(
            "a_large_result_then_a_charge",
            "late",
            id="news-late",
            execution_timeout=timedelta(seconds=1),
        )
        result = await client.wait(inv, timeout=15)
        assert result.status == "failed", result
        assert time.monotonic() - started < 4.5  # the store was left, not waited for
        assert storing.is_set() and RUNS["late-charge"] == 0


STARTED: dict[str, float] = {}


async def stamped(name: str) -> str:
    STARTED[name] = time.monotonic()
    return name


async def a_sleep_in_process_between_steps(ctx: Context, tag: str) -> list[str]:
    first = await ctx.run(f"{tag}-a", stamped, f"{tag}-a")
    await ctx.sleep(timedelta(seconds=1))  # under 2 s: waited in process
    return [first, await ctx.run(f"{tag}-b", stamped, f"{tag}-b")]


async def own_code_between_steps(ctx: Context, tag: str) -> list[str]:
    first = await ctx.run(f"{tag}-a", stamped, f"{tag}-a")
    await asyncio.sleep(1)  # the workflow's own code
    return [first, await ctx.run(f"{tag}-b", stamped, f"{tag}-b")]


@pytest.mark.parametrize(
    "workflow", [a_sleep_in_process_between_steps, own_code_between_steps], ids=lambda w: w.__name__
)
async def test_a_pause_while_no_step_runs_holds_the_next_step(
    local_engine: Callable[..., Any], workflow: Callable[..., Any]
) -> None:
    """The pause is journaled without waking anything, and the run learnt of it only when
    one of its writes met it: with no write between the two steps, the second started
    after pause() had answered, and the invocation completed while paused."""
    name, tag = workflow.__name__, workflow.__name__[:8]
    async with local_engine(workflow) as (client, _):
        inv = await client.invoke_async(name, tag, id=f"news-{name}")

        async def first_ran() -> bool:
            return f"{tag}-a" in STARTED

        await assert_eventually_async(first_ran, 10, "the first step")
        await asyncio.sleep(0.2)
        await client.pause(inv)
        paused = time.monotonic()
        await asyncio.sleep(1.5)  # past the sleep: the second step would have started
        assert f"{tag}-b" not in STARTED
        await client.resume(inv)
        assert (await client.wait(inv, timeout=15)).output == [f"{tag}-a", f"{tag}-b"]
        assert STARTED[f"{tag}-b"] > paused + 1.5


async def compensate_in_finally(ctx: Context, tag: str) -> list[Any]:
    async def napper() -> str:
        try:
            await ctx.sleep(timedelta(milliseconds=1500))  # under 2 s: waited in process
            return "slept"
        finally:
            await ctx.run(f"{tag}-undo-nap", step, f"{tag}-undo-nap", 0.05)

    async def worker() -> str:
        try:
            return await ctx.run(f"{tag}-work", step, f"{tag}-work", 1.0)
        finally:
            await ctx.run(f"{tag}-undo-work", step, f"{tag}-undo-work", 0.05)

    results = await asyncio.gather(napper(), worker(), return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return list(results)


async def test_a_cancel_during_a_sleep_in_process_reaches_the_finally_that_compensates(
    local_engine: Callable[..., Any],
) -> None:
    """The cancellation interrupted a sleep waited in process with a bare CancelledError,
    not delivered there: the branch's ``finally`` ran without it, and its compensation was
    cancelled as a step of a branch that had not seen the cancellation (1 run in 10 of a
    fuzz's script; this one passed on that code too: the order of the two branches'
    interruptions decided it). Now the cancellation is delivered at the sleep."""
    async with local_engine(compensate_in_finally) as (client, _):
        status = await _ends_after_a_cancel(client, "compensate_in_finally", "fin", "news-fin", 0.5)
        assert status == "cancelled"
        assert (RUNS["fin-work"], RUNS["fin-undo-work"], RUNS["fin-undo-nap"]) == (1, 1, 1)
