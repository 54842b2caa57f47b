"""The schedule sweep against a real NATS server: an active schedule the server does not fire
(a create or resume that died between its record write and its arm) is armed again, and a
sweep that fails on NATS trouble is tried again the next round."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta

import pytest
import pytest_asyncio

from durable_core import EngineConfig
from durable_core._transport import Transport
from durable_core.admin import Engine
from durable_core.config import NatsConfig
from durable_core.schedules import create_schedule, delete_schedule
from durable_core.testing import NatsServer, assert_eventually_async
from durable_scheduler.metrics import SchedulerMetrics
from durable_scheduler.schedule_sweep import ScheduleSweep

HOURLY = timedelta(hours=1)


@pytest.fixture(scope="module")
def server() -> Iterator[NatsServer]:
    with NatsServer() as s:
        yield s


async def _transport(server: NatsServer) -> Transport:
    # Created as a processor does; a short deadline, so a frozen server fails a call soon.
    engine = EngineConfig(prefix="sw" + uuid.uuid4().hex[:8], append_deadline=timedelta(seconds=1))
    return await Transport.connect(NatsConfig.from_url(server.url), engine, create=True)


@pytest_asyncio.fixture
async def transport(server: NatsServer) -> AsyncIterator[Transport]:
    t = await _transport(server)
    try:
        yield t
    finally:
        await t.close()


def _repairs(metrics: SchedulerMetrics, name: str, action: str) -> float:
    value = metrics.registry.get_sample_value(
        "durable_scheduler_schedules_repaired_total", {"schedule": name, "action": action}
    )
    return value or 0.0


async def test_the_sweep_arms_an_active_schedule_left_disarmed(
    transport: Transport, caplog: pytest.LogCaptureFixture
) -> None:
    t = transport
    await create_schedule(t, "lost", "hello_workflow", every=HOURLY)
    await create_schedule(t, "idle", "hello_workflow", every=HOURLY, paused=True)
    await t.disarm_schedule("lost")  # as a crash between the record write and the arm leaves it
    metrics = SchedulerMetrics(runtime_collectors=False)
    sweep = ScheduleSweep(Engine(t), metrics, interval=0.2)
    caplog.set_level(logging.INFO, "durable_scheduler")
    task = asyncio.create_task(sweep.run())
    try:
        await assert_eventually_async(lambda: t.schedule_armed("lost"), 10, "lost armed again")
    finally:
        sweep.stop()
        await asyncio.wait_for(task, 5)
    assert not await t.schedule_armed("idle")
    assert _repairs(metrics, "lost", "armed") == 1
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("lost" in m and "armed" in m for m in warned), warned


@pytest.mark.slow  # a frozen server fails a request only after its timeout (~5 s)
async def test_the_sweep_outlives_nats_trouble() -> None:
    with NatsServer() as own:  # frozen below: not the module's server
        t = await _transport(own)
        try:
            await create_schedule(t, "lost", "hello_workflow", every=HOURLY)
            sweep = ScheduleSweep(Engine(t), interval=0.2)
            failed = asyncio.Event()
            handler = _Flag(failed, "schedule sweep failed")
            logging.getLogger("durable_scheduler").addHandler(handler)
            task = asyncio.create_task(sweep.run())
            try:
                own.pause()
                try:
                    await asyncio.wait_for(failed.wait(), 30)
                finally:
                    own.resume()
                await t.disarm_schedule("lost")
                await assert_eventually_async(
                    lambda: t.schedule_armed("lost"), 15, "lost armed again after the outage"
                )
                assert not task.done()
            finally:
                logging.getLogger("durable_scheduler").removeHandler(handler)
                sweep.stop()
                await asyncio.wait_for(task, 10)
        finally:
            await t.close()


class _Flag(logging.Handler):
    """Sets an event when a record containing ``text`` is logged."""

    def __init__(self, event: asyncio.Event, text: str) -> None:
        super().__init__(logging.WARNING)
        self.event, self.text = event, text

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.event.set()


async def test_the_sweep_drops_the_series_of_deleted_schedules(transport: Transport) -> None:
    """Each schedule name kept its metric series for good, deleted or not: a scheduler of a
    system that makes and deletes schedules grew without end, and so did Prometheus."""
    t = transport
    await create_schedule(t, "kept", "hello_workflow", every=HOURLY)
    await create_schedule(t, "gone", "hello_workflow", every=HOURLY)
    metrics = SchedulerMetrics(runtime_collectors=False)
    for name in ("kept", "gone"):
        metrics.ticks.labels(name).inc()
        metrics.tick_lag.labels(name).observe(0.1)
    metrics.dropped.labels("gone", "deleted").inc()
    sweep = ScheduleSweep(Engine(t), metrics)
    await sweep.sweep()
    await delete_schedule(t, "gone")
    await sweep.sweep()  # missing once: kept (a schedule made just after a listing is too)
    assert metrics.schedules_seen() == {"kept", "gone"}
    await sweep.sweep()
    assert metrics.schedules_seen() == {"kept"}
    ticks = "durable_scheduler_ticks_total"
    assert metrics.registry.get_sample_value(ticks, {"schedule": "kept"}) == 1
    assert metrics.registry.get_sample_value(ticks, {"schedule": "gone"}) is None
    lag = "durable_scheduler_tick_lag_seconds_count"
    assert metrics.registry.get_sample_value(lag, {"schedule": "gone"}) is None
