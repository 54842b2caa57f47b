"""The engine: consumes commands and drives invocations through their journals.

For each delivered command:
1. read the state; a finished invocation is acked and left alone (intake dedup);
2. read the journal, unless this is a first delivery of a new invocation, and on a
   redelivery append a CLAIM entry, which fences out any earlier holder of the command;
3. run the workflow; each executed step appends its outcome with the expected last
   subject sequence, so a writer that lost its claim fails its next write and stops;
4. append COMPLETED or FAILED, write the final state, ack.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Mapping, Sequence
from typing import Any

from google.protobuf.message import DecodeError

from durable_core import _codec
from durable_core._grpc import ChannelPool
from durable_core._journal import FINAL_KINDS, ReplayMachine
from durable_core._naming import check_invocation_id
from durable_core._pb.durable.v1 import durable_pb2 as pb
from durable_core._transport import (
    Delivery,
    JournalConflict,
    StateConflict,
    StateRecord,
    Transport,
)
from durable_core.config import WorkerConfig
from durable_core.context import Context
from durable_core.errors import (
    DurableError,
    InvalidInputError,
    NatsUnavailableError,
    StepFailedError,
    SuspendExecution,
)
from durable_core.interceptors import Interceptor, WorkflowInput, chain_workflows
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
        self._tasks: set[asyncio.Task[None]] = set()
        self._slot_freed = asyncio.Event()
        self._stopping = asyncio.Event()
        self.completed = 0
        self.failed = 0

    @property
    def in_flight(self) -> int:
        """Executions running now."""
        return len(self._tasks)

    def stop(self) -> None:
        """Ask the worker to stop fetching and finish (see ``run``)."""
        self._stopping.set()
        self._slot_freed.set()

    async def run(self) -> None:
        """Consume until ``stop()``; then let in-flight work finish or release it."""
        consumer = await self.transport.command_consumer(self.config)
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
                    await asyncio.sleep(0.5)
                    continue
                for d in deliveries:
                    task = asyncio.create_task(self._handle(d))
                    self._tasks.add(task)
                    task.add_done_callback(self._done)
        finally:
            await self._drain()
            await consumer.close()
            await self.channels.close()

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
        except (DecodeError, InvalidInputError, ValueError) as e:
            log.error("terminating malformed command (stream seq %d): %s", delivery.stream_seq, e)
            await delivery.term()
            return
        execution = _Execution(self, cmd, delivery)
        try:
            await execution.run()
        except asyncio.CancelledError:
            # Shutdown: hand the command back at once; the journal keeps all progress.
            with contextlib.suppress(Exception):
                await delivery.nak()
            raise
        except NatsUnavailableError as e:
            log.warning("invocation %s: NATS unavailable (%s); releasing it", cmd.invocation_id, e)
            with contextlib.suppress(Exception):
                await delivery.nak(delay=2.0)


class _Execution:
    """One delivery of one invocation, from state check to ack."""

    def __init__(self, worker: Worker, cmd: pb.Command, delivery: Delivery) -> None:
        self.w = worker
        self.t = worker.transport
        self.cmd = cmd
        self.id = cmd.invocation_id
        self.delivery = delivery
        self.token = f"{worker.processor_id}/{secrets.token_hex(4)}"
        self.machine = ReplayMachine(self.id)
        self.last_seq = 0
        self.length = 0  # entries in the journal
        self.lock = asyncio.Lock()
        self.state: StateRecord | None = None

    # -- journal ---------------------------------------------------------------------------

    async def append(self, entry: pb.JournalEntry) -> None:
        """Append fenced by the last sequence we know; a conflict means we lost the claim."""
        async with self.lock:
            entry.index = self.length + 1
            entry.writer = self.token
            msg_id = f"{self.id}:{entry.index}:{self.token}"
            try:
                self.last_seq = await self.t.append(self.id, entry, self.last_seq, msg_id)
            except JournalConflict as e:
                log.warning(
                    "invocation %s: journal moved on under %s (%s); abandoning this run",
                    self.id,
                    self.token,
                    e,
                )
                raise SuspendExecution("lost claim") from e
            self.length += 1
            self.machine.record(entry)

    async def append_step(self, entry: pb.JournalEntry) -> None:
        await self.append(entry)

    async def load_journal(self) -> None:
        records = await self.t.read_journal(self.id)
        for rec in records:
            self.machine.record(rec.entry)
        self.length = len(records)
        self.last_seq = records[-1].seq if records else 0

    # -- state -----------------------------------------------------------------------------

    async def write_state(self, **changes: Any) -> None:
        """Update the state summary with a revision check, re-reading on conflict."""
        for _ in range(5):
            rec = self.state or await self.t.get_state(self.id)
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
            if rec is not None and rec.state.status in TERMINAL and "final" not in changes:
                self.state = rec
                return
            changes.pop("final", None)
            for key, value in changes.items():
                if isinstance(value, pb.Payload | pb.Failure):
                    getattr(st, key).CopyFrom(value)
                else:
                    setattr(st, key, value)
            st.updated_at_ms = _now_ms()
            st.journal_length = self.length
            st.processor = self.w.processor_id
            try:
                if rec is None:
                    created = await self.t.create_state(st)
                    if created is None:
                        self.state = None
                        continue
                    self.state = created
                else:
                    self.state = await self.t.update_state(st, rec.revision)
                return
            except StateConflict:
                self.state = None  # someone else wrote (a client, a lifecycle change): re-read
        raise DurableError(f"state of {self.id} keeps changing under us; giving up this run")

    # -- the run ---------------------------------------------------------------------------

    async def run(self) -> None:
        self.state = await self.t.get_state(self.id)
        if self.state is not None and self.state.state.status in TERMINAL:
            log.info(
                "invocation %s already %s; acking duplicate delivery",
                self.id,
                pb.Status.Name(self.state.state.status),
            )
            await self.delivery.ack()
            return
        fresh = self.delivery.num_delivered == 1 and (
            self.state is None or self.state.state.status == pb.STATUS_PENDING
        )
        heartbeat = asyncio.create_task(self._heartbeat())
        try:
            try:
                await self._claim(fresh)
            except SuspendExecution:
                # An optimistic first write collided: the journal was not empty after all.
                await self.load_journal()
                await self._claim(False)
            if self.machine.final is not None:
                await self._finish_from_journal(self.machine.final)
                return
            await self._run_workflow()
        except SuspendExecution as e:
            log.info("invocation %s: run stopped (%s)", self.id, e.reason)
        finally:
            heartbeat.cancel()

    async def _claim(self, fresh: bool) -> None:
        if not fresh:
            await self.load_journal()
            if self.machine.final is None and self.length > 0:
                await self.append(pb.JournalEntry(kind=pb.ENTRY_KIND_CLAIM, timestamp_ms=_now_ms()))
        if self.machine.final is None:
            await self.write_state(status=pb.STATUS_RUNNING)

    async def _heartbeat(self) -> None:
        interval = self.w.config.heartbeat_interval
        if interval <= 0:
            return
        while True:
            await asyncio.sleep(interval)
            try:
                await self.delivery.in_progress()
            except Exception as e:  # noqa: BLE001 - a missed heartbeat is not fatal
                log.debug("heartbeat for %s failed: %s", self.id, e)

    async def _run_workflow(self) -> None:
        w = self.w
        name = self.cmd.workflow
        if name not in w.registry:
            await self._finish(
                pb.STATUS_FAILED,
                failure=pb.Failure(
                    type="UnknownWorkflow", message=w.registry.unknown_message(name)
                ),
            )
            return
        wf = w.registry.get(name)
        ctx = Context(
            invocation_id=self.id,
            workflow=name,
            partition_key=self.cmd.partition_key,
            machine=self.machine,
            journal=self,
            channels=w.channels,
            start_time_ms=self.cmd.created_at_ms or _now_ms(),
            interceptors=w.interceptors,
            attempt=self.delivery.num_delivered,
        )

        async def body(_: WorkflowInput) -> Any:
            if wf.takes_input:
                return await wf.fn(ctx, _codec.decode(self.cmd.args))
            return await wf.fn(ctx)

        run = chain_workflows(
            w.interceptors,
            body,
        )
        inp = WorkflowInput(
            self.id,
            name,
            self.cmd.partition_key,
            self.delivery.num_delivered,
            dict(self.cmd.metadata),
        )
        try:
            result = await run(inp)
        except SuspendExecution:
            raise
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - the workflow failed; journal why
            failure = pb.Failure(type=type(e).__name__, message=str(e))
            if isinstance(e, StepFailedError):
                failure.step, failure.code = e.step, e.code
            if ctx.nondeterminism is not None:
                failure = pb.Failure(
                    type="NonDeterminismError",
                    message=str(ctx.nondeterminism),
                    step=ctx.nondeterminism.step,
                )
            log.info("invocation %s failed: %s", self.id, failure.message)
            await self._finish(pb.STATUS_FAILED, failure=failure)
            return
        if ctx.nondeterminism is not None:
            await self._finish(
                pb.STATUS_FAILED,
                failure=pb.Failure(
                    type="NonDeterminismError",
                    message=str(ctx.nondeterminism),
                    step=ctx.nondeterminism.step,
                ),
            )
            return
        try:
            output = _codec.encode(result)
        except InvalidInputError as e:
            await self._finish(
                pb.STATUS_FAILED, failure=pb.Failure(type="InvalidOutput", message=str(e))
            )
            return
        await self._finish(pb.STATUS_COMPLETED, output=output)

    async def _finish(
        self, status: int, *, output: pb.Payload | None = None, failure: pb.Failure | None = None
    ) -> None:
        entry = pb.JournalEntry(
            kind=pb.ENTRY_KIND_COMPLETED if status == pb.STATUS_COMPLETED else pb.ENTRY_KIND_FAILED,
            timestamp_ms=_now_ms(),
        )
        if output is not None:
            entry.output.CopyFrom(output)
        if failure is not None:
            entry.failure.CopyFrom(failure)
        await self.append(entry)
        await self._finish_from_journal(entry)

    async def _finish_from_journal(self, entry: pb.JournalEntry) -> None:
        """Make the state agree with the journal's final entry, then ack."""
        completed = entry.kind == pb.ENTRY_KIND_COMPLETED
        changes: dict[str, Any] = {
            "status": pb.STATUS_COMPLETED if completed else pb.STATUS_FAILED,
            "final": True,
        }
        if entry.HasField("output"):
            changes["output"] = entry.output
        if entry.HasField("failure"):
            changes["failure"] = entry.failure
        await self.write_state(**changes)
        await self.delivery.ack()
        if completed:
            self.w.completed += 1
        else:
            self.w.failed += 1
        log.info(
            "invocation %s %s (%d journal entries)",
            self.id,
            "completed" if completed else "failed",
            self.length,
        )


assert FINAL_KINDS  # the journal module defines what "final" means
