"""The feed: one KV watch of the state bucket, applied to the index and fanned out to streams.

``Client.watch_executions()`` yields every execution, then ``None`` once caught up, then each
change. The feed applies them to the :class:`ExecutionIndex` and hands each real change to the
open server-sent-event streams. If the watch fails (NATS gone for longer than the client's
reconnects), it starts a new one after a pause: the new snapshot replaces the old one, and
executions deleted meanwhile are dropped (:meth:`ExecutionIndex.end_snapshot`).

A watch can also fall behind without failing: nats-py's ordered consumer resumes after the last
sequence it saw, so a change that left the stream before it was delivered (an expiry's delete
marker lives ``expired_note_ttl``) never arrives, and its execution would stay in the index for
good. So the feed also replaces its watch with a new one (a reconciliation: the new snapshot is
diffed against the index, emitting ``execution`` and ``deleted`` events) when the event loop
stood still (a frozen or starved process, the likeliest way to fall behind), and every
``reconcile_every`` seconds in any case (stretched to ``RECONCILE_COST`` times the last
snapshot's read, so that a big bucket is re-read at most about 1% of the time). The old watch is
stopped before the new one starts, so there is one ordered source at any time: the snapshot is
the bucket at the new consumer's start, every later change follows it in order, and the
index's revision check ignores whatever the snapshot repeats.
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
RECONCILE_EVERY = 300.0  # seconds between reconciliations (setting inspector_reconcile_interval)
RECONCILE_COST = 100  # ... and at least this many times the last snapshot's read
STALL_CHECK = 1.0  # seconds between checks that the event loop runs
STALL_AFTER = 3.0  # seconds the loop may stand still before the watch is re-read


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

    def __init__(
        self,
        source: WatchSource,
        index: ExecutionIndex,
        *,
        retry_after: float = 2.0,
        reconcile_every: float = RECONCILE_EVERY,
        stall_after: float = STALL_AFTER,
    ):
        self.source = source
        self.index = index
        self.retry_after = retry_after
        self.reconcile_every = reconcile_every
        self.stall_after = stall_after
        self.subscriptions: set[Subscription] = set()
        self.ready = asyncio.Event()
        self.error: str | None = None
        self.reconciliations = 0  # watches replaced to reconcile the index (not after failures)
        self._caught_up_at: float | None = None  # loop time the current watch caught up
        self._snapshot_seconds = 0.0  # how long the last snapshot took to read

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
        """Watch until cancelled, starting a new watch after a failure, a stall of the event
        loop, and every ``reconcile_every`` seconds."""
        while True:
            try:
                reason = await self._watch_until_reconcile()
                if reason is not None:
                    self.reconciliations += 1
                    log.info("reconciling the execution index (%s): re-reading the bucket", reason)
                    continue  # at once: the new watch's snapshot reconciles the index
                log.warning("execution watch ended; starting a new one")
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - keep serving what we have, and retry
                self.error = f"{type(e).__name__}: {e}"
                log.warning("execution watch failed (%s); retrying in %.0fs", e, self.retry_after)
            await asyncio.sleep(self.retry_after)

    async def _watch_until_reconcile(self) -> str | None:
        """Run one watch until it ends (None; its error is raised) or a reconciliation is due
        (why): then the watch is stopped, and nothing it would still deliver is applied."""
        self._caught_up_at = None
        watch = asyncio.create_task(self._watch_once(), name="inspector-watch-once")
        due = asyncio.create_task(self._reconcile_due(), name="inspector-reconcile-due")
        try:
            await asyncio.wait((watch, due), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (due, watch):
                if not task.done():
                    task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if watch.done() and not watch.cancelled():
            error = watch.exception()
            if error is not None:
                raise error
        return due.result() if due.done() and not due.cancelled() else None

    async def _reconcile_due(self) -> str:
        """Return (why) once the current watch should be replaced: the event loop stood still
        for ``stall_after`` seconds while it was caught up (its consumer may have skipped
        what left the stream meanwhile), or it has been caught up for the interval."""
        loop = asyncio.get_running_loop()
        last = loop.time()
        while True:
            was_live = self._caught_up_at is not None
            await asyncio.sleep(STALL_CHECK)
            now = loop.time()
            # Only while caught up: reading a big snapshot may hold the loop without a stall.
            if was_live and self._caught_up_at is not None:
                if now - last > STALL_CHECK + self.stall_after:
                    return f"the event loop stood still for {now - last - STALL_CHECK:.0f}s"
                period = max(self.reconcile_every, RECONCILE_COST * self._snapshot_seconds)
                if now - self._caught_up_at >= period:
                    return f"every {period:.0f}s"
            last = now

    async def _watch_once(self) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        self.index.begin_snapshot()
        watch = self.source.watch_executions()
        try:
            async for item in watch:
                if item is None:
                    if self._caught_up_at is None:
                        self._caught_up_at = loop.time()
                        self._snapshot_seconds = self._caught_up_at - started
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
