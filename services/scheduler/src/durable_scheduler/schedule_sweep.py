"""Schedule sweep: the server fires exactly the active schedules.

A schedule is a record plus a server-side schedule, written one after the other
(``durable_core.schedules``). A create or resume that dies, or that NATS fails, between its
record write and its arm leaves an active schedule the server never fires, and nothing else
would notice. Every ``interval`` this sweep has the engine compare each record with the server
(``Engine.reconcile_schedules``): an active schedule that is not armed is armed with its
record's pattern and time zone, a paused one that is still armed is disarmed. Every replica
sweeps; each action is idempotent (arming replaces the one server schedule of a name), so
replicas sweeping at once, or a sweep racing a pause or a resume, leave the server agreeing
with the record.

The sweep also drops the metric series of deleted schedules: a name that was in none of two
sweeps' listings in a row (one is not enough: a schedule created after a listing may tick
before the series are dropped).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from durable_core.admin import Engine
from durable_scheduler.metrics import SchedulerMetrics

__all__ = ["ScheduleSweep"]

log = logging.getLogger("durable_scheduler.schedule_sweep")

_WHY = {
    "armed": "is active but the server did not fire it (a create or resume failed between "
    "writing the record and arming it): armed it",
    "disarmed": "is paused or deleted but the server still fired it: disarmed it",
}


class ScheduleSweep:
    """Arms active schedules the server does not fire, disarms paused ones it does.

    Args:
        interval: seconds between sweeps.
    """

    def __init__(
        self,
        engine: Engine,
        metrics: SchedulerMetrics | None = None,
        *,
        interval: float = 30.0,
    ) -> None:
        self.engine = engine
        self.metrics = metrics or SchedulerMetrics(runtime_collectors=False)
        self.interval = interval
        self._why_not = ""
        self._stopping = asyncio.Event()
        self._missing: set[str] = set()  # names with series that the last listing lacked

    def stop(self) -> None:
        """Stop sweeping; ``run`` returns soon after."""
        self._stopping.set()

    async def run(self) -> None:
        """Sweep every ``interval`` until :meth:`stop` (the first sweep right away: a schedule
        left unarmed while no scheduler ran is armed at start-up)."""
        while not self._stopping.is_set():
            try:
                await self.sweep()
            except Exception as e:  # noqa: BLE001 - NATS trouble: the next sweep tries again
                log.warning("schedule sweep failed: %s: %s", type(e).__name__, e)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.interval)

    async def sweep(self) -> int:
        """One pass over every schedule; how many arm or disarm actions it took."""
        if not self.engine.is_connected:
            why = "not connected to NATS (reconnecting)"
            if why != self._why_not:
                log.info("not sweeping schedules: %s", why)
            self._why_not = why
            return 0
        self._why_not = ""
        changes = await self.engine.reconcile_schedules()
        for name, action in changes:
            self.metrics.schedules_repaired.labels(name, action).inc()
            log.warning("schedule %s %s", name, _WHY[action])
        await self._forget_deleted()
        return len(changes)

    async def _forget_deleted(self) -> None:
        """Drop the series of schedules missing from this listing and the last one."""
        seen = self.metrics.schedules_seen()  # before the listing: a name it lacks is gone
        missing = seen - await self.engine.schedule_names()
        self.metrics.forget_schedules(missing & self._missing)
        self._missing = missing
