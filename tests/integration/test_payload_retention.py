"""What retention and the payload sweep leave in place, on the 3-node cluster: the arguments of
a start still queued, an upload still under way, another invocation's Blob passed on; and an
expiry cut short, finished by the next pass, its id then taken again by a fresh invocation.

The workflows run in a ``Worker`` in this process (their own registry); retention is the
scheduler's ``Janitor`` and ``Engine.sweep_payloads``, driven here pass by pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import timedelta
from typing import Any

import pytest

from durable_core import (
    Blob,
    Client,
    Context,
    EngineConfig,
    ExpiredError,
    NatsConfig,
    Worker,
    WorkerConfig,
    WorkflowFailedError,
)
from durable_core._pb.durable.v1 import durable_pb2 as pb
from durable_core._transport import Transport
from durable_core._transport.payloads import CHUNK_SIZE
from durable_core.admin import Engine
from durable_core.plugins import WorkflowRegistry
from durable_core.testing import NatsCluster, assert_eventually_async
from durable_scheduler.janitor import Janitor

pytestmark = pytest.mark.integration

VALUE = bytes(range(256)) * 1200  # 300 KB: above the threshold, stored by reference
DIGEST = hashlib.sha256(VALUE).hexdigest()


async def _digest(blob: Blob) -> str:
    h = hashlib.sha256()
    async for chunk in blob.chunks():
        h.update(chunk)
    return h.hexdigest()


async def digest_of(ctx: Context, data: Blob) -> str:
    """The SHA-256 of the argument (bytes stored by reference, or a Blob passed on)."""
    return await ctx.run("digest", _digest, data)


async def make_blob(ctx: Context) -> Any:
    """A file-like output: stored under this invocation's id, a Blob to whoever reads it."""
    return io.BytesIO(VALUE)


async def read_later(ctx: Context, data: Blob) -> str:
    """Sleep, then read the argument: the read is on the replay after the wake-up."""
    await ctx.sleep(timedelta(seconds=3))
    return await ctx.run("digest", _digest, data)


def _twice(n: int) -> int:
    return 2 * n


async def doubled(ctx: Context, args: dict[str, int]) -> int:
    return await ctx.run("double", _twice, args["n"])


@contextlib.asynccontextmanager
async def _serving(
    cluster: NatsCluster, engine: EngineConfig, *workflows: Callable[..., Any]
) -> AsyncIterator[None]:
    """A processor in this process serving ``workflows``."""
    registry = WorkflowRegistry()
    for workflow in workflows:
        registry.register(workflow)
    t = await Transport.connect(NatsConfig.from_url(cluster.url), engine, create=True)
    worker = Worker(t, registry, WorkerConfig(ack_wait=timedelta(seconds=10)))
    task = asyncio.create_task(worker.run())
    try:
        await asyncio.wait_for(worker.consuming.wait(), 20)
        yield
    finally:
        worker.stop()
        await task
        await t.close()


def _janitor(transport: Transport, retention: timedelta) -> Janitor:
    return Janitor(Engine(transport), retention, timedelta(hours=1))


async def _objects_of(transport: Transport, invocation_id: str) -> set[str]:
    return {n for n in await transport.payloads.objects() if n.startswith(invocation_id + ".")}


async def _older_than(transport: Transport, names: Sequence[str], ms: int) -> None:
    async def old() -> bool:
        return all([await transport.payloads.age_ms(n) > ms for n in names])

    await assert_eventually_async(old, 10, f"objects older than {ms} ms")


async def test_the_sweep_keeps_the_arguments_of_a_start_still_queued(
    cluster: NatsCluster,
    engine: EngineConfig,
    client: Client,
    transport: Transport,
    abandoned_invokes: Callable[[str, object, Sequence[str]], Awaitable[None]],
) -> None:
    """Plain invokes whose callers went away, of a workflow no processor serves yet: no state
    (the processor makes it), only a queued start, for longer than the sweep's grace. The
    sweep took that for "gone" and deleted their arguments; the processor that came later got
    PayloadUnavailableError and handed the start back every 2 s, for good."""
    await abandoned_invokes("digest_of", VALUE, ["queued-1"])
    assert await transport.get_state("queued-1") is None  # left to its processor
    stored = sorted(await _objects_of(transport, "queued-1"))
    assert len(stored) == 1
    await _older_than(transport, stored, 200)
    assert await Engine(transport).sweep_payloads(timedelta(milliseconds=200)) == []
    assert sorted(await _objects_of(transport, "queued-1")) == stored
    async with _serving(cluster, engine, digest_of):
        done = await client.wait("queued-1", timeout=30)
    assert (done.status.value, done.output) == ("completed", DIGEST)


