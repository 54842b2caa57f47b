"""Small records written by compare and set: the one store behind partition keys, schedules,
processor leases and run locks.

Each record is a key of a KV bucket; every write names the revision it was based on (0: the
key must not exist), and a write that finds another revision raises StateConflict. Reads go to
the bucket's leader (``direct=False``): these records are decided on, and a follower's stale
answer would mislead.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any, Literal

import nats.errors
import nats.js.errors
from nats.js.kv import KeyValue

from durable_core._transport.connection import Link
from durable_core._transport.errors import StateConflict, wrong_last

__all__ = ["RecordStore", "watch_bucket"]

# A watch's consumer sends a heartbeat this often when idle; nats-py recreates the consumer
# after two intervals without one (its own default, 5 s, left a watch whose consumer was lost
# with its node stale for ~20 s: measured on 2026-12-06).
WATCH_HEARTBEAT_S = 1.0

# What a conditional delete does when the record is at another revision: raise StateConflict,
# let it be (someone who took the record over keeps it), or raise only if the record is still
# there (it is gone: an earlier try of ours landed).
OnConflict = Literal["raise", "ignore", "raise_unless_gone"]


class RecordStore:
    """The records of one bucket, opened on first use.

    Args:
        open_bucket: binds (or creates) the bucket.
        recognise_retries: a retried write that finds another revision reads the record back
            and takes an equal value for its own first try having landed.
    """

    def __init__(
        self,
        link: Link,
        open_bucket: Callable[[], Awaitable[KeyValue]],
        *,
        recognise_retries: bool = False,
    ) -> None:
        self._link = link
        self._open = open_bucket
        self._kv: KeyValue | None = None
        self._recognise_retries = recognise_retries

    def opened(self, kv: KeyValue) -> None:
        """Use ``kv`` (a processor created the bucket at start-up)."""
        self._kv = kv

    async def bucket(self) -> KeyValue:
        """The bucket, bound or created on first use."""
        if self._kv is None:
            self._kv = await self._open()
        return self._kv

    async def get(self, key: str, what: str) -> tuple[bytes | None, int]:
        """A record's value and revision, ``(None, 0)`` if there is none."""
        kv = await self.bucket()

        async def get() -> tuple[bytes | None, int]:
            try:
                e = await kv.get(key)
            except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
                return None, 0
            return e.value, e.revision or 0

        return await self._link.retry(f"read {what}", get)

    async def put(
        self, key: str, data: bytes, revision: int, what: str, *, once: bool = False
    ) -> int:
        """Write a record if it is still at ``revision`` (0: create); its new revision.

        Args:
            once: one try, transient errors and all (the caller tries again later).

        Raises:
            StateConflict: the record is at another revision.
        """
        kv = await self.bucket()
        attempts = 0

        async def put() -> int:
            nonlocal attempts
            attempts += 1
            try:
                if revision == 0:
                    return await kv.create(key, data)
                return await kv.update(key, data, last=revision)
            except nats.js.errors.APIError as e:
                # KeyWrongLastSequenceError is one; the code is not always set on it.
                if not wrong_last(e):
                    raise
                if self._recognise_retries and attempts > 1:
                    current, rev = await self.get(key, what)
                    if current == data:
                        return rev
                raise StateConflict(f"{what} changed since revision {revision}") from e

        if once:
            return await put()
        return await self._link.retry(f"write {what}", put)

    async def delete(
        self,
        key: str,
        revision: int,
        what: str,
        *,
        once: bool = False,
        on_conflict: OnConflict = "raise",
    ) -> None:
        """Delete a record if it is still at ``revision`` (0: whatever it is at).

        Raises:
            StateConflict: the record is at another revision (see ``on_conflict``).
        """
        kv = await self.bucket()

        async def delete() -> None:
            try:
                await kv.delete(key, last=revision or None)
            except nats.js.errors.APIError as e:
                if not wrong_last(e):
                    raise
                if on_conflict == "ignore":
                    return
                if on_conflict == "raise_unless_gone":
                    current, _ = await self.get(key, what)
                    if current is None:
                        return  # an earlier try of ours landed
                raise StateConflict(f"{what} changed since revision {revision}") from e

        if once:
            await delete()
        else:
            await self._link.retry(f"delete {what}", delete)

    async def keys(self, what: str) -> list[str]:
        """The keys of every record, from a snapshot read to its end (see :func:`watch_bucket`;
        nats-py's ``keys()`` could say "no keys" before the first arrived: a schedule just
        created was missing from the list, seen in CI)."""
        kv = await self.bucket()

        async def keys() -> list[str]:
            found: dict[str, None] = {}
            snapshot = watch_bucket(kv, self._link)
            try:
                async for item in snapshot:
                    if item is None:
                        break
                    key, value, _ = item
                    if value is None:
                        found.pop(key, None)
                    else:
                        found[key] = None
            finally:
                await snapshot.aclose()
            return list(found)

        return await self._link.retry(f"list {what}", keys)

    async def watch(self) -> AsyncIterator[tuple[str, bytes | None, int] | None]:
        """Every record now, then ``None`` once caught up, then every change (see
        :func:`watch_bucket`)."""
        async for item in watch_bucket(await self.bucket(), self._link):
            yield item


