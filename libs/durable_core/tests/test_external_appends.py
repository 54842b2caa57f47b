"""Entries from outside (the client's pause, resume and cancel, signals, resolutions) on a real
server: a refusal stands only on the journal as the stream's leader has it, never on a
follower's answer that lags behind it."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from typing import Any

import pytest

from durable_core import EngineConfig
from durable_core._pb.durable.v1 import durable_pb2 as pb
from durable_core._transport import JournalConflict, JournalRecord, Transport
from durable_core.config import NatsConfig
from durable_core.engine._intake import _append_external
from durable_core.errors import IllegalTransitionError
from durable_core.testing import NatsServer


def _resume_only_if_paused(records: list[JournalRecord], _: object) -> None:
    kinds = [r.entry.kind for r in records]
    if pb.ENTRY_KIND_PAUSE_REQUEST not in kinds:
        raise IllegalTransitionError("cannot resume: not paused", "running")


async def test_a_refusal_on_a_lagging_read_is_decided_again_on_the_leaders(
    transport: Transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    inv = "x-stale"
    pause = pb.JournalEntry(kind=pb.ENTRY_KIND_PAUSE_REQUEST, index=1, writer="client")
    await transport.append(inv, pause, 0, "pause:x-stale")
    real_read = transport.read_journal
    reads: list[bool] = []

    async def read_journal(invocation_id: str, **kwargs: Any) -> list[JournalRecord]:
        records = await real_read(invocation_id, **kwargs)
        reads.append(bool(kwargs.get("current")))
        return records if kwargs.get("current") else records[:-1]  # a follower behind

    monkeypatch.setattr(transport, "read_journal", read_journal)
    resume = pb.JournalEntry(kind=pb.ENTRY_KIND_RESUME_REQUEST, writer="client")
    seq = await _append_external(transport, inv, resume, "resume:x-stale", _resume_only_if_paused)
    assert reads == [False, True]
    stored = await real_read(inv)
    assert [r.entry.kind for r in stored] == [
        pb.ENTRY_KIND_PAUSE_REQUEST,
        pb.ENTRY_KIND_RESUME_REQUEST,
    ]
    assert stored[-1].seq == seq


async def test_a_refusal_on_the_leaders_journal_stands(transport: Transport) -> None:
    resume = pb.JournalEntry(kind=pb.ENTRY_KIND_RESUME_REQUEST, writer="client")
    with pytest.raises(IllegalTransitionError):
        await _append_external(transport, "x-never", resume, "resume:x", _resume_only_if_paused)
    assert await transport.read_journal("x-never") == []


async def _blocked(transport: Transport, inv: str, *, claimed: bool) -> None:
    """A blocked invocation's state and journal (a step, the block's SUSPENDED entry), and a
    claim by a processor of its pinned version if ``claimed``."""
    st = pb.ExecutionState(
        invocation_id=inv, workflow="w", status=pb.STATUS_BLOCKED, blocked_reason="diverged"
    )
    assert await transport.create_state(st) is not None
    entries = [
        pb.JournalEntry(kind=pb.ENTRY_KIND_CLAIM, writer="p1"),
        pb.JournalEntry(kind=pb.ENTRY_KIND_SUSPENDED, writer="p1"),
    ]
    if claimed:
        entries.append(pb.JournalEntry(kind=pb.ENTRY_KIND_CLAIM, writer="p2"))
    last = 0
    for n, entry in enumerate(entries):
        last = await transport.append(inv, entry, last, f"{inv}:{n}")


async def test_a_blocked_invocation_is_refused_a_pause_until_a_processor_claims_it(
    transport: Transport,
) -> None:
    """A pause of a blocked invocation was refused on its state alone, also after a processor
    of its pinned version had claimed it (its state says so only a moment later): the same
    pause asked again a moment later was taken. It is decided on the journal now."""
    from durable_core.client._lifecycle import change

    await _blocked(transport, "x-blocked", claimed=False)
    with pytest.raises(IllegalTransitionError, match="blocked"):
        await change(transport, "x-blocked", pb.ENTRY_KIND_PAUSE_REQUEST)
    await _blocked(transport, "x-claimed", claimed=True)
    await change(transport, "x-claimed", pb.ENTRY_KIND_PAUSE_REQUEST)
    kinds = [r.entry.kind for r in await transport.read_journal("x-claimed")]
    assert kinds[-1] == pb.ENTRY_KIND_PAUSE_REQUEST


async def test_an_entry_already_there_is_found_in_a_round_that_refused(
    server: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A signal sent again under its id (after the duplicate window): the first read, a
    follower behind, shows the invocation failed and refuses; the leader's read shows only
    the retry after it. The signal already there was in the refused round's entries only,
    and was appended a second time."""
    engine = EngineConfig(prefix="x" + uuid.uuid4().hex[:8], duplicate_window=timedelta(seconds=1))
    transport = await Transport.connect(NatsConfig.from_url(server.url), engine, create=True)
    try:
        await _sent_again(transport, monkeypatch)
    finally:
        await transport.close()


async def _sent_again(transport: Transport, monkeypatch: pytest.MonkeyPatch) -> None:
    inv = "x-again"
    signal = pb.JournalEntry(kind=pb.ENTRY_KIND_SIGNAL, name="go", writer="client")
    await transport.append(inv, signal, 0, "sig:x-again:s1")
    await asyncio.sleep(1.5)  # past the duplicate window: JetStream no longer drops it
    failed = pb.JournalEntry(kind=pb.ENTRY_KIND_FAILED, index=2, writer="p")
    await transport.append(inv, failed, 1, "f")
    retry = pb.JournalEntry(kind=pb.ENTRY_KIND_RETRY_REQUEST, index=3, writer="client")
    await transport.append(inv, retry, 2, "r")
    real_read = transport.read_journal

    async def read_journal(invocation_id: str, **kwargs: Any) -> list[JournalRecord]:
        records = await real_read(invocation_id, **kwargs)
        return records if kwargs.get("current") else records[:-1]  # a follower behind

    def open_only(records: list[JournalRecord], machine: Any) -> None:
        if machine.final is not None:
            raise IllegalTransitionError("finished", "failed")

    monkeypatch.setattr(transport, "read_journal", read_journal)
    again = pb.JournalEntry(kind=pb.ENTRY_KIND_SIGNAL, name="go", writer="client", timestamp_ms=9)
    assert await _append_external(transport, inv, again, "sig:x-again:s1", open_only) == 1
    assert len(await real_read(inv)) == 3


@pytest.mark.parametrize("expected", [0, 1], ids=["stale-fence", "current-fence"])
async def test_another_writers_entry_under_the_same_message_id_is_not_taken_for_ours(
    transport: Transport, expected: int
) -> None:
    """Writers racing for one entry share its message id (every resolution of an awakeable
    is ``awk:<id>``): a loser whose append met the winner's entry, by the stale fence's
    "wrong last sequence" or by the server's duplicate check, took it for its own earlier
    try, and its caller was told its value was taken while the workflow got the winner's."""
    inv = f"x-same-id-{expected}"
    mine = pb.JournalEntry(kind=pb.ENTRY_KIND_AWAKEABLE, name="a", index=1, writer="client")
    mine.output.data = b'"yes"'
    theirs = pb.JournalEntry()
    theirs.CopyFrom(mine)
    theirs.output.data = b'"no"'
    seq = await transport.append(inv, theirs, 0, "awk:a")
    with pytest.raises(JournalConflict):
        await transport.append(inv, mine, expected, "awk:a")
    assert await transport.append(inv, theirs, 0, "awk:a") == seq  # its own retry: landed
