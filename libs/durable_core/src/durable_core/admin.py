"""Running an engine: the connection the services hold, and what they administer through it.

The processor runs a ``Worker`` (``Worker.connect``), the scheduler fires schedules, re-drives
the commands of dead processors and expires finished executions, and the inspector watches
the executions; each of them holds one ``Engine``: a connection to NATS and the engine's
streams, with the few operations they need and nothing of NATS itself. (The transport below
it, ``durable_core._transport``, is private: an import-linter contract keeps services out.)

Example:
    >>> engine = await Engine.connect(settings.nats, settings.engine, bind=False)
    >>> await engine.bind(wait=math.inf)  # until a processor has created the streams
    >>> client = engine.client()
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import timedelta

from durable_core import _payloads
from durable_core._pb.durable.v1 import durable_pb2 as pb
from durable_core._transport import (
    StateConflict,
    StateRecord,
    TickConsumer,
    TickDelivery,
    Transport,
)
from durable_core.client import Client
from durable_core.config import EngineConfig, NatsConfig
from durable_core.errors import NotFoundError
from durable_core.fleet import read_fleet
from durable_core.schedules import (
    Repair,
    Schedule,
    find_schedule,
    reconcile_schedules,
    save_schedule,
)

__all__ = ["Engine", "StateConflict", "StateRecord", "TickConsumer", "TickDelivery"]

_FINISHED = frozenset({pb.STATUS_COMPLETED, pb.STATUS_FAILED, pb.STATUS_CANCELLED})


class Engine:
    """A connection to one engine (its NATS servers and streams), for the services.

    Args:
        transport: the connection (``Engine.connect`` makes one).
    """

    def __init__(self, transport: Transport) -> None:
        self._t = transport

    @classmethod
    async def connect(
        cls,
        nats: NatsConfig,
        engine: EngineConfig | None = None,
        *,
        create: bool = False,
        bind: bool = True,
        wait_for_engine: float = 0.0,
    ) -> Engine:
        """Connect to NATS and to the engine's streams.

        Args:
            nats: where and how to connect.
            engine: the engine's prefix and limits.
            create: create the streams and buckets, or verify them (processors only).
            bind: bind to the existing streams now (False: call :meth:`bind` later).
            wait_for_engine: seconds to wait for a processor to create the streams.

        Raises:
            NatsUnavailableError: NATS cannot be reached.
            EngineNotFoundError: the streams do not exist (after ``wait_for_engine``).
            ConfigError: ``create``, and what exists does not match the configuration.
        """
        return cls(
            await Transport.connect(
                nats, engine, create=create, bind=bind, wait_for_engine=wait_for_engine
            )
        )

    @property
    def is_connected(self) -> bool:
        """Whether the connection to NATS is up now (it reconnects by itself)."""
        return self._t.connected

    @property
    def prefix(self) -> str:
        """The engine's prefix (of its streams, buckets and subjects)."""
        return self._t.names.prefix

    @property
    def tick_subjects(self) -> str:
        """The subjects the server publishes schedule ticks on."""
        return self._t.names.tick_subjects

    async def bind(self, *, wait: float = 0.0) -> None:
        """Bind to the engine's streams, waiting up to ``wait`` seconds for a processor to
        create them.

        Raises:
            EngineNotFoundError: they do not exist.
        """
        await self._t.bind(wait=wait)

    async def close(self) -> None:
        """Flush and close the connection."""
        await self._t.close()

    def client(self) -> Client:
        """A client on this connection (closing it closes the connection)."""
        return Client(self._t)

    # -- the processors' consumer ------------------------------------------------------------

    async def command_consumers(self, consumer: str = "processor") -> list[dict[str, object]]:
        """The processors' command consumers, one per workflow, route and command stream
        (shard): name, workflow, route, stream, pending, ack_pending, redelivered
        (``consumer``: their configured name)."""
        return [
            {
                "name": name,
                "workflow": workflow,
                "route": route,
                "stream": stream,
                "pending": info.num_pending or 0,
                "ack_pending": info.num_ack_pending or 0,
                "redelivered": info.num_redelivered or 0,
            }
            for name, workflow, route, stream, info in await self._t.routed_consumers(consumer)
        ]

    async def legacy_layout(self, consumer: str = "processor") -> str:
        """What is left of the layout before commands were routed by workflow ("" if
        nothing): processors refuse to start on it."""
        return await self._t.legacy_layout(consumer)

    async def migrate_routing(self, consumer: str = "processor") -> list[str]:
        """Move an engine made before routing to routed commands: re-aim its timers, delete
        the shared consumer. What was done, one line each.

        Raises:
            ConflictError: the shared consumer still has commands (drain it first).
        """
        return await self._t.migrate_routing(consumer)

    async def consumer_stats(self, consumer: str) -> tuple[int, int, int]:
        """The command consumer's pending, ack-pending and redelivered counts."""
        return await self._t.consumer_stats(consumer)

    # -- executions --------------------------------------------------------------------------

    async def get_state(self, invocation_id: str) -> StateRecord | None:
        """An execution's state and revision; None if it has none."""
        return await self._t.get_state(invocation_id)

    async def expired(self, invocation_id: str) -> bool:
        """Whether an execution with this id finished and was removed (its note is kept)."""
        return await self._t.expiry_note(invocation_id) is not None

    async def watch_states(self) -> AsyncIterator[tuple[str, StateRecord | None] | None]:
        """Every execution state now, then ``None`` once caught up, then every change
        (``(id, None)``: deleted)."""
        async for item in self._t.watch_states():
            yield item

    async def expire_execution(
        self, rec: StateRecord, now_ms: int, note_for: timedelta | None = None
    ) -> bool:
        """Remove a finished execution (its state if still at ``rec``'s revision, then its
        journal), leaving a note that it expired, kept for ``note_for`` (None: for good).
        False if the state changed meanwhile."""
        ttl = max(int(note_for.total_seconds()), 1) if note_for is not None else 0
        return await self._t.expire_execution(rec, now_ms, ttl)

    async def finish_expiries(self) -> list[str]:
        """Finish the expiries that were cut short after the state went (a crash, NATS
        failing): what is left of their journals is purged. The ids finished."""
        return await self._t.finish_expiries()

    async def sweep_payloads(self, grace: timedelta) -> list[str]:
        """Delete the stored large values (``<prefix>_payloads``) that no state or journal
        references, older than ``grace``: uploads of a run that crashed before its journal
        append or lost its claim, arguments of a submission that was refused or crashed
        before intake. Only objects of invocations that are gone or finished are looked at
        (a running one may still journal a reference to an object it just wrote; its
        orphans go when it finishes; a plain invoke whose start is still queued has no
        state yet but needs its arguments); those another invocation holds (a fork, a
        rerun, one given a Blob of them) are kept. The names deleted."""

        async def referenced(invocation_id: str) -> set[str] | None:
            rec = await _payloads.state_or_start(self._t, invocation_id)
            if isinstance(rec, pb.Command):
                return None  # a plain invoke's start, still queued: its arguments are used
            if rec is None:
                return set()
            if rec.state.status not in _FINISHED:
                return None
            try:
                records = await self._t.read_journal(
                    invocation_id, min_entries=rec.state.journal_length, of=rec.state
                )
            except NotFoundError:
                return None  # it expired meanwhile, or its id was taken: the next sweep's
            return _payloads.referenced(rec.state, [r.entry for r in records])

        grace_ms = int(grace.total_seconds() * 1000)
        store = self._t.payloads
        # A hold whose holder never came to exist (a fork or rerun that failed after holding)
        # would keep its owner's objects for ever.
        for owner, holder, age in await store.holds():
            if age >= grace_ms and await _payloads.state_or_start(self._t, holder) is None:
                await store.drop_hold(owner, holder)
        return await store.sweep(referenced, grace_ms)

    async def start_queued(self, invocation_id: str, partition_key: str) -> bool:
        """Whether a start of ``invocation_id`` (routed by ``partition_key``) is still queued,
        not yet acknowledged by a processor; True also when its key has too many queued
        commands to look through."""
        return await self._t.start_queued(invocation_id, partition_key)

    # -- processor leases --------------------------------------------------------------------

    async def watch_leases(self) -> AsyncIterator[tuple[str, bytes | None, int] | None]:
        """Every processor lease now, then ``None`` once caught up, then every change:
        ``(name, data, revision)``, ``data`` None when deleted (``LeaseRecord.parse`` reads
        ``data``)."""
        async for item in self._t.watch_leases():
            yield item

    async def redrive_lease(self, name: str, revision: int, held: Sequence[str]) -> int:
        """Hand back the commands of a lapsed lease: delete it if still at ``revision``
        (StateConflict if it was renewed or deleted meanwhile), then NAK each delivery it
        lists so JetStream redelivers it at once. How many were handed back."""
        return await self._t.redrive_lease(name, revision, held)

    async def live_processors(self) -> list[tuple[str, int]]:
        """``(host, pid)`` of every processor in the fleet registry now."""
        return [(p.host, p.pid) for p in (await read_fleet(self._t)).processors]

    async def rescue(self, rec: StateRecord) -> bool:
        """Publish a rescue of an invocation RUNNING under a command no processor holds: a
        wake-up that supersedes that command (see ``durable_core.engine._hold``, case 4).
        One per state revision and lost command (a second replica's copy is deduplicated);
        False for such a copy."""
        return await self._t.publish_rescue(rec)

    # -- schedule ticks ----------------------------------------------------------------------

    async def tick_consumer(
        self, *, consumer: str, ack_wait: float, max_ack_pending: int
    ) -> TickConsumer:
        """Create or bind the shared durable pull consumer of schedule ticks."""
        return await self._t.tick_consumer(
            consumer=consumer, ack_wait=ack_wait, max_ack_pending=max_ack_pending
        )

    async def find_schedule(self, name: str) -> Schedule | None:
        """The schedule called ``name``, or None."""
        return await find_schedule(self._t, name)

    async def save_schedule(self, schedule: Schedule) -> Schedule:
        """Store a changed schedule if its record is still at ``schedule.revision``; it with
        its new revision.

        Raises:
            ConflictError: the record changed since it was read (read it again and retry).
        """
        return await save_schedule(self._t, schedule)

    async def schedule_names(self) -> set[str]:
        """The names of every schedule stored (active or paused)."""
        return set(await self._t.schedule_names())

    async def reconcile_schedules(self) -> list[tuple[str, Repair]]:
        """Arm every active schedule the server does not fire and disarm every paused one it
        still fires; ``(name, "armed" | "disarmed")`` for each change (see
        ``durable_core.schedules.reconcile_schedules``)."""
        return await reconcile_schedules(self._t)
