"""Issue 14: no processor ever runs two copies of one invocation, whatever the delays.

A black-box crash run (three processors, ack-wait 5 s, NATS nodes killed and restarted) saw a
LIVE processor run the same invocation twice at once: both runs called step 1 about 50 ms
apart, 3.5 s after a NATS node had come back. The first state read of the invocation had
retried on transient timeouts for ~10 s; in-progress acks only started after that read, so
JetStream redelivered the command (to the same processor) meanwhile; when NATS answered
again, the first delivery saw PENDING and ran as a fresh start, the redelivery took the
invocation over with a CLAIM and ran it too. The CLAIM kept the journal right, but the service
saw the step twice.

Each test here injects a delay longer than ack-wait into one NATS answer on the path before
the first step (the state read, the partition key's record, the journal read) and counts how
often each step's side effect ran.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import nats.js.errors
import pytest

from durable_core import (
    Client,
    Context,
    EngineConfig,
    NatsUnavailableError,
    Worker,
    WorkerConfig,
)
from durable_core._pb.durable.v1 import durable_pb2 as pb
from durable_core._transport import StateRecord, Transport
from durable_core.config import NatsConfig
from durable_core.plugins import WorkflowRegistry
from durable_core.testing import NatsServer, ProcessStack, assert_eventually_async
from durable_scheduler.redrive import Redriver
from order_processing.testing import OrderServiceControl

pytestmark = pytest.mark.integration

ACK_WAIT = timedelta(seconds=2)


@pytest.fixture(scope="module")
def server() -> Iterator[NatsServer]:
    with NatsServer() as s:
        yield s


@contextlib.asynccontextmanager
async def _workers_and_client(
    server: NatsServer,
    transport_cls: type[Transport],
    workflow: Callable[..., Any],
    *,
    workers: int = 1,
    heartbeat: timedelta | None = None,
) -> AsyncIterator[Client]:
    """``workers`` in-process processors for ``workflow`` on ``transport_cls``, and a client."""
    engine = EngineConfig(prefix="ex" + uuid.uuid4().hex[:8])
    registry = WorkflowRegistry()
    registry.register(workflow)
    config = WorkerConfig(ack_wait=ACK_WAIT, heartbeat=heartbeat, max_concurrent=8)
    transports = [
        await transport_cls.connect(NatsConfig.from_url(server.url), engine, create=True)
        for _ in range(workers)
    ]
    running = [Worker(t, registry, config) for t in transports]
    tasks = [asyncio.create_task(w.run()) for w in running]
    for w in running:  # registered: intake accepts the workflow
        await asyncio.wait_for(w.consuming.wait(), 20)
    client = await Client.connect(server.url, engine=engine)
    try:
        yield client
    finally:
        await client.close()
        for w in running:
            w.stop()
        await asyncio.gather(*tasks)
        for t in transports:
            await t.close()


async def _settled(client: Client, timeout: float = 20) -> None:
    """Until the processors' consumer holds nothing (every command acked)."""
    t = client._t

    async def settled() -> bool:
        pending, ack_pending, _ = await t.consumer_stats("processor")
        return not (ack_pending or pending)

    await assert_eventually_async(settled, timeout, "every command settled", interval=0.05)


def _counting_workflow(calls: dict[str, int]) -> Callable[..., Any]:
    async def two_steps(ctx: Context) -> str:
        async def step(name: str) -> str:
            calls[name] = calls.get(name, 0) + 1
            return name

        a = await ctx.run("a", step, "a")
        b = await ctx.run("b", step, "b")
        return a + b

    return two_steps


class _NatsBackLate(Transport):
    """Every state read of the invocation is answered only once NATS is "back": at a fixed
    time, longer than ack-wait after the first read. The read itself is done at once, so the
    answers are as stale as they would be (PENDING)."""

    back_at = 0.0

    async def get_state(self, invocation_id: str) -> StateRecord | None:
        rec = await super().get_state(invocation_id)
        cls = type(self)
        if not cls.back_at:
            cls.back_at = time.monotonic() + ACK_WAIT.total_seconds() * 1.5
        await asyncio.sleep(max(cls.back_at - time.monotonic(), 0))
        return rec


@pytest.mark.parametrize(
    "heartbeat", [None, timedelta(0)], ids=["heartbeats", "no-heartbeats-redelivered"]
)
async def test_a_first_state_read_slower_than_ack_wait_runs_the_invocation_once(
    server: NatsServer, heartbeat: timedelta | None
) -> None:
    calls: dict[str, int] = {}
    transport_cls = type("BackLate", (_NatsBackLate,), {"back_at": 0.0})
    async with _workers_and_client(
        server, transport_cls, _counting_workflow(calls), heartbeat=heartbeat
    ) as client:
        inv = await client.invoke_async("two_steps")
        result = await client.wait(inv, timeout=30)
        await _settled(client)
    assert result.status == "completed" and result.output == "ab"
    assert calls == {"a": 1, "b": 1}, f"a step ran more than once: {calls}"


