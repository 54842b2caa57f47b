"""The feed: one KV watch of the state bucket, applied to the index and fanned out to streams.

``Client.watch_executions()`` yields every execution, then ``None`` once caught up, then each
change. The feed applies them to the :class:`ExecutionIndex` and hands each real change to the
open server-sent-event streams. If the watch fails (NATS gone for longer than the client's
reconnects), it starts a new one after a pause: the new snapshot replaces the old one, and
executions deleted meanwhile are dropped (:meth:`ExecutionIndex.end_snapshot`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from durable_core import ExecutionSummary
from durable_inspector.index import Change, ExecutionIndex

__all__ = ["Event", "Feed", "Subscription", "WatchSource"]

log = logging.getLogger("durable_inspector")

QUEUE_SIZE = 1000  # events buffered per stream; a slower reader gets a "reset" instead


class WatchSource(Protocol):
    """What the feed watches: a durable_core Client, or a test double."""

    def watch_executions(self) -> AsyncIterator[ExecutionSummary | None]:
        """Every execution now, then None once caught up, then each change."""


@dataclass(frozen=True, slots=True)
class Event:
    """A change for the streams: ``execution`` (upsert), ``deleted``, ``ready`` or ``reset``."""

    kind: Literal["execution", "deleted", "ready", "reset"]
    invocation_id: str = ""
    change: Change | None = None


@dataclass(eq=False)
class Subscription:
    """One open stream's queue; ``invocation_id`` limits it to one execution."""

    invocation_id: str | None
    queue: asyncio.Queue[Event] = field(default_factory=lambda: asyncio.Queue(QUEUE_SIZE))

    def offer(self, event: Event) -> None:
        """Queue ``event`` for the subscriber (the oldest goes when the queue is full)."""
        if self.invocation_id and event.invocation_id not in ("", self.invocation_id):
            return
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            # The reader fell behind: drop what it has not read and tell it to reload.
            while not self.queue.empty():
                self.queue.get_nowait()
            self.queue.put_nowait(Event("reset"))


class Feed:
    """Runs the watch; owns the index's writes and the set of open subscriptions."""

    def __init__(self, source: WatchSource, index: ExecutionIndex, *, retry_after: float = 2.0):
        self.source = source
        self.index = index
        self.retry_after = retry_after
        self.subscriptions: set[Subscription] = set()
        self.ready = asyncio.Event()
        self.error: str | None = None

    def subscribe(self, invocation_id: str | None = None) -> Subscription:
        """Subscribe to the changes of every execution, or of one."""
        sub = Subscription(invocation_id)
        self.subscriptions.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        """Stop delivering to ``sub``."""
        self.subscriptions.discard(sub)

    def publish(self, event: Event) -> None:
        """Deliver ``event`` to every subscriber that wants it."""
        for sub in list(self.subscriptions):
            sub.offer(event)

    async def run(self) -> None:
        """Watch until cancelled, starting a new watch after a failure."""
        while True:
            try:
                await self._watch_once()
                log.warning("execution watch ended; starting a new one")
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - keep serving what we have, and retry
                self.error = f"{type(e).__name__}: {e}"
                log.warning("execution watch failed (%s); retrying in %.0fs", e, self.retry_after)
            await asyncio.sleep(self.retry_after)

    async def _watch_once(self) -> None:
        self.index.begin_snapshot()
        watch = self.source.watch_executions()
        try:
            async for item in watch:
                if item is None:
                    gone = self.index.end_snapshot()
                    self.error = None
                    for invocation_id in gone:
                        self.publish(Event("deleted", invocation_id))
                    if not self.ready.is_set():
                        log.info("index ready: %d executions", len(self.index))
                        self.ready.set()
                    self.publish(Event("ready"))
                    continue
                self._apply(item)
        finally:
            aclose: Any = getattr(watch, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()

    def _apply(self, item: ExecutionSummary) -> None:
        """Apply one record; one that does not convert (a state written by a newer version,
        say) is logged and skipped, so that it never stops the watch at the same record."""
        try:
            change = self.index.apply(item)
            if change is None:
                return
            if change.kind == "deleted":
                self.publish(Event("deleted", change.invocation_id, change))
            else:
                self.publish(Event("execution", change.invocation_id, change))
        except Exception as e:  # noqa: BLE001 - skip this record, keep the watch
            log.warning(
                "skipping execution %s: cannot show its state (%s: %s)",
                getattr(item, "invocation_id", "?"),
                type(e).__name__,
                e,
            )
