"""A durable timer racing another wait (``asyncio.wait(..., FIRST_COMPLETED)``, or a branch
that sleeps beside one that waits for a signal): the run that the timer wakes replays the
waiting branch first, which parks, and the engine suspended the run before the timer's
branch had replayed its sleep, now due. Its wake-up spent, the workflow waited for the
signal alone, and answered "approved" once it came, long after the timer had gone off."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from durable_core import Context

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