class _SlowFirst(Transport):
    """The first call of ``method`` after ``armed`` is set is answered ``delay`` seconds late
    (the call itself is made at once: its answer is as stale as a slow one would be)."""

    method = ""
    delay = 0.0
    armed = True
    delayed = 0

    def __getattribute__(self, name: str) -> Any:
        attr = super().__getattribute__(name)
        cls = type(self)
        if name != cls.method or not callable(attr):
            return attr

        async def slow(*args: Any, **kwargs: Any) -> Any:
            result = await attr(*args, **kwargs)
            if cls.armed and not cls.delayed:
                cls.delayed += 1
                await asyncio.sleep(cls.delay)
            return result

        return slow


def _slow(method: str, *, armed: bool = True) -> type[_SlowFirst]:
    attrs = {"method": method, "delay": ACK_WAIT.total_seconds() * 1.5, "armed": armed}
    return type(f"Slow_{method}", (_SlowFirst,), attrs)


@pytest.mark.parametrize("heartbeat", [None, timedelta(0)], ids=["heartbeats", "no-heartbeats"])
@pytest.mark.parametrize(
    "method",
    # Every NATS answer a keyed start waits for before and around its first step: the
    # state, the key's record and queue, taking the key, moving the state to RUNNING, the
    # first step's append.
    ["get_state", "key_record", "queued_commands", "put_key_record", "update_state", "append"],
)
async def test_a_slow_nats_answer_on_the_way_to_the_first_step_runs_each_step_once(
    server: NatsServer, heartbeat: timedelta | None, method: str
) -> None:
    calls: dict[str, int] = {}
    transport_cls = _slow(method)
    async with _workers_and_client(
        server, transport_cls, _counting_workflow(calls), workers=2, heartbeat=heartbeat
    ) as client:
        inv = await client.invoke_async("two_steps", partition_key="k1")
        result = await client.wait(inv, timeout=30)
        await _settled(client)
    assert transport_cls.delayed == 1
    assert result.status == "completed"
    assert calls == {"a": 1, "b": 1}, f"a step ran more than once: {calls}"


@pytest.mark.parametrize("heartbeat", [None, timedelta(0)], ids=["heartbeats", "no-heartbeats"])
async def test_a_slow_journal_read_of_a_wake_up_runs_the_rest_once(
    server: NatsServer, heartbeat: timedelta | None
) -> None:
    calls: dict[str, int] = {}

    async def waits_for_go(ctx: Context) -> str:
        async def step(name: str) -> str:
            calls[name] = calls.get(name, 0) + 1
            return name

        a = await ctx.run("a", step, "a")
        go = await ctx.wait_for_signal("go")
        b = await ctx.run("b", step, "b")
        return a + go + b

    transport_cls = _slow("read_journal", armed=False)
    async with _workers_and_client(
        server, transport_cls, waits_for_go, workers=2, heartbeat=heartbeat
    ) as client:
        inv = await client.invoke_async("waits_for_go")
        await assert_eventually_async(
            lambda: _status_is(client, inv, "suspended"), 20, f"{inv} suspended", interval=0.05
        )
        transport_cls.armed = True  # the wake-up's read of the journal is the slow one
        await client.signal(inv, "go", "-")
        result = await client.wait(inv, timeout=30)
        await _settled(client)
    assert transport_cls.delayed == 1
    assert result.status == "completed" and result.output == "a-b"
    assert calls == {"a": 1, "b": 1}, f"a step ran more than once: {calls}"


def _gated_workflow(
    calls: dict[str, int], gate: asyncio.Event, in_a: asyncio.Event, b_seconds: float = 0.0
) -> Any:
    """Step a waits for ``gate`` (so a test can act while it is in flight), then b, which
    takes ``b_seconds``."""

    async def gated(ctx: Context) -> str:
        async def step(name: str) -> str:
            calls[name] = calls.get(name, 0) + 1
            if name == "a":
                in_a.set()
                await gate.wait()
            else:
                await asyncio.sleep(b_seconds)
            return name

        a = await ctx.run("a", step, "a")
        b = await ctx.run("b", step, "b")
        return a + b

    return gated


async def _status_is(client: Client, inv: str, status: str) -> bool:
    return (await client.get_result(inv)).status.value == status


