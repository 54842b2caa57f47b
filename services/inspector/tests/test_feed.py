"""The feed's reconciliation: a watch that fell behind and never delivers a change (an expiry's
delete marker that left the stream first) is replaced, and the index converges to the bucket.

The fake's watch is such a watch: what the "bucket" (``fake.snapshot``) loses is never pushed,
only a new watch's snapshot shows it (as nats-py's ordered consumer, which resumes after the
last sequence it saw, after the tester froze the inspector for 20 s with 8 s retention)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from durable_core import Status
from durable_core.testing import assert_eventually_async
from durable_inspector.feed import Event, Feed
from durable_inspector.index import ExecutionIndex

from ._fakes import FakeClient, summary


@contextlib.asynccontextmanager
async def running(feed: Feed) -> AsyncIterator[Feed]:
    task = asyncio.create_task(feed.run())
    try:
        await asyncio.wait_for(feed.ready.wait(), 5)
        yield feed
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def drain(feed: Feed, sub_queue: asyncio.Queue[Event]) -> list[tuple[str, str]]:
    out = []
    while not sub_queue.empty():
        e = sub_queue.get_nowait()
        out.append((e.kind, e.invocation_id))
    return out


async def test_a_stalled_event_loop_reconciles_the_index_with_the_bucket() -> None:
    fake = FakeClient([summary("a", created=1), summary("b", created=2), summary("c", created=3)])
    index = ExecutionIndex()
    async with running(Feed(fake, index, reconcile_every=3600, stall_after=0.5)) as feed:
        sub = feed.subscribe()
        # While the process stood still, a and b expired and c completed; the watch will never
        # say so (the markers left the stream before it read them).
        fake.snapshot = [summary("c", status=Status.COMPLETED, created=3, revision=2)]
        time.sleep(2)  # noqa: ASYNC251 - the stall itself: the event loop does not run

        async def converged() -> bool:
            return len(index) == 1 and index.stats()["by_status"]["completed"] == 1

        await assert_eventually_async(converged, 5, "the index to drop a and b", interval=0.02)
        assert feed.reconciliations == 1
        events = drain(feed, sub.queue)
        assert sorted(e for e in events if e[0] != "ready") == [
            ("deleted", "a"),
            ("deleted", "b"),
            ("execution", "c"),
        ]
        # The new watch is live: a change after the reconciliation arrives, in order.
        fake.push(summary("c", status=Status.COMPLETED, created=3, updated=9, revision=3))
        fake.push(summary("c", status=Status.COMPLETED, created=3, revision=2))  # older: ignored

        async def applied() -> bool:
            entry = index.get("c")
            return entry is not None and entry.summary.revision == 3

        await assert_eventually_async(applied, 5, "the live change", interval=0.02)
        await asyncio.sleep(0.1)
        entry = index.get("c")
        assert entry is not None and entry.summary.revision == 3


async def test_the_index_is_reconciled_periodically_without_a_stall() -> None:
    fake = FakeClient([summary("a", created=1), summary("b", created=2)])
    index = ExecutionIndex()
    async with running(Feed(fake, index, reconcile_every=0.5, stall_after=3600)) as feed:
        fake.snapshot = [summary("b", created=2)]

        async def converged() -> bool:
            return "a" not in index and "b" in index

        await assert_eventually_async(converged, 5, "the periodic reconciliation", interval=0.02)
        assert feed.reconciliations >= 1


async def test_a_change_after_the_new_snapshot_is_not_overwritten_by_it() -> None:
    fake = FakeClient([summary("a", created=1)])
    index = ExecutionIndex()
    async with running(Feed(fake, index, reconcile_every=0.3, stall_after=3600)) as feed:
        fake.hold.clear()  # the next watch stops after its snapshot, before "caught up"
        fake.snapshot = [summary("a", status=Status.SUSPENDED, created=1, revision=2)]

        async def snapshot_read() -> bool:
            entry = index.get("a")
            return entry is not None and entry.summary.revision == 2

        await assert_eventually_async(snapshot_read, 5, "the new snapshot", interval=0.02)
        assert feed.reconciliations == 1
        fake.push(summary("a", status=Status.COMPLETED, created=1, revision=3))
        fake.hold.set()

        async def live() -> bool:
            entry = index.get("a")
            return entry is not None and entry.summary.status == Status.COMPLETED

        await assert_eventually_async(live, 5, "the change made meanwhile", interval=0.02)
        entry = index.get("a")
        assert entry is not None
        assert [t.status for t in entry.history] == [
            Status.RUNNING,
            Status.SUSPENDED,
            Status.COMPLETED,
        ]
