"""A journal write is never cut short by a cancellation of the run's task (a cancel's
interrupt, a halt), on a real server: the entry it wrote is the run's, and the run's next
entry goes after it.

Cut short after the entry landed but before its answer came back, the run knew one entry less
than its journal held; its next write reused the lost one's message id for another entry, and
JetStream's deduplication dropped it in favour of the first (chaos, seed 31002)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from durable_core._pb.durable.v1 import durable_pb2 as pb
from durable_core._transport import Transport
from durable_core.engine._writer import JournalWriter


def _writer(t: Transport, inv: str) -> JournalWriter:
    delivery: Any = SimpleNamespace(command_seq=7, num_delivered=1)
    return JournalWriter(
        t,
        inv,
        "p1/abcd",
        delivery,
        slow_write_s=60,
        observe=lambda *_: None,
        news=lambda: None,
        held=lambda: None,
    )


async def test_a_cancel_while_an_append_is_answered_waits_for_the_answer(
    transport: Transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    inv = "w-cancel"
    landed, answer = asyncio.Event(), asyncio.Event()
    real_append = transport.append

    async def append(*args: Any) -> int:
        seq = await real_append(*args)  # stored on the server
        landed.set()
        await answer.wait()  # ... and its answer still on the way
        return seq

    monkeypatch.setattr(transport, "append", append)
    writer = _writer(transport, inv)
    charge = pb.JournalEntry(kind=pb.ENTRY_KIND_CALL, step=1, name="Charge")
    run = asyncio.create_task(writer.append(charge))
    await landed.wait()
    run.cancel()  # e.g. a cancel's interrupt
    await asyncio.sleep(0.05)
    assert not run.done()  # the write goes on to its answer
    answer.set()
    with pytest.raises(asyncio.CancelledError):
        await run  # then the cancellation is raised
    monkeypatch.setattr(transport, "append", real_append)
    stored = await transport.read_journal(inv)
    assert [r.seq for r in stored] == [writer.last_seq]
    assert writer.entries == [stored[0].entry]

    # The run's next entry (another at the same step, as a rerun that delivers the
    # cancellation there would write) lands after it, not deduplicated into it.
    cancelled = pb.JournalEntry(kind=pb.ENTRY_KIND_CALL, step=2, name="Ship")
    cancelled.failure.type = "InvocationCancelledError"
    await writer.append(cancelled)
    stored = await transport.read_journal(inv)
    assert [(r.entry.step, r.entry.HasField("failure")) for r in stored] == [(1, False), (2, True)]


async def test_a_write_that_fails_raises_its_failure_even_when_cancelled(
    transport: Transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    started, fail = asyncio.Event(), asyncio.Event()

    async def append(*args: Any) -> int:
        started.set()
        await fail.wait()
        raise RuntimeError("the write failed")

    monkeypatch.setattr(transport, "append", append)
    writer = _writer(transport, "w-fail")
    run = asyncio.create_task(writer.append(pb.JournalEntry(kind=pb.ENTRY_KIND_CALL, step=1)))
    await started.wait()
    run.cancel()
    fail.set()
    with pytest.raises(RuntimeError, match="the write failed"):
        await run
