"""The scheduler against a real NATS server: ticks in, invocations (their states) out.

No processor runs here, so a started invocation stays pending until a test finishes it by
writing its state. The server refuses tick headers from clients (``Nats-Schedule-Next``), so
most tests hand the scheduler ticks shaped as the server shapes them, one by one, with a clock
they control; records, states and submissions are real. One test runs the real loop on a
schedule the server fires.
"""

from __future__ import annotations

import asyncio
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import pytest
import pytest_asyncio

from durable_core import EngineConfig, InvalidInputError, schedules
from durable_core._pb.durable.v1 import durable_pb2 as pb
from durable_core._transport import Transport
from durable_core.admin import Engine, TickDelivery
from durable_core.config import NatsConfig
from durable_core.schedules import (
    create_schedule,
    get_schedule,
    pause_schedule,
    resume_schedule,
    save_schedule,
)
from durable_core.testing import NatsServer, assert_eventually_async, free_port
from durable_scheduler.main import start_metrics_server
from durable_scheduler.metrics import SchedulerMetrics
from durable_scheduler.runner import Scheduler
from durable_scheduler.settings import SchedulerSettings

EVERY = timedelta(seconds=2)
# Ticks in the tests stand for times an hour ago: the clock, not the wall, decides lateness.
BASE = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)


def fire(k: int) -> datetime:
    """The fire time of the k-th tick of an every-2s schedule."""
    return BASE + k * EVERY


class Clock:
    def __init__(self) -> None:
        self.now = BASE

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture(scope="module")
def server() -> Iterator[NatsServer]:
    with NatsServer() as s:
        yield s


@pytest.fixture
def settings(server: NatsServer) -> SchedulerSettings:
    engine = EngineConfig(prefix="sc" + uuid.uuid4().hex[:8])
    return SchedulerSettings(nats=NatsConfig.from_url(server.url), engine=engine, metrics_port=0)


@pytest_asyncio.fixture
async def transport(settings: SchedulerSettings) -> AsyncIterator[Transport]:
    # Created as a processor does (schedulers only bind to the streams).
    t = await Transport.connect(settings.nats, settings.engine, create=True)
    try:
        yield t
    finally:
        await t.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def scheduler(transport: Transport, settings: SchedulerSettings, clock: Clock) -> Scheduler:
    return Scheduler(Engine(transport), settings, clock=clock)


@dataclass
class FakeTick:
    """A tick delivery as the server makes it: ``Nats-Schedule-Next`` names the next fire."""

    subject: str
    headers: dict[str, str]
    stored_at: datetime
    num_delivered: int = 1
    acked: bool = False
    naked: bool = False

    async def ack(self) -> None:
        self.acked = True

    async def nak(self, delay: float | None = None) -> None:
        self.naked = True


def tick(t: Transport, name: str, k: int, num_delivered: int = 1) -> FakeTick:
    """The k-th tick of schedule ``name``, stored a moment after it fired."""
    return FakeTick(
        t.names.tick_subject(name),
        {
            "Nats-Scheduler": t.names.cron_subject(name),
            "Nats-Schedule-Next": fire(k + 1).isoformat().replace("+00:00", "Z"),
        },
        fire(k) + timedelta(milliseconds=3),
        num_delivered,
    )


async def manual_schedule(t: Transport, name: str, **options: object) -> None:
    """A schedule whose ticks only the test makes (its server-side schedule removed),
    created (in the tests' time) just before its tick 0."""
    await create_schedule(t, name, "hello_workflow", {"name": name}, every=EVERY, **options)  # type: ignore[arg-type]
    await t.disarm_schedule(name)
    s = await get_schedule(t, name)
    await save_schedule(t, replace(s, last_tick_at=fire(-1)))


async def handle(s: Scheduler, clock: Clock, d: FakeTick, at: datetime) -> FakeTick:
    clock.now = at
    await s.handle(d)
    assert d.acked and not d.naked
    return d


async def started(t: Transport, name: str) -> list[str]:
    return sorted(
        st.invocation_id for st in await t.list_states() if st.invocation_id.startswith(f"{name}-")
    )


def iid(name: str, k: int) -> str:
    return f"{name}-{fire(k).strftime('%Y%m%dT%H%M%S')}"


async def finish(t: Transport, invocation_id: str) -> None:
    rec = await t.get_state(invocation_id)
    assert rec is not None
    st = pb.ExecutionState()
    st.CopyFrom(rec.state)
    st.status = pb.STATUS_COMPLETED
    await t.update_state(st, rec.revision)


