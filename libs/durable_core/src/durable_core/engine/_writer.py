"""The journal writer of one run: the journal as the run knows it, fenced appends, catching up
with what others appended, and whether this run may claim the invocation."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from durable_core._code import CodeIdentity
from durable_core._journal import PROCESSOR_KINDS, ReplayMachine, stamp
from durable_core._pb.durable.v1 import durable_pb2 as pb
from durable_core._transport import Delivery, JournalConflict, JournalRecord, Transport
from durable_core.engine._signals import EngineFailure, Finished, LostClaim, NotIdle, Rerun
from durable_core.errors import DurableError, NatsUnavailableError, SuspendExecution

__all__ = ["JournalWriter"]

# observe(kind, seconds, entry kind): an engine event for the interceptors
Observe = Callable[[str, float, int], None]


class JournalWriter:
    """The journal of one invocation as one run (one delivery) sees and writes it.

    Args:
        token: this run's writer id (``<processor>/<random>``): entries it wrote are its own.
        slow_write_s: a write slower than this may have been overtaken by a redelivery.
        observe: reports each append to the interceptors.
        news: called when entries from outside (resolutions, signals) arrived.
    """

    def __init__(
        self,
        t: Transport,
        invocation_id: str,
        token: str,
        delivery: Delivery,
        *,
        slow_write_s: float,
        observe: Observe,
        news: Callable[[], None],
    ) -> None:
        self.t = t
        self.id = invocation_id
        self.token = token
        self.delivery = delivery
        self._slow_write_s = slow_write_s
        self._observe = observe
        self._news = news
        self.entries: list[pb.JournalEntry] = []
        self.machine = ReplayMachine(invocation_id)
        self.last_seq = 0
        self.lock = asyncio.Lock()
        self.stopped: SuspendExecution | None = None  # the signal that ended this run
        # The code this processor runs the workflow on: stamped on every CLAIM, and on the
        # first entry of a run that starts the invocation without one (a fresh start).
        self.code: CodeIdentity | None = None
        self._stamped = False  # the journal names the code of a run (an entry is stamped)
        # A rescue's run: the lost command whose run lock it marked superseded (see _hold),
        # whose run it may take over.
        self.superseding = 0

    def record(self, entry: pb.JournalEntry, seq: int) -> None:
        """Take in an entry read from (or just written to) the journal."""
        self._stamped = self._stamped or bool(entry.plugin)
        self.entries.append(entry)
        self.machine.record(entry)
        self.last_seq = seq

    def replay_from_start(self) -> None:
        """A fresh replay machine over the journal as it stands (the workflow runs again)."""
        self.machine = ReplayMachine(self.id, self.entries)

    async def load(self, min_seq: int = 0, min_entries: int = 0) -> None:
        """Read the whole journal (at least up to ``min_seq`` / ``min_entries``)."""
        self.entries = []
        self.machine = ReplayMachine(self.id)
        self.last_seq = 0
        self._stamped = False
        records = await self.t.read_journal(self.id, min_seq=min_seq, min_entries=min_entries)
        for rec in records:
            self.record(rec.entry, rec.seq)

    async def append(self, entry: pb.JournalEntry, *, claim: bool = False) -> None:
        """Append fenced by the last sequence we know.

        On a conflict the journal is re-read: entries from outside (resolutions, signals)
        are taken in and the append retried; an entry from another processor means we lost
        the invocation (unless this append is itself a claim, which takes it over).

        Once the run was stopped by an engine signal, every later append raises it again: a
        workflow that swallowed it (``except BaseException``) cannot journal anything more.
        """
        if self.stopped is not None:
            raise self.stopped
        if self.code is not None and (claim or not self._stamped) and not entry.plugin:
            stamp(entry, self.code)
        try:
            await self._append(entry, claim=claim)
        except SuspendExecution as stop:
            if not isinstance(stop, Rerun):
                self.stopped = stop
            raise

    async def _append(self, entry: pb.JournalEntry, *, claim: bool) -> None:
        async with self.lock:
            while True:
                entry.index = len(self.entries) + 1
                entry.writer = self.token
                entry.command_seq = self.delivery.stream_seq  # whose run this is (see _hold)
                msg_id = f"{self.id}:{entry.index}:{self.token}"
                started = time.monotonic()
                try:
                    seq = await self.t.append(self.id, entry, self.last_seq, msg_id)
                except NatsUnavailableError as e:
                    # The engine's own write failed: not the workflow's failure. Stop the run
                    # (no `except Exception` in the workflow can catch this) and release it.
                    raise EngineFailure(e) from e
                except JournalConflict:
                    taken = await self.catch_up(claim=claim)
                    if any(r.msg_id == msg_id for r in taken):
                        # Ours had landed after all: the server answered "wrong last
                        # sequence" to a write it stored (seen under chaos, around a leader
                        # change). Taking it for another's entry abandoned (and acked) the run.
                        return
                    if entry.kind == pb.ENTRY_KIND_SUSPENDED:
                        raise Rerun from None  # decide again with what arrived
                    if claim and not self.claimable():
                        # Another run started meanwhile: it goes on, not us.
                        raise NotIdle(f"taken under command {self.owner()}") from None
                    continue
                self.record(entry, seq)
                self._observe("appended", time.monotonic() - started, entry.kind)
                if not claim and time.monotonic() - started > self._slow_write_s:
                    # The write stalled long enough for our command to be redelivered and the
                    # invocation claimed by another processor meanwhile: look before the next
                    # step runs (nothing newer need be there).
                    await self.catch_up(claim=False, newer_known=False)
                return

    async def catch_up(self, *, claim: bool, newer_known: bool = True) -> list[JournalRecord]:
        """Take in what was appended since our last entry (``newer_known``: something is
        there, a failed append says so) and return it. Raises LostClaim for another
        processor's entries (unless we are claiming), Finished for a final one. Entries of
        this very run (our token) are ours: an append whose answer was lost, or wrong."""
        try:
            fresh = await self.t.read_journal(
                self.id, min_seq=self.last_seq + 1 if newer_known else self.last_seq
            )
        except DurableError as e:
            # The engine's read (NATS gone, a corrupt entry): never the workflow's failure,
            # and never something a workflow's `except Exception` may swallow.
            raise EngineFailure(e) from e
        records = [r for r in fresh if r.seq > self.last_seq]
        others = [r for r in records if r.entry.writer != self.token]
        foreign = [r for r in others if r.entry.kind in PROCESSOR_KINDS]
        if foreign and not claim:
            raise LostClaim(foreign)
        for r in records:
            self.record(r.entry, r.seq)
        if self.machine.final is not None:
            raise Finished
        if others:
            self._news()
        return records

    def owner(self) -> int | None:
        """The command whose run wrote the journal's last run entry (0: written before entries
        carried it); None if no run has written anything (copies of a fork's steps aside)."""
        for e in reversed(self.entries):
            if e.kind in PROCESSOR_KINDS and not e.writer.startswith("fork:"):
                return int(e.command_seq)
        return None

    def claimable(self) -> bool:
        """Whether this delivery may claim the invocation as the journal stands: its last run
        suspended, or that run is this command's own (its earlier delivery is over), or no
        run has started and this start won the state's move to RUNNING (see take_up), or
        that run's command is the lost one this rescue superseded."""
        if self.machine.suspended:
            return True
        owner = self.owner()
        redelivered = self.delivery.num_delivered > 1
        if self.superseding and owner == self.superseding:
            return True
        return owner in (None, self.delivery.stream_seq) or (owner == 0 and redelivered)