async def watch_bucket(
    kv: KeyValue, link: Link
) -> AsyncGenerator[tuple[str, bytes | None, int] | None, None]:
    """Every key of a bucket now, then ``None`` once caught up, then every change, as
    ``(key, value, revision)`` with ``value`` None for a deleted key.

    Its requests to the server (the watch's consumer, the bucket's status) are retried as
    every call is (``link``): a node gone or a leader being elected is waited out, and NATS
    unreachable past the deadline is NatsUnavailableError, never nats-py's own error.

    "Caught up" is the first entry with nothing pending after it (``delta`` 0). nats-py's own
    marker is trusted only for an empty bucket: it also sends it before the first entry when
    the consumer's info, read right after creating it, counts the initial entries as already
    delivered while they are still on their way (seen on R3 in about 1 watch of 100), and a
    snapshot read up to that marker was empty.
    """
    name = f"bucket {kv._name}"
    watcher = await link.retry(f"watch {name}", _with_heartbeat(kv).watchall)
    caught_up = False
    try:
        while True:
            try:
                entry = await watcher.updates(timeout=30.0)  # type: ignore[no-untyped-call]
            except nats.errors.TimeoutError:
                if not caught_up:  # nothing for 30 s: what came is all there is
                    caught_up = True
                    yield None
                continue
            if entry is None:
                # The bucket's status asks its leader.
                if not caught_up and (await link.retry(f"read {name}", kv.status)).values == 0:
                    caught_up = True
                    yield None
                continue
            if entry.operation in ("DEL", "PURGE") or not entry.value:
                yield entry.key, None, entry.revision or 0
            else:
                yield entry.key, entry.value, entry.revision or 0
            if not caught_up and not entry.delta:
                caught_up = True
                yield None
    finally:
        with contextlib.suppress(Exception):
            await watcher.stop()  # type: ignore[no-untyped-call]
        await _drop_watch_consumer(kv, watcher)


class _HeartbeatJetStream:
    """A JetStream context whose push subscriptions ask for ``WATCH_HEARTBEAT_S`` heartbeats
    (nats-py's KV watch takes no heartbeat setting; it subscribes through its context)."""

    def __init__(self, js: Any) -> None:
        self._js = js

    def __getattr__(self, name: str) -> Any:
        return getattr(self._js, name)

    async def subscribe(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("idle_heartbeat", WATCH_HEARTBEAT_S)
        return await self._js.subscribe(*args, **kwargs)


def _with_heartbeat(kv: KeyValue) -> KeyValue:
    """The same bucket, watched with ``WATCH_HEARTBEAT_S`` heartbeats (nats-py keeps what a
    KeyValue binds to in private attributes)."""
    return KeyValue(
        name=kv._name,
        stream=kv._stream,
        pre=kv._pre,
        js=_HeartbeatJetStream(kv._js),  # type: ignore[arg-type]
        direct=kv._direct,
    )


async def _drop_watch_consumer(kv: KeyValue, watcher: KeyValue.KeyWatcher) -> None:
    """Delete a stopped watch's consumer. nats-py only unsubscribes and leaves the ephemeral
    consumer to its inactive threshold (five minutes): the schedulers' sweeps, each a watch
    read to its end every 30 s, kept about 20 idle consumers per node at the soak's load.
    Best effort and bounded: if it fails, the threshold still removes it."""
    sub = getattr(watcher, "_sub", None)
    consumer = getattr(sub, "_consumer", None)
    stream = getattr(sub, "_stream", None)
    js = getattr(kv, "_js", None)
    if not (consumer and stream and js):
        return
    with contextlib.suppress(Exception):
        await asyncio.wait_for(js.delete_consumer(stream, consumer), 2.0)
