"""A processor's consumers, one per workflow and route, fetched together (issue 16)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest

from durable_core._pb.durable.v1 import durable_pb2 as pb
from durable_core._transport import Transport
from durable_core._transport.delivery import Delivery
from durable_core.config import WorkerConfig


def start(invocation_id: str, workflow: str, route: str = "") -> pb.Command:
    return pb.Command(
        invocation_id=invocation_id, workflow=workflow, kind=pb.COMMAND_KIND_START, route=route
    )


async def test_each_consumer_gets_only_its_workflows_commands(transport: Transport) -> None:
    cfg = WorkerConfig(max_concurrent=10, ack_wait=timedelta(seconds=30))
    mine = await transport.command_consumer(cfg, [("a", ""), ("a", "v-0123456789abcdef")])
    for i, (wf, route) in enumerate([("a", ""), ("b", ""), ("a", "v-0123456789abcdef")]):
        await transport.publish_command(start(f"i{i}", wf, route), msg_id=f"start:i{i}")
    got = []
    for _ in range(5):
        for d in await mine.fetch(10, timeout=0.5):
            cmd = pb.Command.FromString(d.data)
            got.append((cmd.invocation_id, transport.names.route_of(d.subject)))
            await d.ack()
    assert sorted(got) == [("i0", ("a", "any")), ("i2", ("a", "v-0123456789abcdef"))]
    pending, _, _ = await transport.consumer_stats("processor")
    assert pending == 0  # b's command waits in the stream: no consumer of b exists
    await mine.close()


async def test_a_busy_workflow_does_not_starve_another(transport: Transport) -> None:
    """With one free slot and 40 commands of ``busy`` queued first, the one command of
    ``quiet`` is among the first few taken, not the 41st."""
    cfg = WorkerConfig(max_concurrent=1, ack_wait=timedelta(seconds=30))
    routes = [("busy", ""), ("quiet", ""), *((f"idle{i}", "") for i in range(6))]
    consumers = await transport.command_consumer(cfg, routes)
    for i in range(40):
        await transport.publish_command(start(f"b{i}", "busy"), msg_id=f"start:b{i}")
    await transport.publish_command(start("q", "quiet"), msg_id="start:q")
    order: list[str] = []
    for _ in range(50):
        if "q" in order:
            break
        for d in await consumers.fetch(1, timeout=1.0):
            order.append(pb.Command.FromString(d.data).invocation_id)
            await d.ack()
    assert "q" in order and order.index("q") < 5, order
    await consumers.close()


async def test_busy_workflows_take_turns_for_a_scarce_slot(transport: Transport) -> None:
    """With one free slot, two workflows with a backlog each (and a route each that has
    none) take turns: a busy consumer's request never moved the turn, and only the idle
    ones' probes did, always to the same place: one workflow was given every slot while the
    other's commands waited, for as long as the first had any."""
    cfg = WorkerConfig(max_concurrent=1, ack_wait=timedelta(seconds=30))
    other = "v-0123456789abcdef"
    routes = [("a", ""), ("b", ""), ("a", other), ("b", other)]
    consumers = await transport.command_consumer(cfg, routes)
    for i in range(30):
        await transport.publish_command(start(f"a{i}", "a"), msg_id=f"start:a{i}")
        await transport.publish_command(start(f"b{i}", "b"), msg_id=f"start:b{i}")
    taken: list[str] = []
    while len(taken) < 24:
        for d in await consumers.fetch(1, timeout=1.0):
            taken.append(pb.Command.FromString(d.data).workflow)
            await d.ack()
    assert min(taken.count("a"), taken.count("b")) >= 8, taken
    await consumers.close()


async def test_each_processor_runs_its_own_max_concurrent(transport: Transport) -> None:
    """Two processors with ``max_concurrent=2`` each, sharing a workflow's consumer, hold four
    commands at once. The consumer's ``max_ack_pending`` was ``max_concurrent``, and the
    server counts it over every client of the consumer: the whole fleet ran two, however
    many processors it had."""
    cfg = WorkerConfig(max_concurrent=2, ack_wait=timedelta(seconds=30))
    first = await transport.command_consumer(cfg, [("a", "")])
    second = await transport.command_consumer(cfg, [("a", "")])
    for i in range(8):
        await transport.publish_command(start(f"a{i}", "a"), msg_id=f"start:a{i}")
    held: dict[int, list[Delivery]] = {0: [], 1: []}
    for _ in range(6):
        for n, consumers in enumerate((first, second)):
            if room := 2 - len(held[n]):
                held[n].extend(await consumers.fetch(room, timeout=0.3))
    assert [len(held[0]), len(held[1])] == [2, 2], held
    for d in [*held[0], *held[1]]:
        await d.ack()
    await first.close()
    await second.close()