async def _only_one_command_held(client: Client, timeout: float) -> None:
    """Poll until the consumer holds just the running start (the other command was handled),
    for at most ``timeout`` seconds: not an assertion, the caller's assertions tell what ran."""
    t = client._t

    async def one_held() -> bool:
        pending, ack_pending, _ = await t.consumer_stats("processor")
        return ack_pending == 1 and not pending

    with contextlib.suppress(AssertionError):
        await assert_eventually_async(one_held, timeout, "one command held", interval=0.05)
    return False


async def _signal(client: Client, inv: str) -> None:
    await client.signal(inv, "unrelated", "x")


async def _start_again(client: Client, inv: str) -> None:
    # The same start once more, as a client whose submit outlived the duplicate window, or a
    # partition key's turn, would publish it.
    await client._t.publish_command(
        pb.Command(invocation_id=inv, workflow="gated", kind=pb.COMMAND_KIND_START),
        msg_id=f"start-again:{inv}",
    )


@pytest.mark.parametrize("intruder", [_signal, _start_again], ids=["signal", "second-start"])
async def test_another_command_during_the_first_step_does_not_start_a_second_run(
    server: NatsServer, intruder: Callable[[Client, str], Any]
) -> None:
    calls: dict[str, int] = {}
    gate, in_a = asyncio.Event(), asyncio.Event()
    async with _workers_and_client(
        server, Transport, _gated_workflow(calls, gate, in_a), workers=2
    ) as client:
        inv = await client.invoke_async("gated")
        await asyncio.wait_for(in_a.wait(), 10)
        # Nothing is journaled yet: the other command must not take the invocation.
        await intruder(client, inv)
        await _only_one_command_held(client, timeout=5)
        gate.set()
        result = await client.wait(inv, timeout=20)
        await _settled(client)
    assert result.status == "completed"
    assert calls == {"a": 1, "b": 1}, f"a step ran more than once: {calls}"


class _FirstWakeReadFails(Transport):
    """Once armed, the first state read (a wake-up's) fails as NATS being away does: the
    wake-up is handed back (NAK) and comes again as a redelivery."""

    armed = False
    failed = 0

    async def get_state(self, invocation_id: str) -> StateRecord | None:
        cls = type(self)
        if cls.armed and not cls.failed:
            cls.failed += 1
            raise NatsUnavailableError(("nats://test",), "injected")
        return await super().get_state(invocation_id)


async def test_a_redelivered_wake_up_does_not_take_over_a_live_run_of_another_command(
    server: NatsServer,
) -> None:
    calls: dict[str, int] = {}
    gate, in_b = asyncio.Event(), asyncio.Event()

    async def gated_b(ctx: Context) -> str:
        async def step(name: str) -> str:
            calls[name] = calls.get(name, 0) + 1
            if name == "b":
                in_b.set()
                await gate.wait()
            return name

        a = await ctx.run("a", step, "a")
        b = await ctx.run("b", step, "b")
        return a + b

    transport_cls = type("FirstWakeReadFails", (_FirstWakeReadFails,), {})
    async with _workers_and_client(server, transport_cls, gated_b, workers=2) as client:
        t = client._t
        inv = await client.invoke_async("gated_b")
        await asyncio.wait_for(in_b.wait(), 10)  # step a is journaled, b in flight
        transport_cls.armed = True
        await t.publish_wake(inv, "gated_b", inv, 1)
        await assert_eventually_async(
            lambda: transport_cls.failed, 10, "the wake-up to be read", interval=0.05
        )
        await _only_one_command_held(client, timeout=10)  # its redelivery was handled
        gate.set()
        result = await client.wait(inv, timeout=20)
        await _settled(client)
    assert result.status == "completed"
    assert calls == {"a": 1, "b": 1}, f"a step ran more than once: {calls}"


class _StallsRenewals(Transport):
    """Once armed, every lease renewal hangs for a while (NATS not taking this processor's
    writes): its lease lapses and the re-drive hands its command to another processor."""

    armed = False

    async def renew_lease(self, name: str, data: bytes, revision: int) -> int:
        if type(self).armed:
            await asyncio.sleep(6.0)
        return await super().renew_lease(name, data, revision)

    async def put_lease(self, name: str, data: bytes) -> int:  # the renewal before issue 14
        if type(self).armed:
            await asyncio.sleep(6.0)
        return await super().put_lease(name, data)  # type: ignore[misc]


async def _lease(t: Transport, name: str) -> dict[str, Any] | None:
    kv = await t.leases_kv()
    try:
        entry = await kv.get(name)
    except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
        return None
    return dict(json.loads(entry.value or b"{}"))