def count(metric: object, *labels: str) -> float:
    return metric.labels(*labels)._value.get()  # type: ignore[attr-defined, no-any-return]


def failing_starts(t: Transport, scheduler: Scheduler, clock: Clock) -> Scheduler:
    """A replica like ``scheduler`` whose starts fail (NATS went away after the claim)."""
    broken = Scheduler(Engine(t), scheduler.settings, clock=clock)

    async def fail(*_: object, **__: object) -> str:
        raise ConnectionError("NATS went away")

    broken.client.invoke_async = fail  # type: ignore[method-assign]
    return broken


async def test_a_tick_starts_one_invocation_however_often_it_is_handled(
    transport: Transport, scheduler: Scheduler, clock: Clock
) -> None:
    t = transport
    await manual_schedule(t, "greet")
    await handle(scheduler, clock, tick(t, "greet", 0), fire(0) + timedelta(seconds=0.3))
    # The same message again, as after a lost ack: much later, and redelivered.
    again = tick(t, "greet", 0, num_delivered=2)
    await handle(scheduler, clock, again, fire(0) + timedelta(minutes=5))
    assert await started(t, "greet") == [iid("greet", 0)]
    rec = await t.get_state(iid("greet", 0))
    assert rec is not None and rec.state.workflow == "hello_workflow"
    assert rec.state.status == pb.STATUS_PENDING
    s = await get_schedule(t, "greet")
    assert s.last_invocation_id == iid("greet", 0) and s.catch_up_runs == 0
    assert count(scheduler.metrics.started, "greet") == 1
    assert count(scheduler.metrics.ticks, "greet") == 2
    lag = scheduler.metrics.registry.get_sample_value(
        "durable_scheduler_tick_lag_seconds_sum", {"schedule": "greet"}
    )
    assert lag is not None and 0.29 <= lag <= 0.31  # handled 0.3 s after the fire time


async def test_a_claimed_tick_is_started_by_whoever_gets_it_next(
    transport: Transport, scheduler: Scheduler, clock: Clock
) -> None:
    """A replica that claimed a tick and died before starting it: the redelivery starts it."""
    t = transport
    await manual_schedule(t, "crash")
    s = await get_schedule(t, "crash")
    await save_schedule(t, replace(s, last_invocation_id=iid("crash", 0), last_fired_at=fire(0)))
    later = fire(0) + timedelta(seconds=12)
    await handle(scheduler, clock, tick(t, "crash", 0, num_delivered=2), later)
    assert await started(t, "crash") == [iid("crash", 0)]


async def test_overlap_skip_waits_for_the_previous_run(
    transport: Transport, scheduler: Scheduler, clock: Clock
) -> None:
    t = transport
    await manual_schedule(t, "slow")
    await handle(scheduler, clock, tick(t, "slow", 0), fire(0) + timedelta(seconds=0.2))
    await handle(scheduler, clock, tick(t, "slow", 1), fire(1) + timedelta(seconds=0.2))
    assert await started(t, "slow") == [iid("slow", 0)]  # the first one is still pending
    assert count(scheduler.metrics.overlap_skipped, "slow") == 1
    await finish(t, iid("slow", 0))
    await handle(scheduler, clock, tick(t, "slow", 2), fire(2) + timedelta(seconds=0.2))
    assert await started(t, "slow") == [iid("slow", 0), iid("slow", 2)]


async def test_overlap_allow_starts_every_tick(
    transport: Transport, scheduler: Scheduler, clock: Clock
) -> None:
    t = transport
    await manual_schedule(t, "many", overlap="allow")
    for k in range(3):
        await handle(scheduler, clock, tick(t, "many", k), fire(k) + timedelta(seconds=0.2))
    assert await started(t, "many") == [iid("many", k) for k in range(3)]


async def test_after_downtime_only_catch_up_late_ticks_run(
    transport: Transport, scheduler: Scheduler, clock: Clock
) -> None:
    t = transport
    await manual_schedule(t, "backlog", overlap="allow", catch_up=2)
    back_up = fire(5) + timedelta(seconds=1.5)  # ticks 0-4 queued while no scheduler ran
    for k in range(6):
        await handle(scheduler, clock, tick(t, "backlog", k), back_up)
    assert await started(t, "backlog") == [iid("backlog", 0), iid("backlog", 1), iid("backlog", 5)]
    assert count(scheduler.metrics.catch_up_skipped, "backlog") == 3
    assert (await get_schedule(t, "backlog")).catch_up_runs == 0  # reset by the on-time tick


