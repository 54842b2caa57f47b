"""A run's last step and its final entry go to the journal in one atomic batch (issue 19: one
replicated write fewer on the way to the result), on a real server: what lands, the fence,
a retried batch, a journal stream made before batches, and the engine's runs end to end."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from durable_core import Context, EngineConfig
from durable_core._pb.durable.v1 import durable_pb2 as pb
from durable_core._transport import JournalConflict, Transport
from durable_core.config import NatsConfig
from durable_core.retry import NO_RETRY
from durable_core.testing import NatsServer, assert_eventually_async


def _entry(kind: pb.EntryKind, index: int, step: int = 0) -> pb.JournalEntry:
    return pb.JournalEntry(kind=kind, index=index, step=step, writer="t/1")


async def test_a_batch_lands_whole_fenced_and_once(transport: Transport) -> None:
    inv = "b-1"
    first = await transport.append(inv, _entry(pb.ENTRY_KIND_CLAIM, 1), 0, "b-1:1")
    batch = [_entry(pb.ENTRY_KIND_RUN, 2, 1), _entry(pb.ENTRY_KIND_COMPLETED, 3)]
    ids = ["b-1:2", "b-1:3"]

    seqs = await transport.append_batch(inv, batch, first, ids)

    assert seqs is not None and len(seqs) == 2
    records = await transport.read_journal(inv)
    assert [(r.seq, r.entry.kind) for r in records] == [
        (first, pb.ENTRY_KIND_CLAIM),
        (seqs[0], pb.ENTRY_KIND_RUN),
        (seqs[1], pb.ENTRY_KIND_COMPLETED),
    ]
    # A try whose answer was lost, sent again: recognised as ours, nothing stored twice.
    assert await transport.append_batch(inv, batch, first, ids) == seqs
    assert len(await transport.read_journal(inv)) == 3
    # Someone else appended since: refused whole.
    with pytest.raises(JournalConflict):
        await transport.append_batch(inv, batch, first, ["b-1:2x", "b-1:3x"])
    assert len(await transport.read_journal(inv)) == 3


async def test_a_journal_stream_made_before_batches_is_told_apart_and_updated(
    server: NatsServer,
) -> None:
    engine = EngineConfig(prefix="t" + uuid.uuid4().hex[:8])
    t = await Transport.connect(NatsConfig.from_url(server.url), engine, create=True)
    try:
        js = t.nc.jetstream()
        stream = t.names.journal_stream
        info = await js.stream_info(stream)
        assert info.config.allow_atomic
        info.config.allow_atomic = False  # as an engine made before batches left it
        await js.update_stream(info.config)
        batch = [_entry(pb.ENTRY_KIND_RUN, 1, 1), _entry(pb.ENTRY_KIND_COMPLETED, 2)]
        assert await t.append_batch("old-1", batch, 0, ["o:1", "o:2"]) is None
        assert await t.read_journal("old-1") == []
    finally:
        await t.close()
    # The next processor or client that provisions turns batches on (an additive change).
    t = await Transport.connect(NatsConfig.from_url(server.url), engine, create=True)
    try:
        assert (await t.nc.jetstream().stream_info(stream)).config.allow_atomic
    finally:
        await t.close()


async def _batch_ids(t: Transport, inv: str) -> list[str]:
    """The Nats-Batch-Id each journal entry was written with ("" for a single write)."""
    js = t.nc.jetstream()
    out = []
    for r in await t.read_journal(inv):
        msg = await js.get_msg(t.names.journal_stream, r.seq, direct=True)
        out.append((msg.headers or {}).get("Nats-Batch-Id", ""))
    return out


async def test_the_last_step_and_the_final_entry_are_one_batch(
    local_engine: Callable[..., Any],
) -> None:
    effects: list[str] = []

    async def three_steps(ctx: Context) -> str:
        async def step(name: str) -> str:
            effects.append(name)
            return name

        a = await ctx.run("a", step, "a")
        b = await ctx.run("b", step, "b")
        await asyncio.sleep(0.05)  # local work past the deferral: the outcome goes alone
        c = await ctx.run("c", step, "c")
        return a + b + c

    async with local_engine(three_steps, batches=True) as (client, t):
        inv = await client.invoke_async("three_steps")
        result = await client.wait(inv, timeout=20)
        assert result.status == "completed" and result.output == "abc"
        records = await t.read_journal(inv)
        kinds = [r.entry.kind for r in records]
        assert kinds == [pb.ENTRY_KIND_RUN] * 3 + [pb.ENTRY_KIND_COMPLETED]
        assert [r.entry.index for r in records] == [1, 2, 3, 4]
        batches = await _batch_ids(t, inv)
        # a and b one by one (b is journaled when the deferral ran out); c with COMPLETED.
        assert batches[:2] == ["", ""]
        assert batches[2] and batches[2] == batches[3]
        assert records[0].entry.plugin  # the run's first entry names its code
    assert effects == ["a", "b", "c"]


async def test_one_node_writes_the_last_step_and_the_final_entry_one_by_one(
    local_engine: Callable[..., Any],
) -> None:
    """A one-replica journal takes no batches by default: nats-server 2.15 took ~3.4 ms per
    batch of two there and committed them one at a time (~300/s), two writes 0.4 ms."""

    async def one_step(ctx: Context) -> str:
        return await ctx.run("a", lambda: "a")

    async with local_engine(one_step) as (client, t):
        assert t.engine.replicas == 1 and not t.atomic_batches
        inv = await client.invoke_async("one_step")
        assert (await client.wait(inv, timeout=20)).output == "a"
        assert await _batch_ids(t, inv) == ["", ""]


async def test_a_failed_last_step_and_the_failure_are_one_batch(
    local_engine: Callable[..., Any],
) -> None:
    async def fails(ctx: Context) -> None:
        def boom() -> None:
            raise ValueError("no")

        await ctx.run("boom", boom, retry=NO_RETRY)

    async with local_engine(fails, batches=True) as (client, t):
        inv = await client.invoke_async("fails")
        with contextlib.suppress(Exception):
            await client.wait(inv, timeout=20)
        records = await t.read_journal(inv)
        assert [r.entry.kind for r in records][-2:] == [pb.ENTRY_KIND_RUN, pb.ENTRY_KIND_FAILED]
        batches = await _batch_ids(t, inv)
        assert batches[-1] and batches[-1] == batches[-2]


async def test_a_deferred_outcome_is_journaled_while_the_workflow_awaits_something_else(
    local_engine: Callable[..., Any],
) -> None:
    seen = asyncio.Event()

    async def waits_after_a_step(ctx: Context) -> str:
        a = await ctx.run("a", lambda: "a")
        await asyncio.wait_for(seen.wait(), 20)  # not a step: nothing else journals meanwhile
        return a

    async with local_engine(waits_after_a_step, batches=True) as (client, t):
        inv = await client.invoke_async("waits_after_a_step")

        async def step_journaled() -> bool:
            return any(r.entry.kind == pb.ENTRY_KIND_RUN for r in await t.read_journal(inv))

        await assert_eventually_async(step_journaled, 10, "step a's outcome in the journal")
        seen.set()
        assert (await client.wait(inv, timeout=20)).output == "a"


async def test_a_rerun_never_runs_again_the_step_whose_outcome_was_still_deferred(
    local_engine: Callable[..., Any],
) -> None:
    """A signal reached the journal while two steps ran beside its wait; the run went again
    once the longer step ended, its outcome still deferred. The rerun's first branch took that
    outcome to write it, and the longer step's branch, a few turns later, found nothing
    deferred, decided its step on a journal without the outcome and ran it again (CI: a call
    sent twice, with no fault)."""
    runs: Counter[str] = Counter()

    async def step(name: str, secs: float) -> str:
        runs[name] += 1
        await asyncio.sleep(secs)
        return name

    async def news_beside_two_steps(ctx: Context) -> list[Any]:
        async def later() -> str:
            for _ in range(3):  # its step is decided a few turns after the others'
                await asyncio.sleep(0)
            return str(await ctx.run("long", step, "long", 1.5))

        return list(
            await asyncio.gather(
                ctx.wait_for_signal("go"), later(), ctx.run("short", step, "short", 0.3)
            )
        )

    async with local_engine(news_beside_two_steps) as (client, _):
        inv = await client.invoke_async("news_beside_two_steps")
        await asyncio.sleep(0.1)
        await client.signal(inv, "go", 7)
        assert (await client.wait(inv, timeout=20)).output == [7, "long", "short"]
        assert runs == {"long": 1, "short": 1}
