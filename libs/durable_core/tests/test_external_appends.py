"""Entries from outside (the client's pause, resume and cancel, signals, resolutions) on a real
server: a refusal stands only on the journal as the stream's leader has it, never on a
follower's answer that lags behind it."""

from __future__ import annotations

from typing import Any

import pytest

from durable_core._pb.durable.v1 import durable_pb2 as pb
from durable_core._transport import JournalRecord, Transport
from durable_core.engine._intake import _append_external
from durable_core.errors import IllegalTransitionError


def _resume_only_if_paused(records: list[JournalRecord]) -> None:
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