async def test_ticks_of_paused_and_deleted_schedules_are_dropped(
    transport: Transport, scheduler: Scheduler, clock: Clock
) -> None:
    t = transport
    await manual_schedule(t, "held")
    await pause_schedule(t, "held")
    await handle(scheduler, clock, tick(t, "held", 0), fire(0))
    await handle(scheduler, clock, tick(t, "gone", 0), fire(0))
    assert await started(t, "held") == [] and await started(t, "gone") == []
    assert count(scheduler.metrics.dropped, "held", "paused") == 1
    assert count(scheduler.metrics.dropped, "gone", "deleted") == 1


async def test_a_failing_tick_goes_back_for_another_try(
    transport: Transport, scheduler: Scheduler, clock: Clock
) -> None:
    t = transport
    await manual_schedule(t, "flaky")
    d = tick(t, "flaky", 0)
    d.subject = t.names.tick_subject("flaky")
    broken = failing_starts(t, scheduler, clock)
    clock.now = fire(0)
    await broken.handle(d)
    assert d.naked and not d.acked
    assert await started(t, "flaky") == []
    # The claim stands; the next delivery of the same tick starts it.
    await handle(scheduler, clock, tick(t, "flaky", 0, num_delivered=2), fire(0) + EVERY)
    assert await started(t, "flaky") == [iid("flaky", 0)]


async def test_two_replicas_racing_never_start_two_runs_of_a_skip_schedule(
    transport: Transport, settings: SchedulerSettings
) -> None:
    t = transport
    other = await Transport.connect(settings.nats, settings.engine)
    try:
        clock = Clock()
        a = Scheduler(Engine(t), settings, clock=clock)
        b = Scheduler(Engine(other), settings, clock=clock)
        clock.now = fire(1) + timedelta(seconds=0.2)
        for round_ in range(8):
            name = f"race{round_}"
            await manual_schedule(t, name)
            first, second = tick(t, name, 0), tick(t, name, 1)
            await asyncio.gather(a.handle(first), b.handle(second))
            assert first.acked and second.acked
            assert len(await started(t, name)) == 1, name
    finally:
        await other.close()


async def test_the_loop_handles_server_ticks_and_stops_on_request(
    transport: Transport, settings: SchedulerSettings
) -> None:
    t = transport
    await create_schedule(t, "live", "hello_workflow", every=timedelta(seconds=1), overlap="allow")
    s = Scheduler(Engine(t), replace(settings, ack_wait=timedelta(seconds=2)))
    loop = asyncio.create_task(s.run())
    try:

        async def two_runs() -> bool:
            return len(await started(t, "live")) >= 2

        await assert_eventually_async(two_runs, 10, "2 runs", interval=0.2)
    finally:
        s.stop()
        await asyncio.wait_for(loop, 5)
    ids = await started(t, "live")
    assert len(set(ids)) == len(ids)


async def test_metrics_and_health_endpoints(
    transport: Transport, settings: SchedulerSettings
) -> None:
    metrics = SchedulerMetrics(runtime_collectors=False)
    metrics.ticks.labels("greet").inc()
    server = await start_metrics_server(
        replace(settings, metrics_port=0), metrics, Engine(transport)
    )
    assert server is None  # port 0 turns the endpoint off
    server = await start_metrics_server(
        replace(settings, metrics_port=free_port()), metrics, Engine(transport)
    )
    assert server is not None
    try:

        def get(path: str) -> tuple[int, str]:
            url = f"http://127.0.0.1:{server.port}{path}"
            opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
            with opener.open(url, timeout=5) as r:
                return r.status, r.read().decode()

        status, body = await asyncio.to_thread(get, "/metrics")
        assert status == 200
        assert 'durable_scheduler_ticks_total{schedule="greet"} 1.0' in body
        for name in (
            "durable_scheduler_invocations_started_total",
            "durable_scheduler_overlap_skipped_total",
            "durable_scheduler_catch_up_skipped_total",
            "durable_scheduler_missed_fire_times_total",
            "durable_scheduler_ticks_dropped_total",
        ):
            assert f"# TYPE {name} counter" in body
        assert await asyncio.to_thread(get, "/healthz") == (200, "ok\n")
    finally:
        await server.stop()


