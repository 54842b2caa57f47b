"""Journal reads against a real NATS server, with a replica that stays behind.

Direct gets may be answered by any replica of the journal stream; a follower catching up,
or slow under load, answers with what it has applied so far. Here the direct gets are cut
short by hand, as such a replica would answer them, and the server itself is real.
"""

from __future__ import annotations

import random
import time
import uuid
from typing import Any

import pytest

from durable_core import _codec
from durable_core._pb.durable.v1 import durable_pb2 as pb
from durable_core._transport import Transport
from durable_core._transport import journal as journal_module


def _entry(step: int) -> pb.JournalEntry:
    e = pb.JournalEntry(kind=pb.ENTRY_KIND_RUN, step=step, name=f"s{step}")
    e.output.CopyFrom(_codec.encode(step))
    return e


async def _journal(transport: Transport, n: int) -> tuple[str, list[int]]:
    invocation_id = "lag-" + uuid.uuid4().hex[:8]
    seqs: list[int] = []
    for step in range(1, n + 1):
        seqs.append(
            await transport.append(invocation_id, _entry(step), seqs[-1] if seqs else 0, f"m{step}")
        )
    return invocation_id, seqs


def _behind(
    transport: Transport, monkeypatch: pytest.MonkeyPatch, missing: int, for_s: float = 1e9
) -> list[int]:
    """Every direct get answers as a replica that has not applied the last ``missing``
    entries of any journal, for ``for_s`` seconds (then it has caught up). Returns the list
    the leader's answers are counted in (one item per entry asked for)."""
    gets = transport._journals._gets  # a replica that stays behind
    batch = gets.batch
    until = time.monotonic() + for_s

    async def lagging(stream: str, subject: str, start: int, size: int) -> Any:
        if time.monotonic() >= until:
            return await batch(stream, subject, start, size)
        msgs, _more = await batch(stream, subject, 1, 10_000)
        kept = [m for m in msgs[: len(msgs) - missing] if int(m.headers["Nats-Sequence"]) >= start]
        return kept[:size], False

    monkeypatch.setattr(gets, "batch", lagging)
    asked: list[int] = []
    js = transport._journals._link.js
    get_msg = js.get_msg

    async def counted(*args: Any, **kwargs: Any) -> Any:
        asked.append(1)
        return await get_msg(*args, **kwargs)

    monkeypatch.setattr(js, "get_msg", counted)
    return asked


@pytest.mark.parametrize("by", ["entries", "sequence"])
async def test_a_read_a_replica_keeps_short_gets_the_rest_from_the_leader(
    transport: Transport, monkeypatch: pytest.MonkeyPatch, by: str
) -> None:
    invocation_id, seqs = await _journal(transport, 5)
    _behind(transport, monkeypatch, missing=2)
    want = {"min_entries": 5} if by == "entries" else {"min_seq": seqs[-1]}
    t0 = time.monotonic()
    records = await transport.read_journal(invocation_id, **want)  # type: ignore[arg-type]
    took = time.monotonic() - t0
    assert [r.seq for r in records] == seqs
    assert [r.entry.step for r in records] == [1, 2, 3, 4, 5]
    assert [r.msg_id for r in records] == [f"m{i}" for i in range(1, 6)]
    # Past the lag window (0.1 s), not the deadline (30 s) a replica that stays behind
    # held a reader to before.
    assert took < 2.0


async def test_a_read_from_a_later_sequence_takes_only_the_tail_from_the_leader(
    transport: Transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    invocation_id, seqs = await _journal(transport, 4)
    _behind(transport, monkeypatch, missing=1)
    records = await transport.read_journal(invocation_id, min_seq=seqs[-1], start=seqs[1] + 1)
    assert [r.seq for r in records] == seqs[2:]
    assert [r.entry.step for r in records] == [3, 4]


async def test_a_long_tail_comes_from_the_leader_a_few_entries_a_round(
    transport: Transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A replica with none of a 40-entry journal, for good: the whole of it from the leader,
    the entries of each round kept for the next."""
    invocation_id, seqs = await _journal(transport, 40)
    asked = _behind(transport, monkeypatch, missing=40)
    records = await transport.read_journal(invocation_id, min_entries=40)
    assert [r.seq for r in records] == seqs
    assert len(asked) == 40  # each entry asked of the leader once


async def test_a_replica_that_catches_up_serves_the_rest(
    transport: Transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The leader is asked for a few entries a round, and the replica again in between: once
    it has caught up, it answers the rest in one batch (entry by entry from the leader, a
    101-entry tail took 26-37 s under 384 readers, outside-in)."""
    invocation_id, seqs = await _journal(transport, 200)
    asked = _behind(transport, monkeypatch, missing=200, for_s=0.3)
    records = await transport.read_journal(invocation_id, min_entries=200)
    assert [r.seq for r in records] == seqs
    assert len(asked) < 120, len(asked)  # not all 200 from the leader


async def test_replicas_behind_by_different_amounts_never_leave_a_gap(
    transport: Transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Direct gets answered by replicas behind by different amounts, call after call: the
    leader's entries read after a longer answer must never be joined to a shorter one (the
    entries between would be missing, and a read by sequence would not notice)."""
    invocation_id, seqs = await _journal(transport, 40)
    gets = transport._journals._gets
    batch = gets.batch
    rng = random.Random(7)

    async def replicas(stream: str, subject: str, start: int, size: int) -> Any:
        missing = rng.randrange(0, 41)
        msgs, _more = await batch(stream, subject, 1, 10_000)
        kept = [m for m in msgs[: len(msgs) - missing] if int(m.headers["Nats-Sequence"]) >= start]
        return kept[:size], False

    monkeypatch.setattr(gets, "batch", replicas)
    monkeypatch.setattr(journal_module, "_LAG_S", 0.0)  # to the leader from the first round
    for _ in range(40):
        records = await transport.read_journal(invocation_id, min_seq=seqs[-1])
        assert [r.seq for r in records] == seqs
