"""Inboxes: the messages of one subscription, taken without a task per message; one
long-lived wildcard inbox for requests answered by several messages (batched direct gets); and
one for requests answered by one message (every JetStream publish and read of the engine)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import json
from collections.abc import AsyncIterator
from typing import Any, Generic, TypeVar

import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from durable_core.errors import DurableError

__all__ = ["DirectGets", "Mailboxes", "MsgQueue", "Queue", "Requests"]

T = TypeVar("T")


class Queue(Generic[T]):
    """The messages of one subscription (its callback is ``put``), taken without a task and
    a timer per message as ``Subscription.next_msg`` makes."""

    __slots__ = ("_msgs", "_waiter")

    def __init__(self) -> None:
        self._msgs: collections.deque[T] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None

    async def put(self, msg: T) -> None:
        """Take in a message (the subscription's callback)."""
        self._msgs.append(msg)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def take(self) -> T | None:
        """The next message if one is there."""
        return self._msgs.popleft() if self._msgs else None

    async def get(self, timeout: float) -> T:
        """The next message; TimeoutError if none comes within ``timeout`` seconds (one
        reader at a time)."""
        if not self._msgs:
            loop = asyncio.get_running_loop()
            waiter = self._waiter = loop.create_future()
            timer = loop.call_later(max(timeout, 0), _wake, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
            if not self._msgs:
                raise TimeoutError
        return self._msgs.popleft()


class MsgQueue(Queue[Msg]):
    """A queue of NATS messages (a class of its own: ``Queue[Msg]()`` goes through typing's
    alias call, which fails to set ``__orig_class__`` on a slotted instance and catches
    that: three times the cost of making the queue, once per request or watch)."""

    __slots__ = ()


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class Mailboxes:
    """Subjects ``<prefix>.<n>`` under one long-lived wildcard subscription, each with its own
    queue: no subscription made and dropped per request (or per awaited result)."""

    def __init__(self, nc: NatsClient, prefix: str | None = None) -> None:
        self._nc = nc
        self._prefix = prefix or nc.new_inbox()
        self._sub: Any = None
        self._subscribing = asyncio.Lock()
        self._queues: dict[str, MsgQueue] = {}
        self._tokens = itertools.count(1)

    async def _route(self, msg: Msg) -> None:
        queue = self._queues.get(msg.subject[len(self._prefix) + 1 :])
        if queue is not None:  # else: a late answer to a request given up on
            await queue.put(msg)

    async def take(self) -> tuple[str, MsgQueue, str]:
        """A subject, the queue its messages arrive in, and the token that :meth:`drop`
        takes when they are no longer wanted."""
        if self._sub is None:
            async with self._subscribing:  # once, however many start together
                if self._sub is None:
                    self._sub = await self._nc.subscribe(f"{self._prefix}.*", cb=self._route)
        token = str(next(self._tokens))
        queue = self._queues[token] = MsgQueue()
        return f"{self._prefix}.{token}", queue, token

    def drop(self, token: str) -> None:
        """Stop taking in the messages of ``token``'s subject."""
        self._queues.pop(token, None)

    @contextlib.asynccontextmanager
    async def open(self) -> AsyncIterator[tuple[str, MsgQueue]]:
        """A reply subject and the queue its answers arrive in, until the block ends."""
        subject, queue, token = await self.take()
        try:
            yield subject, queue
        finally:
            self.drop(token)


class Requests:
    """Requests answered by one message, as ``nc.request`` makes them, for less: the reply
    subject is ``<inbox>.<counter>`` under one long-lived wildcard subscription (no random
    token from ``os.urandom`` and no NUID per request) and the answer resolves a future bound
    by one timer (no ``asyncio.wait_for`` with its waiter, callbacks and timer).

    The subscription is made on first use; nats-py makes it again after a reconnect. A
    request whose answer was lost in a reconnect times out, as with ``nc.request``.
    """

    __slots__ = ("_nc", "_prefix", "_sub", "_subscribing", "_waiting", "_tokens")

    def __init__(self, nc: NatsClient) -> None:
        self._nc = nc
        self._prefix = ""
        self._sub: Any = None
        self._subscribing = asyncio.Lock()
        self._waiting: dict[str, asyncio.Future[Msg]] = {}
        self._tokens = itertools.count(1)

    async def _answer(self, msg: Msg) -> None:
        future = self._waiting.get(msg.subject[len(self._prefix) :])
        if future is not None and not future.done():  # else: given up on, or answered
            future.set_result(msg)

    async def request(
        self,
        subject: str,
        data: bytes,
        *,
        headers: dict[str, str] | None = None,
        timeout: float = 5.0,
    ) -> Msg:
        """Publish ``data`` to ``subject`` and return the first answer.

        Raises nats.errors.TimeoutError when none comes within ``timeout`` seconds, and
        nats.errors.NoRespondersError when the server says nobody listens (as
        ``nc.request`` does).
        """
        if self._sub is None:
            async with self._subscribing:  # once, however many start together
                if self._sub is None:
                    prefix = self._nc.new_inbox() + "."
                    self._sub = await self._nc.subscribe(prefix + "*", cb=self._answer)
                    self._prefix = prefix
        token = str(next(self._tokens))
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Msg] = loop.create_future()
        self._waiting[token] = future
        timer = loop.call_later(timeout, _expire, future)
        try:
            await self._nc.publish(subject, data, reply=self._prefix + token, headers=headers)
            msg = await future
        finally:
            timer.cancel()
            del self._waiting[token]
        if msg.headers and msg.headers.get("Status") == "503":
            raise nats.errors.NoRespondersError
        return msg


def _expire(future: asyncio.Future[Msg]) -> None:
    if not future.done():
        future.set_exception(nats.errors.TimeoutError())


class DirectGets:
    """Batched direct gets: the messages of one subject of a stream, from a sequence on, in
    one request (answered by any replica; a follower may lag by a few milliseconds)."""

    def __init__(self, nc: NatsClient) -> None:
        self._nc = nc
        self._replies: Mailboxes | None = None  # made on first use

    async def batch(
        self, stream: str, subject: str, start: int, batch: int
    ) -> tuple[list[Msg], bool]:
        """Up to ``batch`` messages of ``subject`` from sequence ``start`` on, and whether
        more may follow (the batch was full)."""
        if self._replies is None:
            self._replies = Mailboxes(self._nc)
        out: list[Msg] = []
        async with self._replies.open() as (inbox, replies):
            req = json.dumps({"seq": start, "next_by_subj": subject, "batch": batch}).encode()
            await self._nc.publish(f"$JS.API.DIRECT.GET.{stream}", req, reply=inbox)
            while True:
                msg = await replies.get(timeout=5.0)
                hdrs = msg.headers or {}
                status = hdrs.get("Status")
                if status == "404":
                    return out, False
                if status == "204":  # end of batch
                    return out, len(out) == batch
                if status == "503":
                    raise nats.errors.NoRespondersError
                if status:
                    raise DurableError(f"direct get on {stream} failed: {status} {hdrs}")
                out.append(msg)