async def test_a_command_without_a_workflow_is_refused_at_publish(transport: Transport) -> None:
    with pytest.raises(Exception, match="names no workflow"):
        await transport.publish_command(start("x", ""), msg_id="start:x")


async def test_an_idle_route_keeps_no_slot_from_busy_work(transport: Transport) -> None:
    """``max_concurrent=4``, one workflow on two routes, twelve commands on one: runs of
    0.4 s each (acked when done, as a processor does) really run four at once. An idle
    consumer's request reserves a slot; a long one (one second) kept a quarter of the slots
    from the busy route, and at most three ran at once."""
    cfg = WorkerConfig(max_concurrent=4, ack_wait=timedelta(seconds=30))
    consumers = await transport.command_consumer(cfg, [("a", ""), ("a", "v-0123456789abcdef")])
    for i in range(12):
        await transport.publish_command(start(f"a{i}", "a"), msg_id=f"start:a{i}")
    running: set[asyncio.Task[None]] = set()
    peak, done = 0, 0

    async def run(d: Delivery) -> None:
        await asyncio.sleep(0.4)
        await d.ack()

    async with asyncio.timeout(20):
        while done < 12:
            free = cfg.max_concurrent - len(running)
            if free <= 0:
                finished, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                running -= finished
                done += len(finished)
                continue
            for d in await consumers.fetch(free, timeout=0.1):
                running.add(asyncio.create_task(run(d)))
            peak = max(peak, len(running))
            finished = {t for t in running if t.done()}
            running -= finished
            done += len(finished)
    assert peak == 4
    await consumers.close()


async def test_idle_consumers_are_not_polled_while_work_trickles_in(transport: Transport) -> None:
    """One command at a time on a busy route, ten idle routes: with no backlog an idle
    consumer's probe stays open as long as any request (one second), never 50 ms. Short
    probes asked idle consumers again and again: seven pull requests per invocation, one
    invocation at a time, with 24 routes (a processor with the test plugins)."""
    cfg = WorkerConfig(max_concurrent=100, ack_wait=timedelta(seconds=30))
    routes = [("busy", ""), *((f"idle{i}", "") for i in range(10))]
    consumers = await transport.command_consumer(cfg, routes)
    short: list[str] = []
    for c in consumers.consumers[1:]:
        ask = c.request

        async def request(batch: int, expires: float | None = None, ask: Any = ask) -> None:
            if expires is not None and expires < 1.0:
                short.append(f"{batch} for {expires} s")
            await ask(batch, expires)

        c.request = request  # type: ignore[method-assign]
    for i in range(40):  # two seconds and more: past the first, long, requests of all eleven
        await transport.publish_command(start(f"b{i}", "busy"), msg_id=f"start:b{i}")
        got = await consumers.fetch(100, timeout=2.0)
        assert [pb.Command.FromString(d.data).invocation_id for d in got] == [f"b{i}"]
        await got[0].ack()
        await asyncio.sleep(0.05)  # the next invocation comes a little later
    assert not short, short
    assert max(c._sent for c in consumers.consumers[1:]) <= 4
    await consumers.close()


class _Busy:
    """A consumer that brought work lately and has no request open: what ``_ask`` reads."""

    idle = False
    drained = True

    def __init__(self) -> None:
        self.asked: list[int] = []

    def outstanding(self, now: float) -> int:
        return 0

    async def request(self, batch: int, expires: float | None = None) -> None:
        self.asked.append(batch)


class _Fake(_Busy):
    """A consumer whose requests stay open (``open`` is what they may still bring)."""

    def __init__(self, *, idle: bool, drained: bool = True, open: int = 0) -> None:
        super().__init__()
        self.idle, self.drained, self.open = idle, drained, open
        self.expiries: list[float | None] = []

    def outstanding(self, now: float) -> int:
        return self.open

    async def request(self, batch: int, expires: float | None = None) -> None:
        self.asked.append(batch)
        self.expiries.append(expires)
        self.open += batch


