"""The lifecycle verbs on keyed invocations, on a real server: a retried invocation gets the
key again, in order, however often the same holder hands it over."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from typing import Any

from durable_core import Context, TerminalError

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
