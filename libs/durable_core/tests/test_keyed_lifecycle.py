"""The lifecycle verbs on keyed invocations, on a real server: a retried invocation gets the
key again, in order, however often the same holder hands it over."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from durable_core import Context, TerminalError
from durable_core.engine import _execution

FAILS_LEFT: Counter[str] = Counter()
RAN: list[str] = []


async def flaky(inv: str, name: str) -> str:
    RAN.append(f"{inv}:{name}")
    await asyncio.sleep(0.05)
    if name == "f" and FAILS_LEFT[inv] > 0:
        FAILS_LEFT[inv] -= 1
        raise TerminalError("planned")
    return name


async def three_steps(ctx: Context, _: Any) -> list[str]:
    return [await ctx.run(n, flaky, ctx.invocation_id, n) for n in ("a", "f", "b")]


async def test_two_keyed_invocations_that_failed_both_complete_when_retried(
    local_engine: Callable[..., Any],
) -> None:
    """The first one's release handed the key to the second on each run; after both were
    retried, that hand-over was published under the same message id as the first time and
    dropped as a duplicate: the key stayed free and the second waited for good."""
    async with local_engine(three_steps) as (client, _):
        ids = ["kr-1", "kr-2"]
        for inv in ids:
            FAILS_LEFT[inv] = 1
            await client.invoke_async("three_steps", None, id=inv, partition_key="K")
        for inv in ids:
            assert (await client.wait(inv, timeout=20)).status == "failed"
        for inv in ids:
            await client.retry(inv)
        for inv in ids:
            assert (await client.wait(inv, timeout=20)).output == ["a", "f", "b"]
        # one at a time, in submission order, on the retries too
        assert [r for r in RAN if r.endswith((":a", ":b"))][-2:] == ["kr-1:b", "kr-2:b"]


SPANS: dict[str, list[tuple[float, float]]] = {}


async def timed(inv: str, fail: bool, secs: float = 0.6) -> str:
    began = time.monotonic()
    await asyncio.sleep(secs)
    SPANS.setdefault(inv, []).append((began, time.monotonic()))
    if fail and FAILS_LEFT[inv] > 0:
        FAILS_LEFT[inv] -= 1
        raise TerminalError("planned")
    return inv


async def one_timed_step(ctx: Context, fail: bool) -> str:
    return await ctx.run("t", timed, ctx.invocation_id, fail)


async def test_a_keyed_invocation_retried_before_its_run_let_go_of_the_key_runs_alone(
    local_engine: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run writes its failure into the state, then hands the key on. A retry in between
    found the key still held under the invocation's id and ran; the failed run's release
    then freed the key under it, and the next in line ran beside the retried one."""
    release = _execution.release_key

    async def slow_release(*args: Any, **kwargs: Any) -> None:
        await asyncio.sleep(0.25)  # the hand-over comes after the retry has started
        await release(*args, **kwargs)

    monkeypatch.setattr(_execution, "release_key", slow_release)
    async with local_engine(one_timed_step) as (client, _):
        FAILS_LEFT["kx-1"] = 1
        await client.invoke_async("one_timed_step", True, id="kx-1", partition_key="KX")
        await client.invoke_async("one_timed_step", False, id="kx-2", partition_key="KX")
        assert (await client.wait("kx-1", timeout=10)).status == "failed"
        await client.retry("kx-1")
        for inv in ("kx-1", "kx-2"):
            assert (await client.wait(inv, timeout=20)).output == inv
    spans = sorted(s for inv in ("kx-1", "kx-2") for s in SPANS[inv])
    for (_, end), (begin, _) in itertools.pairwise(spans):
        assert end <= begin, f"two invocations of one key ran at once: {spans}"


async def fails_first_then_waits(ctx: Context, _: Any) -> str:
    first = await ctx.run("f", timed, ctx.invocation_id, True)
    await ctx.wait_for_signal("poke")
    return first


async def holds_long(ctx: Context, _: Any) -> str:
    return await ctx.run("long", timed, ctx.invocation_id, False, 2.0)


@pytest.mark.parametrize("paused", [False, True], ids=["signalled", "paused-resumed"])
async def test_a_retried_keyed_invocation_woken_while_it_waits_for_its_key_waits_on(
    local_engine: Callable[..., Any], paused: bool
) -> None:
    """Retried while another held its key (pending: no run may start), then signalled: the
    signal's wake-up ran it at once beside the key's holder (its journal was not empty, so
    nothing took it for one that had not started). Paused and resumed before the signal:
    the resume's wake-up found it paused, not pending, and ran it beside the holder too."""
    a, b = f"kw-a-{paused}", f"kw-b-{paused}"
    async with local_engine(fails_first_then_waits, holds_long) as (client, _):
        FAILS_LEFT[a] = 1
        await client.invoke_async("fails_first_then_waits", None, id=a, partition_key="KW")
        assert (await client.wait(a, timeout=10)).status == "failed"
        await client.invoke_async("holds_long", None, id=b, partition_key="KW")
        await asyncio.sleep(0.5)  # b holds the key, in its step
        assert str(await client.retry(a)) == "pending"
        if paused:
            assert str(await client.pause(a)) == "paused"
            await client.resume(a)
        await asyncio.sleep(0.2)
        await client.signal(a, "poke", 1)
        for inv in (a, b):
            assert (await client.wait(inv, timeout=20)).output == inv
    spans = sorted(s for inv in (a, b) for s in SPANS[inv])
    for (_, end), (begin, _) in itertools.pairwise(spans):
        assert end <= begin, f"two invocations of one key ran at once: {spans}"


async def holds_for(ctx: Context, secs: float) -> str:
    return await ctx.run("hold", timed, ctx.invocation_id, False, secs)


@pytest.mark.parametrize("paused", [False, True], ids=["pending", "paused"])
async def test_an_invocation_waiting_for_its_key_fails_at_its_execution_timeout(
    local_engine: Callable[..., Any], paused: bool
) -> None:
    """Nothing armed its deadline while it waited in line, so it failed only when the key's
    holder let go, however long after (outside-in: 18-24 s late behind a 25-30 s holder).
    It fails where it waits, runs nothing, and the holder's hand-over skips it."""
    holder, late, after = (f"kd-{x}-{paused}" for x in ("holder", "late", "after"))
    async with local_engine(holds_for) as (client, _):
        await client.invoke_async("holds_for", 6.0, id=holder, partition_key="KD")
        await asyncio.sleep(0.5)  # the holder has the key, in its step
        started = time.monotonic()
        await client.invoke_async(
            "holds_for", 0.1, id=late, partition_key="KD", execution_timeout=timedelta(seconds=2)
        )
        await client.invoke_async("holds_for", 0.1, id=after, partition_key="KD")
        if paused:
            await asyncio.sleep(0.5)
            assert str(await client.pause(late)) == "paused"
        result = await client.wait(late, timeout=15)
        took = time.monotonic() - started
        assert result.status == "failed" and result.failure is not None
        assert result.failure.type == "ExecutionTimeoutError"
        assert took < 4.0, took  # at its deadline (2 s), not the holder's end (5.5 s)
        assert (await client.get_summary(holder)).status == "running"
        for inv in (holder, after):  # the line goes on
            assert (await client.wait(inv, timeout=20)).status == "completed"
    assert late not in SPANS  # none of its code ran
    spans = sorted(s for inv in (holder, after) for s in SPANS[inv])
    for (_, end), (begin, _) in itertools.pairwise(spans):
        assert end <= begin, f"two invocations of one key ran at once: {spans}"