async def test_the_sweep_leaves_an_upload_whose_chunks_keep_coming(
    transport: Transport,
) -> None:
    """An upload slower than the sweep's grace: its first chunk is older than the grace, its
    last is not. Aged by its first chunk, it was deleted while its chunks were still being
    written, and what was stored after that was not the object."""
    store = transport.payloads
    gate = [threading.Event(), threading.Event()]

    class Slow:
        """Two chunks, each let through by its gate, then the end."""

        def __init__(self) -> None:
            self.n = 0

        def read(self, size: int) -> bytes:
            assert size == CHUNK_SIZE < len(VALUE) <= 2 * CHUNK_SIZE
            self.n += 1
            if self.n == 1:
                return VALUE[:CHUNK_SIZE]
            if self.n == 2:
                gate[0].wait(30)
                return VALUE[CHUNK_SIZE:]
            gate[1].wait(30)
            return b""

    upload = asyncio.create_task(store.put("uploading", Slow()))
    try:

        async def started() -> bool:
            return bool(await _objects_of(transport, "uploading"))

        await assert_eventually_async(started, 10, "the first chunk stored")
        (name,) = await _objects_of(transport, "uploading")
        await _older_than(transport, [name], 1000)  # older than the grace below
        gate[0].set()  # the second chunk, a second after the first

        async def second_stored() -> bool:
            info = await transport.js.stream_info(
                store.stream, subjects_filter=f"$O.{store.bucket}.C.{name}"
            )
            return (info.state.subjects or {}).get(f"$O.{store.bucket}.C.{name}", 0) >= 2

        await assert_eventually_async(second_stored, 10, "the second chunk stored")
        assert await Engine(transport).sweep_payloads(timedelta(milliseconds=800)) == []
    finally:
        for g in gate:
            g.set()
        ref = await upload
    data = b"".join([chunk async for chunk in store.chunks(ref)])
    assert data == VALUE


async def test_a_blob_passed_on_outlives_the_retention_of_its_owner(
    cluster: NatsCluster, engine: EngineConfig, client: Client, transport: Transport
) -> None:
    """X returns a file-like output; Y gets it (``r.output``, a Blob of X's object) as its
    argument, Z as a step's result, and both read it after a sleep. X's retention during the
    sleep deleted the object (nothing held it for them), and their replays after the wake-up
    could never read it. Once X is gone, its Blob is refused instead of being passed on: by
    the client (ExpiredError), by a step (its failure)."""

    async def fetched_later(ctx: Context, owner: str) -> str:
        async def fetch() -> Blob:
            output = (await client.get_result(owner)).output
            assert isinstance(output, Blob)
            return output

        blob = await ctx.run("fetch", fetch)
        await ctx.sleep(timedelta(seconds=3))
        return await ctx.run("digest", _digest, blob)

    kept: list[Blob] = []

    async def passed_on(ctx: Context) -> Blob:
        async def keep() -> Blob:
            return kept[0]

        return await ctx.run("keep", keep)

    async with _serving(cluster, engine, make_blob, read_later, fetched_later, passed_on):
        x = await client.invoke("make_blob", id="blob-owner", timeout=30)
        assert isinstance(x.output, Blob)
        stored = await _objects_of(transport, "blob-owner")
        assert len(stored) == 1
        await client.invoke_async("read_later", x.output, id="blob-reader")
        await client.invoke_async("fetched_later", "blob-owner", id="blob-fetcher")

        async def asleep() -> bool:
            for invocation_id in ("blob-reader", "blob-fetcher"):
                rec = await transport.get_state(invocation_id)
                if rec is None or rec.state.status != pb.STATUS_SUSPENDED:
                    return False
            return True

        await assert_eventually_async(asleep, 20, "both readers asleep")
        assert await _janitor(transport, timedelta(0)).sweep() >= 1  # X expires
        assert await transport.get_state("blob-owner") is None
        assert await _objects_of(transport, "blob-owner") == stored  # held for the readers
        await Engine(transport).sweep_payloads(timedelta(0))
        assert await _objects_of(transport, "blob-owner") == stored
        for invocation_id in ("blob-reader", "blob-fetcher"):
            done = await client.wait(invocation_id, timeout=30)
            assert (done.status.value, done.output) == ("completed", DIGEST), invocation_id
        with pytest.raises(ExpiredError, match="blob-owner"):
            await client.invoke_async("read_later", x.output, id="blob-late")
        kept.append(x.output)  # a step's result: the step fails, its Blob cannot be kept
        with pytest.raises(WorkflowFailedError, match="Blob of .*blob-owner has expired"):
            await client.invoke("passed_on", id="blob-late-step", timeout=30)


