"""Commands: starts and wake-ups on the work-queue stream, published (deduplicated by message
id) or scheduled on the server, the processors' consumer, and lifecycle requests sent over
core NATS to whichever processor runs an invocation."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import nats.js.errors
from google.protobuf.message import DecodeError
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from durable_core._pb.durable.v1 import durable_pb2 as pb
from durable_core._transport.connection import Link
from durable_core._transport.delivery import CommandConsumer
from durable_core._transport.inbox import DirectGets
from durable_core._transport.provision import Provisioner
from durable_core.config import WorkerConfig
from durable_core.errors import InvalidInputError, NotFoundError

__all__ = ["Commands"]


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

    async def publish(self, cmd: pb.Command, *, msg_id: str) -> bool:
        """Publish a command (deduplicated by msg_id). Returns False if it was a duplicate."""
        link = self._link
        data = cmd.SerializeToString()
        if len(data) > self.payload_limit + 8 * 1024:
            raise InvalidInputError(
                f"command for {cmd.invocation_id} is {len(data)} bytes; the limit is "
                f"{self.payload_limit} bytes (EngineConfig.max_payload / server max_payload)"
            )
        subject = link.names.command_subject(cmd.partition_key or cmd.invocation_id)

        async def pub() -> bool:
            _, duplicate = await link.publish(subject, data, {"Nats-Msg-Id": msg_id})
            return not duplicate

        return await link.retry("publish command", pub)

    async def schedule(self, cmd: pb.Command, *, at_ms: int, key: str, msg_id: str) -> None:
        """Have the server publish ``cmd`` at ``at_ms`` (JetStream message scheduling).

        The schedule's resolution is a whole second: the time is rounded down, and a sleep
        woken up to a second early waits out the rest in-process (see Context.sleep), so it
        wakes on time. ``key`` names the schedule (one subject per schedule).
        """
        link = self._link
        when = datetime.fromtimestamp(math.floor(at_ms / 1000), tz=UTC)
        headers = {
            "Nats-Schedule": f"@at {when.strftime('%Y-%m-%dT%H:%M:%SZ')}",
            "Nats-Schedule-Target": link.names.command_subject(
                cmd.partition_key or cmd.invocation_id
            ),
            "Nats-Msg-Id": msg_id,
        }
        data = cmd.SerializeToString()
        subject = link.names.schedule_subject(key)

        async def pub() -> None:
            await link.js.publish(subject, data, headers=headers)

        await link.retry("schedule command", pub)

    async def queued(self, partition_key: str, before_seq: int) -> list[pb.Command]:
        """Commands of a partition key still in the command stream below ``before_seq``."""
        link = self._link
        stream, subject = link.names.command_stream, link.names.command_subject(partition_key)

        async def get() -> list[pb.Command]:
            msgs, _ = await self._gets.batch(stream, subject, 1, 64)
            out = []
            for msg in msgs:
                if int((msg.headers or {})["Nats-Sequence"]) >= before_seq:
                    break
                cmd = pb.Command()
                with contextlib.suppress(DecodeError):
                    cmd.ParseFromString(msg.data)
                    out.append(cmd)
            return out

        return await link.retry("read queued commands", get)

    # -- consuming -------------------------------------------------------------------------

    async def consumer(self, cfg: WorkerConfig) -> CommandConsumer:
        """Create or bind the shared durable pull consumer for commands."""
        n = self._link.names
        want = ConsumerConfig(
            durable_name=cfg.consumer,
            description="durable processors",
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=cfg.ack_wait.total_seconds(),
            max_deliver=-1,
            max_ack_pending=cfg.max_concurrent,
            filter_subject=n.command_subjects,
            max_waiting=512,
        )
        await self._provision.consumer(want, "consumer", announce=True)
        consumer = CommandConsumer(
            self._link.nc,
            f"$JS.API.CONSUMER.MSG.NEXT.{n.command_stream}.{cfg.consumer}",
            cfg.ack_wait.total_seconds(),
        )
        await consumer.start()
        return consumer

    async def consumer_stats(self, consumer: str) -> tuple[int, int, int]:
        """``(num_pending, num_ack_pending, num_redelivered)`` of a command consumer.

        Pending: commands not yet delivered; ack pending: delivered, not yet acked (running
        now, or held by a processor that died until ack-wait expires); redelivered: of those,
        the ones delivered more than once.

        Raises:
            NotFoundError: no such consumer (yet: the first processor creates it).
            NatsUnavailableError: NATS did not answer in time.
        """
        link = self._link
        stream = link.names.command_stream

        async def info() -> tuple[int, int, int]:
            try:
                ci = await link.js.consumer_info(stream, consumer)
            except nats.js.errors.NotFoundError as e:
                raise NotFoundError(f"no consumer {consumer!r} on {stream}") from e
            return ci.num_pending or 0, ci.num_ack_pending or 0, ci.num_redelivered or 0

        return await link.retry("consumer info", info)

    async def nak(self, reply: str) -> None:
        """Hand a command held by another (dead) connection back for immediate redelivery.

        ``reply`` is the delivery's ack subject (``$JS.ACK.…``); JetStream takes a NAK on it
        from any connection.
        """
        if not reply.startswith(f"$JS.ACK.{self._link.names.command_stream}."):
            raise InvalidInputError(f"not a command delivery of this engine: {reply!r}")
        await self._link.nc.publish(reply, b"-NAK")

    # -- lifecycle requests ----------------------------------------------------------------

    async def subscribe_control(self, on_request: Callable[[str, str], None]) -> Any:
        """Listen for lifecycle requests addressed to running invocations (core NATS)."""

        async def handle(msg: Msg) -> None:
            invocation_id = msg.subject.rsplit(".", 1)[-1]
            on_request(invocation_id, msg.data.decode(errors="replace"))

        return await self._link.nc.subscribe(self._link.names.control_subjects, cb=handle)

    async def send_control(self, invocation_id: str, action: str) -> None:
        """Tell whichever processor runs the invocation to act now (best effort)."""
        nc = self._link.nc
        await nc.publish(self._link.names.control_subject(invocation_id), action.encode())
        await nc.flush(timeout=2)
