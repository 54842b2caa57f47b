"""The re-drive: commands held by a processor that died go back to the others at once.

Each processor keeps a lease in the ``<prefix>_processors`` bucket, renewed every third of
its TTL, listing the ack subjects of the commands it holds. Every scheduler replica watches
the bucket. A lease not renewed for its TTL (measured on the watcher's own clock from when
it last saw the lease change, so no clocks are compared across hosts) belongs to a dead or
stuck processor: one replica claims it by deleting it at the revision it saw (the other
replica's delete fails), then NAKs every listed delivery, and JetStream redelivers each
command at once. The next holder takes the invocation over with a fenced CLAIM, so a
processor that was only stuck loses nothing but its claim. Without this, those commands
would wait for ``ack_wait`` (30 s by default).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from durable_core.admin import Engine, StateConflict
from durable_core.engine import LeaseRecord
from durable_scheduler.metrics import SchedulerMetrics

__all__ = ["Lease", "Redriver"]

log = logging.getLogger("durable_scheduler.redrive")


@dataclass(slots=True)
class Lease:
    """What a watcher knows of one processor lease: its record, and when it saw it."""

    name: str
    revision: int
    seen_at: float  # the watcher's monotonic clock when this revision arrived
    record: LeaseRecord

    @classmethod
    def parse(cls, name: str, data: bytes, revision: int, seen_at: float) -> Lease:
        """Raises ValueError for a record that is not a lease."""
        try:
            record = LeaseRecord.parse(data)
        except ValueError as e:
            raise ValueError(f"lease {name} {e}") from e
        return cls(name, revision, seen_at, record)

    @property
    def ttl(self) -> float:
        """Seconds the lease stays alive unrenewed."""
        return self.record.ttl

    def lapsed(self, now: float) -> bool:
        """Whether it went unrenewed for its TTL by ``now`` (the watcher's clock)."""
        return now - self.seen_at > self.ttl


class Redriver:
    """Watches processor leases and re-drives the commands of lapsed ones.

    Args:
        clock: a monotonic clock in seconds (tests pass their own).
        check_every: seconds between sweeps for lapsed leases.
    """

    def __init__(
        self,
        engine: Engine,
        metrics: SchedulerMetrics | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        check_every: float = 1.0,
    ) -> None:
        self.engine = engine
        self.metrics = metrics or SchedulerMetrics(runtime_collectors=False)
        self.clock = clock
        self.check_every = check_every
        self.leases: dict[str, Lease] = {}
        self.synced = False  # the watch has caught up once: ``leases`` is every lease
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        """Stop watching; ``run`` returns soon after."""
        self._stopping.set()

    async def run(self) -> None:
        """Watch and sweep until :meth:`stop`."""
        watch = asyncio.create_task(self._watch_forever())
        try:
            while not self._stopping.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), self.check_every)
                if not self._stopping.is_set():
                    await self.sweep()
        finally:
            watch.cancel()
            with contextlib.suppress(BaseException):
                await watch

    async def _watch_forever(self) -> None:
        while True:
            # A new watch replays the bucket: until it has caught up, ``leases`` may lack
            # leases written meanwhile.
            self.synced = False
            try:
                async for item in self.engine.watch_leases():
                    if item is None:
                        self.synced = True
                    else:
                        self.saw(*item)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - NATS trouble: watch again
                log.warning("lease watch failed (%s: %s); watching again", type(e).__name__, e)
                await asyncio.sleep(1.0)

    def saw(self, name: str, data: bytes | None, revision: int) -> None:
        """Take in one change of the lease bucket."""
        if data is None:
            self.leases.pop(name, None)
            return
        known = self.leases.get(name)
        if known is not None and known.revision == revision:
            return  # a re-watch replays what we know: keep the time we first saw it
        try:
            self.leases[name] = Lease.parse(name, data, revision, self.clock())
        except ValueError as e:
            log.warning("%s", e)

    async def sweep(self) -> int:
        """Re-drive every lapsed lease this replica manages to claim; returns commands NAKed."""
        now = self.clock()
        handed_back = 0
        for lease in [le for le in self.leases.values() if le.lapsed(now)]:
            try:
                naked = await self.engine.redrive_lease(
                    lease.name, lease.revision, lease.record.held
                )
            except StateConflict:
                # Renewed meanwhile, or another replica claimed it: its watch will tell.
                continue
            except Exception as e:  # noqa: BLE001 - try again at the next sweep
                log.warning("cannot claim lapsed lease %s: %s: %s", lease.name, type(e).__name__, e)
                continue
            self.leases.pop(lease.name, None)
            handed_back += naked
            self.metrics.leases_expired.inc()
            self.metrics.redriven.inc(len(lease.record.held))
            log.warning(
                "processor %s (lease %s) silent for %.1fs (ttl %.1fs): handed %d commands back",
                lease.record.processor or "?",
                lease.name,
                now - lease.seen_at,
                lease.ttl,
                len(lease.record.held),
            )
        return handed_back