@pytest.mark.parametrize("backlog", [True, False])
async def test_idle_probes_hold_a_quarter_of_the_free_slots_in_all(backlog: bool) -> None:
    """One busy consumer with its request open, 40 idle ones, 50 free slots, asked again and
    again (as every fetch does): the probes, together, never hold more than 12 slots. A
    quarter of the room at each ask let them pile up (38, then 29, ...): the busy consumer's
    next request got what was left (1 to 26 with 50 slots free, at 64 in flight)."""
    from durable_core._transport.inbox import Queue
    from durable_core._transport.routes import _SHORT_POLL, CommandConsumers

    busy = _Fake(idle=False, drained=not backlog, open=10)
    idle = [_Fake(idle=True) for _ in range(40)]
    consumers = CommandConsumers(Queue(), [busy, *idle])  # type: ignore[list-item]
    for _ in range(10):
        await consumers._ask(50, 0.0)
    assert sum(f.open for f in idle) == 50 // 4
    expiries = {e for f in idle for e in f.expiries}
    assert expiries == ({_SHORT_POLL} if backlog else {None})  # None: as long as any request
    busy.open = 0  # its request is used up: it gets the room the probes left
    await consumers._ask(50, 0.0)
    assert busy.asked == [50 - 50 // 4]


@pytest.mark.parametrize(("busy", "free"), [(2, 2), (5, 2), (3, 7), (8, 8), (2, 600)])
async def test_free_slots_are_shared_among_busy_consumers(busy: int, free: int) -> None:
    """Two busy consumers and two free slots (the soak's processors hit it): the share's
    divisor counted the busy consumers from the shrinking room and reached zero; every fetch
    failed with ZeroDivisionError."""
    from durable_core._transport.inbox import Queue
    from durable_core._transport.routes import CommandConsumers

    fakes = [_Busy() for _ in range(busy)]
    consumers = CommandConsumers(Queue(), fakes)  # type: ignore[arg-type]
    await consumers._ask(free, 0.0)
    asked = [sum(f.asked) for f in fakes]
    takers = min(busy, free)
    assert sum(asked) <= free or takers * 256 < free, asked
    assert all(a >= 1 for a in asked[:takers]) and not any(asked[takers:]), asked


async def test_an_ack_wait_is_never_shortened_under_a_held_command(transport: Transport) -> None:
    """A processor configured with a shorter ack wait than the consumer's leaves it alone while
    a command is held (its holder heartbeats by the longer wait: JetStream would redeliver what
    it still runs); lengthening is always allowed, shortening once nothing is held or pulled."""
    n = transport.names
    name = n.route_consumer("processor", "a", "")

    async def ack_wait() -> float:
        return float((await transport.js.consumer_info(n.command_stream, name)).config.ack_wait)

    first = await transport.command_consumer(
        WorkerConfig(max_concurrent=10, ack_wait=timedelta(seconds=300)), [("a", "")]
    )
    await transport.publish_command(start("held", "a"), msg_id="start:held")
    held = await first.fetch(1, timeout=2.0)
    assert len(held) == 1
    await first.close()  # no pull waits: only the held command keeps the longer wait

    second = await transport.command_consumer(
        WorkerConfig(max_concurrent=10, ack_wait=timedelta(seconds=30)), [("a", "")]
    )
    assert await ack_wait() == 300
    await second.close()
    longer = await transport.command_consumer(
        WorkerConfig(max_concurrent=10, ack_wait=timedelta(seconds=600)), [("a", "")]
    )
    assert await ack_wait() == 600
    await longer.close()

    await held[0].ack()
    # Nothing held, but a processor is pulling (its requests wait at the server): kept too.
    puller = await transport.command_consumer(
        WorkerConfig(max_concurrent=10, ack_wait=timedelta(seconds=600)), [("a", "")]
    )
    pulling = asyncio.create_task(puller.fetch(1, timeout=3.0))
    info = transport.js.consumer_info

    async def waiting() -> bool:
        return bool((await info(n.command_stream, name)).num_waiting)

    for _ in range(50):
        if await waiting():
            break
        await asyncio.sleep(0.05)
    assert await waiting()
    shorter = await transport.command_consumer(
        WorkerConfig(max_concurrent=10, ack_wait=timedelta(seconds=30)), [("a", "")]
    )
    assert await ack_wait() == 600
    await shorter.close()
    assert await pulling == []
    await puller.close()
    for _ in range(100):  # its last request expires at the server (at most a second)
        if not await waiting():
            break
        await asyncio.sleep(0.05)

    third = await transport.command_consumer(
        WorkerConfig(max_concurrent=10, ack_wait=timedelta(seconds=30)), [("a", "")]
    )
    assert await ack_wait() == 30
    await third.close()