async def test_a_processor_whose_lease_lapsed_runs_no_further_step(server: NatsServer) -> None:
    calls: dict[str, int] = {}
    gate, in_a = asyncio.Event(), asyncio.Event()
    workflow = _gated_workflow(calls, gate, in_a, b_seconds=3.0)
    engine = EngineConfig(prefix="ex" + uuid.uuid4().hex[:8])
    registry = WorkflowRegistry()
    registry.register(workflow)
    nats = NatsConfig.from_url(server.url)
    config = WorkerConfig(
        ack_wait=timedelta(seconds=20), lease_ttl=timedelta(seconds=2), max_concurrent=1
    )
    stalling = type("Stalls", (_StallsRenewals,), {"armed": False})
    slow_read = _slow("read_journal")  # the new holder takes a while to claim
    t_a = await stalling.connect(nats, engine, create=True)
    t_b = await slow_read.connect(nats, engine, create=True)
    t_s = await Transport.connect(nats, engine)
    a = Worker(t_a, registry, config)
    b = Worker(t_b, registry, config)
    redriver = Redriver(t_s, check_every=0.2)
    tasks = [asyncio.create_task(a.run()), asyncio.create_task(redriver.run())]
    await asyncio.wait_for(a.consuming.wait(), 20)
    client = await Client.connect(server.url, engine=engine)
    try:
        inv = await client.invoke_async("gated")
        await asyncio.wait_for(in_a.wait(), 10)
        lapsed_lease = a.lease_name

        async def listed() -> bool:
            return bool(((await _lease(t_s, lapsed_lease)) or {}).get("held"))

        await assert_eventually_async(listed, 10, "the lease to list the command", interval=0.05)
        stalling.armed = True
        tasks.append(asyncio.create_task(b.run()))

        async def redriven() -> bool:
            return await _lease(t_s, lapsed_lease) is None

        await assert_eventually_async(redriven, 15, "the lease to be re-driven", interval=0.05)
        gate.set()  # step a ends now; its processor must not start step b
        result = await client.wait(inv, timeout=30)
        await _settled(client)
    finally:
        await client.close()
        a.stop()
        b.stop()
        redriver.stop()
        await asyncio.gather(*tasks)
        for t in (t_a, t_b, t_s):
            await t.close()
    assert result.status == "completed"
    assert calls["b"] == 1, f"step b ran {calls['b']} times"
    assert calls["a"] <= 2  # in flight while its processor was presumed dead: may run again


@pytest.mark.slow
async def test_a_stale_re_drive_does_not_give_a_live_run_to_a_second_processor(
    server: NatsServer, tmp_path: Path
) -> None:
    """The second shape of the black-box run: two live processors each called step 2 of the
    same invocations 70-85 ms apart. A processor died holding a command; JetStream redelivered
    it after ack-wait (5 s) to a live one; when the dead one's lease lapsed (15 s) the
    scheduler NAKed what that lease listed, and the NAK, sent on the earlier delivery's
    subject, took the command from the live holder and gave it to another processor, which
    took the invocation over while the first still ran it."""
    stack = ProcessStack(server.url, "ex" + uuid.uuid4().hex[:8], tmp_path, replicas=1)
    fast = ("--ack-wait", "2")
    lease = {"durable_lease_ttl": "6"}
    try:
        service = OrderServiceControl(stack.start_service().channel)
        for method in ("Validate", "Charge", "Ship"):
            service.set_delay(method, 2000)
        service.set_delay("Validate", 20_000)  # still in step 1 when it is killed
        doomed = stack.start_processor("p-doomed", *fast, "--max-concurrent", "1", **lease)
        client = await Client.connect(server.url, engine=EngineConfig(prefix=stack.prefix))
        try:
            inv = "order-stale-nak-1"
            await client.invoke_async(
                "order_processing", {"order_id": "o-1", "amount_cents": 100}, id=inv
            )
            await assert_eventually_async(
                lambda: asyncio.to_thread(service.method_counts, "Validate"),
                20,
                "step 1",
                interval=0.05,
            )
            for name in ("p-one", "p-two"):
                stack.start_processor(name, *fast, **lease)
            stack.start_scheduler(durable_ack_wait="3")
            service.set_delay("Validate", 2000)
            doomed.kill()  # in step 1: its command goes to p-one or p-two after ack-wait
            result = await client.wait(inv, timeout=60)
        finally:
            await client.close()
        counts = {m: sum(service.method_counts(m).values()) for m in ("Validate", "Charge", "Ship")}
        logs = "\n".join(p.log()[-3000:] for p in stack.procs[1:])
    finally:
        stack.stop()
    assert result.status == "completed", logs
    assert counts["Charge"] == 1 and counts["Ship"] == 1, f"{counts}\n{logs}"
    assert counts["Validate"] <= 2  # in flight when its processor died: may run again
