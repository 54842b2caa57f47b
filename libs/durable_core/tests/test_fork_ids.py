"""A fork or rerun given an id is idempotent: the same call again (after a lost answer, or a
call cut short between the copied steps and the submission) is that one fork, never two."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from durable_core import Context
from durable_core.errors import ConflictError, NatsUnavailableError

RUNS: Counter[str] = Counter()


async def three_steps(ctx: Context, n: int) -> list[int]:
    out = []
    for step in ("one", "two", "three"):
        out.append(await ctx.run(step, lambda s=step: _count(ctx.invocation_id, s, n)))
    return out


def _count(invocation_id: str, step: str, n: int) -> int:
    RUNS[f"{invocation_id}:{step}"] += 1
    return n


async def test_a_fork_with_an_id_is_made_once(local_engine: Callable[..., Any]) -> None:
    async with local_engine(three_steps) as (client, _):
        await client.invoke("three_steps", 7, id="src", timeout=30)
        assert await client.fork("src", from_step=3, id="f1") == "f1"
        assert (await client.wait("f1", timeout=30)).output == [7, 7, 7]
        # The same call again: the same fork, nothing run again.
        assert await client.fork("src", from_step=3, id="f1") == "f1"
        assert RUNS["f1:three"] == 1 and RUNS["f1:one"] == 0 and RUNS["f1:two"] == 0
        assert [r.entry.writer for r in await client._t.read_journal("f1")][:2] == [
            "fork:src",
            "fork:src",
        ]
        # The id taken by something else: a fork of other steps, another invocation.
        with pytest.raises(ConflictError, match="copies other steps"):
            await client.fork("src", from_step=2, id="f1")
        with pytest.raises(ConflictError, match="taken by another invocation"):
            await client.fork("f1", from_step=1, id="src")


async def test_a_fork_cut_short_after_its_first_copy_is_finished_by_the_next_call(
    local_engine: Callable[..., Any], appends_cut_after: Callable[..., Any]
) -> None:
    """The first call copies step one, then NATS is gone for it: the second call checks that
    copy, copies step two and submits; one fork, with its two copies, runs step three once.
    Before the id, the only retry was another fork."""
    async with local_engine(three_steps) as (client, _):
        await client.invoke("three_steps", 5, id="src2", timeout=30)
        with appends_cut_after(client, 1), pytest.raises(NatsUnavailableError):
            await client.fork("src2", from_step=3, id="f2")
        assert await client._t.get_state("f2") is None
        assert len(await client._t.read_journal("f2")) == 1
        assert await client.fork("src2", from_step=3, id="f2") == "f2"
        assert (await client.wait("f2", timeout=30)).output == [5, 5, 5]
        writers = [r.entry.writer for r in await client._t.read_journal("f2")]
        assert writers.count("fork:src2") == 2
        assert RUNS["f2:three"] == 1 and RUNS["f2:one"] == 0 and RUNS["f2:two"] == 0


async def test_a_rerun_with_an_id_is_made_once(local_engine: Callable[..., Any]) -> None:
    async with local_engine(three_steps) as (client, _):
        await client.invoke("three_steps", 3, id="src3", timeout=30)
        await client.invoke("three_steps", 3, id="other", timeout=30)
        assert await client.rerun("src3", id="r1") == "r1"
        await client.wait("r1", timeout=30)
        assert await client.rerun("src3", id="r1") == "r1"
        assert RUNS["r1:one"] == 1
        # Same workflow and arguments, but not a rerun of src3: refused, not returned.
        with pytest.raises(ConflictError, match="rerun of src3"):
            await client.rerun("src3", id="other")
