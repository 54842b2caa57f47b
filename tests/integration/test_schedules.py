"""Schedules on the 3-node cluster: the server fires, scheduler replicas start the runs.

Real processes: the example services, a processor and scheduler replicas (``python -m
durable_scheduler``), all on the test's own engine prefix.
"""

from __future__ import annotations

import asyncio
import calendar
import re
import time
import urllib.request
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import pytest

from durable_core import EngineConfig, InvalidInputError
from durable_core import schedules as sched
from durable_core._pb.durable.v1 import durable_pb2 as pb
from durable_core._transport import Transport
from durable_core.cli import main as cli_main
from durable_core.testing import NatsCluster, free_port

from ._stack import Proc, Stack

pytestmark = pytest.mark.integration

_TERMINAL = {pb.STATUS_COMPLETED, pb.STATUS_FAILED, pb.STATUS_CANCELLED}


def start_scheduler(stack: Stack, name: str, **env: str) -> tuple[Proc, int]:
    port = free_port()
    proc = Proc(
        name,
        ["-m", "durable_scheduler"],
        {
            **stack.env,
            "DURABLE_METRICS_PORT": str(port),
            # A replica that dies holding a tick loses it to the other after 3 s.
            "DURABLE_ACK_WAIT": "3",
            **{k.upper(): v for k, v in env.items()},
        },
        stack.log_dir,
    )
    stack.procs.append(proc)
    proc.wait_log("consuming ticks")
    return proc, port


async def runs(t: Transport, name: str) -> list[pb.ExecutionState]:
    """The invocations schedule ``name`` started, oldest first."""
    states = [s for s in await t.list_states() if s.invocation_id.startswith(f"{name}-")]
    return sorted(states, key=lambda s: s.created_at_ms)


async def eventually(
    probe: Callable[[], Awaitable[Any]], timeout: float, what: str, interval: float = 0.2
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(interval)


async def all_finished(t: Transport, name: str, timeout: float) -> list[pb.ExecutionState]:
    async def probe() -> list[pb.ExecutionState] | None:
        states = await runs(t, name)
        return states if all(s.status in _TERMINAL for s in states) else None

    result: list[pb.ExecutionState] = await eventually(probe, timeout, f"the runs of {name}")
    return result


def _metrics_text(port: int) -> str:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return str(r.read().decode())


def metric(port: int, name: str, schedule: str) -> float:
    m = re.search(rf'^{name}{{schedule="{schedule}"}} (\S+)$', _metrics_text(port), re.M)
    return float(m.group(1)) if m else 0.0


def metric_total(port: int, name: str) -> float:
    """A metric without labels."""
    m = re.search(rf"^{name} (\S+)$", _metrics_text(port), re.M)
    return float(m.group(1)) if m else 0.0


async def test_every_2s_fires_five_times_in_10s_with_a_replica_killed_midway(
    stack: Stack, transport: Transport
) -> None:
    stack.start_service()
    stack.start_processor("p1")
    a, _ = start_scheduler(stack, "scheduler-a")
    start_scheduler(stack, "scheduler-b")
    t = transport

    created = time.monotonic()
    await sched.create_schedule(
        t, "greet", "hello_workflow", {"name": "Ada"}, every=timedelta(seconds=2), overlap="allow"
    )
    await asyncio.sleep(5)
    a.kill()  # SIGKILL: whatever it held goes to scheduler-b after ack_wait
    await asyncio.sleep(max(0.0, 10 - (time.monotonic() - created)))
    await sched.pause_schedule(t, "greet")

    states = await all_finished(t, "greet", timeout=20)
    ids = [s.invocation_id for s in states]
    assert 4 <= len(ids) <= 6, ids
    assert len(set(ids)) == len(ids)
    assert all(s.status == pb.STATUS_COMPLETED for s in states), states
    assert all(re.fullmatch(r"greet-\d{8}T\d{6}", i) for i in ids)
    # Ticks are two seconds apart, and so are the ids (no tick started twice, none lost).
    stamps = [
        calendar.timegm(time.strptime(i.removeprefix("greet-"), "%Y%m%dT%H%M%S")) for i in ids
    ]
    assert all(later - earlier == 2 for earlier, later in zip(stamps, stamps[1:], strict=False))


async def test_pause_resume_delete_and_invalid_cron(
    stack: Stack, transport: Transport, cluster: NatsCluster, engine: EngineConfig
) -> None:
    scheduler, _ = start_scheduler(stack, "scheduler")
    t = transport
    # No processor: runs stay pending, which `overlap="allow"` does not mind.
    await sched.create_schedule(
        t, "beat", "hello_workflow", every=timedelta(seconds=1), overlap="allow"
    )
    await eventually(lambda: _count_at_least(t, "beat", 2), 10, "two runs of beat")

    await sched.pause_schedule(t, "beat")
    paused_at = len(await runs(t, "beat"))
    await asyncio.sleep(3)
    assert len(await runs(t, "beat")) <= paused_at + 1  # at most a tick already in hand
    stopped = len(await runs(t, "beat"))
    await asyncio.sleep(2)
    assert len(await runs(t, "beat")) == stopped

    await sched.resume_schedule(t, "beat")
    await eventually(lambda: _count_at_least(t, "beat", stopped + 2), 10, "runs after resume")

    await sched.delete_schedule(t, "beat")
    assert await sched.find_schedule(t, "beat") is None
    assert not await t.schedule_armed("beat")
    deleted = len(await runs(t, "beat"))
    await asyncio.sleep(3)
    assert len(await runs(t, "beat")) <= deleted + 1
    assert [s.name for s in await sched.list_schedules(t)] == []

    with pytest.raises(InvalidInputError, match="invalid cron expression"):
        await sched.create_schedule(t, "bad", "hello_workflow", cron="0 0 31 2 *")

    cli = ["--nats-url", cluster.url, "--prefix", engine.prefix, "schedule"]
    bad = [*cli, "create", "bad", "--workflow", "w", "--cron", "* * * * 8"]
    assert await asyncio.to_thread(cli_main, bad) == 2
    assert await asyncio.to_thread(cli_main, [*cli, "pause", "ghost"]) == 4

    assert scheduler.stop() == 0  # SIGTERM: a clean exit
    assert "scheduler stopped" in scheduler.log()


async def _count_at_least(t: Transport, name: str, n: int) -> bool:
    return len(await runs(t, name)) >= n


async def test_overlap_skip_never_runs_two_at_once(stack: Stack, transport: Transport) -> None:
    service = stack.start_service()
    service.set_delay("Charge", 3000)
    stack.start_processor("p1")
    _, port = start_scheduler(stack, "scheduler")
    t = transport

    await sched.create_schedule(
        t,
        "orders",
        "order_processing",
        {"order_id": "o-1", "amount_cents": 500},
        every=timedelta(seconds=1),
    )
    await asyncio.sleep(8)
    await sched.pause_schedule(t, "orders")
    states = await all_finished(t, "orders", timeout=20)

    assert all(s.status == pb.STATUS_COMPLETED for s in states), states
    ticks = metric(port, "durable_scheduler_ticks_total", "orders")
    skipped = metric(port, "durable_scheduler_overlap_skipped_total", "orders")
    started = metric(port, "durable_scheduler_invocations_started_total", "orders")
    assert 2 <= len(states) <= 3 and started == len(states)
    assert ticks >= 6 and skipped >= 3 and len(states) < ticks
    for earlier, later in zip(states, states[1:], strict=False):
        # The next run was started only after the previous one had finished.
        assert later.created_at_ms >= earlier.updated_at_ms, (earlier, later)
