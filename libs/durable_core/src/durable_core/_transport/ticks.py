"""Schedule ticks: the server fires each schedule on its cron or ``@every`` pattern and
publishes a tick, which the schedulers pull from one shared consumer."""

from __future__ import annotations

import contextlib
from datetime import datetime
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from durable_core._transport.connection import Link
from durable_core._transport.errors import INVALID_SCHEDULE
from durable_core._transport.provision import Provisioner
from durable_core.errors import InvalidInputError

__all__ = ["TickConsumer", "TickDelivery", "Ticks"]


class Ticks:
    """Server-side schedules and their ticks."""

    def __init__(self, link: Link, provision: Provisioner) -> None:
        self._link = link
        self._provision = provision

    async def arm(
        self, name: str, pattern: str, *, timezone: str | None = None, body: bytes = b""
    ) -> None:
        """Have the server fire schedule ``name`` on ``pattern`` (cron or ``@every``).

        Each firing is a message on the tick subject of ``name``. Arming again replaces the
        previous pattern (one schedule per subject; older messages on it are purged).

        Raises:
            InvalidInputError: the server refused the pattern or the time zone.
        """
        link = self._link
        n = link.names
        headers = {"Nats-Schedule": pattern, "Nats-Schedule-Target": n.tick_subject(name)}
        if timezone:
            headers["Nats-Schedule-Time-Zone"] = timezone
        subject = n.cron_subject(name)

        async def arm() -> None:
            try:
                # No Nats-Msg-Id: re-arming after a pause must not be taken for a duplicate.
                await link.js.publish(subject, body, headers=headers)
            except nats.js.errors.BadRequestError as e:
                if e.err_code == INVALID_SCHEDULE:
                    where = f" in time zone {timezone!r}" if timezone else ""
                    raise InvalidInputError(
                        f"the NATS server refused the schedule {pattern!r}{where}: {e.description}"
                    ) from e
                raise
            await link.js.purge_stream(n.command_stream, subject=subject, keep=1)

        await link.retry(f"arm schedule {name}", arm)

    async def disarm(self, name: str) -> None:
        """Stop the server firing schedule ``name`` and drop its ticks not yet handled."""
        link = self._link
        n = link.names

        async def purge() -> None:
            await link.js.purge_stream(n.command_stream, subject=n.cron_subject(name))
            await link.js.purge_stream(n.command_stream, subject=n.tick_subject(name))

        await link.retry(f"disarm schedule {name}", purge)

    async def armed(self, name: str) -> bool:
        """Whether the server holds a schedule for ``name``."""
        link = self._link
        n = link.names

        async def get() -> bool:
            try:
                await link.js.get_last_msg(n.command_stream, n.cron_subject(name))
            except nats.js.errors.NotFoundError:
                return False
            return True

        return await link.retry(f"look up schedule {name}", get)

    async def armed_names(self) -> list[str]:
        """The names of every schedule the server holds, from the stream leader's subject
        list (a record may be missing: see ``reconcile_schedules``)."""
        link = self._link
        n = link.names
        head, tail = n.cron_subject("*").split("*")

        async def subjects() -> dict[str, int]:
            info = await link.js.stream_info(n.command_stream, subjects_filter=f"{head}*{tail}")
            return info.state.subjects or {}

        found = await link.retry("list armed schedules", subjects)
        return [s.removeprefix(head).removesuffix(tail) for s in found]

    async def consumer(
        self, *, consumer: str, ack_wait: float, max_ack_pending: int
    ) -> TickConsumer:
        """Create or bind the shared durable pull consumer of schedule ticks."""
        link = self._link
        n = link.names
        want = ConsumerConfig(
            durable_name=consumer,
            description="durable schedulers",
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=ack_wait,
            max_deliver=-1,
            max_ack_pending=max_ack_pending,
            filter_subject=n.tick_subjects,
            max_waiting=512,
        )
        await self._provision.consumer(want, "tick consumer")
        psub = await link.js.pull_subscribe_bind(
            consumer, stream=n.command_stream, inbox_prefix=link.nc.new_inbox().encode()
        )
        return TickConsumer(psub)


class TickDelivery:
    """One delivery of a schedule tick: the message the server published when it fired."""

    __slots__ = ("_msg", "headers", "num_delivered", "stored_at", "subject")

    def __init__(self, msg: Msg) -> None:
        self._msg = msg
        self.subject: str = msg.subject
        self.headers: dict[str, str] = dict(msg.headers or {})
        md = msg.metadata
        self.num_delivered: int = md.num_delivered or 1
        # When the server stored the tick (it fired then); the same on every redelivery.
        self.stored_at: datetime = md.timestamp

    async def ack(self) -> None:
        """The tick is handled."""
        await self._msg.ack_sync(timeout=5.0)

    async def nak(self, delay: float | None = None) -> None:
        """Have the tick delivered again (after ``delay`` seconds)."""
        await self._msg.nak(delay=delay)

    async def in_progress(self) -> None:
        """Still at it: reset the tick's ack wait."""
        await self._msg.in_progress()


class TickConsumer:
    """Pulls tick deliveries from the shared durable consumer of the schedulers."""

    def __init__(self, psub: Any) -> None:
        self._psub = psub

    async def fetch(self, batch: int, timeout: float) -> list[TickDelivery]:
        """Up to ``batch`` ticks; an empty list if none arrived within ``timeout``."""
        try:
            msgs = await self._psub.fetch(batch=batch, timeout=timeout)
        except (TimeoutError, nats.errors.TimeoutError):
            return []
        return [TickDelivery(m) for m in msgs]

    async def close(self) -> None:
        """Stop pulling."""
        with contextlib.suppress(nats.errors.Error):
            await self._psub.unsubscribe()
