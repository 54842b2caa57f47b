"""A durable timer racing another wait (``asyncio.wait(..., FIRST_COMPLETED)``, or a branch
that sleeps beside one that waits for a signal): the run that the timer wakes replays the
waiting branch first, which parks, and the engine suspended the run before the timer's
branch had replayed its sleep, now due. Its wake-up spent, the workflow waited for the
signal alone, and answered "approved" once it came, long after the timer had gone off."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from durable_core import Context
from durable_core.testing import replay_workflow

RAN: list[str] = []


async def approval(ctx: Context, secs: float) -> str:
    sig = asyncio.create_task(ctx.wait_for_signal("approve"))
    timer = asyncio.create_task(ctx.sleep(timedelta(seconds=secs)))
    done, _ = await asyncio.wait({sig, timer}, return_when=asyncio.FIRST_COMPLETED)
    return "approved" if sig in done else "timed out"


async def sleeper_beside_a_waiter(ctx: Context, secs: float) -> list[Any]:
    async def sleeper() -> str:
        await ctx.run("before", lambda: "p")
        await ctx.sleep(timedelta(seconds=secs))
        return str(await ctx.run("after", lambda: RAN.append(ctx.invocation_id) or "x"))

    async def waiter() -> Any:
        await ctx.run("first", lambda: "a")
        return await ctx.wait_for_signal("go")

    return list(await asyncio.gather(sleeper(), waiter()))


@pytest.mark.parametrize("secs", [0.5, 3.0], ids=["local-timer", "server-timer"])
async def test_a_timer_racing_a_signal_wakes_the_workflow(
    local_engine: Callable[..., Any], secs: float
) -> None:
    async with local_engine(approval) as (client, _):
        started = time.monotonic()
        result = await client.invoke(
            "approval", secs, id=f"appr-{int(secs * 10)}", timeout=secs + 15
        )
        assert result.output == "timed out"
        assert time.monotonic() - started < secs + 5


@pytest.mark.parametrize("secs", [0.5, 3.0], ids=["local-timer", "server-timer"])
async def test_a_branch_that_sleeps_goes_on_while_another_waits(
    local_engine: Callable[..., Any], secs: float
) -> None:
    async with local_engine(sleeper_beside_a_waiter) as (client, _):
        inv = f"beside-{int(secs * 10)}"
        await client.invoke_async("sleeper_beside_a_waiter", secs, id=inv)
        deadline = time.monotonic() + secs + 8
        while inv not in RAN:
            assert time.monotonic() < deadline, (await client.describe(inv)).steps
            await asyncio.sleep(0.1)
        await client.signal(inv, "go", 1)
        assert (await client.wait(inv, timeout=15)).output == ["x", 1]


async def test_a_wait_that_times_out_names_the_invocation(
    local_engine: Callable[..., Any],
) -> None:
    """Without an id of the caller's own, the id was only in the error's text."""
    from durable_core.errors import InvocationTimeoutError

    async with local_engine(approval) as (client, _):
        with pytest.raises(InvocationTimeoutError) as caught:
            await client.invoke("approval", 60.0, timeout=1)
        inv = caught.value.invocation_id
        assert inv and (await client.describe(inv)).status == "suspended"
        await client.signal(inv, "approve", 1)
        assert (await client.wait(inv, timeout=15)).output == "approved"


async def short_and_long_sleeps(ctx: Context, long_s: float) -> str:
    await asyncio.gather(ctx.sleep(timedelta(seconds=0.3)), ctx.sleep(timedelta(seconds=long_s)))
    return "woke"


async def signal_beside_a_short_sleep(ctx: Context) -> Any:
    got, _ = await asyncio.gather(ctx.wait_for_signal("go"), ctx.sleep(timedelta(seconds=1)))
    return got


async def steps_beside_a_waiter(ctx: Context) -> Any:
    approval = asyncio.create_task(ctx.wait_for_signal("approve"))
    await ctx.run("prepare", lambda: "p")
    await ctx.run("send_email", lambda: RAN.append(f"{ctx.invocation_id}:email") or "sent")
    return await approval


async def test_a_timer_parked_beside_an_in_process_one_is_armed(
    local_engine: Callable[..., Any],
) -> None:
    """The in-process timer counted as executing, so the long one's park asked for no
    suspension, and when the short one ended nothing asked either: the run stayed in memory
    and the long timer was never armed."""
    async with local_engine(short_and_long_sleeps) as (client, _):
        result = await client.invoke("short_and_long_sleeps", 3.0, timeout=15)
        assert result.output == "woke"


async def test_a_signal_sent_during_an_in_process_timer_is_seen(
    local_engine: Callable[..., Any],
) -> None:
    async with local_engine(signal_beside_a_short_sleep) as (client, _):
        inv = await client.invoke_async("signal_beside_a_short_sleep")
        await asyncio.sleep(0.3)
        await client.signal(inv, "go", "now")
        assert (await client.wait(inv, timeout=15)).output == "now"


async def test_a_branch_flushing_its_last_outcome_is_not_suspended_before_its_next_step(
    local_engine: Callable[..., Any],
) -> None:
    """The signal's branch parked; the root then wrote "prepare"'s deferred outcome before
    asking for "send_email", counted as nothing, and the run was suspended meanwhile:
    "send_email" never ran, though the approval may be what it asks for."""
    async with local_engine(steps_beside_a_waiter) as (client, _):
        inv = await client.invoke_async("steps_beside_a_waiter")
        deadline = time.monotonic() + 10
        while f"{inv}:email" not in RAN:
            assert time.monotonic() < deadline, (await client.describe(inv)).steps
            await asyncio.sleep(0.1)
        await client.signal(inv, "approve", "yes")
        assert (await client.wait(inv, timeout=15)).output == "yes"


async def test_waits_left_behind_end_with_the_run(
    local_engine: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    """The engine ended a run by cancelling the workflow's own task alone: the tasks raced
    with ``asyncio.wait`` stayed parked, at every suspension and after the workflow returned,
    until the garbage collector destroyed them pending (an error in the log each time)."""
    async with local_engine(approval) as (client, _):
        inv = await client.invoke_async("approval", 30.0, id="appr-left")
        deadline = time.monotonic() + 10
        while (await client.describe(inv)).status != "suspended":
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        await client.signal(inv, "approve", 1)
        assert (await client.wait(inv, timeout=10)).output == "approved"
        await asyncio.sleep(0.2)
        gc.collect()
    destroyed = [r for r in caplog.records if "destroyed but it is pending" in r.getMessage()]
    assert not destroyed


async def test_the_replayer_runs_a_branch_whose_timer_is_due_beside_one_that_parked() -> None:
    """As the engine: the run was declared suspended when the signal's branch parked, before
    the timer's branch had replayed its sleep, due by then."""
    from durable_core._pb.durable.v1 import durable_pb2 as pb

    wait = pb.JournalEntry(kind=pb.ENTRY_KIND_SIGNAL_WAIT, step=1, name="approve")
    wait.branch, wait.branch_step = "1", 1
    sleep = pb.JournalEntry(kind=pb.ENTRY_KIND_SLEEP, step=2, name="sleep", wake_at_ms=1)
    sleep.branch, sleep.branch_step = "2", 1
    run = await replay_workflow(approval, 60.0, journal=[wait, sleep])
    assert run.output == "timed out", run
