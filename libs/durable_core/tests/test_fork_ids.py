"""A fork or rerun given an id is idempotent: the same call again (after a lost answer, or a
call cut short between the copied steps and the submission) is that one fork, never two."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from durable_core import Context
from durable_core._pb.durable.v1 import durable_pb2 as pb
from durable_core.errors import ConflictError, NatsUnavailableError
from durable_core.testing import assert_eventually_async

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
        assert [r.entry.writer for r in await client._t.read_journal("f1")][:3] == [
            "fork-outcome:src",  # the FORKED entry: source and from_step
            "fork:src",
            "fork:src",
        ]
        # The id taken by something else: a fork of other steps, another invocation.
        with pytest.raises(ConflictError, match="a fork from step 3"):
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


async def test_the_same_id_for_a_fork_from_a_later_step_is_refused(
    local_engine: Callable[..., Any],
) -> None:
    """The stored copies of a fork from step 2 are a prefix of those a fork from step 3
    would make: the second call was answered with the first fork, whose step 2 runs anew."""
    async with local_engine(three_steps) as (client, _):
        await client.invoke("three_steps", 4, id="src4", timeout=30)
        assert await client.fork("src4", from_step=2, id="f4") == "f4"
        await client.wait("f4", timeout=30)
        with pytest.raises(ConflictError, match=r"fork of src4 \(a fork from step 2\)"):
            await client.fork("src4", from_step=3, id="f4")
        assert await client.fork("src4", from_step=2, id="f4") == "f4"  # the same, as asked
        assert (await client.describe("f4")).fork_from_step == 2


async def test_two_forks_of_other_sources_under_one_id_never_mix_their_copies(
    local_engine: Callable[..., Any],
    appends_cut_after: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two calls at once, each reading the fork's journal empty: the second's first copy had
    the first's message id (fork:<id>:1), so JetStream dropped it as a duplicate and handed
    back the first's sequence; its second copy then landed after the first's first."""
    async with local_engine(three_steps) as (client, t):
        await client.invoke("three_steps", 1, id="src-a", timeout=30)
        await client.invoke("three_steps", 2, id="src-b", timeout=30)
        with appends_cut_after(client, 1), pytest.raises(NatsUnavailableError):
            await client.fork("src-a", from_step=3, id="mixed")
        from durable_core.client import _lifecycle

        async def read_before_the_first(*args: Any) -> tuple[int, int]:
            return 0, 0  # as the second call saw the journal: empty

        monkeypatch.setattr(_lifecycle, "_copied", read_before_the_first)
        with pytest.raises(ConflictError, match="same time"):
            await client.fork("src-b", from_step=3, id="mixed")
        entries = [r.entry for r in await t.read_journal("mixed")]
        assert [(e.kind, e.name) for e in entries] == [(pb.ENTRY_KIND_FORKED, "src-a")]
        assert await t.get_state("mixed") is None


async def held(ctx: Context, n: int) -> int:
    """Holds its partition key until it is sent "go"."""
    await ctx.wait_for_signal("go")
    return n


async def test_a_fork_waiting_for_its_turn_is_pending_and_pauses(
    local_engine: Callable[..., Any],
) -> None:
    """Its copies counted as a run of its own: status said running, and pause answered
    "running" without pausing it."""
    async with local_engine(three_steps, held) as (client, _):
        await client.invoke("three_steps", 6, id="src6", partition_key="k6", timeout=30)
        await client.invoke_async("held", 0, id="holder6", partition_key="k6")
        await assert_eventually_async(
            lambda: _status_is(client, "holder6", "suspended"), 20, "the holder waits"
        )
        await client.fork("src6", from_step=3, id="f6")  # keyed: behind the holder
        assert (await client.get_result("f6")).status.value == "pending"
        assert (await client.pause("f6")).value == "paused"
        await client.signal("holder6", "go")
        await client.wait("holder6", timeout=30)
        assert (await client.get_result("f6")).status.value == "paused"
        await client.resume("f6")
        assert (await client.wait("f6", timeout=30)).output == [6, 6, 6]
        assert RUNS["f6:three"] == 1 and RUNS["f6:one"] == 0


async def _status_is(client: Any, invocation_id: str, status: str) -> bool:
    return bool((await client.get_result(invocation_id)).status.value == status)


async def test_a_fork_from_a_later_step_never_goes_on_from_an_earlier_ones_copies(
    local_engine: Callable[..., Any], appends_cut_after: Callable[..., Any]
) -> None:
    """A call from step 3 had copied step 1 and not submitted yet: a call from step 4 under
    the same id found those copies a prefix of its own, added steps 2 and 3 after them, and
    whichever submitted first got a fork that replayed steps the other had asked to run."""
    async with local_engine(three_steps) as (client, t):
        await client.invoke("three_steps", 9, id="src9", timeout=30)
        with appends_cut_after(client, 2), pytest.raises(NatsUnavailableError):
            await client.fork("src9", from_step=3, id="f9")  # FORKED and step 1, not step 2
        with pytest.raises(ConflictError, match="copies other steps"):
            await client.fork("src9", from_step=4, id="f9")
        assert len(await t.read_journal("f9")) == 2
        assert await client.fork("src9", from_step=3, id="f9") == "f9"  # the first, finished
        assert (await client.wait("f9", timeout=30)).output == [9, 9, 9]
        assert RUNS["f9:three"] == 1 and RUNS["f9:one"] == RUNS["f9:two"] == 0
