"""``Transport``: the engine's one view of JetStream, a facade over the transport's parts.

Each method hands over to the part that owns it (journals, states, commands, ticks, the record
store); the engine, the client and the services' admin API all call through here, so one object
carries a connection and a test can stand in for any NATS answer by overriding one method.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from nats.aio.client import Client as NatsClient
from nats.js.client import JetStreamContext
from nats.js.kv import KeyValue

from durable_core import _payloads
from durable_core._naming import Names, encode_partition_key
from durable_core._pb.durable.v1 import durable_pb2 as pb
from durable_core._transport.commands import Commands
from durable_core._transport.connection import Link, connect_nats, js_publish
from durable_core._transport.errors import JournalGone, StateConflict
from durable_core._transport.events import (
    Notices,
    StateEvents,
    publish_result,
    subscribe_state_events,
)
from durable_core._transport.fleet import FleetRecords
from durable_core._transport.inbox import DirectGets
from durable_core._transport.journal import JournalRecord, Journals, last_journal_seq
from durable_core._transport.payloads import Payloads
from durable_core._transport.provision import Provisioner
from durable_core._transport.records import RecordStore
from durable_core._transport.routes import CommandConsumers
from durable_core._transport.state import StateRecord, States, expiry_note_of
from durable_core._transport.ticks import TickConsumer, Ticks
from durable_core.config import EngineConfig, NatsConfig, WorkerConfig
from durable_core.errors import ExpiredError, NotFoundError

__all__ = ["Transport"]

_FINISHED = frozenset({pb.STATUS_COMPLETED, pb.STATUS_FAILED, pb.STATUS_CANCELLED})

log = logging.getLogger("durable_core.transport")


class Transport:
    """The engine's view of JetStream: commands, journals and execution state."""

    def __init__(self, nc: NatsClient, nats_cfg: NatsConfig, engine: EngineConfig) -> None:
        self.nc = nc
        self._link = link = Link(nc, nats_cfg, engine, self._js_publish)
        self._provision = provision = Provisioner(link)
        gets = DirectGets(nc)
        self._journals = Journals(link, gets)
        self._states = States(link)
        self._commands = Commands(link, gets, provision)
        self._ticks = Ticks(link, provision)
        self.payloads = Payloads(link, gets)  # large values by reference (issue 18)
        self._notices: Notices | None = None  # a client's result notices, made on first use
        n = link.names
        self._keys = RecordStore(link, lambda: provision.bind_bucket(n.keys_bucket, "key bucket"))
        self._schedules = RecordStore(
            link,
            lambda: provision.bucket(n.schedules_bucket, "durable: schedule definitions by name"),
            recognise_retries=True,
        )
        self._leases = RecordStore(
            link,
            lambda: provision.bucket(
                n.processors_bucket, "durable: processor leases and the commands each holds"
            ),
        )
        self._fleet = FleetRecords(link, provision)
        self._runs = RecordStore(
            link,
            lambda: provision.bucket(
                n.runs_bucket,
                "durable: the processor running each command delivered twice",
                ttl=86_400.0,  # left behind only by a crash after the ack: forget them
            ),
        )
        self._calls: RecordStore | None = None  # a service's answers, made on first use
        self._atomic_batches: bool | None = None

    @classmethod
    async def connect(
        cls,
        nats_cfg: NatsConfig,
        engine: EngineConfig | None = None,
        *,
        create: bool = False,
        bind: bool = True,
        wait_for_engine: float = 0.0,
    ) -> Transport:
        """Connect to NATS and to the engine's streams.

        The stored configuration of the streams is the one truth about the engine: only a
        processor creates them (``create``: with its configured replicas and limits, or checks
        that what exists matches them). Everyone else binds to what exists and takes the
        replicas (for any bucket it creates later) and the payload limit from the stored
        command stream; what ``engine`` says of them is not used.

        Args:
            nats_cfg: where and how to connect.
            engine: the engine's prefix and limits.
            create: create the streams and buckets, or verify them (processors).
            bind: bind to the existing streams (False: the caller calls :meth:`bind` later).
            wait_for_engine: seconds to wait for a processor to create the streams.

        Raises:
            NatsUnavailableError: NATS cannot be reached.
            EngineNotFoundError: the streams do not exist (after ``wait_for_engine``).
            ConfigError: ``create``, and what exists does not match the configuration.
        """
        nc = await connect_nats(nats_cfg)
        t = cls(nc, nats_cfg, engine or EngineConfig())
        try:
            if create:
                await t.ensure_infrastructure()
            elif bind:
                await t.bind(wait=wait_for_engine)
        except BaseException:
            await nc.close()
            raise
        return t

    # -- the connection --------------------------------------------------------------------

    @property
    def js(self) -> JetStreamContext:
        """The JetStream context."""
        return self._link.js

    @property
    def nats_cfg(self) -> NatsConfig:
        """How the connection was made."""
        return self._link.nats_cfg

    @property
    def engine(self) -> EngineConfig:
        """The engine's configuration (replicas and payload limit as stored, once bound)."""
        return self._link.engine

    @property
    def names(self) -> Names:
        """The engine's stream, bucket and subject names."""
        return self._link.names

    @property
    def atomic_batches(self) -> bool:
        """Whether a run writes its last step and its final entry as one atomic batch: on a
        replicated journal (as stored, once bound), where a batch of two costs about what one
        write does (R3 here: p50 0.75 ms vs 0.68, and 8,200/s at 64 in flight). Not on one
        node: nats-server 2.15 takes ~3.4 ms per batch on a one-replica stream and commits
        them one at a time (~300/s at 64 in flight, against 0.2 ms and 14,700/s for a single
        write), so two writes are much cheaper there. Settable (tests)."""
        if self._atomic_batches is not None:
            return self._atomic_batches
        return self._link.engine.replicas > 1

    @atomic_batches.setter
    def atomic_batches(self, on: bool) -> None:
        self._atomic_batches = on

    @property
    def connected(self) -> bool:
        """Whether the connection is up now (it reconnects by itself)."""
        return bool(self.nc.is_connected)

    @property
    def reconnects(self) -> int:
        """How many times the connection has reconnected (core NATS messages sent to it
        meanwhile are lost)."""
        return int(self.nc.stats.get("reconnects", 0))

    async def close(self) -> None:
        """Flush and close the connection."""
        if not self.nc.is_closed:
            try:
                await self.nc.drain()
            except Exception:  # noqa: BLE001 - closing anyway
                if not self.nc.is_connected:
                    # What is pending cannot reach a connection that is gone. nats-py's close
                    # writes it out first, unguarded: ConnectionResetError out of close (a
                    # client closed during an outage), its subscriptions left running.
                    self.nc._pending, self.nc._pending_data_size = [], 0
                with contextlib.suppress(OSError):
                    await self.nc.close()

    async def _js_publish(
        self, subject: str, data: bytes, headers: dict[str, str]
    ) -> tuple[int, bool]:
        """Every conditional write the parts make: ``(sequence, duplicate)``."""
        return await js_publish(self._link.requests, subject, data, headers)

    # -- provisioning ----------------------------------------------------------------------

    async def bind(self, *, wait: float = 0.0) -> None:
        """Bind to the engine's existing streams and state bucket, waiting up to ``wait``
        seconds for a processor to create them; take replicas and the payload limit from
        the stored command stream.

        Raises:
            EngineNotFoundError: they do not exist.
        """
        self._states.kvs = await self._provision.bind(wait=wait)

    async def ensure_infrastructure(self, *, strict: bool = True) -> None:
        """Create the command and journal streams and the state bucket, or verify them."""
        self._states.kvs, keys = await self._provision.infrastructure(strict=strict)
        self._keys.opened(keys)
        await self.payloads.ensure()

    @property
    def kv(self) -> KeyValue:
        """The state bucket."""
        return self._states.bucket()

    # -- commands --------------------------------------------------------------------------

    @property
    def server_payload_limit(self) -> int:
        """What the server's max_payload leaves for one value (see Commands)."""
        return self._commands.server_payload_limit

    @property
    def payload_limit(self) -> int:
        """Largest accepted argument or result: the configured limit, within the server's."""
        return self._commands.payload_limit

    def payload_limit_text(self) -> str:
        """The limit and where it comes from, for error messages."""
        return self._commands.payload_limit_text()

    async def publish_command(self, cmd: pb.Command, *, msg_id: str) -> bool:
        """Publish a command (deduplicated by msg_id). Returns False if it was a duplicate."""
        return await self._commands.publish(cmd, msg_id=msg_id)

    async def publish_wake(
        self,
        invocation_id: str,
        workflow: str,
        partition_key: str,
        journal_seq: int,
        *,
        route: str = "",
    ) -> bool:
        """Wake an invocation up after appending to its journal at ``journal_seq``: one wake-up
        per entry (deduplicated by it); the processor reads the journal up to that entry.
        ``route``: the invocation's pinned version token, if it has one."""
        return await self.publish_command(
            pb.Command(
                invocation_id=invocation_id,
                workflow=workflow,
                partition_key=partition_key or invocation_id,
                kind=pb.COMMAND_KIND_WAKE,
                min_journal_seq=journal_seq,
                route=route,
            ),
            msg_id=f"wake:{invocation_id}:{journal_seq}",
        )

    async def publish_rescue(self, rec: StateRecord) -> bool:
        """A wake-up that supersedes the lost command an invocation is RUNNING under (see
        ``durable_core.engine._hold``, case 4): one per state revision and lost command."""
        st = rec.state
        return await self.publish_command(
            pb.Command(
                invocation_id=st.invocation_id,
                workflow=st.workflow,
                partition_key=st.partition_key or st.invocation_id,
                kind=pb.COMMAND_KIND_WAKE,
                route=st.pinned_version,
                supersedes=st.run_command_seq,
            ),
            msg_id=f"rescue:{st.invocation_id}:{st.run_command_seq}:{rec.revision}",
        )

    async def schedule_command(self, cmd: pb.Command, *, at_ms: int, key: str, msg_id: str) -> bool:
        """Have the server publish ``cmd`` at ``at_ms`` (see Commands.schedule); False if it
        was a duplicate."""
        return await self._commands.schedule(cmd, at_ms=at_ms, key=key, msg_id=msg_id)

    async def queued_commands(self, partition_key: str, before: int) -> list[pb.Command]:
        """Commands of a partition key still in its command stream numbered below ``before``
        (a ``command_seq``)."""
        return await self._commands.queued(partition_key, before)

    async def queued_start(self, invocation_id: str) -> pb.Command | None:
        """The start of an invocation left to create its state, while it is queued (see
        Commands)."""
        return await self._commands.queued_start(invocation_id)

    async def start_queued(
        self, invocation_id: str, partition_key: str, *, looks: int = 64
    ) -> bool:
        """Whether a start of ``invocation_id`` (any: published by a submission, or left to
        create its state) is still in its command stream (see Commands.start_queued)."""
        return await self._commands.start_queued(invocation_id, partition_key, looks)

    async def command_consumer(
        self, cfg: WorkerConfig, routes: Sequence[tuple[str, str]]
    ) -> CommandConsumers:
        """Create or bind one durable pull consumer per ``(workflow, route)`` and shard,
        fetched together (processors only). ConfigError if the engine has the layout before
        routing."""
        return await self._commands.consumers(cfg, routes)

    async def consumer_stats(self, consumer: str) -> tuple[int, int, int]:
        """``(num_pending, num_ack_pending, num_redelivered)`` summed over the processors'
        command consumers (``consumer``: their configured name)."""
        return await self._commands.consumer_stats(consumer)

    async def routed_consumers(self, consumer: str = "") -> list[tuple[str, str, str, str, Any]]:
        """``(name, workflow, route, stream, ConsumerInfo)`` of every routed command consumer,
        in every command stream."""
        return await self._commands.routed_consumers(consumer)

    async def legacy_layout(self, consumer: str) -> str:
        """What is left of the layout before routing, "" if nothing (see Commands)."""
        return await self._commands.legacy_layout(consumer)

    async def migrate_routing(self, consumer: str) -> list[str]:
        """Move an engine made before routing to routed commands (see Commands)."""
        return await self._commands.migrate_routing(consumer)

    async def nak_delivery(self, reply: str) -> None:
        """Hand a command held by another (dead) connection back for immediate redelivery."""
        await self._commands.nak(reply)

    async def subscribe_control(self, on_request: Callable[[str, str], bool]) -> Any:
        """Listen for lifecycle requests addressed to running invocations (core NATS)."""
        return await self._commands.subscribe_control(on_request)

    async def send_control(self, invocation_id: str, action: str, *, wait: float = 0.0) -> bool:
        """Tell whichever processor runs the invocation to act now (best effort); ``wait``:
        for its answer, up to this long (whether one came)."""
        return await self._commands.send_control(invocation_id, action, wait=wait)

    # -- journals --------------------------------------------------------------------------

    async def read_journal(
        self,
        invocation_id: str,
        *,
        min_seq: int = 0,
        min_entries: int = 0,
        current: bool = False,
        start: int = 1,
        of: pb.ExecutionState | None = None,
    ) -> list[JournalRecord]:
        """Every entry of an invocation's journal, from stream sequence ``start`` on (see
        Journals.read).

        ``of``: the state ``min_entries`` was counted from. The journal read is one of that
        state's: a read that stays short of it asks whether the state is still stored (one
        removed or replaced meanwhile, expired or its id taken again, took its journal with
        it), and so does one that is not, once more after the read (a new invocation under
        the id may have journaled as many entries as the old one had: its entries with the
        old state were a result that never was).

        Raises:
            NotFoundError: ``of`` went while the journal was read (ExpiredError when it had
                finished).
        """
        if of is None:
            return await self._journals.read(
                invocation_id,
                min_seq=min_seq,
                min_entries=min_entries,
                current=current,
                start=start,
            )
        created = of.created_at_ms

        async def still_there() -> bool:
            rec = await self._states.get(invocation_id)
            return rec is not None and rec.state.created_at_ms == created

        try:
            records = await self._journals.read(
                invocation_id,
                min_seq=min_seq,
                min_entries=min_entries,
                current=current,
                start=start,
                still_there=still_there,
            )
            if await still_there():
                return records
        except JournalGone:
            pass
        raise await self._gone(of)

    async def _gone(self, of: pb.ExecutionState) -> NotFoundError:
        """The error for a state that went while its journal was read: as its expiry's note
        says, or, when a new invocation has taken the id since (the note went with it), as
        the state read says it had ended."""
        error = await self.missing(of.invocation_id)
        if isinstance(error, ExpiredError) or of.status not in _FINISHED:
            return error
        return ExpiredError.from_note(of.invocation_id, expiry_note_of(of, 0))

    async def missing(self, invocation_id: str) -> NotFoundError:
        """The error for an id without a state: ExpiredError if it finished and expired."""
        note = await self.expiry_note(invocation_id)
        if note is None:
            return NotFoundError(f"no invocation with id {invocation_id}")
        return ExpiredError.from_note(invocation_id, note)

    async def append(
        self, invocation_id: str, entry: pb.JournalEntry, expected_seq: int, msg_id: str
    ) -> int:
        """Append an entry if the journal's last sequence is still ``expected_seq``.

        Returns the new entry's sequence. Raises JournalConflict when another writer
        appended first, NatsUnavailableError when NATS stays unreachable past the deadline.
        """
        return await self._journals.append(invocation_id, entry, expected_seq, msg_id)

    async def append_batch(
        self,
        invocation_id: str,
        entries: list[pb.JournalEntry],
        expected_seq: int,
        msg_ids: list[str],
    ) -> list[int] | None:
        """Append entries as one atomic batch (see Journals.append_batch)."""
        return await self._journals.append_batch(invocation_id, entries, expected_seq, msg_ids)

    # -- states ----------------------------------------------------------------------------

    async def get_state(self, invocation_id: str) -> StateRecord | None:
        """The current state of an invocation, or None if there is none."""
        return await self._states.get(invocation_id)

    async def create_state(self, state: pb.ExecutionState) -> StateRecord | None:
        """Create the state if none exists; return None if it already existed."""
        return await self._states.create(state)

    async def update_state(self, state: pb.ExecutionState, revision: int) -> StateRecord:
        """Write the state if its revision is still ``revision``; else StateConflict."""
        return await self._states.update(state, revision)

    async def state_events(self, invocation_id: str) -> StateEvents:
        """Subscribe to the server's republished state changes of one invocation."""
        return await subscribe_state_events(self._link, invocation_id)

    async def watch_result(self) -> tuple[str, StateEvents]:
        """A notice subject for an invocation about to be submitted (its state and start name
        it), and its result notice when it finishes (see events.Notices)."""
        if self._notices is None:
            self._notices = Notices(self._link)
        return await self._notices.watch()

    async def publish_result(
        self, state: pb.ExecutionState, entries: Sequence[pb.JournalEntry]
    ) -> None:
        """Tell clients waiting on an invocation that it finished (see events.publish_result)."""
        await publish_result(self._link, state, entries)

    async def watch_states(self) -> AsyncIterator[tuple[str, StateRecord | None] | None]:
        """Every execution state now, then ``None`` once caught up, then every change."""
        async for item in self._states.watch():
            yield item

    async def list_states(self) -> list[pb.ExecutionState]:
        """Every execution state (for small tools; the inspector keeps its own index)."""
        out = []
        for key in await self._states.ids():
            rec = await self.get_state(key)
            if rec is not None:
                out.append(rec.state)
        return out

    async def expire_execution(self, rec: StateRecord, now_ms: int, note_ttl_s: int = 0) -> bool:
        """Remove a finished execution: its state (if still at ``rec``'s revision), then its
        journal. Returns False if the state changed meanwhile (nothing is removed then).

        The state is replaced by a KV delete marker that keeps a note of how and when it ended
        (headers), so ``durable status`` can say "expired" rather than "never existed", and a
        new invocation may take the id again (a KV create succeeds over a delete marker). The
        server removes that note after ``note_ttl_s`` seconds (0: never).

        The state goes first: its revision-checked delete is what keeps a retried or changed
        invocation from losing its journal, and a hold written while the state was there is
        seen below. An expiry noted as begun (``Payloads.begin_expiry``) and cut short after
        that is finished by :meth:`finish_expiries`; a new invocation under the id purges
        what is left of the journal before it takes the id (``States.create``).
        """
        invocation_id = rec.state.invocation_id
        # What is this invocation's is read before its state goes: a new invocation may take
        # the id as soon as it has (a create over the delete marker), and append to the
        # journal and upload under the id; a purge of everything under the id afterwards
        # took its entries, arguments and holds too. Only entries up to the last one now, the
        # objects this state and journal reference and the holds it has now (each its own
        # subject) go; the rest of its own (orphans, an entry appended at the last moment) is
        # the sweep's, or the next create's.
        through = await last_journal_seq(self._link, invocation_id)
        records = await self._journals.read(invocation_id, min_entries=rec.state.journal_length)
        objects = _payloads.referenced(rec.state, [r.entry for r in records])
        holds = await self.payloads.holds_of(invocation_id)
        await self.payloads.begin_expiry(invocation_id)
        if not await self._states.expire(rec, now_ms, note_ttl_s):
            await self.payloads.end_expiry(invocation_id)
            return False
        await self._journals.purge(invocation_id, through=through)
        # Its large values go with it, unless a fork or rerun holds them (the sweep takes
        # them later); its own holds on what it was forked or rerun from are dropped.
        await self.payloads.expire(invocation_id, objects, holds)
        await self.payloads.end_expiry(invocation_id)
        return True

    async def finish_expiries(self) -> list[str]:
        """Finish the expiries cut short after their state was removed: purge what is left of
        their journals (their objects and holds are left to the payload sweep, which keeps
        those of a new invocation that took the id meanwhile). The ids finished. An expiry
        whose state is still there is left alone: under way, or stopped before the state went
        (retention removes it again), or its id was taken again (its journal was purged then)."""
        finished = []
        for invocation_id in await self.payloads.expiring():
            if await self._states.drop_old_journal(invocation_id) is None:
                continue
            await self.payloads.end_expiry(invocation_id)
            finished.append(invocation_id)
        return finished

    async def state_ids(self) -> list[str]:
        """The ids with anything in the state bucket: a state, or an expired one's note."""
        return await self._states.ids()

    async def expiry_note(self, invocation_id: str) -> dict[str, Any] | None:
        """What :meth:`expire_execution` noted about an expired invocation, if it expired."""
        return await self._states.expiry_note(invocation_id)

    # -- partition keys --------------------------------------------------------------------

    async def key_record(self, partition_key: str) -> tuple[bytes | None, int]:
        """The raw record of a partition key and its revision (0 if none)."""
        return await self._keys.get(encode_partition_key(partition_key), "key record")

    async def put_key_record(self, partition_key: str, data: bytes, revision: int) -> int:
        """Write a key record if it is still at ``revision`` (0: create); else StateConflict."""
        name = encode_partition_key(partition_key)
        return await self._keys.put(name, data, revision, f"key record {partition_key!r}")

    # -- schedules -------------------------------------------------------------------------

    async def schedules_kv(self) -> KeyValue:
        """The schedule definitions bucket, created on first use."""
        return await self._schedules.bucket()

    async def schedule_record(self, name: str) -> tuple[bytes | None, int]:
        """The raw record of a schedule and its revision (``(None, 0)`` if none)."""
        return await self._schedules.get(name, f"schedule {name}")

    async def put_schedule_record(self, name: str, data: bytes, revision: int) -> int:
        """Write a schedule record if it is still at ``revision`` (0: create); else
        StateConflict. A retried write whose first try landed is recognised."""
        return await self._schedules.put(name, data, revision, f"schedule {name}")

    async def delete_schedule_record(self, name: str, revision: int) -> None:
        """Delete a schedule record if it is still at ``revision``; else StateConflict."""
        await self._schedules.delete(
            name, revision, f"schedule {name}", on_conflict="raise_unless_gone"
        )

    async def schedule_names(self) -> list[str]:
        """The names of every schedule record."""
        return await self._schedules.keys("schedules")

    async def arm_schedule(
        self, name: str, pattern: str, *, timezone: str | None = None, body: bytes = b""
    ) -> None:
        """Have the server fire schedule ``name`` on ``pattern`` (see Ticks.arm)."""
        await self._ticks.arm(name, pattern, timezone=timezone, body=body)

    async def disarm_schedule(self, name: str) -> None:
        """Stop the server firing schedule ``name`` and drop its ticks not yet handled."""
        await self._ticks.disarm(name)

    async def schedule_armed(self, name: str) -> bool:
        """Whether the server holds a schedule for ``name``."""
        return await self._ticks.armed(name)

    async def armed_schedule_names(self) -> list[str]:
        """The names of every schedule the server holds (with a record or not)."""
        return await self._ticks.armed_names()

    async def tick_consumer(
        self, *, consumer: str, ack_wait: float, max_ack_pending: int
    ) -> TickConsumer:
        """Create or bind the shared durable pull consumer of schedule ticks."""
        return await self._ticks.consumer(
            consumer=consumer, ack_wait=ack_wait, max_ack_pending=max_ack_pending
        )

    # -- services' call records (durable_core.idempotency) ----------------------------------

    def open_call_records(self, keep: float, *, wait: float = 0.0) -> None:
        """Use the bucket of services' call records; created on first use with records kept
        ``keep`` seconds (a bucket that exists keeps its own setting), with the engine's
        replicas: a transport not bound yet binds first, waiting up to ``wait`` seconds for a
        processor to create the engine."""

        async def open_bucket() -> KeyValue:
            if not self._states.kvs:
                await self.bind(wait=wait)
            return await self._provision.bucket(
                self._link.names.calls_bucket,
                "durable: gRPC services' answers and fences by idempotency key",
                ttl=keep,
            )

        self._calls = RecordStore(self._link, open_bucket, recognise_retries=True)

    def _call_records(self) -> RecordStore:
        if self._calls is None:
            raise RuntimeError("open_call_records() first")
        return self._calls

    async def call_record(self, key: str) -> tuple[bytes | None, int]:
        """A service's call record and its revision (``(None, 0)`` if none)."""
        return await self._call_records().get(key, f"call record {key}")

    async def put_call_record(self, key: str, data: bytes, revision: int) -> int:
        """Write a call record if it is still at ``revision`` (0: create); else StateConflict.
        A retried write whose first try landed is recognised."""
        return await self._call_records().put(key, data, revision, f"call record {key}")

    # -- processor leases ------------------------------------------------------------------

    async def leases_kv(self) -> KeyValue:
        """The processor lease bucket, created on first use."""
        return await self._leases.bucket()

    async def create_lease(self, name: str, data: bytes) -> int:
        """Create processor lease ``name``; its revision."""
        return await self._leases.put(name, data, 0, f"lease {name}")

    async def renew_lease(self, name: str, data: bytes, revision: int) -> int:
        """Renew lease ``name`` if it is still at ``revision``; one try (the next renewal
        retries). StateConflict if it changed: deleted by a scheduler that found it lapsed."""
        return await self._leases.put(name, data, revision, f"lease {name}", once=True)

    async def lease_record(self, name: str) -> tuple[bytes | None, int]:
        """A lease's record and revision, read from the bucket's leader; ``(None, 0)`` if
        there is none (deleted, or never written)."""
        return await self._leases.get(name, f"lease {name}")

    async def delete_lease(self, name: str, revision: int = 0) -> None:
        """Delete a lease, if it is still at ``revision`` when one is given; else StateConflict."""
        await self._leases.delete(name, revision, f"lease {name}", once=True)

    async def watch_leases(self) -> AsyncIterator[tuple[str, bytes | None, int] | None]:
        """Every lease now, then ``None`` once caught up, then every change.

        Yields ``(name, data, revision)``, with ``data`` None when the lease was deleted.
        """
        async for item in self._leases.watch():
            yield item

    async def redrive_lease(self, name: str, revision: int, held: Sequence[str]) -> int:
        """Re-drive a lapsed lease: delete it if it is still at ``revision`` (StateConflict if
        it was renewed or deleted meanwhile), then NAK every delivery it lists, so JetStream
        redelivers each at once. Returns how many were handed back."""
        try:
            await self.delete_lease(name, revision)
        except StateConflict:
            raise
        except Exception:  # noqa: BLE001 - any other failure may hide a delete that landed
            # No answer (a timeout, a reconnect): the delete may have landed, and then the
            # watches drop the lease and no sweep tries it again. Delete again until there is
            # an answer, taking a lease found gone for ours (its NAKs are still to be sent).
            await self._leases.delete(
                name, revision, f"lease {name}", on_conflict="raise_unless_gone"
            )
        handed_back = 0
        for reply in held:
            try:
                await self.nak_delivery(reply)
                handed_back += 1
            except Exception as e:  # noqa: BLE001 - ack_wait still redelivers it
                log.warning("cannot hand back %s: %s", reply, e)
        # No nc.flush(): the NAKs go out with the next write anyway, and a flush that times out
        # leaves a cancelled future whose late PONG stops nats-py's read loop.
        return handed_back

    # -- the fleet registry and message types ----------------------------------------------

    async def register_processor(self, key: str, data: bytes, ttl: float) -> None:
        """Write this processor's fleet record; the server drops it ``ttl`` s after the last
        write (see FleetRecords)."""
        await self._fleet.register(key, data, ttl)

    async def unregister_processor(self, key: str, ttl: float) -> None:
        """Remove a fleet record (a clean exit; the marker goes after ``ttl`` seconds)."""
        await self._fleet.unregister(key, ttl)

    async def processor_records(self) -> dict[str, bytes]:
        """Every live processor's fleet record, by key."""
        return await self._fleet.processors()

    async def type_record(self, full_name: str) -> bytes | None:
        """The stored FileDescriptorSet of message type ``full_name``, or None."""
        return await self._fleet.type_record(full_name)

    async def put_type_record(self, full_name: str, data: bytes) -> bool:
        """Store the FileDescriptorSet of ``full_name`` unless it is stored as is."""
        return await self.put_type_records({full_name: data}) > 0

    async def put_type_records(self, records: dict[str, bytes]) -> int:
        """Store FileDescriptorSets by full message name, those not stored as they are; how
        many were written."""
        return await self._fleet.put_type_records(records)

    # -- run locks of redelivered commands -------------------------------------------------

    async def run_lock(self, command_seq: int) -> tuple[bytes | None, int]:
        """The run lock of command ``command_seq`` and its revision; ``(None, 0)`` if free."""
        return await self._runs.get(str(command_seq), "run lock")

    async def put_run_lock(self, command_seq: int, data: bytes, revision: int) -> int:
        """Take a run lock if it is still at ``revision`` (0: free); else StateConflict."""
        return await self._runs.put(str(command_seq), data, revision, f"run lock {command_seq}")

    async def delete_run_lock(self, command_seq: int, revision: int) -> None:
        """Free a run lock if it is still at ``revision`` (someone who took it over keeps it)."""
        await self._runs.delete(
            str(command_seq), revision, f"run lock {command_seq}", once=True, on_conflict="ignore"
        )
