"""Large values (claim check) when NATS fails a read, an object is gone, or a result lags
its state: never a silent wrong value, never a journaled failure of what the engine failed."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import nats.errors
import pytest

from durable_core import Blob, Context, EngineConfig, RetryPolicy
from durable_core._pb.durable.v1 import durable_pb2 as pb
from durable_core._transport import Transport
from durable_core.errors import ExpiredError, PayloadUnavailableError, WorkflowFailedError
from durable_core.testing import assert_eventually_async

MB = 1024 * 1024


async def _kinds(transport: Transport, invocation_id: str) -> list[str]:
    records = await transport.read_journal(invocation_id, current=True)
    return [pb.EntryKind.Name(r.entry.kind).removeprefix("ENTRY_KIND_") for r in records]


@contextlib.contextmanager
def _payload_reads_fail(transport: Transport) -> Iterator[list[int]]:
    """NATS times out every direct get of ``transport``'s object store stream (its other
    reads go on) for the body of the block; yields the count of failed gets so far."""
    gets = transport.payloads._gets
    batch, failed = gets.batch, [0]

    async def timing_out(stream: str, *args: Any, **kwargs: Any) -> Any:
        if stream == transport.payloads.stream:
            failed[0] += 1
            raise nats.errors.TimeoutError
        return await batch(stream, *args, **kwargs)

    gets.batch = timing_out  # type: ignore[method-assign]
    try:
        yield failed
    finally:
        gets.batch = batch  # type: ignore[method-assign]


@pytest.mark.parametrize("step", ["swallows", "raises_once", "raises_retried", "in_the_body"])
async def test_nats_failing_a_blob_read_in_a_step_releases_the_run_and_journals_nothing(
    local_engine: Callable[..., Any], caplog: pytest.LogCaptureFixture, step: str
) -> None:
    """NATS failed a step's Blob read past the append deadline (NatsUnavailableError out of
    the read's retries): only a missing or corrupt object was recognised as the engine's
    trouble, so a step that caught every error journaled "swallowed ..." as its result, and
    one that did not had its failure journaled (FAILED with one attempt, ATTEMPT_FAILED and an
    attempt used up with retries). Now the run is released with nothing journaled, and
    completes on the right bytes once NATS reads again. (The outage is simulated: the
    processor's direct gets on the object store stream time out, with a 1 s deadline.)"""
    engine = EngineConfig(prefix="t" + uuid.uuid4().hex[:8], append_deadline=timedelta(seconds=1))
    data = bytes(range(256)) * (MB // 256)
    digest = hashlib.sha256(data).hexdigest()

    async def read_blob(ctx: Context, blob: Blob) -> str:
        async def read() -> str:
            if step != "swallows":
                return hashlib.sha256(await blob.read()).hexdigest()
            try:
                return hashlib.sha256(await blob.read()).hexdigest()
            except Exception as e:  # noqa: BLE001 - the point: a step that swallows all
                return f"swallowed {type(e).__name__}: {e}"

        if step == "in_the_body":  # the workflow's own code reads it, and swallows errors
            try:
                return hashlib.sha256(await blob.read()).hexdigest()
            except Exception as e:  # noqa: BLE001 - the point: a workflow that swallows all
                return f"swallowed {type(e).__name__}: {e}"
        policy = RetryPolicy(maximum_attempts=1) if step == "raises_once" else None
        return await ctx.run("read", read, retry=policy)

    caplog.set_level(logging.WARNING, logger="durable_core.worker")
    inv = f"fault-{step}"
    async with local_engine(read_blob, engine=engine) as (client, transport):
        with _payload_reads_fail(transport) as failed:
            await client.invoke_async("read_blob", io.BytesIO(data), id=inv)

            def released() -> bool:
                return f"invocation {inv}: NATS unavailable" in caplog.text

            await assert_eventually_async(released, 30, "the run released")
            assert failed[0] > 0
            kinds = await _kinds(transport, inv)
            assert not {"RUN", "ATTEMPT_FAILED", "COMPLETED", "FAILED"} & set(kinds), kinds
        result = await client.wait(inv, timeout=30)
        assert result.status.value == "completed", result
        assert result.output == digest
        assert "ATTEMPT_FAILED" not in await _kinds(transport, inv)


async def test_the_output_is_found_while_the_state_lags_the_final_entry(
    local_engine: Callable[..., Any],
) -> None:
    """``Client.payload("ID:output")`` right after ``invoke`` returned: the output was taken
    from the state only, which the processor writes after the final entry and the result
    notice, so it raised NotFoundError ("no such value recorded") while ``Client.result``
    read the output from the journal. The lag is made here by putting back a state of the
    run before its end (RUNNING, no output, one entry short)."""
    engine = EngineConfig(prefix="t" + uuid.uuid4().hex[:8], payload_threshold=1024)
    big = "z" * 5000

    async def large_output(ctx: Context) -> str:
        return big

    async with local_engine(large_output, engine=engine) as (client, transport):
        inv = "lagging-output"
        assert (await client.invoke("large_output", id=inv, timeout=20)).output == big
        rec = await transport.get_state(inv)
        assert rec is not None and rec.state.output.HasField("ref")
        lagging = pb.ExecutionState()
        lagging.CopyFrom(rec.state)
        lagging.status = pb.STATUS_RUNNING
        lagging.ClearField("output")
        lagging.journal_length -= 1
        await transport.update_state(lagging, rec.revision)
        blob = await client.payload(f"{inv}:output")
        assert await blob.read() == f'"{big}"'.encode()


async def test_a_blob_of_an_expired_invocation_is_refused_after_its_id_is_taken_again(
    local_engine: Callable[..., Any],
) -> None:
    """The owner of a shared Blob was confirmed by its id only: once a new invocation took
    the id of the expired one, its Blob (gone with it) was accepted, and the invocation given
    it was released for ever ("no such object"). Now the owner must reference the object:
    ExpiredError at the client, a failed step in a workflow."""
    engine = EngineConfig(prefix="t" + uuid.uuid4().hex[:8], payload_threshold=1024)
    data = b"q" * 50_000
    stale: list[Blob] = []

    async def make(ctx: Context) -> Any:
        return io.BytesIO(data)

    async def read_it(ctx: Context, blob: Blob) -> int:
        return len(await blob.read())

    async def pass_on(ctx: Context) -> int:
        def give() -> Blob:
            return stale[0]

        blob = await ctx.run("give", give, retry=RetryPolicy(maximum_attempts=1))
        return len(await blob.read())

    async with local_engine(make, read_it, pass_on, engine=engine) as (client, transport):
        old = await client.invoke("make", id="blob-owner", timeout=20)
        stale.append(old.output)
        rec = await transport.get_state("blob-owner")
        assert rec is not None
        await transport.expire_execution(rec, int(time.time() * 1000), 60)
        assert not [n for n in await transport.payloads.objects() if n == old.output.ref.object]
        await client.invoke("make", id="blob-owner", timeout=20)  # the id taken again
        with pytest.raises(ExpiredError):
            await client.invoke_async("read_it", old.output, id="given-stale")
        with pytest.raises(WorkflowFailedError, match="a Blob of an expired invocation"):
            await client.invoke("pass_on", id="passing-stale", timeout=20)
        # The new one's own Blob is shared as ever.
        new = await client.payload("blob-owner:output")
        done = await client.invoke("read_it", new, id="given-new", timeout=20)
        assert done.output == len(data)


class _Stalling(io.RawIOBase):
    """A source that stalls after its first chunk until ``go`` is set (a slow client)."""

    def __init__(self, chunks: int, size: int) -> None:
        self.stalled, self.go = threading.Event(), threading.Event()
        self._left, self._size = chunks, size

    def read(self, n: int = -1) -> bytes:
        if self._left == 0:
            return b""
        if self._left == 1:
            self.stalled.set()
            assert self.go.wait(30)
        self._left -= 1
        return b"s" * self._size


async def test_an_upload_that_lost_its_first_chunks_to_the_sweep_is_refused(
    transport: Transport,
) -> None:
    """An upload stalled longer than the sweep's grace: the sweep deleted its first chunks
    (nothing referenced the object yet), put() published the rest and returned a reference
    to an incomplete object, which the submission then carried. Now put() counts the chunks
    stored against those it wrote, raises, and leaves nothing."""
    store = transport.payloads
    source = _Stalling(chunks=3, size=64 * 1024)

    async def unreferenced(invocation_id: str) -> set[str]:
        return set()

    put = asyncio.create_task(store.put("slow-upload", source))
    await asyncio.to_thread(source.stalled.wait, 30)
    swept = await store.sweep(unreferenced, 0)
    assert [n for n in swept if n.startswith("slow-upload.")], swept
    source.go.set()
    with pytest.raises(PayloadUnavailableError, match="1 of its 3 chunks are stored"):
        await put
    assert not [n for n in await store.objects() if n.startswith("slow-upload.")]


async def test_a_whole_upload_is_not_refused(transport: Transport) -> None:
    """The count of put()'s check: an empty object is one (empty) chunk, a large one all."""
    store = transport.payloads
    for data in (b"", b"w" * (3 * 256 * 1024 + 5)):
        ref = await store.put("whole-upload", data)
        got = b"".join([c async for c in store.chunks(ref)])
        assert got == data
