"""The engine: consumes commands and drives invocations through their journals.

For each delivered command:
1. read the state; a finished invocation is acked and left alone (intake dedup);
2. decide how to take the invocation:
   - a first delivery of a new start runs optimistically (its first append expects an
     empty journal);
   - a redelivery (the previous holder died or stalled) appends a CLAIM entry, which fences
     out any earlier holder: its next append fails on the expected sequence;
   - a wake-up (timer, resolution, signal, child result) or a duplicate start claims only
     an idle invocation (its journal ends in SUSPENDED); otherwise someone is running it and
     will see the news at its next append;
3. run the workflow; each executed step appends its outcome with the expected last subject
   sequence. When every step is parked (sleep, awakeable, signal, child), append SUSPENDED,
   schedule the timers on the server, ack: a suspended invocation holds no slot;
4. append COMPLETED or FAILED, write the final state, report to a waiting parent, ack.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from google.protobuf.message import DecodeError

from durable_core import _codec
from durable_core._grpc import ChannelPool
from durable_core._hold import ProcessorLease, lock_run, unlock_run
from durable_core._journal import FINAL_KINDS, PROCESSOR_KINDS, ReplayMachine, kind_name
from durable_core._keys import KeyRecord
from durable_core._naming import (
    check_invocation_id,
    check_workflow_name,
    encode_partition_key,
)
from durable_core._pb.durable.v1 import durable_pb2 as pb
from durable_core._transport import (
    CommandConsumer,
    CorruptJournalError,
    Delivery,
    JournalConflict,
    JournalRecord,
    StateConflict,
    StateRecord,
    Transport,
    is_engine_error,
)
from durable_core.config import WorkerConfig
from durable_core.context import Context, Submission, Wait
from durable_core.engine import intake
from durable_core.errors import (
    DurableError,
    InvalidInputError,
    InvocationCancelledError,
    InvocationFinishedError,
    NatsUnavailableError,
    StepFailedError,
    SuspendExecution,
)
from durable_core.interceptors import (
    EngineEvent,
    Interceptor,
    WorkflowInput,
    chain_workflows,
    observe,
)
from durable_core.plugins import WorkflowRegistry

__all__ = ["Worker"]

log = logging.getLogger("durable_core.worker")

TERMINAL = frozenset({pb.STATUS_COMPLETED, pb.STATUS_FAILED, pb.STATUS_CANCELLED})


def _now_ms() -> int:
    return int(time.time() * 1000)


class Worker:
    """Runs invocations from the command stream, at most ``max_concurrent`` at once."""

    def __init__(
        self,
        transport: Transport,
        registry: WorkflowRegistry,
        config: WorkerConfig,
        *,
        interceptors: Sequence[Interceptor] = (),
        channels: ChannelPool | None = None,
        service_defaults: Mapping[str, str] | None = None,
    ) -> None:
        self.transport = transport
        self.registry = registry
        self.config = config
        self.interceptors = tuple(interceptors)
        self.channels = channels or ChannelPool(config.services, service_defaults)
        self.processor_id = config.processor_id or f"{socket.gethostname()}-{os.getpid()}"
        self.lease = ProcessorLease(
            transport, self.processor_id, config.lease_ttl.total_seconds(), lambda: self._held
        )
        self._held: set[Delivery] = set()  # commands taken and not yet settled
        self._beats: dict[Delivery, asyncio.Task[None]] = {}  # their heartbeats
        self._by_seq: dict[int, tuple[Delivery, asyncio.Task[None]]] = {}  # by stream sequence
        self._tasks: set[asyncio.Task[None]] = set()
        self._running: dict[str, _Execution] = {}  # by invocation id, for cancellation
        self._slot_freed = asyncio.Event()
        self._stopping = asyncio.Event()
        self._consumer: CommandConsumer | None = None  # set once consuming
        self._fetch_error = ""
        self.completed = 0
        self.failed = 0

    @property
    def lease_name(self) -> str:
        """The name of this processor's current lease."""
        return self.lease.name

    @property
    def leases_on(self) -> bool:
        return bool(self.config.lease_ttl)

    @property
    def step_margin(self) -> float:
        """How long before a delivery's bound a run stops starting steps (clock rates, and
        the time from the check to the step's effect)."""
        return min(self.config.ack_wait.total_seconds() / 20, 0.5)

    def holds(self, delivery: Delivery, lease_epoch: int) -> bool:
        """Whether a run on ``delivery`` may start a step now (see ``durable_core._hold``)."""
        if not delivery.surely_held(self.step_margin):
            return False
        return not self.leases_on or self.lease.alive(lease_epoch)

    @property
    def in_flight(self) -> int:
        """Executions running now."""
        return len(self._tasks)

    def not_ready(self) -> str | None:
        """Why this processor is not consuming commands now (one line), or None if it is: for
        a readiness probe."""
        consumer = self._consumer
        if self._stopping.is_set():
            return "stopping"
        if consumer is None:
            return "starting (setting up its lease and the consumer)"
        if not self.transport.nc.is_connected:
            return "not connected to NATS (reconnecting)"
        if self.leases_on and not self.lease.alive(self.lease.epoch):
            return f"its lease {self.lease.name} is not renewed (NATS refuses or loses the writes)"
        if self._fetch_error:
            return f"pulling commands fails: {self._fetch_error}"
        silent = time.monotonic() - consumer.answered_at
        if len(self._tasks) < self.config.max_concurrent and silent > max(
            5.0, 5 * consumer.expires
        ):
            why = consumer.trouble or "no answer"
            return f"the command consumer has not answered for {silent:.0f}s ({why})"
        return None

    def stop(self) -> None:
        """Ask the worker to stop fetching and finish (see ``run``)."""
        self._stopping.set()
        self._slot_freed.set()

    async def run(self) -> None:
        """Consume until ``stop()``; then let in-flight work finish or release it."""
        lease = None
        if self.leases_on:
            # The lease exists before the first command is taken: a run checks it before
            # every step, and a processor that dies holding commands has them re-driven.
            await self.lease.create(self._stopping)
            lease = asyncio.create_task(self.lease.keep())
        consumer = await self.transport.command_consumer(self.config)
        control = await self.transport.subscribe_control(self._on_control)
        self._consumer = consumer
        log.info(
            "processor %s consuming (max_concurrent=%d, ack_wait=%ss, workflows: %s)",
            self.processor_id,
            self.config.max_concurrent,
            self.config.ack_wait.total_seconds(),
            ", ".join(self.registry.names()) or "none",
        )
        try:
            while not self._stopping.is_set():
                free = self.config.max_concurrent - len(self._tasks)
                if free <= 0:
                    self._slot_freed.clear()
                    await self._slot_freed.wait()
                    continue
                try:
                    deliveries = await consumer.fetch(min(free, 256), timeout=1.0)
                except Exception as e:  # noqa: BLE001 - keep serving through NATS trouble
                    log.warning("fetch failed: %s: %s", type(e).__name__, e)
                    self._fetch_error = f"{type(e).__name__}: {e}"
                    await asyncio.sleep(0.5)
                    continue
                self._fetch_error = ""
                for d in deliveries:
                    self._take(d)
                if deliveries:
                    self.lease.changed.set()
        finally:
            # Stop pulling first, so that what _drain hands back goes to other processors.
            await consumer.close()
            await self._drain()
            if lease is not None:
                while not lease.done():
                    lease.cancel()
                    await asyncio.wait({lease}, timeout=0.5)
                with contextlib.suppress(Exception):
                    await self.lease.delete()  # a clean exit
            await control.unsubscribe()
            await self.channels.close()

    def _take(self, d: Delivery) -> None:
        """Start handling a delivery; a redelivery of a command this process runs is absorbed
        by that run, or (if the run gave its delivery up) waits until that run has ended."""
        current = self._by_seq.get(d.stream_seq)
        if current is not None:
            held, task = current
            if not (held.lost or held.settled) and d.num_delivered == held.num_delivered + 1:
                log.info(
                    "command %d delivered again (delivery %d) while this processor runs it: "
                    "the run goes on with the new delivery",
                    d.stream_seq,
                    d.num_delivered,
                )
                held.adopt(d)
                self.lease.changed.set()
                return
            coro = self._handle_after(task, d)
        else:
            coro = self._handle(d)
        self._held.add(d)
        self._beats[d] = asyncio.create_task(self._heartbeat(d))
        task = asyncio.create_task(coro)
        self._by_seq[d.stream_seq] = (d, task)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    async def _heartbeat(self, d: Delivery) -> None:
        """In-progress acks from the moment of delivery until it is settled or given up."""
        interval = self.config.heartbeat_interval
        if interval <= 0:
            return
        while True:
            await asyncio.sleep(interval)
            await d.heartbeat(timeout=min(max(interval, 1.0), 5.0))

    async def _handle_after(self, earlier: asyncio.Task[None], d: Delivery) -> None:
        await asyncio.wait({earlier})
        await self._handle(d)

    def _release(self, d: Delivery) -> None:
        """The delivery is settled or given up: stop its heartbeats, drop it from the lease."""
        self._held.discard(d)
        beat = self._beats.pop(d, None)
        if beat is not None:
            beat.cancel()
        current = self._by_seq.get(d.stream_seq)
        if current is not None and current[0] is d:
            del self._by_seq[d.stream_seq]
        self.lease.changed.set()

    def _on_control(self, invocation_id: str, action: str) -> None:
        """A lifecycle request arrived over core NATS: act on a run in this processor now."""
        execution = self._running.get(invocation_id)
        if execution is not None and action == "cancel":
            execution.cancel_now()

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slot_freed.set()
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            log.error("execution task crashed: %s", exc, exc_info=exc)

    async def _drain(self) -> None:
        if not self._tasks:
            return
        grace = self.config.shutdown_grace.total_seconds()
        log.info("waiting up to %.0fs for %d in-flight executions", grace, len(self._tasks))
        _, pending = await asyncio.wait(set(self._tasks), timeout=grace)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=5)
            log.info("released %d executions to other processors", len(pending))

    async def _handle(self, delivery: Delivery) -> None:
        try:
            cmd = pb.Command()
            cmd.ParseFromString(delivery.data)
            check_invocation_id(cmd.invocation_id)
            if cmd.kind not in (pb.COMMAND_KIND_START, pb.COMMAND_KIND_WAKE):
                raise InvalidInputError(f"unknown command kind {cmd.kind}")
            if cmd.workflow:
                check_workflow_name(cmd.workflow)
            if cmd.partition_key:
                encode_partition_key(cmd.partition_key)
            now = _now_ms()
            if not 0 <= cmd.created_at_ms <= now + 86_400_000:
                cmd.created_at_ms = now  # an absurd client clock: take ours
        except (DecodeError, InvalidInputError, ValueError) as e:
            log.error("terminating malformed command (stream seq %d): %s", delivery.stream_seq, e)
            self._release(delivery)
            await delivery.term()
            return
        observe(
            self.interceptors,
            EngineEvent(
                "delivered", cmd.invocation_id, cmd.workflow, attempt=delivery.num_delivered
            ),
        )
        execution = _Execution(self, cmd, delivery)
        self._running[cmd.invocation_id] = execution
        try:
            await execution.run()
        except asyncio.CancelledError:
            # Shutdown: hand the command back at once; the journal keeps all progress.
            with contextlib.suppress(Exception):
                await delivery.nak()
            raise
        except _LostHold as e:
            # Another processor may run it now (or soon): journal nothing. Hand the command
            # back at once rather than after ack_wait: if it has moved on meanwhile, the NAK
            # only takes it from a holder that runs it under a run lock (a later delivery),
            # and whoever gets it waits for that lock (see _hold). Without leases there are no
            # run locks: then leave it to ack_wait.
            log.warning("invocation %s: %s; stopping this run", cmd.invocation_id, e)
            delivery.lost = True
            if self.leases_on:
                with contextlib.suppress(Exception):
                    await delivery.nak(delay=1.0, stale_ok=True)
        except (NatsUnavailableError, _EngineFailure) as e:
            cause = e.cause if isinstance(e, _EngineFailure) else e
            if isinstance(cause, CorruptJournalError | InvalidInputError):
                await self._fail_broken(execution, delivery, cause)
                return
            log.warning("invocation %s: NATS unavailable (%s); releasing it", cmd.invocation_id, e)
            with contextlib.suppress(Exception):
                await delivery.nak(delay=2.0)
        except (CorruptJournalError, InvalidInputError) as e:
            await self._fail_broken(execution, delivery, e)
        except DurableError as e:
            log.warning("invocation %s: %s; releasing it", cmd.invocation_id, e)
            with contextlib.suppress(Exception):
                await delivery.nak(delay=2.0)
        finally:
            if self._running.get(cmd.invocation_id) is execution:
                del self._running[cmd.invocation_id]
            self._release(delivery)

    @staticmethod
    async def _fail_broken(execution: _Execution, delivery: Delivery, e: DurableError) -> None:
        """Not transient (a corrupt journal, a broken record): fail it clearly, settle."""
        log.error("invocation %s cannot run: %s", execution.id, e)
        with contextlib.suppress(Exception):
            await execution.write_state(  # never over a finished state
                status=pb.STATUS_FAILED,
                failure=pb.Failure(type=type(e).__name__, message=str(e)),
            )
        with contextlib.suppress(Exception):
            await delivery.term()