async def test_a_queued_start_keeps_its_hold_on_a_blob_it_was_given(
    cluster: NatsCluster,
    engine: EngineConfig,
    client: Client,
    transport: Transport,
    abandoned_invokes: Callable[[str, object, Sequence[str]], Awaitable[None]],
) -> None:
    """A plain invoke given another invocation's Blob, queued with no state: its hold on the
    Blob's owner is no forgotten hold (of a holder that never came to exist)."""
    async with _serving(cluster, engine, make_blob):
        x = await client.invoke("make_blob", id="queued-owner", timeout=30)
    await abandoned_invokes("digest_of", x.output, ["queued-holder"])
    stored = await _objects_of(transport, "queued-owner")
    await _janitor(transport, timedelta(0)).sweep()  # X expires; the holder is still queued
    assert await transport.get_state("queued-owner") is None
    holds = await transport.payloads.holds()
    assert [(owner, holder) for owner, holder, _ in holds] == [("queued-owner", "queued-holder")]

    async def hold_old() -> bool:
        return all([age > 200 for _, _, age in await transport.payloads.holds()])

    await assert_eventually_async(hold_old, 10, "the hold older than the grace")
    await Engine(transport).sweep_payloads(timedelta(milliseconds=200))
    assert await _objects_of(transport, "queued-owner") == stored
    async with _serving(cluster, engine, digest_of):
        done = await client.wait("queued-holder", timeout=30)
    assert (done.status.value, done.output) == ("completed", DIGEST)


class _CutError(Exception):
    """An expiry stopped right after it removed the state (its process killed)."""


async def test_an_expiry_cut_short_is_finished_and_its_id_runs_fresh(
    cluster: NatsCluster,
    engine: EngineConfig,
    client: Client,
    transport: Transport,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An expiry that stops after the state's delete marker left the journal for good (the
    janitor only looks at live states), and a new invocation under the id found the old
    final entry and reported the old outcome. Now the next janitor pass finishes it, and a
    new invocation that comes first purges the old journal itself."""
    admin = Engine(transport)
    async with _serving(cluster, engine, doubled):
        for invocation_id in ("again-a", "again-b"):
            first = await client.invoke("doubled", {"n": 1}, id=invocation_id, timeout=30)
            assert first.output == 2
        marker = transport._states.expire

        async def cut(*args: Any, **kwargs: Any) -> bool:
            await marker(*args, **kwargs)
            raise _CutError

        monkeypatch.setattr(transport._states, "expire", cut)
        for invocation_id in ("again-a", "again-b"):
            rec = await transport.get_state(invocation_id)
            assert rec is not None
            with pytest.raises(_CutError):
                await admin.expire_execution(rec, int(time.time() * 1000), timedelta(hours=1))
        monkeypatch.undo()
        for invocation_id in ("again-a", "again-b"):
            assert await transport.get_state(invocation_id) is None
            assert await transport.read_journal(invocation_id)  # left behind

        # b: taken again before any janitor pass.
        again = await client.invoke("doubled", {"n": 5}, id="again-b", timeout=30)
        assert (again.status.value, again.output) == ("completed", 10)

        # a: the janitor's next pass finishes its expiry; then it is taken again.
        await _janitor(transport, timedelta(hours=1)).sweep()
        assert await transport.read_journal("again-a") == []
        again = await client.invoke("doubled", {"n": 7}, id="again-a", timeout=30)
        assert (again.status.value, again.output) == ("completed", 14)
