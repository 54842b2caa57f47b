"""Journals: one subject per invocation, one message per entry, every append fenced.

An append carries ``Nats-Expected-Last-Subject-Sequence`` (it lands only if nobody appended
since the writer last looked) and a ``Nats-Msg-Id`` (a retried append is recognised, not
stored twice). Several entries may be appended as one atomic batch (all land or none, one
round trip: a run's last step and its final entry), fenced by the first. Reads are batched
direct gets, which any replica may answer; what a replica that stays behind lacks is read
from the stream's leader.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import nats.errors
import nats.js.errors
from google.protobuf.message import DecodeError

from durable_core._pb.durable.v1 import durable_pb2 as pb
from durable_core._transport.connection import Link
from durable_core._transport.errors import (
    ATOMIC_DISABLED,
    BATCH_DUPLICATE,
    WRONG_LAST_CODES,
    CorruptJournalError,
    JournalConflict,
    JournalGone,
)
from durable_core._transport.inbox import DirectGets
from durable_core.errors import NatsUnavailableError, PayloadTooLargeError

__all__ = ["JournalRecord", "Journals", "last_journal_seq"]

T = TypeVar("T")

_MESSAGE_TOO_LARGE = 10054  # JetStream: "message size exceeds maximum allowed"
# How long a follower's lag may keep a journal read short before the reader reads the rest
# from the stream's leader and asks whether the state it counted from is still there (then
# every five times this).
_LAG_S = 0.1
# Entries read from the leader per round while a replica stays behind (one request each).
_LEADER_BATCH = 8


@dataclass(frozen=True, slots=True)
class JournalRecord:
    """A journal entry and its stream sequence."""

    entry: pb.JournalEntry
    seq: int
    msg_id: str


async def last_journal_seq(link: Link, invocation_id: str) -> int:
    """The sequence of the journal's last entry as the stream's leader has it (0: none)."""
    stream = link.names.journal_stream_of(invocation_id)
    subject = link.names.journal_subject(invocation_id)

    async def last() -> int:
        try:
            return int((await link.js.get_last_msg(stream, subject)).seq or 0)
        except nats.js.errors.NotFoundError:
            return 0

    return await link.retry(f"read journal of {invocation_id}", last)


def _record(data: bytes, seq: int, headers: dict[str, str], subject: str) -> JournalRecord:
    """A stored journal message as a record.

    Raises:
        CorruptJournalError: the message is not a journal entry.
    """
    entry = pb.JournalEntry()
    try:
        entry.ParseFromString(data)
    except DecodeError as e:
        raise CorruptJournalError(
            f"journal entry at sequence {seq} on {subject} is not a JournalEntry ({e}); the "
            "invocation cannot be replayed"
        ) from e
    return JournalRecord(entry, seq, headers.get("Nats-Msg-Id", ""))


class Journals:
    """Reads and fenced appends of invocation journals."""

    def __init__(self, link: Link, gets: DirectGets) -> None:
        self._link = link
        self._gets = gets
        # Atomic batch ids: unique among the batches in flight on the server (a random prefix
        # per process, then a counter; no os.urandom per batch).
        self._batch_prefix = uuid.uuid4().hex[:16]
        self._batch_numbers = itertools.count(1)

    async def read(
        self,
        invocation_id: str,
        *,
        min_seq: int = 0,
        min_entries: int = 0,
        current: bool = False,
        start: int = 1,
        still_there: Callable[[], Awaitable[bool]] | None = None,
    ) -> list[JournalRecord]:
        """Read every entry of an invocation's journal in one batched direct get (those from
        stream sequence ``start`` on: what a reader that has the rest needs).

        Direct gets may be answered by a follower that lags by a few milliseconds. When the
        caller knows the journal holds at least ``min_seq`` (a wake-up, a failed append) or
        ``min_entries`` (the state's journal length, counted from ``start``), a shorter read
        is stale and is retried; one still short past a follower's usual lag also reads the
        missing entries from the stream's leader, a few per round (one request each), so a
        replica that stays behind (catching up, or slow under load) holds no reader for long.
        ``current``: at least up to the last entry the stream's leader has now (one request
        more: what an operator is shown must not trail what a waiting client was told).

        ``still_there``: whether the state the caller counted ``min_entries`` from is still
        stored. A journal that stays short past a follower's lag is asked about: the
        execution may have expired since its state was read (its state goes, then its
        journal), and a short read would then wait for entries that are gone.

        Raises:
            JournalGone: ``still_there`` said no while the read was short.
            NatsUnavailableError: the journal stayed short until the deadline.
        """
        link = self._link
        deadline = link.deadline()
        if current:
            min_seq = max(min_seq, await self._last_seq(invocation_id))
        lag_until = ask_at = time.monotonic() + _LAG_S

        def enough(records: list[JournalRecord]) -> bool:
            last = records[-1].seq if records else start - 1
            return last >= min_seq and len(records) >= min_entries

        # The longest run of entries from ``start`` seen so far. Every answer is a prefix of
        # the journal (a replica applies in order), and replicas lag by different amounts:
        # a later answer may be shorter than an earlier one, never different.
        records: list[JournalRecord] = []
        while True:
            direct = await link.retry(
                f"read journal of {invocation_id}",
                lambda: self._read_all(invocation_id, start),
                deadline,
            )
            if len(direct) >= len(records):
                records = direct
            if enough(records):
                return records
            if time.monotonic() >= lag_until:
                # A few more from the leader each round, after the longest prefix; the
                # direct gets are asked again in between: a replica that has caught up
                # answers the rest in one batch (entry by entry, a long tail took 30 s under
                # load).
                after = records[-1].seq + 1 if records else start
                records = records + await link.retry(
                    f"read journal of {invocation_id} from its leader",
                    functools.partial(self._read_leader, invocation_id, after, _LEADER_BATCH),
                    deadline,
                )
                if enough(records):
                    return records
            if time.monotonic() > deadline:
                raise NatsUnavailableError(
                    link.nats_cfg.servers,
                    f"journal of {invocation_id} stayed behind sequence "
                    f"{min_seq} / {min_entries} entries",
                )
            if still_there is not None and time.monotonic() >= ask_at:
                if not await still_there():
                    raise JournalGone(invocation_id)
                ask_at = time.monotonic() + 5 * _LAG_S
            await asyncio.sleep(0.01)

    async def _read_all(self, invocation_id: str, start: int = 1) -> list[JournalRecord]:
        records: list[JournalRecord] = []
        seq = max(start, 1)
        while True:
            batch, more = await self.read_batch(invocation_id, seq, 256)
            records.extend(batch)
            if not more or not batch:
                return records
            seq = batch[-1].seq + 1

    async def _read_leader(self, invocation_id: str, start: int, limit: int) -> list[JournalRecord]:
        """Up to ``limit`` entries from stream sequence ``start`` on as the stream's leader
        has them, one request each: the tail a lagging replica's direct gets did not have."""
        names = self._link.names
        subject = names.journal_subject(invocation_id)
        stream = names.journal_stream_of(invocation_id)
        out: list[JournalRecord] = []
        seq = max(start, 1)
        while len(out) < limit:
            try:
                msg = await self._link.js.get_msg(stream, seq=seq, subject=subject, next=True)
            except nats.js.errors.NotFoundError:
                return out
            seq = int(msg.seq or seq)
            out.append(_record(msg.data or b"", seq, msg.headers or {}, subject))
            seq += 1
        return out

    async def read_batch(
        self, invocation_id: str, start: int, batch: int
    ) -> tuple[list[JournalRecord], bool]:
        """Up to ``batch`` entries of a journal from stream sequence ``start`` on, and
        whether more may follow.

        Raises:
            CorruptJournalError: a message is not a journal entry.
        """
        names = self._link.names
        subject = names.journal_subject(invocation_id)
        msgs, more = await self._gets.batch(
            names.journal_stream_of(invocation_id), subject, start, batch
        )
        out = []
        for msg in msgs:
            hdrs = msg.headers or {}
            out.append(_record(msg.data, int(hdrs["Nats-Sequence"]), hdrs, subject))
        return out, more

    async def read_raw(self, invocation_id: str) -> list[tuple[int, bytes]]:
        """The first 256 messages of a journal as stored: ``(sequence, bytes)``."""
        link = self._link
        subject = link.names.journal_subject(invocation_id)
        stream = link.names.journal_stream_of(invocation_id)
        msgs, _ = await self._gets.batch(stream, subject, 1, 256)
        return [(int((m.headers or {})["Nats-Sequence"]), m.data) for m in msgs]

    async def append(
        self, invocation_id: str, entry: pb.JournalEntry, expected_seq: int, msg_id: str
    ) -> int:
        """Append an entry if the journal's last sequence is still ``expected_seq``.

        Returns the new entry's sequence. Raises JournalConflict when another writer
        appended first, NatsUnavailableError when NATS stays unreachable past the deadline.
        """
        link = self._link
        subject = link.names.journal_subject(invocation_id)
        data = entry.SerializeToString()
        headers = {
            "Nats-Msg-Id": msg_id,
            "Nats-Expected-Last-Subject-Sequence": str(expected_seq),
        }

        async def pub() -> int:
            try:
                seq, duplicate = await link.publish(subject, data, headers)
            except nats.js.errors.APIError as e:
                if e.err_code not in WRONG_LAST_CODES:
                    raise
                # Either someone else appended, or an earlier try of ours landed: look at
                # the last.
                return await self._landed(invocation_id, expected_seq, msg_id, data)
            if duplicate:  # stored before under this id: by an earlier try, or another writer
                return await self._landed(invocation_id, expected_seq, msg_id, data, at=seq)
            return seq

        return await self._retried(invocation_id, pub)

    async def _retried(self, invocation_id: str, pub: Callable[[], Awaitable[T]]) -> T:
        """An append, retried through transient errors until the deadline."""
        link = self._link
        what = f"append to journal of {invocation_id}"
        try:
            return await link.retry(what, pub)
        except nats.js.errors.APIError as e:
            if e.err_code == _MESSAGE_TOO_LARGE:
                # As large on every try: handed back as NATS trouble, the run was started
                # again without end. The caller (a workflow's step, a client) gets it typed.
                raise PayloadTooLargeError(
                    f"{what}: the entry is larger than the journal takes ({e.description})"
                ) from e
            raise NatsUnavailableError(
                link.nats_cfg.servers, f"{what}: {type(e).__name__} {e}"
            ) from e
        except nats.errors.Error as e:
            # Any other refusal is the engine's trouble, never the workflow's: the caller
            # releases the run and it is tried again from the journal.
            raise NatsUnavailableError(
                link.nats_cfg.servers, f"{what}: {type(e).__name__} {e}"
            ) from e

    async def _last_seq(self, invocation_id: str) -> int:
        return await last_journal_seq(self._link, invocation_id)

    async def _landed(
        self, invocation_id: str, expected_seq: int, msg_id: str, data: bytes, at: int = 0
    ) -> int:
        """After a "wrong last sequence" (or a batch's "duplicate id"): the sequence of our
        write (``msg_id`` with ``data``) if it is the journal's last message (an earlier try
        landed), else JournalConflict (someone else appended). After a duplicate ack: the
        same of the message stored at ``at``. The message id alone is not ours: writers
        racing for one entry share it (every resolution of an awakeable is ``awk:<id>``),
        and each loser took the winner's entry, another value, for its own."""
        link = self._link
        stream = link.names.journal_stream_of(invocation_id)
        try:
            if at:
                stored = await link.js.get_msg(stream, at)
            else:
                subject = link.names.journal_subject(invocation_id)
                stored = await link.js.get_last_msg(stream, subject)
        except nats.js.errors.NotFoundError:
            # Seen under load on the 3-node cluster (a leader change between the two
            # requests): nothing of ours is there, so it is a conflict: read and retry.
            raise JournalConflict(invocation_id, expected_seq) from None
        if (stored.headers or {}).get("Nats-Msg-Id") == msg_id and stored.data == data:
            return int(stored.seq or 0)
        raise JournalConflict(invocation_id, expected_seq)

    async def append_batch(
        self,
        invocation_id: str,
        entries: list[pb.JournalEntry],
        expected_seq: int,
        msg_ids: list[str],
    ) -> list[int] | None:
        """Append ``entries`` as one atomic batch (all land or none) if the journal's last
        sequence is still ``expected_seq``; their sequences. None when the stream does not
        take atomic batches (made before they were used): append them one by one then.

        Raises JournalConflict and NatsUnavailableError as ``append`` does.
        """
        link = self._link
        subject = link.names.journal_subject(invocation_id)
        blobs = [e.SerializeToString() for e in entries]
        n = len(blobs)

        async def pub() -> list[int] | None:
            # A new id per try: a partial batch is dropped whole.
            batch = f"{self._batch_prefix}{next(self._batch_numbers)}"
            for i, (data, msg_id) in enumerate(zip(blobs, msg_ids, strict=True), 1):
                headers = {
                    "Nats-Msg-Id": msg_id,
                    "Nats-Batch-Id": batch,
                    "Nats-Batch-Sequence": str(i),
                }
                if i == 1:
                    headers["Nats-Expected-Last-Subject-Sequence"] = str(expected_seq)
                if i < n:
                    await link.nc.publish(subject, data, headers=headers)  # acked with the last
                    continue
                headers["Nats-Batch-Commit"] = "1"
                try:  # the commit is answered like a publish: the last sequence, or an error
                    last, _ = await link.publish(subject, data, headers)
                except nats.js.errors.APIError as e:
                    if e.err_code == ATOMIC_DISABLED:
                        return None
                    if e.err_code not in WRONG_LAST_CODES and e.err_code != BATCH_DUPLICATE:
                        raise
                    # Someone else appended, or an earlier try of this batch landed.
                    last = await self._landed(invocation_id, expected_seq, msg_ids[-1], data)
            return _contiguous(last, n)

        return await self._retried(invocation_id, pub)

    async def purge(self, invocation_id: str, *, through: int | None = None) -> None:
        """Remove an invocation's journal (retention): its entries up to sequence ``through``
        (all of them if None)."""
        link = self._link

        async def purge() -> None:
            await link.js.purge_stream(
                link.names.journal_stream_of(invocation_id),
                subject=link.names.journal_subject(invocation_id),
                seq=None if through is None else through + 1,
            )

        await link.retry(f"purge journal of {invocation_id}", purge)


def _contiguous(last: int, n: int) -> list[int]:
    """The sequences of a batch of ``n`` whose last is ``last`` (a batch is stored whole)."""
    return list(range(last - n + 1, last + 1))
