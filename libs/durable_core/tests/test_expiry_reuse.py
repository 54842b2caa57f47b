"""Retention of an invocation whose id a new invocation takes while it removes the old one."""

from __future__ import annotations

import asyncio
import contextlib
import io
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

import pytest

from durable_core import (
    Blob,
    Context,
    EngineConfig,
)
from durable_core._transport import Transport
from durable_core.errors import ExpiredError
from durable_core.testing import assert_eventually_async


@contextlib.asynccontextmanager
async def _expiry_stalled_after_the_state(
    transport: Transport, invocation_id: str
) -> AsyncIterator[None]:
    """Expire a finished invocation, stalled right after its state is removed (a retention
    pass held up there) for the body of the block; the expiry then goes on to its end."""
    rec = await transport.get_state(invocation_id)
    assert rec is not None
    purge, go_on = transport._journals.purge, asyncio.Event()

    async def purge_later(*args: Any, **kwargs: Any) -> None:
        await go_on.wait()
        await purge(*args, **kwargs)

    transport._journals.purge = purge_later  # type: ignore[method-assign]
    expiring = asyncio.create_task(transport.expire_execution(rec, int(time.time() * 1000), 60))

    async def gone() -> bool:
        return await transport.get_state(invocation_id) is None

    try:
        await assert_eventually_async(gone, 10, "the old state removed")
        yield
    finally:
        go_on.set()
        assert await expiring
        transport._journals.purge = purge  # type: ignore[method-assign]


async def test_a_new_invocation_taking_the_id_during_its_expiry_keeps_its_journal_and_args(
    local_engine: Callable[..., Any],
) -> None:
    """Retention removes the state, then purged everything under the id: a new invocation
    that took the id in between (a create over the delete marker) lost its journaled step
    and its stored arguments. Only the expired one's entries and objects go now."""
    engine = EngineConfig(prefix="t" + uuid.uuid4().hex[:8], payload_threshold=1024)
    runs: list[str] = []

    async def sized(ctx: Context, args: dict[str, Any]) -> int:
        def one() -> str:
            runs.append(args["n"])
            return str(args["n"])

        await ctx.run("one", one)
        await ctx.sleep(timedelta(seconds=float(args["sleep"])))
        return len(args["blob"])

    inv = "reused"
    async with local_engine(sized, engine=engine) as (client, transport):
        old = {"n": "old", "blob": "x" * 4000, "sleep": 0}
        assert (await client.invoke("sized", old, id=inv, timeout=20)).output == 4000
        async with _expiry_stalled_after_the_state(transport, inv):
            new = {"n": "new", "blob": "y" * 5000, "sleep": 4}
            await client.invoke_async("sized", new, id=inv)

            async def asleep() -> bool:
                found = await transport.get_state(inv)
                return found is not None and found.state.status == 7  # SUSPENDED

            await assert_eventually_async(asleep, 10, "the new one asleep after its step")
        result = await client.wait(inv, timeout=20)
        assert (result.status, result.output) == ("completed", 5000)
        assert runs == ["old", "new"]


async def test_a_new_invocation_taking_the_id_during_its_expiry_keeps_its_hold_on_a_blob(
    local_engine: Callable[..., Any],
) -> None:
    """The new invocation under the id holds another's Blob (its argument), written before
    its state: the expiry of the old one dropped every hold under the id, that one too, and
    the Blob's owner's retention then removed the bytes the new one still had to read."""
    engine = EngineConfig(prefix="t" + uuid.uuid4().hex[:8], payload_threshold=1024)
    data = b"z" * 50_000

    async def make(ctx: Context) -> Any:
        return io.BytesIO(data)

    async def small(ctx: Context) -> str:
        return "old"

    async def read_later(ctx: Context, blob: Blob) -> int:
        await ctx.sleep(timedelta(seconds=4))
        return len(await blob.read())

    inv = "reused-holder"
    async with local_engine(make, small, read_later, engine=engine) as (client, transport):
        owner = await client.invoke("make", id="blob-owner", timeout=20)
        await client.invoke("small", id=inv, timeout=20)
        async with _expiry_stalled_after_the_state(transport, inv):
            await client.invoke_async("read_later", owner.output, id=inv)
        owner_rec = await transport.get_state("blob-owner")
        assert owner_rec is not None
        await transport.expire_execution(owner_rec, int(time.time() * 1000), 60)
        result = await client.wait(inv, timeout=20)
        assert (result.status, result.output) == ("completed", len(data))


@pytest.mark.parametrize("taken_again", [False, True])
async def test_a_result_read_as_the_invocation_expires_is_expired_not_a_timeout(
    local_engine: Callable[..., Any], taken_again: bool
) -> None:
    """The state is removed, then the journal purged: a ``get_result`` that read the state
    just before (COMPLETED, 2 entries) and the journal just after waited out its whole
    deadline for entries that were gone, and raised NatsUnavailableError (a CI flake of
    ``test_an_expired_executions_note_goes_after_its_ttl``). It is ExpiredError now, at
    once; ``wait``, ``describe`` and ``fork`` read the same way. With the id taken again
    by a new invocation with more steps, the read was not short, and the old state came
    back with the new journal's steps (a helper's fuzz: 11 in ~100 reuses)."""
    engine = EngineConfig(prefix="t" + uuid.uuid4().hex[:8])

    async def steps(ctx: Context, n: int) -> int:
        for i in range(n):
            await ctx.run(f"step-{i}", lambda i=i: i)
        return n

    inv = "expiring-read"
    async with local_engine(steps, engine=engine) as (client, transport):
        assert (await client.invoke("steps", 1, id=inv, timeout=20)).output == 1
        stale = await transport.get_state(inv)
        assert stale is not None and stale.state.journal_length >= 2
        assert await transport.expire_execution(stale, int(time.time() * 1000), 60)
        if taken_again:
            assert (await client.invoke("steps", 4, id=inv, timeout=20)).output == 4
        t = client._t  # the client's own connection
        get_state = t.get_state
        reads = 0

        async def read_before_the_expiry(invocation_id: str) -> Any:
            nonlocal reads
            reads += 1
            return stale if reads == 1 else await get_state(invocation_id)

        for n, read in enumerate(
            (
                lambda: client.get_result(inv),
                lambda: client.wait(inv, timeout=30),
                lambda: client.describe(inv),
                lambda: client.fork(inv, from_step=1),
            )
        ):
            reads = 0
            t.get_state = read_before_the_expiry  # type: ignore[method-assign]
            started = time.monotonic()
            try:
                got = await read()
            except ExpiredError as e:
                assert (e.invocation_id, e.status) == (inv, "completed")
            else:
                raise AssertionError(f"read {n}: no error, {got!r:.300}")
            finally:
                t.get_state = get_state  # type: ignore[method-assign]
            assert time.monotonic() - started < 3
            assert reads >= 1, n  # the stale state was what it read
        if taken_again:  # read again: the new one, whole
            result = await client.get_result(inv)
            assert (result.output, len(result.steps)) == (4, 4)
