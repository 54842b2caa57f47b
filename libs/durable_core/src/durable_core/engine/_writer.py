"""The journal writer of one run: the journal as the run knows it, fenced appends, catching up
with what others appended, and whether this run may claim the invocation.

A step's outcome may be *deferred* (``defer``): it is journaled with whatever the run appends
next, before the workflow's next step is decided (``flush``, which the context calls before
every step), or after ``DEFER_S`` at the latest. When the next append is the run's final entry
(the workflow returned right after its last step), both go in one atomic batch: one replicated
write instead of two on the way to the result. No step ever starts before the outcome of the
step before it is journaled; a crash in between only re-runs a step whose outcome was not
journaled yet, which is what "a step in flight during a crash" always meant.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from durable_core._code import CodeIdentity
from durable_core._journal import (
    FINAL_KINDS,
    PROCESSOR_KINDS,
    ReplayMachine,
    copied_by_fork,
    stamp,
)
from durable_core._pb.durable.v1 import durable_pb2 as pb
from durable_core._transport import Delivery, JournalConflict, JournalRecord, Transport
from durable_core.engine._branches import engine_task
from durable_core.engine._env import to_the_end
from durable_core.engine._signals import EngineFailure, Finished, LostClaim, NotIdle, Rerun
from durable_core.errors import DurableError, NatsUnavailableError, SuspendExecution

__all__ = ["JournalWriter"]

# observe(kind, seconds, entry kind): an engine event for the interceptors
Observe = Callable[[str, float, int], None]

# A deferred step outcome is journaled at the latest this long after the step ended (when the
# workflow neither returned nor took another step by then: it awaits something else).
DEFER_S = 0.005


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
        held: Callable[[], None],
    ) -> None:
        self.t = t
        self.id = invocation_id
        self.token = token
        self.delivery = delivery
        self._slow_write_s = slow_write_s
        self._observe = observe
        self._news = news
        # Raises (LostHold) unless this processor still surely holds the command: checked
        # before every CLAIM write (see _append_fenced).
        self._held = held
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
        self.pending: pb.JournalEntry | None = None  # a deferred step outcome (see defer)
        self._carrying = 0  # writes in flight that took a deferred outcome (see flush)
        self._due: asyncio.TimerHandle | None = None  # when the deferred outcome must go
        self._flushes: set[asyncio.Task[None]] = set()  # flushes that time started
        # Atomic batches: on a replicated journal (see Transport.atomic_batches), while the
        # stream takes them (until it says no).
        self.batches = t.atomic_batches

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
        self._stamp(entry, claim)
        await self._guarded(self._append(entry, claim=claim))

    def _stamp(self, entry: pb.JournalEntry, claim: bool) -> None:
        """Name the code of this run on its CLAIM, or on its first entry when it has none."""
        if self.code is not None and (claim or not self._stamped) and not entry.plugin:
            stamp(entry, self.code)
            self._stamped = True

    async def _guarded(self, append: Awaitable[None]) -> None:
        """Run an append; an engine signal it raises (other than Rerun) stops the run."""
        try:
            await append
        except SuspendExecution as stop:
            if not isinstance(stop, Rerun):
                self.stopped = stop
            raise

    async def defer(self, entry: pb.JournalEntry) -> None:
        """Journal a step's outcome with the run's next append (see the module's docstring):
        before the next step is decided (``flush``), with the final entry in one atomic
        batch, or after ``DEFER_S`` at the latest."""
        if self.stopped is not None:
            raise self.stopped
        # One at a time (steps that ran side by side): until none is pending, since another
        # step's outcome may be deferred while this flush waits. Set over it, that outcome
        # was never journaled, and its step ran again in the next run (three branches
        # ending their steps together dropped one in the new test).
        cancelled = False
        while (before := self.pending) is not None:
            try:
                await self.flush()  # its write runs to its end (see _append)
            except asyncio.CancelledError:
                if self.pending is before:
                    raise  # the write itself was cancelled (the event loop is closing)
                # This step ran: its outcome is deferred all the same, and the cancellation
                # raised after (dropped, the step ran again, or replayed as cancelled).
                cancelled = True
        self._stamp(entry, False)
        self.pending = entry
        if self._due is None:
            self._due = asyncio.get_running_loop().call_later(DEFER_S, self._flush_due)
        if cancelled:
            raise asyncio.CancelledError

    async def flush(self) -> None:
        """Journal the deferred step outcome now, if there is one; return once every outcome
        deferred before is journaled. One a write already took counts too: a branch whose
        sibling's flush had taken it went on at once and decided its step on a journal
        without it. In a rerun that step was the one deferred, and it ran again (a call
        sent twice, with no fault)."""
        if self.stopped is not None:
            raise self.stopped
        if self.pending is not None or self._carrying:
            # Behind the lock: the write that carries the outcome holds it to its end.
            await self._guarded(self._append(None, claim=False))

    def _flush_due(self) -> None:
        """``DEFER_S`` after a deferral: flush what is still deferred (usually nothing: the
        run's next append took it, and no task is made)."""
        self._due = None
        if self.pending is not None:
            task = engine_task(self._flush_later())
            self._flushes.add(task)
            task.add_done_callback(self._flushes.discard)

    async def _flush_later(self) -> None:
        # A failure stops the run (self.stopped): its next step or append raises it.
        try:
            await self.flush()
        except SuspendExecution:
            pass
        except Exception as e:  # noqa: BLE001 - the engine's own trouble: stop the run
            self.stopped = EngineFailure(e)

    def close(self) -> None:
        """The run is over: a deferred outcome not journaled by now never will be."""
        if self._due is not None:
            self._due.cancel()
            self._due = None
        for task in self._flushes:
            task.cancel()
        self.pending = None

    async def _append(self, entry: pb.JournalEntry | None, *, claim: bool) -> None:
        """``_append_now``, never cut short by a cancellation of the task that awaits it.

        The run's task is cancelled to interrupt a step (a cancel) or to end the run (a halt),
        wherever it is, a journal write included. A write cut short may still land while
        its answer is lost: the run then knew one entry less than its journal held, and its
        next write reused that entry's message id for another entry, which JetStream's
        deduplication dropped in favour of the first (chaos, seed 31002: a cancel interrupted
        the write of a charge; the rerun wrote the cancellation at that step, got the
        charge's sequence back, took it for its own, and ended the invocation cancelled
        without the refund). So the write runs to its end in a task of its own, and the
        cancellation is raised after it (its own failure, if it failed, instead).
        """
        await to_the_end(engine_task(self._append_now(entry, claim=claim)))

    async def _append_now(self, entry: pb.JournalEntry | None, *, claim: bool) -> None:
        """Append ``entry`` after the deferred outcome (both in one atomic batch when ``entry``
        is the final one; otherwise one after the other); just the latter when ``entry`` is
        None."""
        async with self.lock:
            pending, self.pending = self.pending, None
            carrying = int(pending is not None)
            self._carrying += carrying
            try:
                alone = entry is None or entry.kind not in FINAL_KINDS or not self.batches
                if pending is not None and alone:
                    await self._append_fenced([pending], claim=False)
                    pending = None
                if entry is not None:
                    batch = [pending, entry] if pending else [entry]
                    await self._append_fenced(batch, claim=claim)
            finally:
                self._carrying -= carrying

    async def _append_fenced(self, batch: list[pb.JournalEntry], *, claim: bool) -> None:
        """Append ``batch`` (one entry, or a deferred outcome and the final entry) fenced by
        the last sequence we know, taking in what others appended on a conflict."""
        entry = batch[-1]
        while True:
            if claim:
                # A claim only while the command is surely held: a run whose hold had lapsed
                # (its in-progress acks unanswered through a partition) claimed an invocation
                # that the command's redelivery had meanwhile run, suspended and acked in
                # another processor; the invocation stayed RUNNING under a command nobody
                # had, its timer's wake-up was dropped as "in progress under" it, and only
                # the stranded-run sweep moved it on, 90 s later (chaos, seed 19005).
                self._held()
            msg_ids = []
            for n, item in enumerate(batch):
                cut_failure(item)
                item.index = len(self.entries) + 1 + n
                item.writer = self.token
                item.command_seq = self.delivery.command_seq  # whose run this is (see _hold)
                msg_ids.append(f"{self.id}:{item.index}:{self.token}")
            started = time.monotonic()
            try:
                seqs = await self._write(batch, msg_ids)
                if seqs is None:
                    # A journal stream made before batches: one by one from now on.
                    self.batches = False
                    for item in batch:
                        await self._append_fenced([item], claim=claim)
                    return
            except NatsUnavailableError as e:
                # The engine's own write failed: not the workflow's failure. Stop the run
                # (no `except Exception` in the workflow can catch this) and release it.
                raise EngineFailure(e) from e
            except JournalConflict:
                taken = await self.catch_up(claim=claim)
                if any(r.msg_id == msg_ids[-1] for r in taken):
                    # Ours had landed after all: the server answered "wrong last sequence"
                    # to a write it stored (seen under chaos, around a leader change).
                    # Taking it for another's entry abandoned (and acked) the run.
                    return
                if entry.kind == pb.ENTRY_KIND_SUSPENDED:
                    raise Rerun from None  # decide again with what arrived
                if claim and not self.claimable():
                    # Another run started meanwhile: it goes on, not us.
                    raise NotIdle(f"taken under command {self.owner()}") from None
                continue
            for item, seq in zip(batch, seqs, strict=True):
                self.record(item, seq)
                self._observe("appended", time.monotonic() - started, item.kind)
            if not claim and time.monotonic() - started > self._slow_write_s:
                # The write stalled long enough for our command to be redelivered and the
                # invocation claimed by another processor meanwhile: look before the next
                # step runs (nothing newer need be there).
                await self.catch_up(claim=False, newer_known=False)
            return

    async def _write(self, batch: list[pb.JournalEntry], msg_ids: list[str]) -> list[int] | None:
        """One fenced write of ``batch``: an atomic batch when it holds more than one entry
        (None: the stream takes no batches)."""
        if len(batch) == 1:
            return [await self.t.append(self.id, batch[0], self.last_seq, msg_ids[0])]
        return await self.t.append_batch(self.id, batch, self.last_seq, msg_ids)

    async def catch_up(self, *, claim: bool, newer_known: bool = True) -> list[JournalRecord]:
        """Take in what was appended since our last entry (``newer_known``: something is
        there, a failed append says so) and return it. Raises LostClaim for another
        processor's entries (unless we are claiming), Finished for a final one. Entries of
        this very run (our token) are ours: an append whose answer was lost, or wrong."""
        try:
            fresh = await self.t.read_journal(
                self.id,
                min_seq=self.last_seq + 1 if newer_known else self.last_seq,
                start=self.last_seq + 1,  # only what is newer: a long journal read whole was slow
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
            # A fork's copies (its source's steps, and the patch markers before them) are
            # no run of its own.
            if e.kind in PROCESSOR_KINDS and not copied_by_fork(e):
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
        return owner in (None, self.delivery.command_seq) or (owner == 0 and redelivered)


# The most of an error's message an entry keeps (characters): an exception carrying a whole
# HTTP body made an entry over the journal's limit, whose append failed on every run.
FAILURE_MESSAGE_MAX = 8_000


def cut_failure(entry: pb.JournalEntry) -> None:
    """Shorten ``entry``'s failure message to ``FAILURE_MESSAGE_MAX`` characters (its head
    and its tail, and how much was cut between them)."""
    if not entry.HasField("failure"):
        return
    message = entry.failure.message
    if len(message) <= FAILURE_MESSAGE_MAX:
        return
    keep = FAILURE_MESSAGE_MAX // 2
    cut = len(message) - 2 * keep
    entry.failure.message = f"{message[:keep]} … ({cut} characters cut) … {message[-keep:]}"
