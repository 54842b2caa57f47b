"""One delivery of one invocation, from the state check to the ack.

1. read the state; a finished invocation is acked and left alone (intake dedup);
2. decide how to take the invocation: a first delivery of a new start runs once it has moved
   the state from PENDING to RUNNING; anything else reads the journal and appends a CLAIM if the
   invocation is its to take (see ``durable_core.engine._hold``);
3. run the workflow (``_run_once``); each executed step appends its outcome, fenced;
4. when every step is parked, append SUSPENDED, arm the timers and ack; when the workflow
   returns or fails, append the final entry, write the final state, report to a waiting
   parent, ack;
5. when the replay diverges from the journal (the code changed under the invocation), append
   SUSPENDED (the journal is idle: a processor of the right version claims it), write the
   state BLOCKED with the reason and the version it is pinned to, hand the command to that
   version's route and ack (``_block``). A command of a pinned invocation that reaches a
   processor of another version is handed on the same way, without a replay.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Mapping, Sequence
from typing import Any

from durable_core._code import CodeIdentity
from durable_core._journal import Submission, Wait, kind_name, pin_for, started_on
from durable_core._pb.durable.v1 import durable_pb2 as pb
from durable_core._transport import Delivery, StateConflict, StateRecord
from durable_core.engine import _intake
from durable_core.engine._attempt import Block, Finish, Suspend, run_once, timed_out
from durable_core.engine._branches import engine_task
from durable_core.engine._context import RunContext
from durable_core.engine._env import TERMINAL, RunEnv, now_ms, to_the_end
from durable_core.engine._hold import SUPERSEDED, lock_run, supersede_run, unlock_run
from durable_core.engine._keys import KeyRecord, release_key, take_key
from durable_core.engine._signals import (
    Diverged,
    EngineFailure,
    Finished,
    LostClaim,
    LostHold,
    NotIdle,
    PinnedElsewhere,
    Rerun,
)
from durable_core.engine._writer import JournalWriter
from durable_core.errors import (
    DurableError,
    NatsUnavailableError,
    NonDeterminismError,
    SuspendExecution,
)
from durable_core.interceptors import EngineEvent
from durable_core.interceptors import observe as notify

__all__ = ["Execution"]

log = logging.getLogger("durable_core.worker")

_FINAL_KIND: dict[int, pb.EntryKind] = {
    pb.STATUS_COMPLETED: pb.ENTRY_KIND_COMPLETED,
    pb.STATUS_FAILED: pb.ENTRY_KIND_FAILED,
    pb.STATUS_CANCELLED: pb.ENTRY_KIND_CANCELLED,
}


# How early a timer of the server's may come (a delayed invocation's start, an execution
# timeout's wake-up): server schedules are whole seconds, rounded down, and clocks differ a
# little.
_EARLY_WAKE_MS = 1500


class Execution:
    """One delivery of one invocation, from state check to ack."""

    def __init__(self, env: RunEnv, cmd: pb.Command, delivery: Delivery) -> None:
        self.env = env
        self.t = env.transport
        self.cmd = cmd
        self.id = cmd.invocation_id
        self.delivery = delivery
        self.state: StateRecord | None = None
        # A journal write slower than this may have been overtaken by a redelivery.
        self.journal = JournalWriter(
            self.t,
            self.id,
            f"{env.processor_id}/{secrets.token_hex(4)}",
            delivery,
            slow_write_s=env.ack_wait / 3,
            observe=lambda kind, seconds, entry: self.observe(kind, seconds=seconds, entry=entry),
            news=self._news,
            held=self.check_step,
        )
        self.ctx: RunContext | None = None
        self.waits: tuple[Wait, ...] = ()
        self.interrupt = asyncio.Event()  # suspend or rerun requested
        self.rerun = False
        self.children: list[str] = []
        self.task: asyncio.Future[Any] | None = None
        self.cancelling_run = False
        # Entries from outside may be in the journal that no write of this run has met (a
        # pause): read them before the next step is decided (see ``look_again``).
        self.unread = False
        self.lease_epoch = env.lease.epoch  # the lease this run started under
        self._run_lock = 0  # revision of our run lock (commands delivered more than once)
        self.journal.code = self._code_here()

    # -- what the context calls (durable_core.engine._step_io.Journal) --------------------

    async def append_step(self, entry: pb.JournalEntry, *, defer: bool = False) -> None:
        """Journal a step's outcome (fenced); ``defer``: with the run's next append (see
        JournalWriter.defer)."""
        if defer:
            await self.journal.defer(entry)
        else:
            await self.journal.append(entry)

    async def settle(self) -> None:
        """Journal a deferred step outcome before the workflow's next step is decided, and
        read what came from outside meanwhile if a request said so (``look_again``)."""
        await self.journal.flush()
        if self.unread:
            self.unread = False
            try:
                await self.journal.catch_up(claim=False, newer_known=False)
            except EngineFailure:
                self.unread = True  # NATS away: the next boundary reads again
                raise

    def look_again(self) -> None:
        """A pause (or something else from outside that needs no wake-up) was journaled
        while this run is in flight: read the journal before the next step. A run learnt of
        it only when one of its writes met it; with no write between two steps (the second
        after a sleep waited in process, or after the workflow's own code), that step ran
        after the pause, and the invocation completed while paused."""
        self.unread = True

    async def submit(self, submission: Submission) -> None:
        """Start another invocation (a child, or ``ctx.send``), idempotent by its id."""
        try:
            # To its end through a cancellation (the run's end cancels its branches): cut
            # short, a child's state could be left made with no start to run it.
            await to_the_end(engine_task(_intake.submit_child(self.t, submission, self.cmd)))
        except NatsUnavailableError as e:
            stop = self.journal.stopped = EngineFailure(e)  # stop the run, release it
            raise stop from e

    def request_suspend(self, waits: Sequence[Wait]) -> None:
        """Every step is parked: end this run (see ``_run_once``)."""
        self.waits = tuple(waits)
        self.interrupt.set()

    def cancelling(self) -> bool:
        """Whether the run was interrupted because the invocation was cancelled."""
        return self.cancelling_run

    def halted(self) -> bool:
        """Whether the engine is stopping this run to hand the invocation over (``halt`` sets
        the signal first; not at its execution timeout, which ends it)."""
        stop = self.journal.stopped
        return stop is not None and getattr(stop, "hand_over", True)

    def stopping(self) -> bool:
        return self.journal.stopped is not None

    def diverged(self) -> None:
        """The replay diverged: stop the run now (``run_once`` blocks the invocation); the
        workflow may catch the error, but it runs no further step."""
        if self.journal.stopped is None:
            self.journal.stopped = Diverged("the replay diverged from the journal")
        self.interrupt.set()

    def fence(self) -> int:
        """The journal's last sequence as this run knows it (see ``Journal.fence``)."""
        return self.journal.last_seq

    def check_step(self) -> None:
        """Refuse every step once the run was stopped by an engine signal, or once this
        processor no longer surely holds the command (see ``durable_core.engine._hold``)."""
        journal = self.journal
        if journal.stopped is None and not self.env.holds(self.delivery, self.lease_epoch):
            journal.stopped = LostHold(
                f"command {self.delivery.command_seq} (delivery {self.delivery.num_delivered}) "
                "may be redelivered to another processor by now (no in-progress ack answered "
                "in time, or this processor's lease lapsed)"
            )
        if journal.stopped is not None:
            raise journal.stopped

    def cancel_now(self) -> None:
        """Interrupt the step in flight (or the parked wait): the workflow sees a cancellation.

        Not once the workflow has seen it (it may be compensating): a cancellation is
        delivered once, and a repeated request (see ``_cancel_missed``) must not interrupt the
        steps that handle it."""
        if self.ctx is not None and self.ctx.steps.cancel_delivered:
            return
        # Read the request before the next step, too: a run whose workflow task is not made
        # yet (its RUNNING write landed, its answer still on the way) has nothing to cancel,
        # and its first step ran after the cancel had answered "running".
        self.look_again()
        if self.task is not None and not self.task.done() and not self.cancelling_run:
            self.cancelling_run = True
            self.task.cancel()
            # Every branch: one raced with asyncio.wait (or left behind) is not cancelled
            # with the workflow's own task; it went on running steps after the cancel.
            for branch in self.ctx.open_branches(self.task) if self.ctx is not None else ():
                branch.cancel()

    async def cancel_if_requested(self) -> None:
        """Interrupt the run if its journal holds a cancellation request: after this
        processor reconnected to NATS, the request's control message may have been lost."""
        if self.task is None or self.task.done() or self.cancelling_run:
            return
        records = await self.t.read_journal(self.id, current=True)
        if any(r.entry.kind == pb.ENTRY_KIND_CANCEL_REQUEST for r in records):
            log.info("invocation %s: cancel requested while reconnecting; interrupting", self.id)
            self.cancel_now()

    def _news(self) -> None:
        """Entries from outside arrived: if the workflow waits, run it again to see them.

        Not while a step is in flight (a call, an async step beside the wait): interrupting
        cancelled it, and the rerun sent it again, with no fault at all. The run goes again
        once every step has parked (``request_suspend``: a suspension becomes the rerun)."""
        if self.ctx is not None and self.ctx.steps.parked:
            self.rerun = True
            if not self.ctx.steps.executing:
                self.interrupt.set()

    def observe(self, kind: Any, *, seconds: float = 0.0, status: str = "", entry: int = 0) -> None:
        workflow = self.cmd.workflow or (self.state.state.workflow if self.state else "")
        name = kind_name(entry) if entry else ""
        event = EngineEvent(kind, self.id, workflow, seconds=seconds, status=status, entry=name)
        notify(self.env.interceptors, event)

    def _code_here(self) -> CodeIdentity | None:
        """The code this processor runs the invocation's workflow on (None: not served here;
        the worker hands such a command on before it runs)."""
        registry = self.env.registry
        return registry.get(self.cmd.workflow).code if self.cmd.workflow in registry else None

    def due_ms(self) -> int:
        """When the invocation was due: its delayed start, else its creation."""
        st = self.state.state if self.state is not None else None
        if st is not None and st.start_at_ms:
            return st.start_at_ms
        return (st.created_at_ms if st is not None else 0) or self.cmd.created_at_ms

    # -- state -----------------------------------------------------------------------------

    async def write_state(
        self,
        *,
        final: bool = False,
        only_if: tuple[int, ...] = (),
        unjournaled: bool = False,
        ours: bool = False,
        **changes: Any,
    ) -> bool:
        """Update the state summary with a revision check, re-reading on conflict.

        ``only_if`` lists the statuses the update may replace (any, when empty);
        ``unjournaled``: only a state that counts no journal entry; ``ours``: never over a
        run another command has taken up since. Returns False, with ``self.state`` the state
        that is there, when it may not replace it.
        """
        for _ in range(5):
            rec = self.state or await self.t.get_state(self.id)
            if rec is not None and (
                (rec.state.status in TERMINAL and not final)
                or (only_if and rec.state.status not in only_if)
                or (unjournaled and rec.state.journal_length)
                or (ours and self._taken_over(rec.state))
            ):
                self.state = rec
                return False
            st = self._next_state(rec, changes)
            try:
                if rec is None:
                    created = await self.t.create_state(st)
                    if created is None:
                        self.state = None
                        continue
                    self.state = created
                else:
                    self.state = await self.t.update_state(st, rec.revision)
                return True
            except StateConflict:
                self.state = None  # someone else wrote (a client, a lifecycle change): re-read
        raise DurableError(f"state of {self.id} keeps changing under us; giving up this run")

    def _taken_over(self, st: pb.ExecutionState) -> bool:
        """Whether another command's run has the invocation now (the state says RUNNING under
        it): a wake-up that came after this run suspended, and claimed it."""
        seq = self.delivery.command_seq
        return st.status == pb.STATUS_RUNNING and st.run_command_seq not in (0, seq)

    def _next_state(self, rec: StateRecord | None, changes: Mapping[str, Any]) -> pb.ExecutionState:
        """``rec``'s state (a new one from the command if there is none) with ``changes``."""
        if rec is not None:
            st = pb.ExecutionState()
            st.CopyFrom(rec.state)
        else:
            st = _intake.state_of_start(self.cmd)
            st.invocation_id = self.id
        for key, value in changes.items():
            if isinstance(value, pb.Payload | pb.Failure):
                getattr(st, key).CopyFrom(value)
            else:
                setattr(st, key, value)
        if st.status != pb.STATUS_BLOCKED:
            st.blocked_reason = ""  # it moved on (the pin stays: later commands carry it)
        for child in self.children:
            if child not in st.child_ids:
                st.child_ids.append(child)
        st.updated_at_ms = now_ms()
        # Never fewer than the state counts: a run that has not read the journal (a keyed start
        # queued behind its key's holder) must not erase a fork's copied steps or a pending
        # cancel's request, each counted there so that no start runs without reading them.
        st.journal_length = max(st.journal_length, len(self.journal.entries))
        st.processor = self.env.processor_id
        return st

    # -- taking the invocation -------------------------------------------------------------

    async def run(self) -> None:
        """Run this delivery (under the command's run lock when it was delivered before)."""
        env = self.env
        if self.delivery.num_delivered > 1 and env.leases_on:
            # Delivered before: a stale NAK may have taken it from a live holder (see _hold).
            self._run_lock = await lock_run(
                self.t,
                env.lease,
                self.delivery,
                finished=lambda: self._finished(self.id),
                stopping=env.stopping,
            )
            if self._run_lock == SUPERSEDED:
                self._run_lock = 0
                log.info(
                    "invocation %s: command %d was superseded by a rescue; acking it",
                    self.id,
                    self.delivery.command_seq,
                )
                await self.delivery.ack()
                return
            if not self._run_lock and not await self._finished(self.id):
                # Stopping: hand the command back now (only while surely held: see nak), not
                # after its ack_wait; whoever gets it waits for the run lock as this one did.
                await self.delivery.nak()
                return
        try:
            await self._run()
        finally:
            self.journal.close()
            if self._run_lock:
                await unlock_run(self.t, self.delivery.command_seq, self._run_lock)

    async def _run(self) -> None:
        started = await self._create_running()
        if not started:
            self.state = await self.t.get_state(self.id)
        st = self.state.state if self.state is not None else None
        if st is None and self.cmd.kind == pb.COMMAND_KIND_WAKE:
            log.warning("wake-up for unknown invocation %s; dropping it", self.id)
            await self.delivery.ack()
            return
        if (
            st is not None
            and self.cmd.kind == pb.COMMAND_KIND_START
            and self.cmd.workflow
            and st.workflow
            and st.workflow != self.cmd.workflow
        ):
            # Only a start submitted with an id already used by another workflow (the client
            # refuses it, but may have published it already): never run it on that journal.
            log.warning(
                "start of %s for workflow %s, but the invocation is %s; dropping it",
                self.id,
                self.cmd.workflow,
                st.workflow,
            )
            await self.delivery.ack()
            return
        if (
            st is not None
            and not started
            and st.status not in TERMINAL
            and self.cmd.kind == pb.COMMAND_KIND_START
            and self.cmd.state_at_start
            and not _intake.started_by(st, self.cmd)
        ):
            # A plain invoke's start, queued with no state, and another submission of the id
            # (other arguments, a key, a delay) won the state's create meanwhile: that one
            # stored a start of its own, which runs it; never run its state from this one.
            log.warning(
                "start of %s is not the submission its state is (other arguments, key or "
                "delay); dropping it",
                self.id,
            )
            await self.delivery.ack()
            return
        if st is not None and not started and await self._started_when_due(st):
            return
        if st is not None and not started and await self._waits_for_its_key(st):
            return
        if st is not None and st.status in TERMINAL:
            log.info("invocation %s already %s; acking", self.id, pb.Status.Name(st.status))
            if st.notify_parent:
                await self._report_again()
            await self._settle_finished()
            return
        held_before = False
        if self._keyed and self.cmd.kind == pb.COMMAND_KIND_START:
            taken = await take_key(
                self.t, self.cmd, self.delivery, finished=self._finished, queued=self._queued
            )
            if taken is None:
                return  # queued behind the key's holder
            held_before = taken == "held"
        try:
            # A fresh start runs without reading the journal (its first append expects an
            # empty one) once it has moved the state from PENDING to RUNNING, or created it
            # RUNNING: one start wins.
            if not (started or (self._fresh(held_before) and await self._start_fresh())):
                await self._take_up()
            await self._run_until_done()
        except Finished:
            assert self.journal.machine.final is not None
            await self._finish_from_journal(self.journal.machine.final)
        except LostClaim as lost:
            self._log_lost(lost)
            if not lost.holds(self.delivery.command_seq):
                await self.delivery.ack()  # another command's run owns the invocation now
        except NotIdle as e:
            log.info("invocation %s: %s; acking this command", self.id, e.reason or "not idle")
            await self._cancel_missed()
            await self.delivery.ack()
        except PinnedElsewhere as pinned:
            await self._hand_to_pin(pinned.route)

    async def _started_when_due(self, st: pb.ExecutionState) -> bool:
        """A start before the invocation is due (a second submission of its id, after the
        start's duplicate window, published one: it ran a delayed invocation at once) is
        scheduled for its due time instead, and acked; True then. Once per due time: this
        processor's clock may be behind the server's, which fires that start at once; it must
        not be dropped, nor go round again: the start that comes back then runs (False).

        A start a little early (server schedules are whole seconds, rounded down; a delay
        of a second or less is published at once) waits out the rest here, up to
        ``_EARLY_WAKE_MS``: it started up to a second before its due time."""
        early_ms = st.start_at_ms - now_ms()
        if not (
            st.status in (pb.STATUS_PENDING, pb.STATUS_PAUSED)  # paused, perhaps resumed since
            and self.cmd.kind == pb.COMMAND_KIND_START
            and early_ms > 0
        ):
            return False
        if early_ms > _EARLY_WAKE_MS and await self.t.schedule_command(
            self.cmd,
            at_ms=st.start_at_ms,
            key=f"{self.id}.start",
            msg_id=f"start:{self.id}:due:{st.start_at_ms}",
        ):
            log.info("invocation %s: a start before it is due; started at its due time", self.id)
            await self.delivery.ack()
            return True
        await asyncio.sleep(min(early_ms, _EARLY_WAKE_MS) / 1000)
        return False

    async def _waits_for_its_key(self, st: pb.ExecutionState) -> bool:
        """A wake-up (a signal, a cancel, a resume, a resolution) of a keyed invocation that
        waits for its key (pending or paused: retried, or queued) and does not hold it: acked,
        and left to the hand-over, whose start reads what the wake-up was for. Run, it went
        beside the key's holder (a retried invocation's journal is not empty, so nothing
        stopped it); "pending" means no run has started, and none runs a step. A paused one
        counts too: a resume's wake-up found it paused, not pending (its run, had it one,
        would hold the key: a key is let go only by a finished invocation)."""
        if not (
            self._keyed
            and self.cmd.kind == pb.COMMAND_KIND_WAKE
            and st.status in (pb.STATUS_PENDING, pb.STATUS_PAUSED)
        ):
            return False
        data, _ = await self.t.key_record(self.cmd.partition_key)
        if KeyRecord.parse(data).active == self.id:
            return False
        if await self._past_deadline():
            await self._time_out_in_line(st)
            return True
        log.info("invocation %s waits for its partition key; its wake-up is acked", self.id)
        await self.delivery.ack()
        return True

    async def _time_out_in_line(self, st: pb.ExecutionState) -> None:
        """Fail an invocation past its execution timeout where it waits for its key (its
        deadline's wake-up, armed when it was queued): none of its code has run, and none
        will. The key stays with its holder, whose hand-over skips a finished invocation. A
        start that took it meanwhile (its journal moved on) fails it at its start instead."""
        try:
            await self.journal.load()
            final = self.journal.machine.final
            if final is None:
                await self._finish(Finish(pb.STATUS_FAILED, failure=timed_out(st.deadline_ms)))
            else:
                await self._finish_from_journal(final)
        except LostClaim as lost:
            self._log_lost(lost)
            await self.delivery.ack()

    async def _cancel_missed(self) -> None:
        """A wake-up found the invocation running under another command, and its journal
        holds a cancellation request: ask the run to stop again. The request's own control
        message is core NATS, lost if the running processor was reconnecting; its wake-up is
        not (the cancel publishes one after the request). Repeating it is harmless: a run
        stops for a cancellation once (see ``cancel_now``)."""
        machine = self.journal.machine
        if (
            self.cmd.kind == pb.COMMAND_KIND_WAKE
            and machine.cancel_requested
            and machine.final is None
        ):
            with contextlib.suppress(Exception):
                await self.t.send_control(self.id, "cancel")

    async def _report_again(self) -> None:
        """Hand a finished child's outcome to its parent again before its command is acked:
        a run that wrote the final state may have ended before the parent's wake-up was
        stored (chaos, seed 19007: its processor killed while the command stream's leader was
        away; the parent stayed SUSPENDED with the child's result in its journal and no
        wake-up). Idempotent: the result is appended once (by its message id) and the
        wake-up deduplicated."""
        await self.journal.load()
        final = self.journal.machine.final
        if final is not None and self.state is not None:
            await _intake.report_to_parent(self.t, self.state.state, final)

    def _fresh(self, held_before: bool) -> bool:
        st = self.state.state if self.state is not None else None
        return (
            self.cmd.kind == pb.COMMAND_KIND_START
            and self.delivery.num_delivered == 1
            and not held_before
            and (st is None or (st.status == pb.STATUS_PENDING and not st.journal_length))
        )

    async def _create_running(self) -> bool:
        """Create the state RUNNING under this command, when the client left the state to the
        start (``Command.state_at_start``) and this is its first delivery: no read and no
        PENDING-to-RUNNING write. False when a state exists (the client's, after it waited a
        while; or this invocation's from before): the start then goes the usual way.

        Why it is the same as ``_start_fresh``: the create is conditional (it fails if any
        state exists), so it succeeds only where no client, pause or earlier start has
        written anything; the state it stores is the one ``_start_fresh`` would have written
        over a PENDING state built from the same command. Only unkeyed starts of no parent
        carry the flag (see ``durable_core.client._submit``): nothing to queue behind.
        """
        cmd = self.cmd
        if not (
            cmd.state_at_start
            and cmd.kind == pb.COMMAND_KIND_START
            and self.delivery.num_delivered == 1
            and cmd.partition_key in ("", self.id)
            and not cmd.parent_id
        ):
            return False
        st = self._next_state(None, _running(self.delivery.command_seq))
        created = await self.t.create_state(st)
        if created is None:
            return False
        self.state = created
        return True

    async def _start_fresh(self) -> bool:
        """Move the state from PENDING to RUNNING under this command; False if it moved on
        meanwhile (another start won, a client paused it, it finished: see _take_up)."""
        # RUNNING before the first step: a client pausing now must see it running (a
        # deferred write let `pause` mark a run in flight "paused"; it was reverted).
        # A cancel of the pending invocation counts its request in the state's journal length
        # (see client._lifecycle._show_transition): then the journal is read first.
        return await self.write_state(
            **_running(self.delivery.command_seq), only_if=(pb.STATUS_PENDING,), unjournaled=True
        )

    async def _take_up(self) -> None:
        """Decide by the journal whether this delivery runs the invocation, and claim it.

        Raises Finished (it has finished: settle), NotIdle (another command's run has it,
        or it has not started and this is no start: ack this command).
        """
        journal = self.journal
        state = self.state.state if self.state is not None else None
        await journal.load(
            min_seq=self.cmd.min_journal_seq, min_entries=state.journal_length if state else 0
        )
        if journal.machine.final is not None:
            raise Finished
        if await self._held_by_pause():
            # A wake-up (its timer, a signal, a resolution, a child's result) of a suspended
            # invocation paused since: taken in by the journal, run after the resume. Run
            # now, a workflow that returned right after its sleep completed while paused.
            # Over a RUNNING left by this command's own earlier delivery (it suspended, then
            # stopped before its state write), never over another command's run.
            await self.write_state(
                status=pb.STATUS_PAUSED,
                only_if=(pb.STATUS_SUSPENDED, pb.STATUS_RUNNING),
                ours=True,
            )
            raise NotIdle("paused: it runs again once resumed")
        route = await self._pinned_elsewhere()
        if route:
            raise PinnedElsewhere(route)
        if not journal.machine.suspended and journal.owner() is None:
            await self._take_unstarted()
        elif not journal.claimable():
            if not (self.cmd.supersedes and journal.owner() == self.cmd.supersedes):
                raise NotIdle(f"in progress under command {journal.owner()}")
            await self._supersede(self.cmd.supersedes)
        # A CLAIM fences whoever wrote before it; on a conflict the journal is read again and
        # the claim stands only if it is still ours to take (see JournalWriter.append).
        seq = self.delivery.command_seq
        claim = pb.JournalEntry(kind=pb.ENTRY_KIND_CLAIM, timestamp_ms=now_ms(), command_seq=seq)
        await journal.append(claim, claim=True)
        if not await self.write_state(
            status=pb.STATUS_RUNNING, waiting_for="", run_command_seq=seq
        ):
            raise NotIdle("it finished meanwhile")  # the state says so; the journal will

    async def _supersede(self, lost: int) -> None:
        """A rescue of a run whose command ``lost`` no processor holds (see _hold, case 4):
        mark that command superseded, then take in what its run may have appended before."""
        if not await supersede_run(self.t, lost, self.delivery.command_seq):
            raise NotIdle(f"in progress under command {lost} after all")
        log.warning(
            "invocation %s: rescued from command %d, which no processor held; command %d "
            "takes its run over",
            self.id,
            lost,
            self.delivery.command_seq,
        )
        self.journal.superseding = lost
        await self.journal.catch_up(claim=True, newer_known=False)

    async def _pinned_elsewhere(self) -> str:
        """The route of the version the invocation is pinned to, when this processor runs
        another one ("" otherwise). Past its execution timeout it is not handed on: any
        processor may fail it then, without a replay."""
        st = self.state.state if self.state is not None else None
        here = self.journal.code
        if st is None or not st.pinned_version or here is None or here.token == st.pinned_version:
            return ""
        if await self._past_deadline():
            return ""
        return st.pinned_version

    async def _past_deadline(self) -> bool:
        """Whether the invocation's execution timeout has passed (then any processor fails
        it). The deadline's own wake-up comes up to a second early (schedules are whole
        seconds, rounded down): a deadline that close is waited out here."""
        st = self.state.state if self.state is not None else None
        if st is None or not st.deadline_ms:
            return False
        left = st.deadline_ms - now_ms()
        if left >= _EARLY_WAKE_MS:
            return False
        await asyncio.sleep(max(left, 0) / 1000)
        return True

    async def _hand_to_pin(self, route: str) -> None:
        """Hand this command to the processors of the version the invocation is pinned to
        (one copy per command: a crash before the ack publishes the same message id)."""
        if self.cmd.route == route:
            # Routed there already, yet here: a fleet without routing by version (a command
            # published before it). Hand it back for a processor of that version.
            log.info("invocation %s is pinned to %s, not this processor's code", self.id, route)
            await self.delivery.nak(delay=1.0)
            return
        await self._publish_pinned(route)
        log.info("invocation %s: handed to its pinned version %s", self.id, route)
        await self.delivery.ack()

    async def _publish_pinned(self, route: str) -> None:
        wake = pb.Command(
            invocation_id=self.id,
            workflow=self.cmd.workflow or (self.state.state.workflow if self.state else ""),
            partition_key=self.cmd.partition_key
            or (self.state.state.partition_key if self.state else ""),
            kind=pb.COMMAND_KIND_WAKE,
            min_journal_seq=max(self.journal.last_seq, self.cmd.min_journal_seq),
            route=route,
            supersedes=self.cmd.supersedes,  # a rescue handed on is still a rescue
        )
        await self.t.publish_command(wake, msg_id=f"pin:{self.id}:{self.delivery.command_seq}")

    async def _held_by_pause(self) -> bool:
        """Its last run suspended, and a pause (no cancel) came after: nothing of the workflow
        runs until a resume, unless its execution timeout has passed (it fails then; the
        deadline's wake-up, early, waits for it: acked as held, nothing woke it again)."""
        machine = self.journal.machine
        if not (machine.suspended and machine.paused and not machine.cancel_requested):
            return False
        return not await self._past_deadline()

    async def _take_unstarted(self) -> None:
        """No run has started: only a start takes it, by moving the state to RUNNING under its
        command (revision-checked against what it read: one start wins)."""
        if self.cmd.kind != pb.COMMAND_KIND_START:
            st = self.state.state if self.state is not None else None
            lost = self.cmd.supersedes
            if (
                lost
                and st is not None
                and (st.status, st.run_command_seq) == (pb.STATUS_RUNNING, lost)
            ):
                await self._supersede(lost)  # a start lost before its first entry
                return
            raise NotIdle("not started yet: its start command runs it")
        seq = self.delivery.command_seq
        for _ in range(10):
            st = self.state.state if self.state is not None else None
            if st is not None and st.status in TERMINAL:
                raise NotIdle(f"already {pb.Status.Name(st.status)}")
            if st is not None and st.status == pb.STATUS_RUNNING:
                owner = st.run_command_seq
                if owner == seq or (owner == 0 and self.delivery.num_delivered > 1):
                    return  # our own command's run (its earlier delivery is over)
                raise NotIdle(f"started by command {owner or 'of an older processor'}")
            only_if = (st.status,) if st is not None else ()
            if await self.write_state(
                status=pb.STATUS_RUNNING, waiting_for="", run_command_seq=seq, only_if=only_if
            ):
                return
        raise DurableError(f"state of {self.id} keeps changing under us; giving up this run")

    # -- per-key ordering ------------------------------------------------------------------

    @property
    def _keyed(self) -> bool:
        """Invocations submitted with their own partition key run one at a time per key."""
        key = self.cmd.partition_key
        return bool(key) and key != self.id

    async def _finished(self, invocation_id: str) -> bool:
        rec = await self.t.get_state(invocation_id)
        return rec is None or rec.state.status in TERMINAL

    async def _queued(self, waiting_for: str) -> None:
        """Queued behind its key's holder: say so, and have the server wake it at its
        execution timeout (it fails then, in line: see ``_time_out_in_line``)."""
        await self.write_state(
            status=pb.STATUS_PENDING,
            waiting_for=waiting_for,
            only_if=(pb.STATUS_PENDING,),  # never over a run that a turn started meanwhile
        )
        st = self.state.state if self.state is not None else None
        if st is not None and st.status in (pb.STATUS_PENDING, pb.STATUS_PAUSED):
            await self._arm_deadline(self._wake_command(route=""))

    async def fail_broken(self, failure: pb.Failure) -> None:
        """Fail an invocation that cannot run (a corrupt journal, a broken record), never
        over a finished state, and settle what a finished one settles: a waiting parent gets
        the failure and the partition key goes to the next in line (left held, everything
        behind the key waited until another start of the key came). Best effort: this runs
        where NATS may be failing too."""
        try:
            failed = await self.write_state(status=pb.STATUS_FAILED, failure=failure)
        except Exception as e:  # noqa: BLE001 - best effort (see above)
            log.warning("invocation %s: cannot record its failure: %s", self.id, e)
            return
        st = self.state.state if self.state is not None else None
        if not failed or st is None:
            return
        with contextlib.suppress(Exception):
            if st.notify_parent:
                final = pb.JournalEntry(
                    kind=pb.ENTRY_KIND_FAILED, timestamp_ms=now_ms(), failure=failure
                )
                await _intake.report_to_parent(self.t, st, final)
        with contextlib.suppress(Exception):
            if self._keyed:
                key = self.cmd.partition_key
                await release_key(self.t, key, self.id, finished=self._finished)

    async def _settle_finished(self) -> None:
        """Ack the command of a finished invocation, handing its key on first: a crash in
        between redelivers the command, which hands the key on again (a finished holder would
        strand everyone queued behind it)."""
        if self._keyed:
            key = self.cmd.partition_key or (self.state.state.partition_key if self.state else "")
            await release_key(self.t, key, self.id, finished=self._finished)
            await self.delivery.ack_sync()
        else:
            await self.delivery.ack(finished=True)

    def _log_lost(self, lost: LostClaim) -> None:
        writers = sorted({r.entry.writer for r in lost.records})
        log.warning(
            "invocation %s: journal moved on under %s (appended by %s); abandoning this run",
            self.id,
            self.journal.token,
            ", ".join(writers),
        )

    # -- running and ending ----------------------------------------------------------------

    async def _run_until_done(self) -> None:
        while True:
            try:
                outcome = await run_once(self)
                if isinstance(outcome, Suspend):
                    # Its SUSPENDED append raises Rerun when an entry from outside (a
                    # resolution, a signal, a child's result) landed first: run again.
                    await self._suspend()
                elif isinstance(outcome, Block):
                    await self._block(outcome.error)
                else:
                    await self._finish(outcome)
            except Rerun:
                log.debug("invocation %s: rerunning with new journal entries", self.id)
                # The replay is built on the journal as it stands: the last step's deferred
                # outcome first, then whatever came from outside that no write took in yet. A
                # cancellation that interrupted the workflow's own code between steps goes
                # on to the replay as its request: without it, the next step ran (a charge
                # after the cancel) and the invocation completed.
                await self.journal.flush()
                await self.journal.catch_up(claim=False, newer_known=False)
                self.journal.replay_from_start()
                continue
            except asyncio.CancelledError:
                # Shutdown released this run, wherever it was (waiting, halting, storing
                # the result): a step's outcome still deferred (journaled with the run's
                # next entry, or a few ms later) would be lost with it, and the step run
                # again by the next processor. Journal it now (fenced, never cut short).
                with contextlib.suppress(Exception, SuspendExecution):
                    await self.journal.flush()
                raise
            return

    async def _suspend(self) -> None:
        """Every step is parked: journal the suspension, arm the timers, free the slot."""
        journal = self.journal
        # The last step's deferred outcome first: its write may take in what came from
        # outside while the step ran (a signal, a child's result), and a parked step may wait
        # for just that. Suspended after it, the invocation waited for good: the wake-up the
        # news published had met this run in flight.
        await journal.flush()
        if self.rerun:
            raise Rerun
        await journal.append(pb.JournalEntry(kind=pb.ENTRY_KIND_SUSPENDED, timestamp_ms=now_ms()))
        wake = self._wake_command(
            self.state.state.pinned_version if self.state is not None else self.cmd.route
        )
        # A schedule's subject names it (the server keeps one per subject: a new one replaces
        # it); its message id names this suspension. An id of the timer alone was dropped as
        # a duplicate when a later suspension armed the same timer within the stream's
        # duplicate window: a retried step's backoff (attempt numbers start again), or a sleep
        # parked again after its wake-up met a run in flight. Nothing woke the invocation.
        suspension = journal.last_seq
        # The deadline goes to every version's route, as a block's does: past it any processor
        # of the workflow fails the invocation without a replay. On the pinned route it waited
        # for good once that version's processors had all gone.
        await self._arm_deadline(self._wake_command(route=""))
        for wait in self.waits:
            if wait.wake_at_ms:
                await self.t.schedule_command(
                    wake,
                    at_ms=wait.wake_at_ms,
                    key=f"{self.id}.t{wait.step}{wait.tag}",
                    msg_id=f"timer:{self.id}:{wait.step}{wait.tag}:{suspension}",
                )
        waiting = "; ".join(w.what for w in self.waits)
        status = pb.STATUS_PAUSED if journal.machine.paused else pb.STATUS_SUSPENDED
        # Not over the run of a wake-up that claimed it since the SUSPENDED entry (it did
        # once: the state said suspended while that run went on).
        await self.write_state(status=status, waiting_for=waiting, ours=True)
        await self.delivery.ack()
        log.info("invocation %s suspended: waiting for %s", self.id, waiting)

    def _wake_command(self, route: str) -> pb.Command:
        """A wake-up of this invocation after its journal's last entry, on ``route`` (a version
        token; "" for every version's)."""
        return pb.Command(
            invocation_id=self.id,
            workflow=self.cmd.workflow,
            partition_key=self.cmd.partition_key,
            kind=pb.COMMAND_KIND_WAKE,
            min_journal_seq=self.journal.last_seq,
            route=route,
        )

    async def _arm_deadline(self, wake: pb.Command) -> None:
        """Have the server wake the invocation at its execution timeout (if it has one), so it
        fails on time however it waits: suspended, paused or blocked. One schedule per
        invocation, named by this suspension (``journal.last_seq``: see ``_suspend``)."""
        deadline = self.state.state.deadline_ms if self.state is not None else 0
        if deadline:
            await self.t.schedule_command(
                wake,
                at_ms=deadline,
                key=f"{self.id}.deadline",
                msg_id=f"deadline:{self.id}:{self.journal.last_seq}",
            )

    async def _block(self, diverged: NonDeterminismError) -> None:
        """The replay diverged: the invocation waits, never FAILED. Pinned to the code that
        last carried it on, it is handed to that version's route; if this processor runs that
        very version, handing it on would loop: it waits for an operator (fork or cancel)."""
        journal = self.journal
        here = journal.code
        pin = pin_for(journal.entries, this_run=journal.token)
        start = started_on(journal.entries)
        stuck = pin is None or (here is not None and pin.token == here.token)
        reason = blocked_reason(diverged, start=start, pin=pin, here=here, stuck=stuck)
        # Idle again (a processor that takes the pinned command claims it, fenced); the
        # failure says why, so the journal shows the block too.
        failure = pb.Failure(type="NonDeterminismError", message=reason, step=diverged.step)
        await journal.append(
            pb.JournalEntry(kind=pb.ENTRY_KIND_SUSPENDED, timestamp_ms=now_ms(), failure=failure)
        )
        await self.write_state(
            status=pb.STATUS_BLOCKED,
            blocked_reason=reason,
            pinned_version=pin.token if pin is not None else "",
            waiting_for="",
        )
        if not stuck:
            assert pin is not None
            await self._publish_pinned(pin.token)
        # Past its execution timeout any processor of the workflow fails it without a replay
        # (``_pinned_elsewhere``): its deadline's wake-up goes to every version's route.
        await self._arm_deadline(self._wake_command(route=""))
        await self.delivery.ack()
        self.observe("blocked")
        log.warning("invocation %s blocked: %s", self.id, reason)

    async def _finish(self, outcome: Finish) -> None:
        entry = pb.JournalEntry(kind=_FINAL_KIND[outcome.status], timestamp_ms=now_ms())
        if outcome.output is not None:
            entry.output.CopyFrom(outcome.output)
        if outcome.failure is not None:
            entry.failure.CopyFrom(outcome.failure)
        if outcome.status == pb.STATUS_FAILED:
            entry.failed_steps.extend(outcome.failed_steps)
            entry.failures_named = True
        await self.journal.append(entry)
        await self._finish_from_journal(entry)

    async def _finish_from_journal(self, entry: pb.JournalEntry) -> None:
        """Make the state agree with the journal's final entry, tell the parent, ack."""
        status = next(s for s, k in _FINAL_KIND.items() if k == entry.kind)
        changes: dict[str, Any] = {"status": status, "waiting_for": ""}
        if entry.HasField("output"):
            changes["output"] = entry.output
        if entry.HasField("failure"):
            changes["failure"] = entry.failure
        # The journal has the outcome: tell a waiting client now, write the state after.
        with contextlib.suppress(Exception):
            await self.t.publish_result(self._next_state(self.state, changes), self.journal.entries)
        # The state says finished before the parent hears (the parent never sees a result its
        # child's state does not show yet); a run cut short between the two is mended by the
        # redelivery, which finds the state finished and reports again (_report_again).
        await self.write_state(final=True, **changes)
        if self.state is not None and self.state.state.notify_parent:
            await _intake.report_to_parent(self.t, self.state.state, entry)
        await self._settle_finished()
        how = pb.Status.Name(status).removeprefix("STATUS_").lower()
        self.observe(
            "finished", status=how, seconds=max(entry.timestamp_ms - self.due_ms(), 0) / 1000
        )
        completed = entry.kind == pb.ENTRY_KIND_COMPLETED
        self.env.counted(completed)
        # A line per completion is a thousand lines a second at full speed: completions are
        # debug, every other ending stays info.
        log.log(
            logging.DEBUG if completed else logging.INFO,
            "invocation %s %s (%d journal entries)",
            self.id,
            how,
            len(self.journal.entries),
        )


def _running(command_seq: int) -> dict[str, Any]:
    """What a fresh start writes into the state: running under its command."""
    return {"status": pb.STATUS_RUNNING, "waiting_for": "", "run_command_seq": command_seq}


def _named(code: CodeIdentity | None) -> str:
    return f"{code.package} {code.version}" if code is not None else "code of unknown version"


def blocked_reason(
    diverged: NonDeterminismError,
    *,
    start: CodeIdentity | None,
    pin: CodeIdentity | None,
    here: CodeIdentity | None,
    stuck: bool,
) -> str:
    """Why an invocation is BLOCKED, for humans (status, inspector, list)."""
    text = (
        f"replay diverged at step {diverged.step}: the journal recorded {diverged.recorded}, "
        f"the code asks for {diverged.new}; started on {_named(start)}, "
        f"this processor runs {_named(here)}"
    )
    if pin is not None and start is not None and pin.token != start.token:
        text += f" (last carried on by {_named(pin)})"
    if not stuck:
        assert pin is not None
        return f"{text}. Waits for a processor running {_named(pin)} (route {pin.token})."
    if pin is None:
        return (
            f"{text}. The journal does not say which code recorded these steps (started "
            "before journals recorded code versions, or copied by a fork): fork it from an "
            "earlier step or cancel it."
        )
    return (
        f"{text}. This processor runs that very version ({pin.token}), so no other processor "
        "can replay it: the code changed without a new version. Waits for an operator: fork "
        "it (re-run from a step with today's code) or cancel it."
    )
