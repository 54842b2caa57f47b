"""Commands: starts and wake-ups on the work-queue stream, published (deduplicated by message
id) or scheduled on the server, the processors' consumers, and lifecycle requests sent over
core NATS to whichever processor runs an invocation.

Routing: a command's subject is ``<prefix>.cmd.<workflow>.<route>.<key>`` (see
``Names.command_subject``; ``<prefix>.cmd.s<shard>.…`` with several shards), computed here and
nowhere else, from the command itself (its ``workflow``, its ``route`` or ``any``, its
partition key or invocation id). A processor binds one consumer per workflow it serves, route
(``any`` and its own version token) and shard, so a command only ever reaches a processor that
has its workflow."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import nats.js.errors
from google.protobuf.message import DecodeError
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from durable_core._naming import check_route
from durable_core._pb.durable.v1 import durable_pb2 as pb
from durable_core._transport.connection import Link
from durable_core._transport.delivery import Arrival, CommandConsumer
from durable_core._transport.inbox import DirectGets, Queue
from durable_core._transport.provision import Provisioner
from durable_core._transport.routes import CommandConsumers
from durable_core.config import WorkerConfig
from durable_core.errors import ConfigError, ConflictError, InvalidInputError, NotFoundError

ROUTING_METADATA = "durable_routing"
# JetStream's answers to deleting a message that is not there (measured on 2.15, R3): below
# the stream's first sequence or past its last (10057), between them, deleted already (10043).
_GONE_ALREADY = frozenset({10057, 10043})
_QUEUED_START_LOOKS = 4

__all__ = ["Commands"]


def _subject(msg: Any) -> str:
    """The stored subject of a message read by a direct get (its own is the reply inbox)."""
    return str((msg.headers or {}).get("Nats-Subject") or msg.subject)


# Unacked commands of one consumer, over the whole fleet: a bound far above any fleet's slots
# (each processor asks for at most its own ``max_concurrent``), not a limit on concurrency.
FLEET_ACK_PENDING = 1_000_000


class Commands:
    """Publishing, scheduling and consuming commands."""

    def __init__(self, link: Link, gets: DirectGets, provision: Provisioner) -> None:
        self._link = link
        self._gets = gets
        self._provision = provision

    # -- payload limits --------------------------------------------------------------------

    @property
    def server_payload_limit(self) -> int:
        """What the server's max_payload leaves for one value: a state holds the arguments
        and the output, plus an envelope."""
        link = self._link
        server = link.nc.max_payload or 2 * link.engine.max_payload + 16 * 1024
        return (server - 8 * 1024) // 2

    @property
    def payload_limit(self) -> int:
        """Largest accepted argument or result: the configured limit, within the server's."""
        return min(self._link.engine.max_payload, self.server_payload_limit)

    def payload_limit_text(self) -> str:
        """The limit and where it comes from, for error messages."""
        limit = self.payload_limit
        if limit < self._link.engine.max_payload:
            return (
                f"the limit is {limit} bytes (the NATS server's max_payload of "
                f"{self._link.nc.max_payload} bytes holds a state with arguments and output)"
            )
        return f"the limit is {limit} bytes (EngineConfig.max_payload)"

    # -- publishing ------------------------------------------------------------------------

    def subject(self, cmd: pb.Command) -> str:
        """The routed subject of ``cmd``; InvalidInputError if it names no workflow."""
        if not cmd.workflow:
            raise InvalidInputError(
                f"command for {cmd.invocation_id} names no workflow: commands are routed by it"
            )
        return self._link.names.command_subject(
            cmd.workflow, cmd.route, cmd.partition_key or cmd.invocation_id
        )

    async def publish(self, cmd: pb.Command, *, msg_id: str) -> bool:
        """Publish a command (deduplicated by msg_id). Returns False if it was a duplicate."""
        link = self._link
        data = cmd.SerializeToString()
        if len(data) > self.payload_limit + 8 * 1024:
            raise InvalidInputError(
                f"command for {cmd.invocation_id} is {len(data)} bytes; the limit is "
                f"{self.payload_limit} bytes (EngineConfig.max_payload / server max_payload)"
            )
        subject = self.subject(cmd)

        async def pub() -> bool:
            _, duplicate = await link.publish(subject, data, {"Nats-Msg-Id": msg_id})
            return not duplicate

        return await link.retry("publish command", pub)

    async def schedule(self, cmd: pb.Command, *, at_ms: int, key: str, msg_id: str) -> bool:
        """Have the server publish ``cmd`` at ``at_ms`` (JetStream message scheduling).

        The schedule's resolution is a whole second: the time is rounded down, and a sleep
        woken up to a second early waits out the rest in-process (see Context.sleep), so it
        wakes on time. ``key`` names the schedule (one subject per schedule). Returns False
        if it was a duplicate (by ``msg_id``).
        """
        link = self._link
        when = datetime.fromtimestamp(math.floor(at_ms / 1000), tz=UTC)
        headers = {
            "Nats-Schedule": f"@at {when.strftime('%Y-%m-%dT%H:%M:%SZ')}",
            "Nats-Schedule-Target": self.subject(cmd),
            "Nats-Msg-Id": msg_id,
        }
        data = cmd.SerializeToString()
        subject = link.names.schedule_subject(key, cmd.partition_key or cmd.invocation_id)

        async def pub() -> bool:
            ack = await link.js.publish(subject, data, headers=headers)
            return not ack.duplicate

        return await link.retry("schedule command", pub)

    async def queued(self, partition_key: str, before: int) -> list[pb.Command]:
        """Commands of a partition key still in its command stream numbered below ``before``
        (a command number, see ``Names.command_seq``), of every workflow and route (a key is
        shared across workflows).

        The caller holds a delivery of this key numbered ``before`` or later (its start or its
        turn, not acked yet), so an answer that shows no command from ``before`` on came from
        a replica that has not applied it yet: one that lags (a node catching up after a pause
        answered a direct get without an earlier start, and a later start of the key ran
        first). Such an answer is not used: asked again, then read from the stream's leader.
        """
        link = self._link
        n = link.names
        stream, subject = n.command_stream_of(partition_key), n.key_subjects(partition_key)
        before_seq = n.stream_seq_of(before)

        async def get() -> list[Any] | None:
            msgs, full = await self._gets.batch(stream, subject, 1, 64)
            seqs = [int((msg.headers or {})["Nats-Sequence"]) for msg in msgs]
            if full or any(seq >= before_seq for seq in seqs):
                return [m for m, seq in zip(msgs, seqs, strict=True) if seq < before_seq]
            return None  # a replica behind the caller's own delivery

        async def from_leader() -> list[Any]:
            return await self._leader_msgs(stream, subject, 64, before=before_seq)

        for attempt in range(3):
            fresh = await link.retry("read queued commands", get)
            if fresh is not None:
                return self._parsed(fresh)
            await asyncio.sleep(0.05 * (attempt + 1))
        return self._parsed(await link.retry("read queued commands from the leader", from_leader))

    async def queued_start(self, invocation_id: str) -> pb.Command | None:
        """The start of ``invocation_id`` left to create its state (``state_at_start``) if it is
        still in its command stream, else None. Read from the stream's leader: the command
        stream is a work queue, so a start still there has not been acknowledged (its run has
        not ended); one a follower had not applied yet would be missed."""
        link = self._link
        n = link.names
        stream, subject = n.command_stream_of(invocation_id), n.key_subjects(invocation_id)

        async def find() -> list[Any]:
            # The start, then what woke it, if anything.
            return await self._leader_msgs(stream, subject, _QUEUED_START_LOOKS)

        msgs = await link.retry("look for a queued start", find)
        return next(
            (
                cmd
                for cmd in self._parsed(msgs)
                if cmd.kind == pb.COMMAND_KIND_START
                and cmd.state_at_start
                and cmd.invocation_id == invocation_id
            ),
            None,
        )

    async def start_queued(self, invocation_id: str, partition_key: str, looks: int) -> bool:
        """Whether any start of ``invocation_id`` (routed by ``partition_key``) is still in its
        command stream, unacknowledged (a work queue), as the leader has it; True also when
        the key has ``looks`` commands or more (the start may be further on)."""
        link = self._link
        n = link.names
        stream, subject = n.command_stream_of(partition_key), n.key_subjects(partition_key)
        msgs = await link.retry(
            "look for a queued start", lambda: self._leader_msgs(stream, subject, looks)
        )
        return len(msgs) >= looks or any(
            cmd.kind == pb.COMMAND_KIND_START and cmd.invocation_id == invocation_id
            for cmd in self._parsed(msgs)
        )

    async def _leader_msgs(
        self, stream: str, subject: str, limit: int, *, before: int | None = None
    ) -> list[Any]:
        """Up to ``limit`` messages of ``subject`` (a wildcard may do) numbered below
        ``before``, oldest first, as the stream's leader has them (a message get, not a
        direct one)."""
        js = self._link.js
        out: list[Any] = []
        seq = 1
        while len(out) < limit:
            try:
                msg = await js.get_msg(stream, seq=seq, subject=subject, next=True)
            except nats.js.errors.NotFoundError:
                break
            seq = msg.seq or 0
            if before is not None and seq >= before:
                break
            out.append(msg)
            seq += 1
        return out

    @staticmethod
    def _parsed(msgs: Sequence[Any]) -> list[pb.Command]:
        out = []
        for msg in msgs:
            cmd = pb.Command()
            with contextlib.suppress(DecodeError):
                cmd.ParseFromString(msg.data)
                out.append(cmd)
        return out

    # -- consuming -------------------------------------------------------------------------

    async def consumers(
        self, cfg: WorkerConfig, routes: Sequence[tuple[str, str]]
    ) -> CommandConsumers:
        """Create or bind one durable pull consumer per ``(workflow, route)`` in each
        command stream (processors only), and fetch from them together.

        Raises:
            ConfigError: the engine still has the layout before routing (see
                :meth:`legacy_layout`).
        """
        why = await self.legacy_layout(cfg.consumer)
        if why:
            raise ConfigError(
                f"{why}: drain it, then run `durable admin migrate-routing` (it refuses while "
                "anything is left to do)"
            )
        n = self._link.names
        queue: Queue[Arrival] = Queue()
        bound = []
        wants = []
        for workflow, route in routes:
            name = n.route_consumer(cfg.consumer, workflow, route)
            for shard, stream in enumerate(n.command_streams):
                where = f" (shard {shard})" if n.shards > 1 else ""
                wants.append(
                    (
                        stream,
                        ConsumerConfig(
                            durable_name=name,
                            description=(
                                f"durable processors: {workflow} on route "
                                f"{check_route(route)}{where}"
                            ),
                            deliver_policy=DeliverPolicy.ALL,
                            ack_policy=AckPolicy.EXPLICIT,
                            ack_wait=cfg.ack_wait.total_seconds(),
                            max_deliver=-1,
                            # The server counts it over every processor of the consumer:
                            # ``max_concurrent`` here capped the whole fleet at one
                            # processor's share. Each processor asks only for its free slots.
                            max_ack_pending=FLEET_ACK_PENDING,
                            filter_subject=n.route_subjects(workflow, route, shard),
                            max_waiting=512,
                            metadata={
                                ROUTING_METADATA: "1",
                                "workflow": workflow,
                                "route": check_route(route),
                                "group": cfg.consumer,
                            },
                        ),
                    )
                )
                bound.append(
                    CommandConsumer(
                        self._link.nc,
                        f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{name}",
                        cfg.ack_wait.total_seconds(),
                        queue,
                        label=f"{workflow} on {check_route(route)}{where}",
                        number=functools.partial(n.command_seq, shard),
                    )
                )
        # Set up together: a processor of many workflows binds twice as many consumers.
        await asyncio.gather(
            *(
                self._provision.consumer(w, f"consumer {w.description}", stream=stream)
                for stream, w in wants
            )
        )
        return CommandConsumers(queue, bound)

    async def _consumer_infos(self, stream: str) -> list[Any]:
        link = self._link

        async def infos() -> list[Any]:
            out: list[Any] = []
            while True:  # the server lists 256 at a time
                page = await link.js.consumers_info(stream, offset=len(out))
                out.extend(page)
                if len(page) < 256:
                    return out

        return await link.retry("list consumers", infos)

    async def routed_consumers(self, group: str = "") -> list[tuple[str, str, str, str, Any]]:
        """``(consumer name, workflow, route, stream, info)`` of every routed command
        consumer, in every command stream (of ``group``, the processors' configured consumer
        name, if given)."""
        out = []
        for stream in self._link.names.command_streams:
            for info in await self._consumer_infos(stream):
                md = info.config.metadata or {}
                if md.get(ROUTING_METADATA) != "1" or (group and md.get("group") != group):
                    continue
                out.append((info.name, md.get("workflow", ""), md.get("route", ""), stream, info))
        return sorted(out, key=lambda c: (c[1], c[2], c[3]))

    async def consumer_stats(self, consumer: str) -> tuple[int, int, int]:
        """``(num_pending, num_ack_pending, num_redelivered)`` summed over the processors'
        command consumers (``consumer`` is their configured name: one consumer per workflow
        and route derives from it).

        Pending: commands not yet delivered; ack pending: delivered, not yet acked (running
        now, or held by a processor that died until ack-wait expires); redelivered: of those,
        the ones delivered more than once.

        Raises:
            NotFoundError: no such consumer (yet: the first processor creates them).
            NatsUnavailableError: NATS did not answer in time.
        """
        found = await self.routed_consumers(consumer)
        if not found:
            raise NotFoundError(
                f"no command consumers {consumer!r} on "
                f"{', '.join(self._link.names.command_streams)}"
            )
        pending = ack_pending = redelivered = 0
        for *_, ci in found:
            pending += ci.num_pending or 0
            ack_pending += ci.num_ack_pending or 0
            redelivered += ci.num_redelivered or 0
        return pending, ack_pending, redelivered

    # -- the layout before routing ---------------------------------------------------------

    async def _legacy_consumer(self, consumer: str) -> Any:
        link = self._link
        stream = link.names.command_stream

        async def info() -> Any:
            try:
                ci = await link.js.consumer_info(stream, consumer)
            except nats.js.errors.NotFoundError:
                return None
            if ci.config.filter_subject != link.names.command_subjects:
                return None
            return ci

        return await link.retry("look up the shared command consumer", info)

    async def _legacy_commands(self, limit: int = 1, start: int = 1) -> list[Any]:
        """Up to ``limit`` commands on the subjects of the old layout (no consumer takes them),
        from sequence ``start`` on."""
        link = self._link
        n = link.names

        async def first() -> list[Any]:
            subjects = n.legacy_command_subjects
            msgs, _ = await self._gets.batch(n.command_stream, subjects, start, limit)
            return msgs

        return await link.retry("look for commands of the old layout", first)

    async def _legacy_timers(self) -> list[Any]:
        """Scheduled commands (timers, delayed starts) whose target is an old subject."""
        link = self._link
        n = link.names
        out = []
        seq = 1
        while True:

            async def page(seq: int = seq) -> list[Any]:
                msgs, _ = await self._gets.batch(n.command_stream, n.schedule_subjects, seq, 256)
                return msgs

            msgs = await link.retry("read scheduled commands", page)
            for msg in msgs:
                target = (msg.headers or {}).get("Nats-Schedule-Target", "")
                head = f"{n.prefix}.cmd."
                if target.startswith(head) and "." not in target[len(head) :]:
                    out.append(msg)
            if len(msgs) < 256:
                return out
            seq = int((msgs[-1].headers or {})["Nats-Sequence"]) + 1

    async def legacy_layout(self, consumer: str) -> str:
        """What is left of the layout before routing ("" if nothing): the shared consumer
        (filter ``<prefix>.cmd.>``, which overlaps every routed one), or commands on the old
        one-token subjects, which no routed consumer takes.

        Timers aimed at old subjects are not looked for here, as that reads every timer:
        ``migrate_routing`` re-aims them, and one that fires later is an old-layout command,
        found here at the next start. An engine with several shards was made after routing:
        it has none of it.
        """
        n = self._link.names
        if n.shards > 1:
            return ""
        if await self._legacy_consumer(consumer) is not None:
            return (
                f"this engine ({n.prefix}) was created before commands were routed by "
                f"workflow: its shared consumer {consumer!r} takes every command"
            )
        if await self._legacy_commands():
            return (
                f"this engine ({n.prefix}) holds commands of the layout before routing "
                f"(subjects {n.legacy_command_subjects})"
            )
        return ""

    async def migrate_routing(self, consumer: str) -> list[str]:
        """Move an engine made before routing to routed commands; what was done, one line
        each. Refuses (ConflictError) while the shared consumer has commands pending or
        unacknowledged. Timers aimed at old subjects are re-aimed at routed ones, commands left
        on old subjects (with the shared consumer gone) are moved to theirs; then the shared
        consumer is deleted."""
        link = self._link
        n = link.names
        done: list[str] = []
        if n.shards > 1:
            return done  # made after routing (see legacy_layout)
        old = await self._legacy_consumer(consumer)
        if old is not None and (old.num_pending or old.num_ack_pending):
            raise ConflictError(
                f"the shared consumer {consumer!r} still has {old.num_pending or 0} pending "
                f"and {old.num_ack_pending or 0} unacknowledged commands: let the old "
                "processors finish them (or stop them and wait for ack_wait), then try again"
            )
        for msg in await self._legacy_timers():
            await self._retarget(msg)
            done.append(f"re-aimed timer {_subject(msg)}")
        if old is not None:
            await link.retry(
                "delete the shared consumer",
                lambda: link.js.delete_consumer(n.command_stream, consumer),
            )
            done.append(f"deleted the shared consumer {consumer!r}")
        # Onwards from the last one moved: a direct get answered by a follower a moment behind
        # could hand back a command just moved and deleted (CI 2026-12-06).
        start = 1
        while msgs := await self._legacy_commands(256, start):
            for msg in msgs:
                await self._reroute(msg)
                done.append(f"moved command {msg.headers.get('Nats-Sequence')} to its route")
            start = int(msgs[-1].headers["Nats-Sequence"]) + 1
        return done

    async def _reroute(self, msg: Any) -> None:
        """Publish a command left on an old subject to its routed one, then delete it."""
        seq = int((msg.headers or {})["Nats-Sequence"])
        cmd = self._command_of(msg)
        await self.publish(cmd, msg_id=f"migrate:{seq}")
        stream = self._link.names.command_stream
        await self._link.retry("delete a moved command", lambda: self._delete(stream, seq))

    async def _delete(self, stream: str, seq: int) -> None:
        try:
            await self._link.js.delete_msg(stream, seq)
        except nats.js.errors.APIError as e:
            # Gone already (a new schedule on the subject replaces the old one, a retry).
            if not isinstance(e, nats.js.errors.NotFoundError) and e.err_code not in _GONE_ALREADY:
                raise

    @staticmethod
    def _command_of(msg: Any) -> pb.Command:
        cmd = pb.Command()
        try:
            cmd.ParseFromString(msg.data)
        except DecodeError as e:
            raise InvalidInputError(f"message {_subject(msg)} is not a command: {e}") from e
        if not cmd.workflow:
            raise InvalidInputError(f"message {_subject(msg)} holds a command without a workflow")
        return cmd

    async def _retarget(self, msg: Any) -> None:
        """Publish an old-layout timer again, aimed at its routed subject, then delete it."""
        link = self._link
        headers = dict(msg.headers or {})
        seq = int(headers["Nats-Sequence"])
        new = {
            "Nats-Schedule": headers["Nats-Schedule"],
            "Nats-Schedule-Target": self.subject(self._command_of(msg)),
        }

        subject = _subject(msg)

        async def move() -> None:
            await link.js.publish(subject, msg.data, headers=new)

        await link.retry(f"re-aim timer {subject}", move)
        stream = link.names.command_stream
        await link.retry("delete a re-aimed timer", lambda: self._delete(stream, seq))

    async def nak(self, reply: str) -> None:
        """Hand a command held by another (dead) connection back for immediate redelivery.

        ``reply`` is the delivery's ack subject (``$JS.ACK.…``); JetStream takes a NAK on it
        from any connection.
        """
        if not any(reply.startswith(f"$JS.ACK.{s}.") for s in self._link.names.command_streams):
            raise InvalidInputError(f"not a command delivery of this engine: {reply!r}")
        await self._link.nc.publish(reply, b"-NAK")

    # -- lifecycle requests ----------------------------------------------------------------

    async def subscribe_control(self, on_request: Callable[[str, str], bool]) -> Any:
        """Listen for lifecycle requests addressed to running invocations (core NATS); a
        request that waits for an answer gets one from the processor that acted on it
        (``on_request`` returned True) only."""

        async def handle(msg: Msg) -> None:
            invocation_id = msg.subject.rsplit(".", 1)[-1]
            acted = on_request(invocation_id, msg.data.decode(errors="replace"))
            if acted and msg.reply:
                with contextlib.suppress(nats.errors.Error):
                    await msg.respond(b"")

        return await self._link.nc.subscribe(self._link.names.control_subjects, cb=handle)

    async def send_control(self, invocation_id: str, action: str, *, wait: float = 0.0) -> bool:
        """Tell whichever processor runs the invocation to act now (best effort). ``wait``:
        up to this long for that processor's answer; whether one came (False at once
        without ``wait``)."""
        nc = self._link.nc
        subject = self._link.names.control_subject(invocation_id)
        if wait > 0:
            try:
                await self._link.requests.request(subject, action.encode(), timeout=wait)
                return True
            except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
                return False  # no run answered: none in flight, or its processor is away
        # Sent with nats-py's next flush (at once). No nc.flush(timeout): one that times out
        # leaves a cancelled future whose late PONG stops nats-py's read loop.
        await nc.publish(subject, action.encode())
        return False
