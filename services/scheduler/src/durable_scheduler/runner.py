"""The scheduler loop: pull ticks from the shared consumer, decide, start invocations, ack.

Every replica pulls from the same durable work-queue consumer, so each tick goes to one
replica; a replica that dies holding ticks loses them to another after ``ack_wait``. The
decisions are in :mod:`durable_scheduler.firing`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Protocol

from opentelemetry import trace
from opentelemetry.trace import SpanKind

from durable_core import ConflictError, InvalidInputError
from durable_core.admin import Engine, TickDelivery
from durable_core.client import Status
from durable_core.schedules import Schedule, schedule_invocation_id
from durable_scheduler.firing import (
    Tick,
    Verdict,
    claim,
    first_look,
    first_missed,
    parse_tick,
    passed,
    start_may_be_lost,
    still_running,
    tick_time,
)
from durable_scheduler.metrics import SchedulerMetrics
from durable_scheduler.settings import SchedulerSettings

__all__ = ["Scheduler", "TickMessage"]

log = logging.getLogger("durable_scheduler")

_ROUNDS = 20  # read-decide-claim rounds before a busy record sends the tick back
_RETRY_DELAY = 1.0  # seconds before a tick that failed is delivered again
_TRACER = trace.get_tracer("durable_scheduler")


class TickMessage(Protocol):
    """What the scheduler needs of a tick delivery (``TickDelivery`` is one)."""

    subject: str
    headers: dict[str, str]
    stored_at: datetime
    num_delivered: int

    async def ack(self) -> None:
        """Acknowledge the tick: it was handled."""

    async def nak(self, delay: float | None = None) -> None:
        """Hand the tick back, to come again after ``delay`` seconds."""


class Scheduler:
    """Handles the ticks of every schedule of one engine prefix.

    Args:
        clock: the current time (aware); tests pass their own.
    """

    def __init__(
        self,
        engine: Engine,
        settings: SchedulerSettings,
        metrics: SchedulerMetrics | None = None,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.metrics = metrics or SchedulerMetrics(runtime_collectors=False)
        self.clock = clock
        self.client = engine.client()
        # A claim whose invocation has no state after this long was lost (see still_running).
        self.stale_after = max(timedelta(minutes=1), settings.ack_wait * 3)
        self._stopping = asyncio.Event()
        self._consuming = False
        self._fetch_error = ""

    def not_ready(self) -> str | None:
        """Why this replica is not consuming ticks now (one line), or None: for /readyz."""
        if self._stopping.is_set():
            return "stopping"
        if not self.engine.is_connected:
            return "not connected to NATS (reconnecting)"
        if not self._consuming:
            return "starting (setting up the tick consumer)"
        if self._fetch_error:
            return f"pulling ticks fails: {self._fetch_error}"
        return None

    def stop(self) -> None:
        """Stop fetching ticks; ``run`` returns once the ticks in hand are handled."""
        self._stopping.set()

    async def run(self) -> None:
        """Consume ticks until :meth:`stop`."""
        s = self.settings
        consumer = await self.engine.tick_consumer(
            consumer=s.consumer,
            ack_wait=s.ack_wait.total_seconds(),
            max_ack_pending=max(1000, s.max_concurrent * 4),
        )
        log.info(
            "consuming ticks of %s (consumer %s, prefix %s)",
            self.engine.tick_subjects,
            s.consumer,
            self.engine.prefix,
        )
        self._consuming = True
        try:
            while not self._stopping.is_set():
                try:
                    deliveries = await consumer.fetch(s.max_concurrent, timeout=1.0)
                except Exception as e:  # noqa: BLE001 - keep serving through NATS trouble
                    # A 503 while the consumer's leader is being elected (a node died), a
                    # reconnect: not a reason to exit. The processor's loop does the same.
                    log.warning("fetch failed: %s: %s", type(e).__name__, e)
                    self._fetch_error = f"{type(e).__name__}: {e}"
                    await asyncio.sleep(0.5)
                    continue
                self._fetch_error = ""
                if deliveries:
                    await self._finish(asyncio.create_task(self._handle_batch(deliveries)))
        finally:
            self._consuming = False
            await consumer.close()
        log.info("scheduler stopped")

    async def _finish(self, work: asyncio.Task[None]) -> None:
        stopping = asyncio.create_task(self._stopping.wait())
        try:
            await asyncio.wait({work, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
        if not work.done():  # stopping while ticks are in hand: give them the grace period
            await asyncio.wait({work}, timeout=self.settings.shutdown_grace.total_seconds())
        if not work.done():
            log.warning("shutting down: ticks still in hand go to another replica after ack_wait")
            work.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await work

    async def _handle_batch(self, deliveries: list[TickDelivery]) -> None:
        # Ticks of one schedule in order, different schedules at once.
        by_schedule: dict[str, list[TickDelivery]] = {}
        for d in deliveries:
            by_schedule.setdefault(d.subject, []).append(d)

        async def in_order(ticks: list[TickDelivery]) -> None:
            for d in ticks:
                await self.handle(d)

        await asyncio.gather(*(in_order(ticks) for ticks in by_schedule.values()))

    async def handle(self, d: TickMessage) -> None:
        """Handle one tick; never raises (a failure sends the tick back for another try)."""
        try:
            tick = parse_tick(d.subject, d.headers, d.stored_at, d.num_delivered)
        except ValueError as e:
            log.warning("dropping a malformed tick: %s", e)
            # A failed ack only brings the tick back; it must not end the loop.
            with contextlib.suppress(Exception):
                await d.ack()
            return
        self.metrics.ticks.labels(tick.schedule).inc()
        try:
            await self._decide_and_start(tick.schedule, d, tick)
        except (InvalidInputError, _Unstartable) as e:
            # Cannot succeed on another try either (e.g. the id belongs to another workflow).
            log.error("schedule %s: cannot start its invocation: %s", tick.schedule, e)
            with contextlib.suppress(Exception):
                await d.ack()
        except Exception as e:  # noqa: BLE001 - any failure: let the tick come back
            log.warning(
                "schedule %s: tick failed (%s: %s); retrying", tick.schedule, type(e).__name__, e
            )
            with contextlib.suppress(Exception):
                await d.nak(delay=_RETRY_DELAY)

    async def _decide_and_start(self, name: str, d: TickMessage, tick: Tick) -> None:
        m = self.metrics
        conflicts = 0
        make_up = True  # the fire times the server skipped before this tick (first_missed)
        while conflicts < _ROUNDS:
            schedule = await self.engine.find_schedule(name)
            now = self.clock()
            verdict, invocation_id, late = first_look(schedule, tick, now)
            if verdict in (Verdict.DELETED, Verdict.PAUSED):
                log.debug("schedule %s is %s: tick dropped", name, verdict.value)
                m.dropped.labels(name, verdict.value).inc()
                await d.ack()
                return
            assert schedule is not None
            fired = tick_time(schedule, tick)
            if verdict is Verdict.RESTART:
                await self._start(schedule, invocation_id)
                await d.ack()
                return
            if await self._ran_already(schedule, invocation_id, fired):
                log.info("schedule %s: tick %s ran already (made up)", name, invocation_id)
                await d.ack()
                return
            if tick.redelivered:
                await self._restart_made_up(schedule, now)
            missed = first_missed(schedule, fired) if make_up else None
            if missed is not None:
                made_up = await self._make_up(schedule, missed, now)
                if made_up is None:
                    conflicts += 1
                make_up = made_up is not False
                continue  # decide again on the record as it is now
            if verdict is Verdict.CATCH_UP_SKIP:
                if not await self._note_passed(schedule, fired):
                    conflicts += 1
                    continue
                log.info(
                    "schedule %s: late tick %s dropped (catch_up=%d used up)",
                    name,
                    invocation_id,
                    schedule.catch_up,
                )
                m.catch_up_skipped.labels(name).inc()
                await d.ack()
                return
            if await self._overlaps(schedule, now):
                if not await self._note_passed(schedule, fired):
                    conflicts += 1
                    continue
                log.info(
                    "schedule %s: %s still running, tick %s skipped",
                    name,
                    schedule.last_invocation_id,
                    invocation_id,
                )
                m.overlap_skipped.labels(name).inc()
                await d.ack()
                return
            try:
                schedule = await self.engine.save_schedule(
                    claim(schedule, invocation_id, now, late, fired)
                )
            except ConflictError:
                conflicts += 1
                continue  # another replica or a pause changed the record: decide again
            await self._start(schedule, invocation_id)
            m.started.labels(name).inc()
            lag = (self.clock() - fired).total_seconds()
            m.tick_lag.labels(name).observe(max(lag, 0.0))
            log.info(
                "schedule %s: started %s (%s)%s",
                name,
                invocation_id,
                schedule.workflow,
                " (catching up)" if late else "",
            )
            await d.ack()
            return
        raise ConflictError(f"schedule {name} kept changing")

    async def _make_up(self, schedule: Schedule, missed: datetime, now: datetime) -> bool | None:
        """Run a fire time the server skipped as a late tick: True when it was claimed and
        started, False when the catch-up runs are used up or the last run still runs
        (``overlap="skip"``): then no skipped time before this tick runs, and the tick itself
        is decided as usual. None: the record changed meanwhile (decide again)."""
        name, m = schedule.name, self.metrics
        invocation_id = schedule_invocation_id(name, missed)
        if schedule.catch_up_runs >= schedule.catch_up:
            m.missed.labels(name).inc()
            log.warning(
                "schedule %s: the server skipped %s (a leader change); not made up "
                "(catch_up=%d used up)",
                name,
                invocation_id,
                schedule.catch_up,
            )
            m.catch_up_skipped.labels(name).inc()
            return False
        if await self._overlaps(schedule, now):
            log.warning(
                "schedule %s: the server skipped %s (a leader change); not made up: %s still "
                "running",
                name,
                invocation_id,
                schedule.last_invocation_id,
            )
            m.missed.labels(name).inc()
            m.overlap_skipped.labels(name).inc()
            return False
        try:
            schedule = await self.engine.save_schedule(
                claim(schedule, invocation_id, now, True, missed)
            )
        except ConflictError:
            return None
        await self._start(schedule, invocation_id)
        m.missed.labels(name).inc()
        m.started.labels(name).inc()
        log.warning(
            "schedule %s: started %s (%s), a fire time the server skipped (a leader change); "
            "catching up",
            name,
            invocation_id,
            schedule.workflow,
        )
        return True

    async def _restart_made_up(self, schedule: Schedule, now: datetime) -> None:
        """A redelivered tick whose last handling claimed a skipped fire time, then failed
        before it started it: start it (idempotent by id). Only a claim younger than
        ``stale_after`` with no state that never had one: one that finished and expired
        (a short retention) must not run again."""
        last, fired = schedule.last_invocation_id, schedule.last_fired_at
        if not last or fired is None or now - fired >= self.stale_after:
            return
        if not await self._ever_started(last):
            log.warning("schedule %s: %s claimed, not started: starting it", schedule.name, last)
            await self._start(schedule, last)

    async def _ran_already(self, schedule: Schedule, invocation_id: str, fired: datetime) -> bool:
        """A tick that comes after its time was made up (the server stored it, but delivered
        it only after the next tick, which ran the time as skipped): its invocation exists
        or ran and expired. Not claimed again: a late tick would count against catch_up."""
        last = schedule.last_tick_at
        if last is None or fired > last:
            return False
        return await self._ever_started(invocation_id)

    async def _ever_started(self, invocation_id: str) -> bool:
        """Whether the invocation has a state, or had one and expired (its note is kept)."""
        if await self.engine.get_state(invocation_id) is not None:
            return True
        return await self.engine.expired(invocation_id)

    async def _note_passed(self, schedule: Schedule, fired: datetime) -> bool:
        """Record a skipped or dropped tick as handled (so its time is never made up later);
        False if the record changed meanwhile."""
        handled = passed(schedule, fired)
        if handled.last_tick_at == schedule.last_tick_at:
            return True  # a later tick was handled already: nothing to write
        try:
            await self.engine.save_schedule(handled)
        except ConflictError:
            return False
        return True

    async def _overlaps(self, schedule: Schedule, now: datetime) -> bool:
        if schedule.overlap != "skip" or not schedule.last_invocation_id:
            return False
        last = schedule.last_invocation_id
        rec = await self.engine.get_state(last)
        status = None if rec is None else Status.from_pb(rec.state.status)
        if start_may_be_lost(status, schedule, now, self.stale_after) and not (
            await self.engine.start_queued(last, schedule.partition_key or last)
        ):
            # Starting it again is idempotent: intake publishes the start of a PENDING state.
            log.warning(
                "schedule %s: %s is pending and no start of it is queued: starting it again",
                schedule.name,
                last,
            )
            await self._start(schedule, last)
        return still_running(status, schedule, now, self.stale_after)

    async def _start(self, schedule: Schedule, invocation_id: str) -> None:
        # The tick is where a scheduled invocation's trace begins: the client's span (and the
        # processors' runs) are its children.
        with _TRACER.start_as_current_span(
            f"durable.schedule {schedule.name}",
            kind=SpanKind.CONSUMER,
            attributes={
                "durable.schedule": schedule.name,
                "durable.invocation_id": invocation_id,
                "durable.workflow": schedule.workflow,
            },
        ):
            # Idempotent by id: a tick handled twice starts the invocation once. Queued even
            # while no processor serves the workflow: the schedule was checked when created,
            # and a tick during a restart of the fleet must wait for it, not be lost.
            try:
                await self.client.invoke_async(
                    schedule.workflow,
                    schedule.args,
                    id=invocation_id,
                    partition_key=schedule.partition_key,
                    queue_unserved=True,
                )
            except ConflictError as e:
                # The id is another invocation's (another workflow's, or other arguments: the
                # schedule changed since this tick started it): as taken on every try. Not
                # the schedule record's conflicts (_decide_and_start), which are retried.
                raise _Unstartable(str(e)) from e


class _Unstartable(Exception):  # noqa: N818 - a verdict, caught by type
    """A tick's invocation cannot be started, on this try or any other."""
