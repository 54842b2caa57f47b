"""``Client.follow``: an invocation's view, again and again, its journal read on from where
the last look stopped (the inspector's page of a running execution looks once a second)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from durable_core import Client, Context


async def steps_and_a_signal(ctx: Context, n: int) -> int:
    for i in range(n):
        await ctx.run(f"before-{i}", lambda i=i: i)
    go = await ctx.wait_for_signal("go")
    for i in range(n):
        await ctx.run(f"after-{i}", lambda i=i: i)
    return int(go)


def _count_reads(client: Client) -> list[tuple[int, int]]:
    """(start, entries returned) of every journal read the client makes from now on."""
    reads: list[tuple[int, int]] = []
    read = client._t.read_journal

    async def counted(invocation_id: str, **kwargs: Any) -> Any:
        records = await read(invocation_id, **kwargs)
        reads.append((kwargs.get("start", 1), len(records)))
        return records

    client._t.read_journal = counted  # type: ignore[method-assign]
    return reads


def _steps(view: Any) -> list[dict[str, Any]]:
    return [s.to_dict() for s in view.steps]


async def test_a_follower_reads_only_what_was_appended_and_sees_what_describe_does(
    local_engine: Callable[..., Any],
) -> None:
    async with local_engine(steps_and_a_signal) as (client, _):
        inv = await client.invoke_async("steps_and_a_signal", 20, id="followed")
        follower = client.follow(inv)
        deadline = time.monotonic() + 10
        while (view := await follower.describe()).status != "suspended":
            assert time.monotonic() < deadline, view.status
        assert len(view.steps) == 21  # 20 steps and the wait
        reads = _count_reads(client)
        again = await follower.describe()
        assert reads == [(reads[0][0], 0)] and reads[0][0] > 1  # from the last entry on
        assert _steps(again) == _steps(view)
        await client.signal(inv, "go", 7)
        assert (await client.wait(inv, timeout=10)).output == 7
        reads.clear()
        done = await follower.describe()
        whole = await client.describe(inv)
        (start, new), _ = reads  # the follower's read, then describe's (from the start)
        assert start > 1 and 20 <= new < 30  # the signal, its wait, 20 steps, the end
        assert _steps(done) == _steps(whole) and done.status == whole.status == "completed"
        assert len(done.steps) == 41
