"""Retention: finished executions are removed once they are older than the retention period.

Every ``interval`` the janitor reads every execution state once (a KV watch of the last
values, not a scan of keys) and, for each one that finished longer than ``retention`` ago,
replaces its state with a delete marker noting how it ended (``durable status`` then says
"expired" for ``note_for``, by default one more retention period, after which the server
drops the note by its TTL)
and purges its journal. The state is removed first and only at the revision that
was read, so an invocation retried or changed meanwhile is left alone. Several replicas may
sweep at once: each removal happens once, a second purge is a no-op. An expiry cut short after
the state went (the scheduler killed, NATS failing) is finished by the next pass
(``Engine.finish_expiries``).

Running and suspended executions are never removed, however old: a workflow may sleep for
years.

After each pass it sweeps the large values (``<prefix>_payloads``, issue 18): objects older
than ``payload_grace`` that no state or journal references, of invocations that are gone or
finished (``Engine.sweep_payloads``), e.g. a step result uploaded by a run that crashed
before its journal append.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import timedelta

from durable_core.admin import Engine, StateRecord
from durable_core.client import Status
from durable_scheduler.metrics import SchedulerMetrics

__all__ = ["Janitor"]

log = logging.getLogger("durable_scheduler.janitor")


class Janitor:
    """Removes finished executions older than ``retention``, every ``interval``.

    Args:
        clock: wall clock in ms (tests pass their own).
    """

    def __init__(
        self,
        engine: Engine,
        retention: timedelta,
        interval: timedelta,
        metrics: SchedulerMetrics | None = None,
        *,
        note_for: timedelta | None = None,
        payload_grace: timedelta = timedelta(hours=1),
        clock: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        self.engine = engine
        self.retention_ms = int(retention.total_seconds() * 1000)
        self.interval = interval.total_seconds()
        self.metrics = metrics or SchedulerMetrics(runtime_collectors=False)
        self.clock = clock
        self.note_for = note_for or retention  # how long the "expired" note stays
        self.payload_grace = payload_grace
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        """Stop sweeping; ``run`` returns soon after."""
        self._stopping.set()

    async def run(self) -> None:
        """Sweep every ``interval`` until :meth:`stop` (the first sweep right away)."""
        while not self._stopping.is_set():
            try:
                removed = await self.sweep()
                if removed:
                    log.info("removed %d executions past retention", removed)
                if not self._stopping.is_set():
                    swept = await self.engine.sweep_payloads(self.payload_grace)
                    if swept:
                        log.info("deleted %d unreferenced payload objects", len(swept))
            except Exception as e:  # noqa: BLE001 - NATS trouble: the next sweep tries again
                log.warning("retention sweep failed: %s: %s", type(e).__name__, e)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.interval)

    def due(self, rec: StateRecord, now_ms: int) -> bool:
        """Whether a finished execution's retention ran out by ``now_ms``."""
        st = rec.state
        finished = Status.from_pb(st.status).is_terminal
        return finished and st.updated_at_ms + self.retention_ms <= now_ms

    async def sweep(self) -> int:
        """One pass over every state; returns how many executions were removed."""
        due: list[StateRecord] = []
        now = self.clock()
        async for item in self.engine.watch_states():
            if item is None:
                break  # caught up: every state seen once
            _, rec = item
            if rec is not None and self.due(rec, now):
                due.append(rec)
        removed = 0
        for rec in due:
            if self._stopping.is_set():
                break
            if await self.engine.expire_execution(rec, self.clock(), self.note_for):
                removed += 1
                self.metrics.expired.inc()
        if not self._stopping.is_set():
            # Expiries an earlier pass (or replica) began and could not end: their states are
            # gone, so no watch finds them again; their journals would stay for good.
            finished = await self.engine.finish_expiries()
            if finished:
                log.info("finished %d expiries cut short", len(finished))
        return removed
