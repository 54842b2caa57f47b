"""Command deliveries from the processors' consumer, and how long each is surely ours.

Part of the transport layer (it speaks NATS). JetStream redelivers a command whose holder sent
no progress for ``ack_wait``, to whichever processor pulls next: the holder cannot stop that,
but it can know, by its own clock, until when the server cannot have done it yet. A
``Delivery`` keeps that bound (``held_until``) and the engine runs a step only before it:

- the server delivered the message after it received the pull request that brought it, so
  the deadline is at least ``ack_wait`` after that request was sent (``floor``);
- each in-progress ack is sent as a request; the server answers once it has reset the
  deadline. The consumer leader answers before it has replicated the reset, so a leader
  change can lose the latest one: an answer that arrives before the current bound moves it to
  ``ack_wait`` after the *previous* answered ack was sent. An answer that arrives later
  proves nothing (the server may have redelivered meanwhile): the delivery is then ``lost``.

Acks, NAKs and terminations act on the message's stream sequence, whichever delivery's reply
subject carries them (measured on nats-server 2.15: a NAK from an earlier delivery's subject
takes the message from its current holder and redelivers it). So a delivery is NAKed or
terminated only while it is surely held; acked otherwise only when the invocation finished.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from durable_core._transport.inbox import Queue

log = logging.getLogger("durable_core.transport")

__all__ = ["Arrival", "CommandConsumer", "Delivery"]


class Delivery:
    """One delivery of a command message: its ack operations, and until when it is surely
    still ours (``held_until``, monotonic seconds).

    Args:
        msg: the delivered message.
        nc: the connection, for in-progress acks that wait for the server's answer.
        ack_wait: the consumer's ack wait, in seconds.
        floor: when the pull request that brought the message was sent (monotonic).
        number: the command's number from its stream sequence (``Names.command_seq`` of the
            consumer's shard); the stream sequence itself if not given.
    """

    __slots__ = (
        "_msg",
        "_nc",
        "_previous",
        "ack_wait",
        "command_seq",
        "data",
        "held_until",
        "lost",
        "num_delivered",
        "num_pending",
        "settled",
        "stream_seq",
        "subject",
    )

    def __init__(
        self,
        msg: Msg,
        *,
        nc: NatsClient | None,
        ack_wait: float,
        floor: float,
        number: Callable[[int], int] | None = None,
    ) -> None:
        self._msg = msg
        self._nc = nc
        self.data: bytes = msg.data
        self.subject: str = msg.subject  # the routed subject it was published to
        md = msg.metadata
        self.num_delivered: int = md.num_delivered or 1
        self.stream_seq: int = md.sequence.stream if md.sequence else 0
        # Unique in the engine (stream sequences repeat across shards): runs, leases and
        # CLAIM entries name the command by it.
        self.command_seq: int = number(self.stream_seq) if number else self.stream_seq
        self.num_pending: int = md.num_pending or 0  # the consumer's commands still waiting
        self.ack_wait = ack_wait
        self.held_until = floor + ack_wait
        self._previous = floor  # when the last answered in-progress ack was sent
        self.lost = False
        self.settled = False  # acked, NAKed or terminated by this process

    def surely_held(self, margin: float = 0.0) -> bool:
        """Whether the server cannot have redelivered this command yet, ``margin`` seconds
        from now."""
        return not self.lost and time.monotonic() + margin < self.held_until

    async def heartbeat(self, timeout: float) -> bool:
        """Send an in-progress ack and wait for the server's answer; True if it moved the
        bound on. A missing or late answer leaves the bound where it was (or loses it)."""
        if self._nc is None:
            await self._msg.in_progress()
            return False
        sent = time.monotonic()
        try:
            await self._nc.request(self._msg.reply, b"+WPI", timeout=timeout)
        except Exception as e:  # noqa: BLE001 - the next heartbeat tries again
            log.debug(
                "in-progress ack of command %d: %s: %s", self.command_seq, type(e).__name__, e
            )
            return False
        if self.lost:
            return False
        if time.monotonic() >= self.held_until:
            # The answer came after the server may have redelivered: it proves nothing.
            self.lost = True
            log.warning(
                "command %d: an in-progress ack was answered after ack_wait; another processor "
                "may hold it now",
                self.command_seq,
            )
            return False
        self.held_until = max(self.held_until, self._previous + self.ack_wait)
        self._previous = max(self._previous, sent)
        return True

    def adopt(self, newer: Delivery) -> None:
        """Act on ``newer``, a redelivery of this same command to this process, from now on
        (the run in progress goes on with it instead of a second run starting)."""
        assert newer.command_seq == self.command_seq
        self._msg = newer._msg
        self.num_delivered = newer.num_delivered
        self.held_until, self._previous = newer.held_until, newer._previous
        self.lost = False

    async def ack(self, *, finished: bool = False) -> None:
        """Ack while surely held; ``finished``: the invocation is over, so ack in any case
        (whoever holds the command now would only ack it too)."""
        if finished or self._settling("ack"):
            self.settled = True
            await self._msg.ack()

    async def ack_sync(self) -> None:
        """Ack a finished invocation's command and wait until the server has it; a server
        that does not confirm (a consumer leader failing over) is asked again, and after three
        tries the command is left to its redelivery, which only acks it again (a NATS hiccup
        here was reported as an engine failure)."""
        self.settled = True
        for attempt in range(3):
            try:
                await self._msg.ack_sync(timeout=5.0)
                return
            except (nats.errors.TimeoutError, nats.errors.NoRespondersError) as e:
                if attempt == 2:
                    log.warning(
                        "command %d: the ack of its finished run was not confirmed (%s); "
                        "its redelivery is acked again",
                        self.command_seq,
                        type(e).__name__,
                    )
                    return
                await asyncio.sleep(0.5)

    async def nak(self, delay: float | None = None, *, stale_ok: bool = False) -> None:
        """Hand the command back (while surely held: else it may be someone else's now).

        ``stale_ok``: hand it back even if it may have moved on; only where a NAK that takes it
        from a later holder cannot start a second run (run locks, see
        ``durable_core.engine._hold``).
        """
        if stale_ok or self._settling("nak"):
            self.settled = True
            await self._msg.nak(delay=delay)

    async def term(self) -> None:
        if self._settling("term"):
            self.settled = True
            await self._msg.term()

    def _settling(self, what: str) -> bool:
        if self.surely_held():
            return True
        log.info(
            "command %d: not sending %s: its ack wait may have run out (it is redelivered)",
            self.command_seq,
            what,
        )
        return False

    @property
    def reply(self) -> str:
        """The ack subject of this delivery (a processor lease lists the ones it holds)."""
        return self._msg.reply


class _Pull:
    """One pull request: when it was sent, what it may still bring, when it expires, and the
    subscription on its own reply subject."""

    __slots__ = ("batch", "credit", "expires", "sent", "sub")

    def __init__(self, sent: float, credit: int, expires: float, sub: Any) -> None:
        self.sent, self.credit, self.expires, self.sub = sent, credit, expires, sub
        self.batch = credit


Arrival = tuple["CommandConsumer", int, Msg]


class CommandConsumer:
    """The pull requests to one durable command consumer (one workflow on one route).

    One pull request open at a time: a command is handed over as soon as it arrives (a fetch
    never waits for a batch to fill up), and the next request goes out when the open one is
    used up or expires. Each request has a reply subject (and subscription) of its own, so
    each delivery's ``floor`` is when the very request that brought it was sent. (Telling
    requests apart by the order in which they end is not enough: a request open while the
    connection was down ends without a status, as the server just forgets it, and every
    later floor would count from a request long gone. Nor can one wildcard subscription tell
    them apart: a delivered message carries the stream's subject, not the reply subject.)

    What arrives goes to ``queue``, shared by every consumer of a processor
    (:class:`durable_core._transport.routes.CommandConsumers` fetches from it).
    """

    def __init__(
        self,
        nc: NatsClient,
        next_subject: str,
        ack_wait: float,
        queue: Queue[Arrival],
        *,
        label: str = "",
        number: Callable[[int], int] | None = None,
    ) -> None:
        self._nc = nc
        self._number = number  # a delivery's command number from its stream sequence
        self._next_subject = next_subject
        self._ack_wait = ack_wait
        self.label = label  # "<workflow> on <route>", for logs
        self._inbox = nc.new_inbox()
        self._queue = queue
        self._sent = 0  # pull requests sent; the last one is the open one
        self._credit = 0  # messages the open request may still bring
        self._until = 0.0  # when it expires (monotonic)
        self._open: dict[int, _Pull] = {}  # requests not known to be used up or ended
        self._done: list[Any] = []  # subscriptions of requests that are over
        self.answered_at = time.monotonic()  # the server's last delivery or request expiry
        self.trouble = ""  # the last status that ended a pull request abnormally
        self.idle = True  # nothing brought yet, or its last request expired empty
        # Nothing was left waiting for it at its last delivery (or its last request ran out
        # unfilled); False while the server says more commands wait (a backlog).
        self.drained = True

    @property
    def expires(self) -> float:
        """How long one pull request stays open: short against ack_wait, since a delivery's
        bound counts from when its request was sent."""
        return min(1.0, self._ack_wait / 4)

    @property
    def until(self) -> float:
        """When the open request expires (monotonic); in the past if none is open."""
        return self._until

    def outstanding(self, now: float) -> int:
        """What the open request may still bring (0 if it is used up or expired)."""
        return self._credit if self._credit > 0 and now < self._until else 0

    def delivered(self, n: int, msg: Msg) -> Delivery:
        """A message that arrived for request ``n``: a delivery with its bound."""
        self.answered_at, self.trouble, self.idle = time.monotonic(), "", False
        if n == self._sent:
            self._credit -= 1
        self._prune()
        pull = self._open.get(n)
        if pull is None:
            # A request forgotten long after it expired: no bound is known, so none is
            # claimed (the run stops at its first step and the command goes back).
            floor = time.monotonic() - self._ack_wait
        else:
            floor = pull.sent
            pull.credit -= 1
            if pull.credit <= 0:
                self._over(n)
        delivery = Delivery(
            msg, nc=self._nc, ack_wait=self._ack_wait, floor=floor, number=self._number
        )
        self.drained = delivery.num_pending == 0
        return delivery

    def ended(self, n: int, msg: Msg) -> None:
        """A status message: request ``n`` is over."""
        pull = self._open.get(n)
        self._over(n)
        if n == self._sent:
            self._credit = 0
        headers = msg.headers or {}
        if headers.get("Status") == "408":
            self.answered_at, self.trouble = time.monotonic(), ""
            self.idle = pull is not None and pull.credit >= pull.batch
            self.drained = True
        else:
            self.trouble = f"{headers.get('Status')} {headers.get('Description', '')}".strip()

    def _over(self, n: int) -> None:
        pull = self._open.pop(n, None)
        if pull is not None:
            self._done.append(pull.sub)

    def _prune(self) -> None:
        # A request whose end the server never reported (it was open during a disconnect)
        # brings nothing any more: forget it well after it expired.
        horizon = time.monotonic() - self._ack_wait - 5.0
        for n in [n for n, pull in self._open.items() if pull.expires < horizon]:
            self._over(n)

    async def unsubscribe_done(self) -> None:
        """Drop the subscriptions of requests that are over."""
        done, self._done = self._done, []
        for sub in done:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

    async def request(self, batch: int, expires: float | None = None) -> None:
        """Open a pull request for up to ``batch`` commands, open for ``expires`` seconds (at
        most :attr:`expires`; the open one is used up or expired)."""
        expires = self.expires if expires is None else min(expires, self.expires)
        req = json.dumps({"batch": batch, "expires": int(expires * 1e9)}).encode()
        self._prune()
        await self.unsubscribe_done()
        self._sent += 1
        n = self._sent
        reply = f"{self._inbox}.{n}"
        queue = self._queue

        async def arrived(msg: Msg) -> None:
            await queue.put((self, n, msg))

        sub = await self._nc.subscribe(reply, cb=arrived)
        sent = time.monotonic()
        if not self._open:
            # Nothing was asked meanwhile (every slot was busy): the silence counts from now.
            self.answered_at = max(self.answered_at, sent)
        self._credit, self._until = batch, sent + expires - 0.01
        self._open[n] = _Pull(sent, batch, sent + expires, sub)
        await self._nc.publish(self._next_subject, req, reply=reply)

    async def close(self) -> None:
        """Stop asking: the open pull request is left to run out first (at most its
        ``expires``): a command handed back while it is open would come straight back to it,
        and so to nobody. What it brought meanwhile stays in the shared queue, its requests
        known (so each delivery's bound is), until ``forget``."""
        left = self._until - time.monotonic()
        if self._credit > 0 and left > 0:
            await asyncio.sleep(left)

    async def forget(self) -> None:
        """Drop every request (after ``close``, once what they brought was handed back)."""
        self._done += [pull.sub for pull in self._open.values()]
        self._open.clear()
        await self.unsubscribe_done()
