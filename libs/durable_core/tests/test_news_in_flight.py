"""News (a signal, a cancellation) reaching the journal while a run has steps in flight, on a
real server: the run sees it once nothing runs, and never sends a step again for it."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from typing import Any

from durable_core import Context

RUNS: Counter[str] = Counter()


async def step(name: str, secs: float) -> str:
    RUNS[name] += 1
    await asyncio.sleep(secs)
    return name


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
        inv = await client.invoke_async("code_between_steps", "between", id="news-between")
        await asyncio.sleep(0.5)
        await client.cancel(inv)
        assert (await client.wait(inv, timeout=15)).status == "cancelled"
        assert RUNS["between-a"] == 1
        assert RUNS["between-charge"] == 0
