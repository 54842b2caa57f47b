"""Stranded runs: invocations RUNNING under a command that no processor holds any more.

A run rides on one delivery of one command; while it runs, its processor lists the command
in its lease. If the command is lost (seen once in a soak under faults: handed back with a
NAK and never delivered again), nothing would ever move the invocation: every other command
of it sees a run in progress and stands aside. Every ``interval`` this sweep reads every
execution state once (a snapshot watch, like the retention sweep) and takes as a suspect an
invocation that is RUNNING under command ``N`` whose state has not changed for ``min_age``
while no lease lists ``N``. A suspect seen again, unchanged and still unheld, at least
``confirm`` later is rescued: a wake-up that supersedes ``N`` (``Engine.rescue``), which takes
the run over only after marking ``N``'s run lock superseded, so the two never run side by
side (``durable_core.engine._hold``, case 4).

It stands aside while it cannot know what is held: before the lease watch has caught up,
while a lease lists fewer deliveries than its processor holds, and while a live processor
has no lease (one running without leases lists nothing).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from durable_core.admin import Engine, StateRecord
from durable_core.client import Status
from durable_scheduler.metrics import SchedulerMetrics
from durable_scheduler.redrive import Redriver

__all__ = ["StrandedRuns"]

log = logging.getLogger("durable_scheduler.stranded")

Suspect = tuple[str, int, int]  # invocation id, state revision, its run's command


class StrandedRuns:
    """Finds and rescues invocations whose run's command no processor holds.

    Args:
        redriver: the lease watcher (what every processor holds).
        interval: seconds between sweeps.
        min_age: seconds a RUNNING state must be unchanged before it is suspected.
        confirm: seconds between the first and the rescuing sighting (at least one lease TTL,
            so a processor that took the command meanwhile has listed it).
        clock, wall_ms: monotonic seconds and wall-clock ms (tests pass their own).
    """

    def __init__(
        self,
        engine: Engine,
        redriver: Redriver,
        metrics: SchedulerMetrics | None = None,
        *,
        interval: float = 30.0,
        min_age: float = 60.0,
        confirm: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        wall_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        self.engine = engine
        self.redriver = redriver
        self.metrics = metrics or SchedulerMetrics(runtime_collectors=False)
        self.interval = interval
        self.min_age_ms = int(min_age * 1000)
        self.confirm = confirm
        self.clock = clock
        self.wall_ms = wall_ms
        self.suspects: dict[Suspect, tuple[float, StateRecord]] = {}
        self._why_not = ""
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        """Stop sweeping; ``run`` returns soon after."""
        self._stopping.set()

    async def run(self) -> None:
        """Sweep every ``interval`` until :meth:`stop`."""
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.interval)
            if self._stopping.is_set():
                break
            try:
                await self.sweep()
            except Exception as e:  # noqa: BLE001 - NATS trouble: the next sweep tries again
                log.warning("stranded-run sweep failed: %s: %s", type(e).__name__, e)

    async def blind(self) -> str:
        """Why the leases cannot tell now what is held ("" when they can)."""
        if not self.redriver.synced:
            return "the lease watch has not caught up"
        leases = list(self.redriver.leases.values())
        cut = [le.name for le in leases if le.record.truncated]
        if cut:
            return f"lease {cut[0]} lists fewer deliveries than its processor holds"
        leased = {(le.record.host, le.record.pid) for le in leases}
        unleased = [m for m in await self.engine.live_processors() if m not in leased]
        if unleased:
            host, pid = unleased[0]
            return f"processor {host}/{pid} runs without a lease"
        return ""

    def held(self) -> set[int]:
        """The commands every known lease lists."""
        return {seq for le in self.redriver.leases.values() for seq in le.record.seqs}

    async def sweep(self) -> int:
        """One pass: take in suspects, rescue the confirmed ones; how many were rescued."""
        why = await self.blind()
        if why:
            if why != self._why_not:
                log.info("not looking for stranded runs: %s", why)
            self._why_not = why
            # The suspects stay: a rescue still needs a sighting while not blind. Cleared here,
            # processors coming and going (a fleet record without a lease for a while) would
            # put every rescue off again and again.
            return 0
        self._why_not = ""
        now, now_ms, held = self.clock(), self.wall_ms(), self.held()
        seen: dict[Suspect, tuple[float, StateRecord]] = {}
        async for item in self.engine.watch_states():
            if item is None:
                break  # caught up: every state seen once
            _, rec = item
            if rec is None or Status.from_pb(rec.state.status) is not Status.RUNNING:
                continue
            st = rec.state
            seq = st.run_command_seq
            if not seq or seq in held or now_ms - st.updated_at_ms < self.min_age_ms:
                continue
            key = (st.invocation_id, rec.revision, seq)
            first = self.suspects.get(key, (now, rec))[0]
            seen[key] = (first, rec)
        self.suspects = seen
        rescued = 0
        # At least one lease TTL: a processor that took the command since has listed it.
        confirm = max([self.confirm, *(le.ttl for le in self.redriver.leases.values())])
        for (invocation_id, _, seq), (first, rec) in list(seen.items()):
            if self._stopping.is_set():
                break
            if now - first < confirm or seq in self.held():
                continue
            published = await self.engine.rescue(rec)
            # If it is still stuck a confirm later, again (the rescue's message id names
            # the state revision: a copy within the stream's duplicate window is dropped).
            self.suspects[(invocation_id, rec.revision, seq)] = (now, rec)
            if not published:
                log.debug("rescue of %s (command %d) was published before", invocation_id, seq)
                continue
            rescued += 1
            self.metrics.rescued.inc()
            log.warning(
                "invocation %s is RUNNING under command %d, which no processor has held for "
                "%.0fs: published a wake-up that supersedes it",
                invocation_id,
                seq,
                now - first + self.min_age_ms / 1000,
            )
        return rescued