async def test_after_downtime_a_late_tick_handled_twice_is_still_late(
    transport: Transport, settings: SchedulerSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A late tick whose first handling failed (here: the ack after its catch-up skip) comes
    back redelivered, and a redelivery was taken for on time: every late tick of the backlog
    ran, with ``catch_up=0``."""
    t = transport
    name = "downtime"
    await create_schedule(
        t, name, "hello_workflow", every=timedelta(seconds=1), overlap="allow", catch_up=0
    )

    async def backlog() -> bool:  # no scheduler runs meanwhile: the ticks queue up
        info = await t.js.stream_info(
            t.names.command_stream, subjects_filter=t.names.tick_subject(name)
        )
        return (info.state.subjects or {}).get(t.names.tick_subject(name), 0) >= 7

    await assert_eventually_async(backlog, 30, "a backlog of ticks", interval=0.5)
    up = datetime.now(UTC)
    failed: set[datetime] = set()
    acked: set[datetime] = set()
    real_ack = TickDelivery.ack

    async def ack_failing_once(self: TickDelivery) -> None:
        if self.stored_at < up and self.stored_at not in failed:
            failed.add(self.stored_at)
            raise TimeoutError("no answer to the ack")
        await real_ack(self)
        acked.add(self.stored_at)

    monkeypatch.setattr(TickDelivery, "ack", ack_failing_once)
    s = Scheduler(Engine(t), settings)
    loop = asyncio.create_task(s.run())
    try:
        await assert_eventually_async(
            lambda: len(failed) >= 7 and failed <= acked, 30, "every backlog tick handled twice"
        )
    finally:
        s.stop()
        await asyncio.wait_for(loop, 15)

    def fired(invocation_id: str) -> datetime:
        stamp = invocation_id.removeprefix(f"{name}-")
        return datetime.strptime(stamp, "%Y%m%dT%H%M%S").replace(tzinfo=UTC)

    # Late when first handled (after its next tick's grace): catch_up=0 runs none of them.
    late = [i for i in await started(t, name) if fired(i) < up - timedelta(seconds=3)]
    assert late == []
    assert count(s.metrics.catch_up_skipped, name) >= 5


async def _lose_the_first_start(t: Transport, scheduler: Scheduler, clock: Clock) -> str:
    """Handle tick 0 of schedule ``lost`` with its start's publish failing (a leader election):
    the claim and the PENDING state are written, the start is not, the tick goes back."""
    await manual_schedule(t, "lost")
    real = t.publish_command

    async def no_answer(cmd: pb.Command, *, msg_id: str) -> bool:
        t.publish_command = real  # type: ignore[method-assign]
        raise ConnectionError("no answer to the publish")

    t.publish_command = no_answer  # type: ignore[method-assign]
    d = tick(t, "lost", 0)
    clock.now = fire(0) + timedelta(seconds=0.2)
    await scheduler.handle(d)
    assert d.naked and not d.acked
    x1 = iid("lost", 0)
    rec = await t.get_state(x1)
    assert rec is not None and rec.state.status == pb.STATUS_PENDING
    assert not await t.start_queued(x1, x1)
    return x1


async def test_a_tick_claimed_before_a_pause_still_starts_its_invocation(
    transport: Transport, scheduler: Scheduler, clock: Clock
) -> None:
    """Its redelivery was dropped as paused: the invocation stayed PENDING with no start."""
    t = transport
    x1 = await _lose_the_first_start(t, scheduler, clock)
    await pause_schedule(t, "lost")
    await handle(scheduler, clock, tick(t, "lost", 0, num_delivered=2), fire(0) + EVERY)
    assert await t.start_queued(x1, x1)


async def test_a_start_lost_before_a_pause_does_not_block_the_schedule_for_good(
    transport: Transport, scheduler: Scheduler, clock: Clock
) -> None:
    """The pause purged the tick's redelivery: the claimed invocation stayed PENDING with no
    start, and ``overlap="skip"`` skipped every tick after the resume, for good."""
    t = transport
    x1 = await _lose_the_first_start(t, scheduler, clock)
    await pause_schedule(t, "lost")
    await resume_schedule(t, "lost")
    await t.disarm_schedule("lost")  # the test makes the ticks
    # Within stale_after of the claim the start may still be on its way: a plain skip.
    await handle(scheduler, clock, tick(t, "lost", 5), fire(5) + timedelta(seconds=0.2))
    assert not await t.start_queued(x1, x1)
    # Long after: X1 is started again (and blocks this tick, as it has not run yet).
    await handle(scheduler, clock, tick(t, "lost", 40), fire(40) + timedelta(seconds=0.2))
    assert await t.start_queued(x1, x1)
    assert await started(t, "lost") == [x1]
    await handle(scheduler, clock, tick(t, "lost", 41), fire(41) + timedelta(seconds=0.2))
    assert await started(t, "lost") == [x1]  # queued now: not started a third time
    await finish(t, x1)
    await handle(scheduler, clock, tick(t, "lost", 42), fire(42) + timedelta(seconds=0.2))
    assert await started(t, "lost") == [x1, iid("lost", 42)]


class _FailingAck(FakeTick):
    async def ack(self) -> None:
        raise TimeoutError("no answer to the ack")


async def test_a_failed_ack_of_a_dropped_tick_does_not_escape(
    transport: Transport, scheduler: Scheduler, clock: Clock
) -> None:
    """``handle`` never raises: an ack that failed in its except branches ended the loop (and
    the replica's every worker)."""
    t = transport
    await scheduler.handle(_FailingAck("no-tick-subject", {}, fire(0)))
    await manual_schedule(t, "refused")

    async def refuse(*_: object, **__: object) -> str:
        raise InvalidInputError("arguments the workflow does not take")

    scheduler.client.invoke_async = refuse  # type: ignore[method-assign]
    clock.now = fire(0)
    d = tick(t, "refused", 0)
    await scheduler.handle(_FailingAck(d.subject, d.headers, d.stored_at))


async def test_the_loop_survives_a_failed_ack_of_a_malformed_tick(
    transport: Transport, settings: SchedulerSettings
) -> None:
    fetches = 0

    class OneBadTick:
        async def fetch(self, batch: int, timeout: float) -> list[FakeTick]:
            nonlocal fetches
            fetches += 1
            if fetches == 1:
                return [_FailingAck("no-tick-subject", {}, fire(0))]
            await asyncio.sleep(0.05)
            return []

        async def close(self) -> None:
            pass

    class StubEngine(Engine):
        async def tick_consumer(self, **_: object) -> OneBadTick:  # type: ignore[override]
            return OneBadTick()

    s = Scheduler(StubEngine(transport), settings)
    loop = asyncio.create_task(s.run())
    try:
        await assert_eventually_async(lambda: fetches >= 3 or loop.done(), 10, "fetching on")
        assert not loop.done()
    finally:
        s.stop()
        await asyncio.wait_for(loop, 5)


async def test_a_tick_whose_id_another_workflow_has_is_dropped_not_retried(
    transport: Transport, scheduler: Scheduler, clock: Clock
) -> None:
    """The invocation id a tick names is another workflow's: a ConflictError, as taken on
    every try. The tick was handed back every second, for good."""
    t = transport
    await manual_schedule(t, "taken")
    taken = iid("taken", 0)
    await scheduler.client.invoke_async("some_other_workflow", id=taken, queue_unserved=True)
    await handle(scheduler, clock, tick(t, "taken", 0), fire(0))
    rec = await t.get_state(taken)
    assert rec is not None and rec.state.workflow == "some_other_workflow"


async def test_fire_times_the_server_skipped_run_as_late_ticks_within_catch_up(
    transport: Transport, scheduler: Scheduler, clock: Clock
) -> None:
    """A leader change of the command stream: the new leader fires on, and the times that
    fell in between never come (2-3 ticks of an every-2s schedule per leader kill). The next
    tick finds them from the last tick handled and runs up to ``catch_up`` of them, oldest
    first, as late ticks; the tick itself runs as usual."""
    t = transport
    await manual_schedule(t, "gap", overlap="allow", catch_up=2)
    await handle(scheduler, clock, tick(t, "gap", 0), fire(0) + timedelta(seconds=0.2))
    await handle(scheduler, clock, tick(t, "gap", 4), fire(4) + timedelta(seconds=0.2))
    assert await started(t, "gap") == [iid("gap", k) for k in (0, 1, 2, 4)]
    assert count(scheduler.metrics.missed, "gap") == 3  # 1 and 2 made up, 3 past catch_up
    assert count(scheduler.metrics.catch_up_skipped, "gap") == 1
    s = await get_schedule(t, "gap")
    assert (s.last_invocation_id, s.last_tick_at, s.catch_up_runs) == (iid("gap", 4), fire(4), 0)
    await handle(scheduler, clock, tick(t, "gap", 5), fire(5) + timedelta(seconds=0.2))
    assert await started(t, "gap") == [iid("gap", k) for k in (0, 1, 2, 4, 5)]


async def test_skipped_fire_times_are_not_made_up_while_the_last_run_runs(
    transport: Transport, scheduler: Scheduler, clock: Clock
) -> None:
    t = transport
    await manual_schedule(t, "gapskip", catch_up=3)  # overlap="skip"
    await handle(scheduler, clock, tick(t, "gapskip", 0), fire(0) + timedelta(seconds=0.2))
    await handle(scheduler, clock, tick(t, "gapskip", 3), fire(3) + timedelta(seconds=0.2))
    assert await started(t, "gapskip") == [iid("gapskip", 0)]  # 0 still runs: 1-3 skipped
    assert count(scheduler.metrics.overlap_skipped, "gapskip") == 2  # 1 (and 2 with it), 3
    assert (await get_schedule(t, "gapskip")).last_tick_at == fire(3)
    await finish(t, iid("gapskip", 0))
    # Skipped is handled: the times before the skip are not made up afterwards.
    await handle(scheduler, clock, tick(t, "gapskip", 4), fire(4) + timedelta(seconds=0.2))
    assert await started(t, "gapskip") == [iid("gapskip", 0), iid("gapskip", 4)]


@pytest.fixture
def resume_at(clock: Clock, monkeypatch: pytest.MonkeyPatch) -> Clock:
    """A create or resume reads the tests' clock for where fire times start to count."""
    monkeypatch.setattr(
        schedules,
        "_armed_from",
        lambda s: clock.now.replace(microsecond=0) + timedelta(seconds=1 if s.every else 0),
    )
    return clock


async def ran_then_paused(t: Transport, s: Scheduler, clock: Clock, name: str) -> None:
    """Tick 0 of a new every-2s schedule (overlap allow, catch_up 5) ran, then it was paused."""
    await manual_schedule(t, name, overlap="allow", catch_up=5)
    await handle(s, clock, tick(t, name, 0), fire(0) + timedelta(seconds=0.2))
    await pause_schedule(t, name)


async def resumed(t: Transport, clock: Clock, name: str, at: datetime) -> None:
    """Resume it at ``at`` (the tests' time); the test still makes the ticks."""
    clock.now = at
    await resume_schedule(t, name)
    await t.disarm_schedule(name)


async def test_a_resumed_schedule_makes_up_none_of_its_paused_time(
    transport: Transport, scheduler: Scheduler, resume_at: Clock
) -> None:
    t, clock = transport, resume_at
    await ran_then_paused(t, scheduler, clock, "rest")
    await resumed(t, clock, "rest", fire(4) + timedelta(seconds=0.5))
    await handle(scheduler, clock, tick(t, "rest", 5), fire(5) + timedelta(seconds=0.2))
    assert await started(t, "rest") == [iid("rest", 0), iid("rest", 5)]
    assert count(scheduler.metrics.missed, "rest") == 0


async def test_a_time_skipped_right_after_a_resume_is_made_up(
    transport: Transport, scheduler: Scheduler, resume_at: Clock
) -> None:
    """A leader change just after a resume, before its first tick: that time was planned."""
    t, clock = transport, resume_at
    await ran_then_paused(t, scheduler, clock, "back")
    await resumed(t, clock, "back", fire(4) + timedelta(seconds=0.5))
    # Fire times count from a second after the resume (the server is armed after the
    # record and fires on whole seconds): 1 s and 3 s after fire(5), then tick 7 (3 s after
    # that grid's 3 s, half an interval: it stands for it). The server skipped two: the
    # first is made up, under its own time.
    await handle(scheduler, clock, tick(t, "back", 7), fire(7) + timedelta(seconds=0.2))
    skipped = f"back-{(fire(5) + timedelta(seconds=1)).strftime('%Y%m%dT%H%M%S')}"
    assert await started(t, "back") == sorted([iid("back", 0), skipped, iid("back", 7)])
    assert count(scheduler.metrics.missed, "back") == 1


async def test_a_tick_from_before_a_pause_handled_after_the_resume_makes_up_no_paused_time(
    transport: Transport, scheduler: Scheduler, resume_at: Clock
) -> None:
    """A replica stalled between fetching a tick and handling it, across a pause and a
    resume: the tick runs late (it was due while the schedule was active), but the time the
    schedule was paused is not made up after it."""
    t, clock = transport, resume_at
    stalled = tick(t, "stall", 1)  # fetched (before the pause), not handled yet
    await ran_then_paused(t, scheduler, clock, "stall")
    await resumed(t, clock, "stall", fire(5) + timedelta(seconds=0.5))
    await handle(scheduler, clock, stalled, fire(5) + timedelta(seconds=0.6))
    await handle(scheduler, clock, tick(t, "stall", 6), fire(6) + timedelta(seconds=0.2))
    assert await started(t, "stall") == [iid("stall", k) for k in (0, 1, 6)]
    assert count(scheduler.metrics.missed, "stall") == 0


async def test_a_skipped_fire_time_claimed_but_not_started_is_started_by_the_redelivery(
    transport: Transport, scheduler: Scheduler, clock: Clock
) -> None:
    t = transport
    await manual_schedule(t, "cut", overlap="allow")
    await handle(scheduler, clock, tick(t, "cut", 0), fire(0) + timedelta(seconds=0.2))
    broken = failing_starts(t, scheduler, clock)
    clock.now = fire(2) + timedelta(seconds=0.2)
    first = tick(t, "cut", 2)
    await broken.handle(first)  # claims the skipped time 1, then cannot start it
    assert first.naked and await started(t, "cut") == [iid("cut", 0)]
    assert (await get_schedule(t, "cut")).last_invocation_id == iid("cut", 1)
    again = tick(t, "cut", 2, num_delivered=2)
    await handle(scheduler, clock, again, fire(2) + timedelta(seconds=1.2))
    assert await started(t, "cut") == [iid("cut", k) for k in (0, 1, 2)]


async def test_a_claimed_skipped_fire_time_that_ran_and_expired_is_not_run_again(
    transport: Transport, scheduler: Scheduler, clock: Clock
) -> None:
    """The redelivery's restart of a claimed skipped time is for one never started: one that
    ran and was removed by retention since (no state, an expiry note) stays gone."""
    t = transport
    await manual_schedule(t, "short", overlap="allow")
    await handle(scheduler, clock, tick(t, "short", 0), fire(0) + timedelta(seconds=0.2))
    broken = failing_starts(t, scheduler, clock)
    clock.now = fire(2) + timedelta(seconds=0.2)
    await broken.handle(tick(t, "short", 2))
    missed = iid("short", 1)
    assert (await get_schedule(t, "short")).last_invocation_id == missed
    # It ran after all (another replica's start landed) and expired at once.
    await scheduler.client.invoke_async(
        "hello_workflow", {"name": "short"}, id=missed, queue_unserved=True
    )
    await finish(t, missed)
    rec = await t.get_state(missed)
    assert rec is not None and await Engine(t).expire_execution(rec, 2**62)
    await handle(scheduler, clock, tick(t, "short", 2, num_delivered=2), clock.now)
    assert await started(t, "short") == [iid("short", 0), iid("short", 2)]


async def test_a_tick_that_comes_after_its_time_was_made_up_is_not_claimed_again(
    transport: Transport, scheduler: Scheduler, clock: Clock
) -> None:
    """The old leader stored a tick but it was delivered only after the new leader's first,
    which made its time up: acked, no second claim (it would count against catch_up and
    move the record back)."""
    t = transport
    await manual_schedule(t, "slowtick", overlap="allow", catch_up=2)
    await handle(scheduler, clock, tick(t, "slowtick", 0), fire(0) + timedelta(seconds=0.2))
    await handle(scheduler, clock, tick(t, "slowtick", 2), fire(2) + timedelta(seconds=0.2))
    assert await started(t, "slowtick") == [iid("slowtick", k) for k in (0, 1, 2)]
    before = await get_schedule(t, "slowtick")
    await handle(scheduler, clock, tick(t, "slowtick", 1), fire(2) + timedelta(seconds=3))
    after = await get_schedule(t, "slowtick")
    assert (after.last_invocation_id, after.catch_up_runs, after.revision) == (
        before.last_invocation_id,
        before.catch_up_runs,
        before.revision,
    )
    assert count(scheduler.metrics.started, "slowtick") == 3