_FINAL_KIND: dict[int, pb.EntryKind] = {
    pb.STATUS_COMPLETED: pb.ENTRY_KIND_COMPLETED,
    pb.STATUS_FAILED: pb.ENTRY_KIND_FAILED,
    pb.STATUS_CANCELLED: pb.ENTRY_KIND_CANCELLED,
}


class _Rerun(SuspendExecution):
    """New external entries may satisfy a parked wait: run the workflow again from replay."""


class _Execution:
    """One delivery of one invocation, from state check to ack."""

    def __init__(self, worker: Worker, cmd: pb.Command, delivery: Delivery) -> None:
        self.w = worker
        self.t = worker.transport
        self.cmd = cmd
        self.id = cmd.invocation_id
        self.delivery = delivery
        self.token = f"{worker.processor_id}/{secrets.token_hex(4)}"
        # A journal write slower than this may have been overtaken by a redelivery (see append).
        self._slow_write_s = worker.config.ack_wait.total_seconds() / 3
        self.entries: list[pb.JournalEntry] = []
        self.machine = ReplayMachine(self.id)
        self.last_seq = 0
        self.lock = asyncio.Lock()
        self.state: StateRecord | None = None
        self.ctx: Context | None = None
        self.waits: tuple[Wait, ...] = ()
        self.interrupt = asyncio.Event()  # suspend or rerun requested
        self.rerun = False
        self.children: list[str] = []
        self.task: asyncio.Future[Any] | None = None
        self._cancelling = False
        self.stopped: SuspendExecution | None = None  # the signal that ended this run
        self.lease_epoch = worker.lease.epoch  # the lease this run started under
        self._run_lock = 0  # revision of our run lock (commands delivered more than once)

    # -- journal ---------------------------------------------------------------------------

    def _record(self, entry: pb.JournalEntry, seq: int) -> None:
        self.entries.append(entry)
        self.machine.record(entry)
        self.last_seq = seq

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
        try:
            await self._append(entry, claim=claim)
        except SuspendExecution as stop:
            if not isinstance(stop, _Rerun):
                self.stopped = stop
            raise

    async def _append(self, entry: pb.JournalEntry, *, claim: bool) -> None:
        async with self.lock:
            while True:
                entry.index = len(self.entries) + 1
                entry.writer = self.token
                entry.command_seq = self.delivery.stream_seq  # whose run this is (see run)
                msg_id = f"{self.id}:{entry.index}:{self.token}"
                started = time.monotonic()
                try:
                    seq = await self.t.append(self.id, entry, self.last_seq, msg_id)
                except NatsUnavailableError as e:
                    # The engine's own write failed: not the workflow's failure. Stop the run
                    # (no `except Exception` in the workflow can catch this) and release it.
                    raise _EngineFailure(e) from e
                except JournalConflict:
                    taken = await self._catch_up(claim=claim)
                    if any(r.msg_id == msg_id for r in taken):
                        # Ours had landed after all: the server answered "wrong last
                        # sequence" to a write it stored (seen under chaos, around a leader
                        # change). Taking it for another's entry abandoned (and acked) the run.
                        return
                    if entry.kind == pb.ENTRY_KIND_SUSPENDED:
                        raise _Rerun from None  # decide again with what arrived
                    if claim and not self._claimable():
                        # Another run started meanwhile: it goes on, not us.
                        raise _NotIdle(f"taken under command {self._owner()}") from None
                    continue
                self._record(entry, seq)
                self._observe("appended", seconds=time.monotonic() - started, entry=entry.kind)
                if not claim and time.monotonic() - started > self._slow_write_s:
                    # The write stalled long enough for our command to be redelivered and the
                    # invocation claimed by another processor meanwhile: look before the next
                    # step runs (nothing newer need be there).
                    await self._catch_up(claim=False, newer_known=False)
                return

    def _observe(
        self, kind: Any, *, seconds: float = 0.0, status: str = "", entry: int = 0
    ) -> None:
        workflow = self.cmd.workflow or (self.state.state.workflow if self.state else "")
        name = kind_name(entry) if entry else ""
        event = EngineEvent(kind, self.id, workflow, seconds=seconds, status=status, entry=name)
        observe(self.w.interceptors, event)

    def _due_ms(self) -> int:
        """When the invocation was due: its delayed start, else its creation."""
        st = self.state.state if self.state is not None else None
        if st is not None and st.start_at_ms:
            return st.start_at_ms
        return (st.created_at_ms if st is not None else 0) or self.cmd.created_at_ms

    def _owner(self) -> int | None:
        """The command whose run wrote the journal's last run entry (0: written before entries
        carried it); None if no run has written anything (copies of a fork's steps aside)."""
        for e in reversed(self.entries):
            if e.kind in PROCESSOR_KINDS and not e.writer.startswith("fork:"):
                return int(e.command_seq)
        return None

    def _claimable(self) -> bool:
        """Whether this delivery may claim the invocation as the journal stands: its last run
        suspended, or that run is this command's own (its earlier delivery is over), or no
        run has started and this start won the state's move to RUNNING (see _take_up)."""
        if self.machine.suspended:
            return True
        owner = self._owner()
        redelivered = self.delivery.num_delivered > 1
        return owner in (None, self.delivery.stream_seq) or (owner == 0 and redelivered)

    async def _catch_up(self, *, claim: bool, newer_known: bool = True) -> list[JournalRecord]:
        """Take in what was appended since our last entry (``newer_known``: something is
        there, a failed append says so) and return it. Raises _LostClaim for another
        processor's entries (unless we are claiming), _Finished for a final one. Entries of
        this very run (our token) are ours: an append whose answer was lost, or wrong."""
        try:
            fresh = await self.t.read_journal(
                self.id, min_seq=self.last_seq + 1 if newer_known else self.last_seq
            )
        except DurableError as e:
            # The engine's read (NATS gone, a corrupt entry): never the workflow's failure,
            # and never something a workflow's `except Exception` may swallow.
            raise _EngineFailure(e) from e
        records = [r for r in fresh if r.seq > self.last_seq]
        others = [r for r in records if r.entry.writer != self.token]
        foreign = [r for r in others if r.entry.kind in PROCESSOR_KINDS]
        if foreign and not claim:
            raise _LostClaim(foreign)
        for r in records:
            self._record(r.entry, r.seq)
        if self.machine.final is not None:
            raise _Finished
        if others and self.waits_parked():
            self.rerun = True
            self.interrupt.set()
        return records

    def waits_parked(self) -> bool:
        return self.ctx is not None and bool(self.ctx._parked)

    async def append_step(self, entry: pb.JournalEntry) -> None:
        await self.append(entry)

    async def submit(self, submission: Submission) -> None:
        now = _now_ms()
        state = pb.ExecutionState(
            invocation_id=submission.invocation_id,
            workflow=submission.workflow,
            status=pb.STATUS_PENDING,
            args=submission.args,
            partition_key=submission.partition_key,
            created_at_ms=now,
            updated_at_ms=now,
            parent_id=submission.parent_id,
            parent_workflow=self.cmd.workflow,
            parent_partition_key=self.cmd.partition_key,
            notify_parent=submission.notify_parent,
            start_at_ms=submission.start_at_ms,
            trace_context=submission.headers,  # the child's runs join this trace
            trace_id=_trace_id(submission.headers),
        )
        cmd = pb.Command(
            invocation_id=submission.invocation_id,
            workflow=submission.workflow,
            args=submission.args,
            partition_key=submission.partition_key,
            kind=pb.COMMAND_KIND_START,
            created_at_ms=now,
            parent_id=submission.parent_id,
            metadata=submission.headers,
        )
        try:
            await intake.submit(self.t, state, cmd)
        except NatsUnavailableError as e:
            self.stopped = _EngineFailure(e)  # the engine's write: stop the run, release it
            raise self.stopped from e

    def request_suspend(self, waits: Sequence[Wait]) -> None:
        self.waits = tuple(waits)
        self.interrupt.set()

    def cancelling(self) -> bool:
        return self._cancelling

    def check_step(self) -> None:
        """Refuse every step once the run was stopped by an engine signal, or once this
        processor no longer surely holds the command (see ``durable_core._hold``)."""
        if self.stopped is None and not self.w.holds(self.delivery, self.lease_epoch):
            self.stopped = _LostHold(
                f"command {self.delivery.stream_seq} (delivery {self.delivery.num_delivered}) "
                "may be redelivered to another processor by now (no in-progress ack answered "
                "in time, or this processor's lease lapsed)"
            )
        if self.stopped is not None:
            raise self.stopped

    def cancel_now(self) -> None:
        """Interrupt the step in flight (or the parked wait): the workflow sees a cancellation."""
        if self.task is not None and not self.task.done() and not self._cancelling:
            self._cancelling = True
            self.task.cancel()

    async def load_journal(self, min_seq: int = 0, min_entries: int = 0) -> None:
        self.entries = []
        self.machine = ReplayMachine(self.id)
        self.last_seq = 0
        records = await self.t.read_journal(self.id, min_seq=min_seq, min_entries=min_entries)
        for rec in records:
            self._record(rec.entry, rec.seq)

    # -- state -----------------------------------------------------------------------------

    async def write_state(
        self, *, final: bool = False, only_if: tuple[int, ...] = (), **changes: Any
    ) -> bool:
        """Update the state summary with a revision check, re-reading on conflict.

        ``only_if`` lists the statuses the update may replace (any, when empty). Returns
        False, with ``self.state`` the state that is there, when it may not replace it.
        """
        for _ in range(5):
            rec = self.state or await self.t.get_state(self.id)
            if rec is not None and (
                (rec.state.status in TERMINAL and not final)
                or (only_if and rec.state.status not in only_if)
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

    def _next_state(self, rec: StateRecord | None, changes: Mapping[str, Any]) -> pb.ExecutionState:
        """``rec``'s state (a new one from the command if there is none) with ``changes``."""
        st = pb.ExecutionState()
        if rec is not None:
            st.CopyFrom(rec.state)
        else:
            st.invocation_id = self.id
            st.workflow = self.cmd.workflow
            st.args.CopyFrom(self.cmd.args)
            st.partition_key = self.cmd.partition_key
            st.created_at_ms = self.cmd.created_at_ms or _now_ms()
            st.parent_id = self.cmd.parent_id
            st.trace_context.update(self.cmd.metadata)  # as the client would have stored it
            st.trace_id = _trace_id(self.cmd.metadata)
        for key, value in changes.items():
            if isinstance(value, pb.Payload | pb.Failure):
                getattr(st, key).CopyFrom(value)
            else:
                setattr(st, key, value)
        for child in self.children:
            if child not in st.child_ids:
                st.child_ids.append(child)
        st.updated_at_ms = _now_ms()
        st.journal_length = len(self.entries)
        st.processor = self.w.processor_id
        return st

    # -- the run ---------------------------------------------------------------------------

    async def run(self) -> None:
        if self.delivery.num_delivered > 1 and self.w.leases_on:
            # Delivered before: a stale NAK may have taken it from a live holder (see _hold).
            self._run_lock = await lock_run(
                self.t,
                self.w.lease,
                self.delivery,
                finished=lambda: self._finished(self.id),
                stopping=self.w._stopping,
            )
            if not self._run_lock and not await self._finished(self.id):
                return  # stopping: the command goes back (or to the next holder) unsettled
        try:
            await self._run()
        finally:
            if self._run_lock:
                await unlock_run(self.t, self.delivery.stream_seq, self._run_lock)

    async def _run(self) -> None:
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
        if st is not None and st.status in TERMINAL:
            log.info("invocation %s already %s; acking", self.id, pb.Status.Name(st.status))
            await self._settle_finished()
            return
        held_before = False
        if self._keyed and self.cmd.kind == pb.COMMAND_KIND_START:
            taken = await self._take_key()
            if taken is None:
                return  # queued behind the key's holder
            held_before = taken == "held"
        try:
            # A fresh start runs without reading the journal (its first append expects an
            # empty one) once it has moved the state from PENDING to RUNNING: one start wins.
            if not (self._fresh(held_before) and await self._start_fresh()):
                await self._take_up()
            await self._run_until_done()
        except _Finished:
            assert self.machine.final is not None
            await self._finish_from_journal(self.machine.final)
        except _LostClaim as lost:
            self._log_lost(lost)
            if not lost.holds(self.delivery.stream_seq):
                await self.delivery.ack()  # another command's run owns the invocation now
        except _NotIdle as e:
            log.info("invocation %s: %s; acking this command", self.id, e.reason or "not idle")
            await self.delivery.ack()

    def _fresh(self, held_before: bool) -> bool:
        st = self.state.state if self.state is not None else None
        return (
            self.cmd.kind == pb.COMMAND_KIND_START
            and self.delivery.num_delivered == 1
            and not held_before
            and (st is None or (st.status == pb.STATUS_PENDING and not st.journal_length))
        )

    async def _start_fresh(self) -> bool:
        """Move the state from PENDING to RUNNING under this command; False if it moved on
        meanwhile (another start won, a client paused it, it finished: see _take_up)."""
        # RUNNING before the first step: a client pausing now must see it running (a
        # deferred write let `pause` mark a run in flight "paused"; it was reverted).
        return await self.write_state(
            status=pb.STATUS_RUNNING,
            waiting_for="",
            run_command_seq=self.delivery.stream_seq,
            only_if=(pb.STATUS_PENDING,),
        )

    async def _take_up(self) -> None:
        """Decide by the journal whether this delivery runs the invocation, and claim it.

        Raises _Finished (it has finished: settle), _NotIdle (another command's run has it,
        or it has not started and this is no start: ack this command).
        """
        state = self.state.state if self.state is not None else None
        await self.load_journal(
            min_seq=self.cmd.min_journal_seq, min_entries=state.journal_length if state else 0
        )
        if self.machine.final is not None:
            raise _Finished
        if not self.machine.suspended and self._owner() is None:
            await self._take_unstarted()
        elif not self._claimable():
            raise _NotIdle(f"in progress under command {self._owner()}")
        # A CLAIM fences whoever wrote before it; on a conflict the journal is read again and
        # the claim stands only if it is still ours to take (see _append).
        seq = self.delivery.stream_seq
        claim = pb.JournalEntry(kind=pb.ENTRY_KIND_CLAIM, timestamp_ms=_now_ms(), command_seq=seq)
        await self.append(claim, claim=True)
        if not await self.write_state(
            status=pb.STATUS_RUNNING, waiting_for="", run_command_seq=seq
        ):
            raise _NotIdle("it finished meanwhile")  # the state says so; the journal will

    async def _take_unstarted(self) -> None:
        """No run has started: only a start takes it, by moving the state to RUNNING under its
        command (revision-checked against what it read: one start wins)."""
        if self.cmd.kind != pb.COMMAND_KIND_START:
            raise _NotIdle("not started yet: its start command runs it")
        seq = self.delivery.stream_seq
        for _ in range(10):
            st = self.state.state if self.state is not None else None
            if st is not None and st.status in TERMINAL:
                raise _NotIdle(f"already {pb.Status.Name(st.status)}")
            if st is not None and st.status == pb.STATUS_RUNNING:
                owner = st.run_command_seq
                if owner == seq or (owner == 0 and self.delivery.num_delivered > 1):
                    return  # our own command's run (its earlier delivery is over)
                raise _NotIdle(f"started by command {owner or 'of an older processor'}")
            only_if = (st.status,) if st is not None else ()
            if await self.write_state(
                status=pb.STATUS_RUNNING, waiting_for="", run_command_seq=seq, only_if=only_if
            ):
                return
        raise DurableError(f"state of {self.id} keeps changing under us; giving up this run")

    async def _settle_finished(self) -> None:
        """Ack the command of a finished invocation, handing its key on first: a crash in
        between redelivers the command, which hands the key on again (a finished holder would
        strand everyone queued behind it)."""
        if self._keyed:
            await self._release_key()
            await self.delivery.ack_sync()
        else:
            await self.delivery.ack(finished=True)

    # -- per-key ordering ------------------------------------------------------------------

    @property
    def _keyed(self) -> bool:
        """Invocations submitted with their own partition key run one at a time per key."""
        key = self.cmd.partition_key
        return bool(key) and key != self.id

    async def _finished(self, invocation_id: str) -> bool:
        rec = await self.t.get_state(invocation_id)
        return rec is None or rec.state.status in TERMINAL

    async def _take_key(self) -> str | None:
        """Take the partition key ("took"), find it ours already ("held"), or queue behind
        its holder, ack the start and return None."""
        key = self.cmd.partition_key
        for attempt in range(50):
            if attempt and await self._finished(self.id):
                await self.delivery.ack()  # a turn ran it meanwhile; don't queue it again
                return None
            data, revision = await self.t.key_record(key)
            rec = KeyRecord.parse(data)
            if rec.active == self.id:
                return "held"
            holder_done = bool(rec.active) and await self._finished(rec.active)
            ticket = rec.ticket_of(self.id) or self.delivery.stream_seq
            earlier = ""
            if rec.may_take(ticket, holder_done):
                for cmd in await self.t.queued_commands(key, ticket):
                    other = cmd.invocation_id
                    if (
                        cmd.kind == pb.COMMAND_KIND_START
                        and other not in (self.id, rec.active)
                        and rec.ticket_of(other) is None
                        and not await self._finished(other)
                    ):
                        earlier = other  # submitted before us, not yet taken in: it goes first
                        break
                if not earlier:
                    rec.take(self.id, ticket)
                    try:
                        await self.t.put_key_record(key, rec.dump(), revision)
                    except StateConflict:
                        continue
                    return "took"
            rec.enqueue(self.id, ticket, self.cmd.workflow)
            turn = rec.lowest_waiting() if (not rec.active or holder_done) and not earlier else None
            try:
                await self.t.put_key_record(key, rec.dump(), revision)
            except StateConflict:
                continue
            behind = earlier or rec.active or (turn[1] if turn else "")
            await self.write_state(
                status=pb.STATUS_PENDING,
                waiting_for=f"partition key {key!r} (behind {behind})",
                only_if=(pb.STATUS_PENDING,),  # never over a run that a turn started meanwhile
            )
            if turn is not None and turn[1] != self.id:
                await self._give_turn(turn)  # the holder finished without handing over
            await self.delivery.ack()
            log.info("invocation %s queued on partition key %r behind %s", self.id, key, behind)
            return None
        raise DurableError(f"partition key {key!r} keeps changing; retrying later")

    async def _release_key(self) -> None:
        """Free the key (if we hold it) and give the turn to the lowest unfinished ticket."""
        key = self.cmd.partition_key or (self.state.state.partition_key if self.state else "")
        turn: tuple[int, str, str] | None = None
        for _ in range(50):
            data, revision = await self.t.key_record(key)
            rec = KeyRecord.parse(data)
            if rec.active and rec.active != self.id:
                return  # someone else holds it: they hand over when done
            rec.release(self.id)
            stale = [w for w in rec.waiting if await self._finished(w[1])]
            rec.waiting = [w for w in rec.waiting if w not in stale]
            turn = rec.lowest_waiting()
            if (
                not stale
                and rec.active == ""
                and data is not None
                and revision
                and (KeyRecord.parse(data).active != self.id)
            ):
                break  # nothing to write: the key was free already
            try:
                await self.t.put_key_record(key, rec.dump(), revision)
                break
            except StateConflict:
                continue
        if turn is not None:
            await self._give_turn(turn)

    async def _give_turn(self, turn: tuple[int, str, str]) -> None:
        _, invocation_id, workflow = turn
        await self.t.publish_command(
            pb.Command(
                invocation_id=invocation_id,
                workflow=workflow,
                partition_key=self.cmd.partition_key,
                kind=pb.COMMAND_KIND_START,
            ),
            # One turn per hand-over: a turn that finds an earlier start still on its way
            # queues again and needs a new turn later, which must not be deduplicated away.
            msg_id=f"turn:{invocation_id}:{self.id}",
        )

    def _log_lost(self, lost: _LostClaim) -> None:
        writers = sorted({r.entry.writer for r in lost.records})
        log.warning(
            "invocation %s: journal moved on under %s (appended by %s); abandoning this run",
            self.id,
            self.token,
            ", ".join(writers),
        )

    async def _run_until_done(self) -> None:
        while True:
            try:
                await self._run_once()
                return
            except _Rerun:
                log.debug("invocation %s: rerunning with new journal entries", self.id)
                self.machine = ReplayMachine(self.id, self.entries)

    async def _run_once(self) -> None:
        w = self.w
        name = self.cmd.workflow or (self.state.state.workflow if self.state else "")
        if name not in w.registry:
            await self._finish(
                pb.STATUS_FAILED,
                failure=pb.Failure(
                    type="UnknownWorkflow", message=w.registry.unknown_message(name)
                ),
            )
            return
        wf = w.registry.get(name)
        deadline = self.state.state.deadline_ms if self.state is not None else 0
        if deadline and _now_ms() >= deadline:
            await self._finish(pb.STATUS_FAILED, failure=_timed_out(deadline))
            return
        args = self.state.state.args if self.state is not None else self.cmd.args
        created = self.state.state.created_at_ms if self.state is not None else 0
        self.waits, self.rerun = (), False
        self.interrupt.clear()
        ctx = Context(
            invocation_id=self.id,
            workflow=name,
            partition_key=self.cmd.partition_key,
            machine=self.machine,
            journal=self,
            channels=w.channels,
            start_time_ms=created or self.cmd.created_at_ms or _now_ms(),
            interceptors=w.interceptors,
            attempt=self.delivery.num_delivered,
            default_retry=wf.retry,
        )
        self.ctx = ctx

        async def body(_: WorkflowInput) -> Any:
            if not wf.takes_input:
                return await wf.fn(ctx)
            try:
                value = _codec.decode_as(args, wf.input_type)
            except InvalidInputError as e:
                raise _BadInput(f"input of {name} does not match its declared type: {e}") from e
            return await wf.fn(ctx, value)

        run = chain_workflows(w.interceptors, body)
        # Wake-ups, hand-overs and timers carry no metadata: the invocation keeps its trace.
        headers = dict(self.state.state.trace_context) if self.state is not None else {}
        headers.update(self.cmd.metadata)
        if not self.entries:  # the first run: how long it waited for a processor
            self._observe("started", seconds=max(_now_ms() - self._due_ms(), 0) / 1000)
        inp = WorkflowInput(
            self.id,
            name,
            self.cmd.partition_key,
            self.delivery.num_delivered,
            headers,
            resumed=bool(self.entries),
            journal=tuple(self.entries),
        )
        task: asyncio.Future[Any] = asyncio.ensure_future(run(inp))
        self.task, self._cancelling = task, False
        interrupted = asyncio.create_task(self.interrupt.wait())
        waiting: set[asyncio.Future[Any]] = {task, interrupted}
        expiry = None
        if deadline:
            expiry = asyncio.create_task(asyncio.sleep((deadline - _now_ms()) / 1000))
            waiting.add(expiry)
        try:
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        finally:
            interrupted.cancel()
            if expiry is not None:
                expiry.cancel()
        if expiry is not None and expiry.done() and not expiry.cancelled() and not task.done():
            task.cancel()  # past the execution timeout: stop where it is and fail
            with contextlib.suppress(BaseException):
                await task
            await self._finish(pb.STATUS_FAILED, failure=_timed_out(deadline))
            return
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            self.children = list(ctx.children)
            if self.rerun:
                raise _Rerun
            if deadline and deadline - _now_ms() < 2000:
                # The execution timeout comes before any wake-up could: fail at it.
                await asyncio.sleep(max(deadline - _now_ms(), 0) / 1000)
                await self._finish(pb.STATUS_FAILED, failure=_timed_out(deadline))
                return
            await self._suspend()
            return
        self.children = list(ctx.children)
        try:
            result = task.result()
        except InvocationCancelledError:
            await self._finish(
                pb.STATUS_CANCELLED,
                failure=pb.Failure(type="InvocationCancelledError", message="cancelled by request"),
            )
            return
        except asyncio.CancelledError:
            if self._cancelling:
                raise _Rerun from None  # interrupted off a step boundary: deliver it on replay
            raise
        except SuspendExecution:
            raise  # the engine's own control flow (_LostClaim, _Finished, _Rerun, ...)
        except Exception as e:  # noqa: BLE001 - the workflow failed; journal why
            if is_engine_error(e):
                # A NATS error the workflow let through (a write of the engine's own that
                # NATS refused): release the run, never journal it as the workflow's failure.
                raise _EngineFailure(e) from e
            await self._finish(pb.STATUS_FAILED, failure=self._failure(e, ctx))
            return
        if ctx.nondeterminism is not None:
            await self._finish(pb.STATUS_FAILED, failure=self._failure(ctx.nondeterminism, ctx))
            return
        try:
            output = _codec.encode(result)
        except InvalidInputError as e:
            await self._finish(
                pb.STATUS_FAILED, failure=pb.Failure(type="InvalidOutput", message=str(e))
            )
            return
        if ctx.cancel_delivered:  # it handled the cancellation and returned: still cancelled
            await self._finish(pb.STATUS_CANCELLED, output=output)
            return
        await self._finish(pb.STATUS_COMPLETED, output=output)

    @staticmethod
    def _failure(e: BaseException, ctx: Context) -> pb.Failure:
        if ctx.nondeterminism is not None:
            nd = ctx.nondeterminism
            return pb.Failure(type="NonDeterminismError", message=str(nd), step=nd.step)
        if isinstance(e, _BadInput):
            return pb.Failure(type="InvalidInputError", message=str(e))
        failure = pb.Failure(type=type(e).__name__, message=str(e) or type(e).__name__)
        if isinstance(e, StepFailedError):
            failure.step, failure.code = e.step, e.code
        return failure

    async def _suspend(self) -> None:
        """Every step is parked: journal the suspension, arm the timers, free the slot."""
        await self.append(pb.JournalEntry(kind=pb.ENTRY_KIND_SUSPENDED, timestamp_ms=_now_ms()))
        wake = pb.Command(
            invocation_id=self.id,
            workflow=self.cmd.workflow,
            partition_key=self.cmd.partition_key,
            kind=pb.COMMAND_KIND_WAKE,
            min_journal_seq=self.last_seq,
        )
        deadline = self.state.state.deadline_ms if self.state is not None else 0
        if deadline:  # wake up at the execution timeout to fail on time
            await self.t.schedule_command(
                wake, at_ms=deadline, key=f"{self.id}.deadline", msg_id=f"deadline:{self.id}"
            )
        for wait in self.waits:
            if wait.wake_at_ms:
                await self.t.schedule_command(
                    wake,
                    at_ms=wait.wake_at_ms,
                    key=f"{self.id}.t{wait.step}{wait.tag}",
                    msg_id=f"timer:{self.id}:{wait.step}{wait.tag}",
                )
        waiting = "; ".join(w.what for w in self.waits)
        status = pb.STATUS_PAUSED if self.machine.paused else pb.STATUS_SUSPENDED
        await self.write_state(status=status, waiting_for=waiting)
        await self.delivery.ack()
        log.info("invocation %s suspended: waiting for %s", self.id, waiting)

    async def _finish(
        self, status: int, *, output: pb.Payload | None = None, failure: pb.Failure | None = None
    ) -> None:
        entry = pb.JournalEntry(kind=_FINAL_KIND[status], timestamp_ms=_now_ms())
        if output is not None:
            entry.output.CopyFrom(output)
        if failure is not None:
            entry.failure.CopyFrom(failure)
        await self.append(entry)
        await self._finish_from_journal(entry)

    async def _finish_from_journal(self, entry: pb.JournalEntry) -> None:
        """Make the state agree with the journal's final entry, tell the parent, ack."""
        completed = entry.kind == pb.ENTRY_KIND_COMPLETED
        status = next(s for s, k in _FINAL_KIND.items() if k == entry.kind)
        changes: dict[str, Any] = {"status": status, "waiting_for": ""}
        if entry.HasField("output"):
            changes["output"] = entry.output
        if entry.HasField("failure"):
            changes["failure"] = entry.failure
        # The journal has the outcome: tell a waiting client now, write the state after.
        with contextlib.suppress(Exception):
            await self.t.publish_result(self._next_state(self.state, changes), self.entries)
        await self.write_state(final=True, **changes)
        if self.state is not None and self.state.state.notify_parent:
            await self._report_to_parent(self.state.state, entry)
        await self._settle_finished()
        self._observe(
            "finished",
            status=pb.Status.Name(status).removeprefix("STATUS_").lower(),
            seconds=max(entry.timestamp_ms - self._due_ms(), 0) / 1000,
        )
        if completed:
            self.w.completed += 1
        else:
            self.w.failed += 1
        log.info(
            "invocation %s %s (%d journal entries)",
            self.id,
            pb.Status.Name(status).removeprefix("STATUS_").lower(),
            len(self.entries),
        )

    async def _report_to_parent(self, st: pb.ExecutionState, final: pb.JournalEntry) -> None:
        parent = st.parent_id
        result = pb.JournalEntry(
            kind=pb.ENTRY_KIND_CHILD_RESULT,
            name=self.id,
            timestamp_ms=_now_ms(),
            writer=f"child:{self.id}",
        )
        if final.HasField("output"):
            result.output.CopyFrom(final.output)
        if final.HasField("failure"):
            result.failure.CopyFrom(final.failure)
        try:
            seq = await intake.append_external(
                self.t, parent, result, f"child-result:{self.id}", check=_unfinished(parent)
            )
        except InvocationFinishedError:
            return
        await self.t.publish_wake(parent, st.parent_workflow, st.parent_partition_key, seq)


def _trace_id(headers: Mapping[str, str]) -> str:
    """The trace id (32 hex digits) of a W3C ``traceparent`` header, or ""."""
    parts = headers.get("traceparent", "").split("-")
    return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else ""


def _timed_out(deadline_ms: int) -> pb.Failure:
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(deadline_ms / 1000))
    return pb.Failure(
        type="ExecutionTimeoutError", message=f"execution timeout: not finished by {when}"
    )


def _unfinished(invocation_id: str) -> Callable[[list[JournalRecord]], None]:
    def check(records: list[JournalRecord]) -> None:
        if any(r.entry.kind in FINAL_KINDS for r in records):
            raise InvocationFinishedError(f"invocation {invocation_id} has already finished")

    return check


class _LostClaim(SuspendExecution):
    """Another processor appended to the journal: this run must stop."""

    def __init__(self, records: list[JournalRecord]) -> None:
        super().__init__("lost claim")
        self.records = records

    def holds(self, stream_seq: int) -> bool:
        """Whether the new holder runs on this very command (so we must not ack it)."""
        return any(r.entry.command_seq == stream_seq for r in self.records)


class _EngineFailure(SuspendExecution):
    """A journal write or read of the engine failed for a reason that is not the workflow's."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.cause = cause


class _Finished(SuspendExecution):
    """The journal shows the invocation finished (another processor completed it)."""


class _NotIdle(SuspendExecution):
    """A wake-up found the invocation taken by someone else."""


class _LostHold(SuspendExecution):
    """This processor may no longer hold the command: stop before the next step."""


class _BadInput(InvalidInputError):
    """The stored input does not match the workflow's declared input type."""
