"""The processor's engine: pulls commands and runs invocations through their journals.

A ``Worker`` keeps the fetch loop (as many deliveries in hand as it has free slots), the
processor lease and each delivery's in-progress acks, hands a redelivery of a command it runs
to that run, and on shutdown lets in-flight runs finish or hands their commands back. What one
delivery does is ``durable_core.engine._execution``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
import time
from collections.abc import Awaitable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from google.protobuf.message import DecodeError

from durable_core._grpc import ChannelPool
from durable_core._naming import (
    ANY_ROUTE,
    check_invocation_id,
    check_route,
    check_workflow_name,
    encode_partition_key,
)
from durable_core._pb.durable.v1 import durable_pb2 as pb
from durable_core._transport import CommandConsumers, CorruptJournalError, Delivery, Transport
from durable_core.config import EngineConfig, NatsConfig, WorkerConfig
from durable_core.engine._env import RunEnv, being_cancelled, now_ms, wait_out
from durable_core.engine._execution import Execution
from durable_core.engine._fleet import FleetMember
from durable_core.engine._lease import ProcessorLease
from durable_core.engine._signals import EngineFailure, LostHold
from durable_core.errors import (
    DurableError,
    InvalidInputError,
    NatsUnavailableError,
    PayloadUnavailableError,
    SuspendExecution,
)
from durable_core.interceptors import EngineEvent, Interceptor, observe
from durable_core.plugins import ServiceDefaults, WorkflowRegistry

if TYPE_CHECKING:
    from durable_core.admin import Engine

__all__ = ["Worker"]

log = logging.getLogger("durable_core.worker")

NOT_SERVED_DELAY = 30.0  # seconds before a command of a workflow not served here comes back


# The most threads a processor gives sync steps (``max_concurrent`` may be 100,000).
_MAX_STEP_THREADS = 1024


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
        self._service_defaults = service_defaults
        self.processor_id = config.processor_id or f"{socket.gethostname()}-{os.getpid()}"
        self.lease = ProcessorLease(
            transport, self.processor_id, config.lease_ttl.total_seconds(), lambda: self._held
        )
        self.fleet = FleetMember(
            transport,
            self.processor_id,
            registry,
            config.lease_ttl.total_seconds(),
            services=(service_defaults or {}).keys(),
        )
        self._held: set[Delivery] = set()  # commands taken and not yet settled
        self._beats: dict[Delivery, asyncio.Task[None]] = {}  # their heartbeats
        self._by_seq: dict[int, tuple[Delivery, asyncio.Task[None]]] = {}  # by command number
        self._tasks: set[asyncio.Task[None]] = set()
        # By invocation id, for cancellation: every execution this processor has of it. Other
        # commands of a running invocation (a wake, a redelivery) are handled beside its run;
        # one entry per id let such a command replace the run's, and a cancel then missed it.
        self._running: dict[str, set[Execution]] = {}
        self._slot_freed = asyncio.Event()
        self._stopping = asyncio.Event()
        self._consumer: CommandConsumers | None = None  # set once consuming
        # Set once registered in the fleet and consuming: from then on intake accepts this
        # worker's workflows (await it before invoking them in the same process).
        self.consuming = asyncio.Event()
        self._fetch_error = ""
        self.completed = 0
        self.failed = 0
        self._env = RunEnv(
            transport=transport,
            registry=registry,
            interceptors=self.interceptors,
            channels=self.channels,
            processor_id=self.processor_id,
            ack_wait=config.ack_wait.total_seconds(),
            lease=self.lease,
            leases_on=self.leases_on,
            stopping=self._stopping,
            holds=self.holds,
            counted=self._count,
        )

    @classmethod
    async def connect(
        cls,
        nats: NatsConfig,
        engine: EngineConfig,
        registry: WorkflowRegistry,
        config: WorkerConfig,
        *,
        interceptors: Sequence[Interceptor] = (),
        channels: ChannelPool | None = None,
        service_defaults: Mapping[str, str] | None = None,
    ) -> Worker:
        """Connect to NATS, create the engine's streams and buckets (or check that what
        exists matches ``engine``: processors are the one place they are made), and make a
        worker on them. ``close`` closes the connection.

        Raises:
            NatsUnavailableError: NATS cannot be reached.
            ConfigError: what exists does not match the configuration.
        """
        transport = await Transport.connect(nats, engine, create=True)
        return cls(
            transport,
            registry,
            config,
            interceptors=interceptors,
            channels=channels,
            service_defaults=service_defaults,
        )

    @property
    def engine(self) -> Engine:
        """The worker's connection to its engine (for probes, metrics and a client)."""
        from durable_core.admin import Engine  # admin imports the client, which imports this

        return Engine(self.transport)

    async def close(self) -> None:
        """Close the worker's connection (after :meth:`run` returned)."""
        await self.transport.close()

    def _count(self, completed: bool) -> None:
        if completed:
            self.completed += 1
        else:
            self.failed += 1

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
        if not len(self.registry):
            # It consumes nothing: ready, a deployment of it would look healthy while
            # every invocation it was meant to run waits (or is refused as unserved).
            return "serves no workflows (no plugin loaded)"
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

    def routes(self) -> list[tuple[str, str]]:
        """The ``(workflow, route)`` pairs this processor consumes: every workflow it has, on
        the route any processor of it may take (``any``) and on its own version's (an
        invocation pinned to the code it started on)."""
        out: list[tuple[str, str]] = []
        for wf in self.registry:
            out += [(wf.name, ANY_ROUTE), (wf.name, wf.code.token)]
        return out

    def stop(self) -> None:
        """Ask the worker to stop fetching and finish (see ``run``)."""
        if not self._stopping.is_set():
            log.info("stopping: no new commands; %d executions in flight", len(self._tasks))
        self._stopping.set()
        self._slot_freed.set()

    async def run(self) -> None:
        """Consume until ``stop()``; then let in-flight work finish or release it.

        Raises:
            ConfigError: a gRPC service that a workflow here calls has no address (see
                ``ChannelPool.check_addresses``), two plugins give different default
                addresses for a service the configuration does not set (see
                ``ServiceDefaults.check_configured``), or the engine's layout is not this one's.
        """
        if isinstance(self._service_defaults, ServiceDefaults):
            self._service_defaults.check_configured(self.config.services)
        # Sync steps' threads, this run's own (made as they are needed): the loop's default
        # pool has min(32, cores + 4), and a step that waited there for a thread started
        # long after its run had moved on (paused, cancelled). One per execution slot, and at
        # least the default pool's 32: a step's timeout counts its wait for a thread, and a
        # timed-out sync step keeps its thread.
        threads = ThreadPoolExecutor(
            min(max(self.config.max_concurrent, 32), _MAX_STEP_THREADS), thread_name_prefix="step"
        )
        self._env = dataclasses.replace(self._env, threads=threads)
        self.channels.check_addresses((wf.name, wf.fn) for wf in self.registry)
        # Binding the consumers takes no command yet; it refuses an engine of the layout
        # before routing (ConfigError), before this processor leaves any trace.
        consumer = await self.transport.command_consumer(self.config, self.routes())
        lease = None
        if self.leases_on:
            # The lease exists before the first command is taken: a run checks it before
            # every step, and a processor that dies holding commands has them re-driven.
            await self.lease.create(self._stopping)
            lease = asyncio.create_task(self.lease.keep())
        # In the fleet registry before the first command is taken: intake accepts this
        # processor's workflows as soon as it consumes (and readiness implies registered).
        await self.fleet.join(self._stopping)
        control = await self.transport.subscribe_control(self._on_control)
        self._consumer = consumer
        self.consuming.set()
        log.info(
            "processor %s consuming (max_concurrent=%d, ack_wait=%ss, workflows: %s)",
            self.processor_id,
            self.config.max_concurrent,
            self.config.ack_wait.total_seconds(),
            ", ".join(self.registry.names()) or "none",
        )
        registration = asyncio.create_task(self.fleet.keep())
        rechecks = asyncio.create_task(self._recheck_after_reconnects())
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
            rechecks.cancel()
            await self._shut_down(consumer, lease, registration, control)
            threads.shutdown(wait=False)  # the drain waited for the steps' threads

    async def _shut_down(
        self,
        consumer: CommandConsumers,
        lease: asyncio.Task[None] | None,
        registration: asyncio.Task[None],
        control: Any,
    ) -> None:
        """Stop pulling, let in-flight work finish (``shutdown_grace``) or hand it back, then
        leave the lease and the fleet. Every step after the drain is bounded: a NATS that does
        not answer must not keep a SIGTERMed processor alive past its grace (what it left
        behind lapses by TTL: the lease is re-driven, the fleet record expires)."""
        # Stop pulling first, so that what _drain hands back goes to other processors.
        await _bounded("closing the command consumers", consumer.close(), 5.0)
        await self._drain()
        if lease is not None:
            for _ in range(4):  # a cancel can be swallowed by a wait_for it lands in
                lease.cancel()
                await asyncio.wait({lease}, timeout=0.5)
                if lease.done():
                    break
            else:
                log.warning("shutdown: the lease renewal did not stop within 2s")
            await _bounded("deleting the lease", self.lease.delete(), 3.0)  # a clean exit
        registration.cancel()
        await _bounded("leaving the fleet registry", self.fleet.leave(), 3.0)
        await _bounded("unsubscribing from control requests", control.unsubscribe(), 2.0)
        await _bounded("closing the gRPC channels", self.channels.close(), 3.0)

    def _take(self, d: Delivery) -> None:
        """Start handling a delivery; a redelivery of a command this process runs is absorbed
        by that run, or (if the run gave its delivery up) waits until that run has ended."""
        current = self._by_seq.get(d.command_seq)
        if current is not None:
            held, task = current
            if not (held.lost or held.settled) and d.num_delivered == held.num_delivered + 1:
                log.info(
                    "command %d delivered again (delivery %d) while this processor runs it: "
                    "the run goes on with the new delivery",
                    d.command_seq,
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
        self._by_seq[d.command_seq] = (d, task)
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
        try:
            await asyncio.wait({earlier})
        except asyncio.CancelledError:
            # Shutdown: hand ``d`` back rather than hold it (with heartbeats) until the
            # connection closes, but only once the earlier run has ended (the drain stops it
            # too; it may be waiting for a step's thread): never beside a step still running.
            await wait_out(earlier)
            self._release(d)
            with contextlib.suppress(Exception):
                await d.nak()
            raise
        await self._handle(d)

    def _release(self, d: Delivery) -> None:
        """The delivery is settled or given up: stop its heartbeats, drop it from the lease."""
        self._held.discard(d)
        beat = self._beats.pop(d, None)
        if beat is not None:
            beat.cancel()
        current = self._by_seq.get(d.command_seq)
        if current is not None and current[0] is d:
            del self._by_seq[d.command_seq]
        self.lease.changed.set()

    def _on_control(self, invocation_id: str, action: str) -> bool:
        """A lifecycle request arrived over core NATS: act on every execution of the
        invocation in this processor now; whether one of them runs its workflow (the sender
        of a pause or cancel waits for that answer, and takes the first). Not one that only
        handles a wake-up or checks a start (it may end "not idle"): its answer could come
        before the processor running the workflow had the request. One that has claimed the
        run and not yet made its workflow's task does not answer either (the sender waits
        its 0.5 s); it reads the journal before its first step all the same."""
        runs = self._running.get(invocation_id, ())
        for execution in runs:
            if action == "cancel":
                execution.cancel_now()  # only the one running the workflow has a step to stop
            elif action == "pause":
                execution.look_again()
        return any(execution.ctx is not None for execution in runs)

    async def _recheck_after_reconnects(self) -> None:
        """After the connection to NATS came back, look in the journal of every run in flight
        for a cancellation whose control message (core NATS) arrived while it was away."""
        seen = self.transport.reconnects
        while not self._stopping.is_set():
            await asyncio.sleep(0.25)
            if self.transport.reconnects == seen:
                continue
            seen = self.transport.reconnects
            for executions in list(self._running.values()):
                for execution in list(executions):
                    execution.look_again()  # a pause's control message may be lost too
                    try:
                        await execution.cancel_if_requested()
                    except Exception as e:  # noqa: BLE001 - the next step boundary sees it
                        log.debug("invocation %s: no cancel check: %s", execution.id, e)

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
            _, stuck = await asyncio.wait(pending, timeout=5)
            log.info("released %d executions to other processors", len(pending) - len(stuck))
            if stuck:
                # A run still waiting for a step's thread (nothing can stop one): its command
                # goes back only once the thread has ended. Stop its heartbeats, so that if
                # this process lingers (or the step never returns) the command is redelivered
                # after its ack_wait rather than held for as long as the process lives.
                log.warning(
                    "%d executions still wait for a step running in a thread; their commands "
                    "are left to their ack_wait",
                    len(stuck),
                )
                for beat in self._beats.values():
                    beat.cancel()

    async def _handle(self, delivery: Delivery) -> None:
        try:
            cmd = pb.Command()
            cmd.ParseFromString(delivery.data)
            check_invocation_id(cmd.invocation_id)
            if cmd.kind not in (pb.COMMAND_KIND_START, pb.COMMAND_KIND_WAKE):
                raise InvalidInputError(f"unknown command kind {cmd.kind}")
            if not cmd.workflow:
                raise InvalidInputError("it names no workflow")
            check_workflow_name(cmd.workflow)
            if cmd.partition_key:
                encode_partition_key(cmd.partition_key)
            check_route(cmd.route)  # a bad one, forwarded, was refused and redelivered for good
            now = now_ms()
            if not 0 <= cmd.created_at_ms <= now + 86_400_000:
                cmd.created_at_ms = now  # an absurd client clock: take ours
        except (DecodeError, InvalidInputError, ValueError) as e:
            log.error("terminating malformed command %d: %s", delivery.command_seq, e)
            self._release(delivery)
            await delivery.term()
            return
        routed = self.transport.names.route_of(delivery.subject)
        if routed is not None and routed != (cmd.workflow, cmd.route or ANY_ROUTE):
            await self._misrouted(cmd, delivery, routed)
            return
        if cmd.workflow not in self.registry:
            await self._not_served(cmd, delivery)
            return
        observe(
            self.interceptors,
            EngineEvent(
                "delivered", cmd.invocation_id, cmd.workflow, attempt=delivery.num_delivered
            ),
        )
        execution = Execution(self._env, cmd, delivery)
        self._running.setdefault(cmd.invocation_id, set()).add(execution)
        try:
            await execution.run()
        except asyncio.CancelledError:
            if being_cancelled():
                # Shutdown: hand the command back at once; the journal keeps all progress.
                with contextlib.suppress(Exception):
                    await delivery.nak()
                raise
            # Not a shutdown (nothing cancelled this task): code raised it of its own accord
            # and the run let it through. Handed back at once, it ran again at once, forever.
            log.error(
                "invocation %s: the run of command %d ended with a CancelledError that no "
                "shutdown caused; releasing it",
                cmd.invocation_id,
                delivery.command_seq,
            )
            with contextlib.suppress(Exception):
                await delivery.nak(delay=2.0)
        except LostHold as e:
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
        except (NatsUnavailableError, EngineFailure) as e:
            cause = e.cause if isinstance(e, EngineFailure) else e
            if isinstance(cause, CorruptJournalError | InvalidInputError):
                await self._fail_broken(execution, delivery, cause)
                return
            if isinstance(cause, PayloadUnavailableError):
                log.error("invocation %s: %s; releasing it", cmd.invocation_id, cause)
            else:
                log.warning(
                    "invocation %s: NATS unavailable (%s); releasing it", cmd.invocation_id, e
                )
            with contextlib.suppress(Exception):
                await delivery.nak(delay=2.0)
        except (CorruptJournalError, InvalidInputError) as e:
            await self._fail_broken(execution, delivery, e)
        except DurableError as e:
            log.warning("invocation %s: %s; releasing it", cmd.invocation_id, e)
            with contextlib.suppress(Exception):
                await delivery.nak(delay=2.0)
        except (Exception, SuspendExecution) as e:  # an engine bug: say so
            # Never leave the command to its ack wait in silence: name the invocation and
            # hand the command back (the journal keeps all progress).
            log.error(
                "invocation %s: the engine failed running command %d: %s: %s; releasing it",
                cmd.invocation_id,
                delivery.command_seq,
                type(e).__name__,
                e,
                exc_info=e,
            )
            with contextlib.suppress(Exception):
                await delivery.nak(delay=2.0)
        finally:
            executions = self._running.get(cmd.invocation_id)
            if executions is not None:
                executions.discard(execution)
                if not executions:
                    del self._running[cmd.invocation_id]
            self._release(delivery)

    async def _misrouted(
        self, cmd: pb.Command, delivery: Delivery, routed: tuple[str, str]
    ) -> None:
        """A command on another workflow's (or route's) subject than its own: published by
        hand, not through ``Commands.publish``. Forward it to its own route, then ack it: it
        runs where its workflow is served, and nothing here fails it."""
        log.error(
            "command %d of invocation %s (workflow %r, route %r) came on the subject of %r "
            "route %r: forwarding it to its own route",
            delivery.command_seq,
            cmd.invocation_id,
            cmd.workflow,
            cmd.route or ANY_ROUTE,
            *routed,
        )
        self._release(delivery)
        try:
            await self.transport.publish_command(cmd, msg_id=f"reroute:{delivery.command_seq}")
        except Exception as e:  # noqa: BLE001 - NATS trouble: it comes back
            log.warning(
                "cannot forward command %d: %s: %s", delivery.command_seq, type(e).__name__, e
            )
            with contextlib.suppress(Exception):
                await delivery.nak(delay=2.0)
            return
        with contextlib.suppress(Exception):
            await delivery.ack()

    async def _not_served(self, cmd: pb.Command, delivery: Delivery) -> None:
        """A command of a workflow this processor lacks: routing makes that impossible, so
        something is wrong (a consumer bound by hand, a subject published by hand). Never
        fail the invocation for it: hand the command back, later, for a processor that has it."""
        log.error(
            "command %d of invocation %s is for workflow %r, which this processor does not "
            "serve (it has: %s): handing it back; check the consumers of this engine",
            delivery.command_seq,
            cmd.invocation_id,
            cmd.workflow,
            ", ".join(self.registry.names()) or "none",
        )
        self._release(delivery)
        with contextlib.suppress(Exception):
            await delivery.nak(delay=NOT_SERVED_DELAY)

    @staticmethod
    async def _fail_broken(execution: Execution, delivery: Delivery, e: DurableError) -> None:
        """Not transient (a corrupt journal, a broken record): fail it clearly, settle."""
        log.error("invocation %s cannot run: %s", execution.id, e)
        await execution.fail_broken(pb.Failure(type=type(e).__name__, message=str(e)))
        with contextlib.suppress(Exception):
            await delivery.term()


async def _bounded(what: str, step: Awaitable[object], timeout: float) -> None:
    """One shutdown step: at most ``timeout`` seconds; a failure or a timeout is logged."""
    try:
        await asyncio.wait_for(step, timeout)
    except TimeoutError:
        log.warning("shutdown: %s took over %.0fs; going on without it", what, timeout)
    except Exception as e:  # noqa: BLE001 - shutting down anyway
        log.warning("shutdown: %s failed: %s: %s", what, type(e).__name__, e)
