"""Pause, resume and cancel on a real 3-node cluster."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from typing import Any

import pytest

from durable_core import (
    AlreadyResolvedError,
    Client,
    ExpiredError,
    IllegalTransitionError,
    InvalidInputError,
    InvocationTimeoutError,
    NatsUnavailableError,
    NotFoundError,
    WorkflowFailedError,
)
from durable_core._pb.durable.v1 import durable_pb2 as pb
from durable_core._transport import Transport
from durable_core.testing import ChildProcess, ProcessStack, assert_eventually_async
from durable_examples.order.v1 import order_pb2
from order_processing.testing import OrderServiceControl

pytestmark = pytest.mark.integration

GREETING = "Hello, {}! Welcome to Durable Execution on NATS JetStream."

ORDER = {"order_id": "o-life", "amount_cents": 100}


async def test_pause_during_step_two_then_resume_runs_each_step_once(
    stack: ProcessStack,
    client: Client,
    status_of: Callable[[str], Awaitable[str]],
    wait_status: Callable[[str, str], Awaitable[None]],
) -> None:
    service = OrderServiceControl(stack.start_service().channel)
    service.set_delay("Charge", 2000)
    stack.start_processor("p-pause")
    inv = "pause-1"
    await client.invoke_async("order_processing", ORDER, id=inv)
    await assert_eventually_async(
        lambda: asyncio.to_thread(service.method_counts, "Charge"), 20, "step 2"
    )
    assert await client.pause(inv) == "running"  # the step in flight finishes first
    await wait_status(inv, "paused")
    assert service.method_counts("Charge") == {f"{inv}:2": 1}  # step 2 finished, journaled
    await asyncio.sleep(2)
    assert service.method_counts("Ship") == {}  # nothing past the boundary while paused
    assert await status_of(inv) == "paused"
    await client.resume(inv)
    result = await client.wait(inv, timeout=30)
    assert result.status == "completed"
    for method, step in (("Validate", 1), ("Charge", 2), ("Ship", 3)):
        assert service.method_counts(method) == {f"{inv}:{step}": 1}


async def test_pause_and_resume_through_the_cli_and_illegal_transitions(
    stack: ProcessStack,
    client: Client,
    status_of: Callable[[str], Awaitable[str]],
    wait_status: Callable[[str, str], Awaitable[None]],
) -> None:
    stack.start_service()
    stack.start_processor("p-cli")
    inv = "nap-life"
    # Long enough for the CLI (a fresh interpreter) to pause it before the timer is due, even
    # on a loaded machine (with 3 s, CI once saw the run complete first).
    delay, t0 = 10, time.monotonic()
    await client.invoke_async("delayed_greeting", {"name": "Nap", "delay_seconds": delay}, id=inv)
    await wait_status(inv, "suspended")
    with pytest.raises(IllegalTransitionError) as err:
        await client.resume(inv)  # suspended on a timer, not paused
    assert err.value.status == "suspended"
    cp = await asyncio.to_thread(stack.cli, "pause", inv)
    assert cp.returncode == 0 and "paused" in cp.stdout, cp.stdout + cp.stderr
    # The timer fires while paused: it stays paused.
    await asyncio.sleep(max(1.0, t0 + delay + 1 - time.monotonic()))
    assert await status_of(inv) == "paused"
    cp = await asyncio.to_thread(stack.cli, "resume", inv)
    assert cp.returncode == 0, cp.stderr
    result = await client.wait(inv, timeout=30)
    assert result.output["message"] == GREETING.format("Nap")
    cp = await asyncio.to_thread(stack.cli, "pause", inv)
    assert cp.returncode == 6 and "already completed" in cp.stderr


class _WakeLost:
    """The first wake-up fails as NATS out of reach would fail it (after the request was
    journaled); later ones go through."""

    def __init__(self, real: Callable[..., Awaitable[bool]]) -> None:
        self.real, self.failed = real, 0

    async def __call__(self, *args: Any, **kwargs: Any) -> bool:
        if not self.failed:
            self.failed += 1
            raise NatsUnavailableError(["nats://127.0.0.1:1"], "gone while waking it")
        return await self.real(*args, **kwargs)


async def test_a_resume_whose_wake_up_failed_is_finished_by_asking_again(
    stack: ProcessStack,
    client: Client,
    monkeypatch: pytest.MonkeyPatch,
    status_of: Callable[[str], Awaitable[str]],
) -> None:
    """A resume journals its request, then wakes the invocation. When the wake-up failed (NATS
    gone, or the caller killed in between), the invocation stayed paused for good: asking
    again was refused ("it is paused, not paused"), the journal no longer being paused."""
    stack.start_service()
    inv = "resume-lost"
    await client.invoke_async("hello_workflow", {"name": "Ada"}, id=inv, queue_unserved=True)
    assert await client.pause(inv) == "paused"  # pending: no processor is up
    stack.start_processor("p-resume-lost")
    await asyncio.sleep(1)
    assert await status_of(inv) == "paused"
    monkeypatch.setattr(client._t, "publish_wake", _WakeLost(client._t.publish_wake))
    with pytest.raises(NatsUnavailableError):
        await client.resume(inv)
    assert await status_of(inv) == "paused"  # the journal says resumed: nothing woke it
    await client.resume(inv)
    result = await client.wait(inv, timeout=30)
    assert result.status == "completed"


async def test_a_cancel_whose_wake_up_failed_is_finished_by_asking_again(
    stack: ProcessStack,
    client: Client,
    monkeypatch: pytest.MonkeyPatch,
    wait_status: Callable[[str, str], Awaitable[None]],
) -> None:
    """The same for a cancel of a sleeping invocation: asking again answered "suspended" and
    changed nothing, and it slept on until its timer."""
    stack.start_service()
    stack.start_processor("p-cancel-wake-lost")
    inv = "cancel-wake-lost"
    await client.invoke_async("delayed_greeting", {"delay_seconds": 600}, id=inv)
    await wait_status(inv, "suspended")
    monkeypatch.setattr(client._t, "publish_wake", _WakeLost(client._t.publish_wake))
    with pytest.raises(NatsUnavailableError):
        await client.cancel(inv)
    await client.cancel(inv)
    result = await client.wait(inv, timeout=20)
    assert result.status == "cancelled"


async def test_a_retry_whose_wake_up_failed_is_finished_by_asking_again(
    stack: ProcessStack, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A retry journals its request, moves the state to pending, then wakes the invocation.
    When the wake-up failed, it stayed pending with nothing to run it, and a retry was
    refused ("it is pending, not failed")."""
    stack.start_service()
    stack.start_processor("p-retry-lost")
    inv = "retry-lost"
    with pytest.raises(WorkflowFailedError):
        await client.invoke("flaky_order", {"failures": 2, "attempts": 2}, id=inv, timeout=30)
    monkeypatch.setattr(client._t, "publish_wake", _WakeLost(client._t.publish_wake))
    with pytest.raises(NatsUnavailableError):
        await client.retry(inv)
    assert await client.retry(inv) == "pending"
    result = await client.wait(inv, timeout=30)
    assert result.status == "completed"
    with pytest.raises(IllegalTransitionError):
        await client.retry(inv)  # completed now


async def test_a_retry_that_retention_overtakes_says_expired(
    stack: ProcessStack,
    client: Client,
    transport: Transport,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Retention removed a failed invocation between a retry's read and its state write (the
    janitor's delete is revision-checked against the same read, and came first): the retry
    answered "pending" for an invocation that was gone, with its request purged with its
    journal. It says expired now."""
    stack.start_service()
    stack.start_processor("p-retry-expired")
    inv = "retry-expired"
    with pytest.raises(WorkflowFailedError):
        await client.invoke("flaky_order", {"failures": 2, "attempts": 2}, id=inv, timeout=30)
    update = client._t.update_state

    async def retention_first(st: pb.ExecutionState, revision: int) -> int:
        rec = await transport.get_state(inv)
        assert rec is not None and rec.state.status == pb.STATUS_FAILED
        assert await transport.expire_execution(rec, int(time.time() * 1000), 60)
        return await update(st, revision)

    monkeypatch.setattr(client._t, "update_state", retention_first)
    with pytest.raises(ExpiredError):
        await client.retry(inv)


async def test_a_resolution_or_signal_whose_wake_up_failed_is_finished_by_sending_again(
    stack: ProcessStack,
    client: Client,
    transport: Transport,
    monkeypatch: pytest.MonkeyPatch,
    wait_status: Callable[[str, str], Awaitable[None]],
) -> None:
    """Resolving an awakeable again with the same value, after the first call's wake-up
    failed, was refused "already resolved" and the invocation slept on; a signal sent again
    was a second signal. The same resolution again, or a signal with its id again, now wakes
    the invocation once more and delivers nothing twice."""
    stack.start_service()
    stack.start_processor("p-awk-wake-lost")
    inv, sig = "awk-wake-lost", "sig-wake-lost"
    await client.invoke_async("expense_approval", {"expense_id": "e-9", "amount_cents": 9}, id=inv)
    await client.invoke_async("expense_by_signal", {}, id=sig)
    await wait_status(inv, "suspended")
    await wait_status(sig, "suspended")
    monkeypatch.setattr(client._t, "publish_wake", _WakeLost(client._t.publish_wake))
    with pytest.raises(NatsUnavailableError):
        await client.resolve_awakeable(f"awk.{inv}.1", {"approver": "ann"})
    # Resolved, and nothing woke it (so it cannot have finished): another value is refused.
    with pytest.raises(AlreadyResolvedError):
        await client.resolve_awakeable(f"awk.{inv}.1", {"approver": "bob"})
    await client.resolve_awakeable(f"awk.{inv}.1", {"approver": "ann"})
    result = await client.wait(inv, timeout=20)
    assert result.output["by"] == "ann"
    monkeypatch.setattr(client._t, "publish_wake", _WakeLost(client._t.publish_wake.real))
    with pytest.raises(NatsUnavailableError):
        await client.signal(sig, "approved", {"n": 1}, signal_id="s-1")
    await client.signal(sig, "approved", {"n": 1}, signal_id="s-1")
    result = await client.wait(sig, timeout=20)
    assert result.output == {"approved": True, "payload": {"n": 1}}
    records = await transport.read_journal(sig)
    assert [r.entry.kind for r in records].count(pb.ENTRY_KIND_SIGNAL) == 1  # delivered once


async def test_a_retried_invocation_takes_signals_and_its_childs_result(
    stack: ProcessStack,
    client: Client,
    transport: Transport,
    wait_status: Callable[[str, str], Awaitable[None]],
) -> None:
    """A retry leaves the FAILED entry in the journal (the replay forgets it). Signals were
    refused for good after a retry ("already finished"), and a child that ended after its
    parent failed had its result dropped, so the retried parent waited for it forever."""
    stack.start_service()
    stack.start_processor("p-retried-news")  # one: the flaky step counts its attempts here
    sig, parent = "retried-signal", "retried-parent"
    with pytest.raises(WorkflowFailedError):
        args = {"failures": 2, "attempts": 2, "then_signal": True}
        await client.invoke("flaky", args, id=sig, timeout=30)
    await client.retry(sig)
    await wait_status(sig, "suspended")  # the step succeeded; waits for the signal
    await client.signal(sig, "go", {"ok": 1})
    result = await client.wait(sig, timeout=20)
    assert result.output == {"succeeded_on_attempt": 3, "signal": {"ok": 1}}

    with pytest.raises(WorkflowFailedError):
        args = {"failures": 1, "attempts": 1, "child_delay_seconds": 2}
        await client.invoke("flaky", args, id=parent, timeout=30)

    async def reported() -> bool:
        records = await transport.read_journal(parent)
        return any(r.entry.kind == pb.ENTRY_KIND_CHILD_RESULT for r in records)

    # The child sleeps 2 s, then reports to its failed parent.
    await assert_eventually_async(reported, 20, "the child's result in the failed parent's journal")
    await client.retry(parent)
    result = await client.wait(parent, timeout=20)
    assert result.output == {"succeeded_on_attempt": 2, "child": GREETING.format("child")}


async def test_pause_racing_completion_leaves_it_completed(
    stack: ProcessStack,
    client: Client,
    transport: Transport,
    kinds: Callable[[str], Awaitable[list[str]]],
    status_of: Callable[[str], Awaitable[str]],
    diagnose: Callable[[Sequence[str]], Awaitable[str]],
) -> None:
    stack.start_service()
    stack.start_processor("p-race")
    outcomes = []
    for i in range(10):
        inv = f"race-{i}"
        await client.invoke_async("hello_workflow", {"name": "R"}, id=inv)
        await asyncio.sleep(0.005 * i)
        try:
            outcomes.append(await client.pause(inv))
        except IllegalTransitionError as e:
            assert e.status == "completed"
            outcomes.append("completed")
        status = await status_of(inv)
        if status in ("paused", "running", "pending"):
            try:
                await assert_eventually_async(
                    lambda inv=inv: _settled(status_of, inv),
                    20,
                    "the pause to take effect or the run to finish",
                )
            except AssertionError as e:
                raise AssertionError(f"{e}\n{await diagnose([inv])}") from e
            # Resume whenever the journal says paused, whatever the state shows now: a pause
            # that lands before any run is marked PAUSED by the client, then the start's run
            # takes the invocation (RUNNING) and suspends it as PAUSED; a second look at the
            # state in between saw "running", skipped the resume and waited for a paused
            # invocation to finish (the CI failure "race-0 still paused after 30 s").
            with contextlib.suppress(IllegalTransitionError):
                await client.resume(inv)  # refused when it is not paused (completed, say)
        try:
            result = await client.wait(inv, timeout=30)
        except InvocationTimeoutError as e:
            raise AssertionError(f"{e}\n{await diagnose([inv])}") from e
        assert result.status == "completed"
        with pytest.raises(IllegalTransitionError):
            await client.pause(inv)
        assert await status_of(inv) == "completed"  # never flipped back


async def _settled(status_of: Callable[[str], Awaitable[str]], inv: str) -> bool:
    return await status_of(inv) in ("paused", "completed")


async def _ship_in_flight(
    client: Client, service: OrderServiceControl, inv: str, args: dict[str, Any] = ORDER
) -> None:
    """Start ``cancellable_order`` and wait until its Ship call (made slow) is in flight."""
    await client.invoke_async("cancellable_order", args, id=inv)
    await assert_eventually_async(
        lambda: asyncio.to_thread(service.method_counts, "Ship"), 20, "Ship in flight"
    )


async def test_cancel_interrupts_a_slow_call_within_a_second(
    stack: ProcessStack,
    client: Client,
    transport: Transport,
    kinds: Callable[[str], Awaitable[list[str]]],
) -> None:
    service = OrderServiceControl(stack.start_service().channel)
    service.set_delay("Ship", 20_000)
    stack.start_processor("p-cancel")
    inv = "cancel-1"
    await _ship_in_flight(client, service, inv)
    started = time.monotonic()
    await client.cancel(inv)
    result = await client.wait(inv, timeout=10)
    elapsed = time.monotonic() - started
    assert result.status == "cancelled"
    assert elapsed < 1.0, elapsed
    cancelled = {
        c.method.rsplit("/", 1)[-1]: c.cancelled
        for c in (await asyncio.to_thread(_counts, service)).counts
    }
    assert cancelled.get("Ship") == 1  # the service saw the call cancelled
    assert [s.name for s in result.steps][-1] == "refund"  # the workflow compensated
    assert (await kinds(inv))[-1] == "CANCELLED"
    with pytest.raises(IllegalTransitionError) as err:
        await client.cancel(inv)
    assert err.value.status == "cancelled"
    with pytest.raises(IllegalTransitionError):
        await client.pause(inv)


async def test_cancel_interrupts_a_slow_call_after_a_signal_woke_the_invocation(
    stack: ProcessStack, client: Client
) -> None:
    """A signal to a run in flight publishes a wake, which the same processor takes while the
    run goes on. That wake's handling once took the run's place in the processor's table of
    runs to cancel, then removed itself: a cancel after it found no run and waited for the
    slow call to end (20 s) instead of interrupting it."""
    service = OrderServiceControl(stack.start_service().channel)
    service.set_delay("Ship", 20_000)
    processor = stack.start_processor("p-cancel-woken")
    inv = "cancel-woken"
    await _ship_in_flight(client, service, inv)
    await client.signal(inv, "nudge", {"n": 1})

    def wake_handled() -> bool:
        return "in progress under command" in processor.log()

    await assert_eventually_async(wake_handled, 10, "the signal's wake handled by the processor")
    started = time.monotonic()
    await client.cancel(inv)
    result = await client.wait(inv, timeout=15)
    assert result.status == "cancelled"
    assert time.monotonic() - started < 5.0  # not the 20 s of the call it interrupts
    assert [s.name for s in result.steps][-1] == "refund"


async def _no_control(invocation_id: str, action: str, *, wait: float = 0.0) -> bool:
    """A control message lost on the way (core NATS: its processor was reconnecting): no
    answer comes."""
    return False


async def _no_wake(*args: object, **kwargs: object) -> None:
    """A wake-up that reached no run of the invocation (taken by another processor)."""


async def test_cancel_interrupts_a_slow_call_when_its_control_message_is_lost(
    stack: ProcessStack, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cancel's control message is core NATS, lost while the running processor
    reconnects; its wake-up is stored. The processor that takes the wake-up finds the run in
    progress and the request in the journal, and asks the run to stop again. Without that the
    cancel waited for the slow call to end (20 s)."""
    service = OrderServiceControl(stack.start_service().channel)
    service.set_delay("Ship", 20_000)
    processor = stack.start_processor("p-cancel-lost")
    inv = "cancel-lost"
    await _ship_in_flight(client, service, inv)
    monkeypatch.setattr(client._t, "send_control", _no_control)
    started = time.monotonic()
    await client.cancel(inv)
    result = await client.wait(inv, timeout=15)
    assert result.status == "cancelled", processor.log()
    assert time.monotonic() - started < 5.0  # not the 20 s of the call it interrupts
    assert [s.name for s in result.steps][-1] == "refund"  # compensated, once
    assert [s.name for s in result.steps].count("refund") == 1


async def test_a_repeated_cancel_does_not_interrupt_the_compensation(
    stack: ProcessStack, client: Client, transport: Transport
) -> None:
    """A cancellation is delivered to the workflow once. The cancel's control message may
    come again (a wake-up that finds the run asks it to stop, see above), also to a later
    run that replays the delivered cancellation and compensates (here: after its processor
    was killed): that compensation must not be interrupted and run once more."""
    service = OrderServiceControl(stack.start_service().channel)
    service.set_delay("Ship", 20_000)
    service.set_delay("Validate", 4_000)
    quick = {"DURABLE_ACK_WAIT": "5", "DURABLE_LEASE_TTL": "3"}
    doomed = stack.start_processor("p-cancel-twice-1", **quick)
    inv = "cancel-twice"
    await _ship_in_flight(client, service, inv, {**ORDER, "validate_before_refund": True})
    await client.cancel(inv)
    await assert_eventually_async(
        lambda: asyncio.to_thread(service.method_counts, "Validate"), 10, "compensating"
    )
    doomed.kill()  # mid-compensation: the next run replays the cancellation and goes on
    await asyncio.to_thread(lambda: stack.start_processor("p-cancel-twice-2", **quick))

    def compensating_again() -> bool:
        return service.method_counts("Validate").get(f"{inv}:3") == 2

    await assert_eventually_async(compensating_again, 40, "the compensation resumed")
    await transport.send_control(inv, "cancel")  # the same request, once more
    result = await client.wait(inv, timeout=30)
    assert result.status == "cancelled"
    assert [s.name.rsplit("/", 1)[-1] for s in result.steps][-2:] == ["Validate", "refund"]
    assert service.method_counts("Validate") == {f"{inv}:3": 2}  # not a third time


class _Relay:
    """A TCP relay to one NATS node that can cut every connection through it."""

    def __init__(self, upstream: str) -> None:
        host, port = upstream.removeprefix("nats://").rsplit(":", 1)
        self._upstream = (host, int(port))
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._connected, "127.0.0.1", 0)
        return f"nats://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def _connected(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        ur, uw = await asyncio.open_connection(*self._upstream)
        self._writers |= {w, uw}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            for writer in (w, uw):
                writer.close()

        await asyncio.gather(pipe(r, uw), pipe(ur, w))

    def cut(self) -> None:
        for writer in list(self._writers):
            writer.close()
        self._writers.clear()

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()


async def test_cancel_reaches_a_slow_call_after_its_processor_reconnects(
    stack: ProcessStack, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both the control message and the wake-up of a cancel missed the running processor
    (the wake-up taken by another one while this one was away, say): once its connection to
    NATS is back, the processor reads the journals of its runs in flight and stops the one
    with a cancellation request."""
    service = OrderServiceControl(stack.start_service().channel)
    service.set_delay("Ship", 20_000)
    relay = _Relay(stack.nats_url.split(",")[0])
    url = await relay.start()
    try:
        processor = await asyncio.to_thread(  # the relay runs on this loop meanwhile
            lambda: stack.start_processor("p-cancel-away", DURABLE_NATS_URL=url)
        )
        inv = "cancel-away"
        await _ship_in_flight(client, service, inv)
        monkeypatch.setattr(client._t, "send_control", _no_control)

        monkeypatch.setattr(client._t, "publish_wake", _no_wake)
        await client.cancel(inv)
        await asyncio.sleep(1.0)
        assert not (await client.get_result(inv)).status.is_terminal  # nothing reached the run yet
        started = time.monotonic()
        relay.cut()
        await assert_eventually_async(
            lambda: "reconnected to NATS" in processor.log(), 10, "the processor reconnected"
        )
        result = await client.wait(inv, timeout=15)
        assert result.status == "cancelled", processor.log()
        assert time.monotonic() - started < 5.0  # not the 20 s of the call it interrupts
        assert [s.name for s in result.steps][-1] == "refund"
    finally:
        await relay.close()


def _counts(service: OrderServiceControl) -> order_pb2.GetCallCountsResponse:
    return service.stub.GetCallCounts(order_pb2.GetCallCountsRequest(), timeout=5)


async def test_a_cancel_answered_pending_runs_no_step(
    stack: ProcessStack, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancelled before any processor took it (the answer is "pending"): the start that comes
    later reads the journal before its first step and delivers the cancellation there. A
    start used to run fresh without reading the journal: it charged, and only the next step
    boundary saw the request (the chaos run's operators, seed 31002)."""
    service = OrderServiceControl(stack.start_service().channel)
    processor = stack.start_processor("p-cancel-pending")
    # The interrupt and the wake-up find no run (none has started yet): here they are
    # dropped outright, since the stopped processor would get them after its run began.
    monkeypatch.setattr(client._t, "send_control", _no_control)
    monkeypatch.setattr(client._t, "publish_wake", _no_wake)
    os.kill(processor.proc.pid, signal.SIGSTOP)  # its start command waits in the socket
    try:
        inv = "cancel-pending"
        await client.invoke_async("cancellable_order", ORDER, id=inv)
        assert await client.cancel(inv) == "pending"
    finally:
        os.kill(processor.proc.pid, signal.SIGCONT)  # takes the start: its first delivery
    result = await client.wait(inv, timeout=20)
    assert result.status == "cancelled"
    assert service.method_counts("Charge") == {}  # nothing ran after the cancel
    assert [(s.name.rsplit("/", 1)[-1], s.failure and s.failure.type) for s in result.steps] == [
        ("Charge", "InvocationCancelledError")
    ]


async def test_a_waited_invoke_is_found_by_status_and_cancel_before_any_processor_takes_it(
    stack: ProcessStack,
    client: Client,
    transport: Transport,
    abandoned_invokes: Callable[[str, object, Sequence[str]], Awaitable[None]],
) -> None:
    """A plain ``invoke`` stores only its start and leaves the state to the processor that
    takes it up. Until one did, ``durable status`` and ``cancel`` answered "not found": for 2 s
    while its caller waited, for good once the caller stopped waiting (a Ctrl-C'd
    ``durable invoke``) and no processor was up. They now find the queued start and create its
    state PENDING, as the waiting caller would have."""
    service = OrderServiceControl(stack.start_service().channel)
    ids = ("queued-status", "queued-cancel")
    await abandoned_invokes("cancellable_order", ORDER, ids)
    for inv in ids:
        assert await transport.get_state(inv) is None  # left to a processor: none is up

    cp = await asyncio.to_thread(stack.cli, "status", ids[0])
    assert cp.returncode == 0 and "pending" in cp.stdout, cp.stdout + cp.stderr
    assert await client.cancel(ids[1]) == "pending"

    stack.start_processor("p-queued")
    done, cancelled = [await client.wait(inv, timeout=30) for inv in ids]
    assert (done.status, cancelled.status) == ("completed", "cancelled")
    assert service.method_counts("Charge") == {f"{ids[0]}:1": 1}  # none for the cancelled one


async def test_a_signal_reaches_a_waited_invoke_before_any_processor_takes_it(
    stack: ProcessStack, client: Client, transport: Transport
) -> None:
    """A signal sent right after a plain ``invoke`` stored its start (no state yet: it is
    left to the processor) was refused "not found" until a processor or the waiting caller
    created the state; with no processor up, for as long as none came."""
    stack.start_service()
    inv = "queued-signal"
    waiter = asyncio.create_task(
        client.invoke("expense_by_signal", {}, id=inv, timeout=60, queue_unserved=True)
    )

    async def queued() -> bool:
        return await transport.queued_start(inv) is not None

    await assert_eventually_async(queued, 10, "the start queued")
    await client.signal(inv, "approved", {"by": "dana"})
    stack.start_processor("p-queued-signal")
    result = await waiter
    assert result.output == {"approved": True, "payload": {"by": "dana"}}


async def test_a_status_read_as_the_run_ends_finds_its_state_not_nothing(
    stack: ProcessStack, client: Client, transport: Transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A status of an invocation whose start was left to create its state read no state, then
    looked for the start in the command stream. A processor that took the start up between
    the two reads (created the state, ran it to its end, acked the start) left neither where
    the reads looked, and the answer was "not found" for an invocation that had completed."""
    stack.start_service()
    stack.start_processor("p-status-race")
    inv = "status-race"
    await client.invoke("hello_workflow", {"name": "Ada"}, id=inv, timeout=30)

    async def acked() -> bool:
        return await transport.queued_start(inv) is None

    await assert_eventually_async(acked, 10, "the start acknowledged")
    real_get_state = client._t.get_state
    reads: list[str] = []

    async def read_before_the_create(invocation_id: str) -> Any:
        # The first read was made before the processor created the state.
        reads.append(invocation_id)
        return None if len(reads) == 1 else await real_get_state(invocation_id)

    monkeypatch.setattr(client._t, "get_state", read_before_the_create)
    summary = await client.get_summary(inv)
    assert summary.status == "completed"
    assert reads == [inv, inv]


async def test_cancel_a_sleeping_workflow(
    stack: ProcessStack, client: Client, wait_status: Callable[[str, str], Awaitable[None]]
) -> None:
    stack.start_service()
    stack.start_processor("p-cancel-sleep")
    inv = "cancel-sleep"
    await client.invoke_async("delayed_greeting", {"delay_seconds": 600}, id=inv)
    await wait_status(inv, "suspended")
    assert await client.cancel(inv) in ("suspended", "cancelled", "running")
    result = await client.wait(inv, timeout=20)
    assert result.status == "cancelled"
    assert [s.kind for s in result.steps] == ["sleep"]


async def test_retry_runs_only_the_failed_step_and_after(
    stack: ProcessStack, client: Client
) -> None:
    service = OrderServiceControl(stack.start_service().channel)
    stack.start_processor("p-retry")
    inv = "retry-1"
    with pytest.raises(WorkflowFailedError) as err:
        await client.invoke("flaky_order", {"failures": 3, "attempts": 2}, id=inv, timeout=30)
    assert err.value.step == 2
    cp = await asyncio.to_thread(stack.cli, "list", "--status", "failed", "--json")
    assert cp.returncode == 0 and inv in [e["invocation_id"] for e in json.loads(cp.stdout)]
    with pytest.raises(IllegalTransitionError):
        await client.resume(inv)
    cp = await asyncio.to_thread(stack.cli, "retry", inv)
    assert cp.returncode == 0, cp.stderr
    result = await client.wait(inv, timeout=30)
    assert result.status == "completed"
    assert result.output["succeeded_on_attempt"] == 4  # attempts 1-2 failed, then 3 and 4
    assert service.method_counts("Validate") == {f"{inv}:1": 1}  # replayed, not re-run
    assert service.method_counts("Ship") == {f"{inv}:3": 1}
    with pytest.raises(IllegalTransitionError):
        await client.retry(inv)  # completed now


async def test_a_keyed_invocation_cancelled_pending_runs_no_step_once_its_key_is_free(
    stack: ProcessStack, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cancel of a pending invocation counts its request in the state's journal length, so
    that no start runs it without reading the journal. A keyed start that found its key held
    wrote the state "queued" with the journal length of a journal it had not read (0): the
    turn's start then ran its first step without reading it, after the cancel had been
    answered "pending"."""
    service = OrderServiceControl(stack.start_service().channel)
    service.set_delay("Charge", 3000)
    processor = stack.start_processor("p-keyed-cancel")
    key = "keyed-cancel"
    holder = await client.invoke_async(
        "cancellable_order", ORDER, id="kc-holder", partition_key=key
    )
    await assert_eventually_async(
        lambda: bool(service.method_counts("Charge")), 10, "the holder's charge in flight"
    )
    monkeypatch.setattr(client._t, "send_control", _no_control)
    monkeypatch.setattr(client._t, "publish_wake", _no_wake)
    os.kill(processor.proc.pid, signal.SIGSTOP)  # the queued start waits in the socket
    try:
        inv = "kc-queued"
        await client.invoke_async("cancellable_order", ORDER, id=inv, partition_key=key)
        assert await client.cancel(inv) == "pending"
    finally:
        os.kill(processor.proc.pid, signal.SIGCONT)  # queues it behind the holder
    assert (await client.wait(holder, timeout=30)).status == "completed"
    result = await client.wait(inv, timeout=30)
    assert result.status == "cancelled"
    assert f"{inv}:1" not in service.method_counts("Charge")  # nothing ran after the cancel


async def test_a_keyed_fork_waiting_for_its_key_replays_the_copied_steps(
    stack: ProcessStack, client: Client
) -> None:
    """A fork stores the source's steps and counts them in its state's journal length. Keyed,
    and queued behind the key's holder, its start wrote that length over with 0 (a journal it
    had not read), and its turn ran the copied steps again instead of replaying them."""
    service = OrderServiceControl(stack.start_service().channel)
    stack.start_processor("p-keyed-fork")
    key = "keyed-fork"
    await client.invoke("order_processing", ORDER, id="kf-src", partition_key=key, timeout=30)
    service.set_delay("Charge", 3000)
    holder = await client.invoke_async("order_processing", ORDER, id="kf-holder", partition_key=key)
    await assert_eventually_async(
        lambda: "kf-holder:2" in service.method_counts("Charge"), 10, "the holder's charge"
    )
    forked = await client.fork("kf-src", from_step=2)
    assert (await client.wait(holder, timeout=30)).status == "completed"
    result = await client.wait(forked, timeout=30)
    assert result.status == "completed"
    assert f"{forked}:1" not in service.method_counts("Validate")  # step 1 replayed, not re-run
    assert f"{forked}:2" in service.method_counts("Charge")


async def test_a_retried_step_backs_off_on_server_timers_again(
    stack: ProcessStack, client: Client
) -> None:
    """A retried invocation counts the failed step's attempts from 1 again, so its backoff
    arms the same server timers (same step, same attempt) as the first run did. Their
    schedules carried the timer's name as message id, and within the command stream's
    duplicate window (10 min) the new ones were dropped: the invocation slept for good."""
    stack.start_service()
    stack.start_processor("p-retry-timers")  # one: the flaky step counts its calls here
    inv = "retry-timers"
    # 2.5 s between attempts: past the 2 s waited in the processor, so on a server timer.
    args = {"failures": 4, "attempts": 3, "interval_ms": 2500, "backoff": 1.0, "jitter": 0}
    with pytest.raises(WorkflowFailedError):
        await client.invoke("flaky", args, id=inv, timeout=30)  # calls 1-3 fail
    await client.retry(inv)  # call 4 fails (attempt 1 again), call 5 succeeds
    result = await client.wait(inv, timeout=30)
    assert result.status == "completed"
    assert result.output == {"succeeded_on_attempt": 5}


async def test_a_retried_keyed_invocation_waits_for_its_keys_holder(
    stack: ProcessStack, client: Client
) -> None:
    """A keyed invocation that failed handed its key on. Its retry woke it with a wake-up,
    which takes no key: it ran beside the key's new holder."""
    service = OrderServiceControl(stack.start_service().channel)
    stack.start_processor("p-retry-key")
    key, inv = "retry-key", "retry-keyed"
    with pytest.raises(WorkflowFailedError):
        args = {"failures": 1, "attempts": 1}
        await client.invoke("flaky", args, id=inv, partition_key=key, timeout=30)
    service.set_delay("Charge", 3000)
    holder = await client.invoke_async(
        "order_processing", ORDER, id="retry-key-holder", partition_key=key
    )
    await assert_eventually_async(
        lambda: "retry-key-holder:2" in service.method_counts("Charge"), 10, "the holder's charge"
    )
    assert await client.retry(inv) == "pending"
    retried, held = await client.wait(inv, timeout=30), await client.wait(holder, timeout=30)
    assert (retried.status, held.status) == ("completed", "completed")
    assert held.updated_at is not None and retried.steps[-1].at >= held.updated_at


async def test_a_keyed_invocation_that_cannot_run_fails_and_hands_its_key_on(
    stack: ProcessStack,
    client: Client,
    transport: Transport,
    wait_status: Callable[[str, str], Awaitable[None]],
) -> None:
    """An invocation whose journal holds something that is no entry is failed at once (never
    run on a journal it cannot read). It kept its partition key, so the invocations behind it
    waited until another start of the key came."""
    stack.start_service()
    stack.start_processor("p-corrupt-key")
    key = "corrupt-key"
    broken = await client.invoke_async(
        "delayed_greeting", {"name": "A", "delay_seconds": 3}, partition_key=key
    )
    await wait_status(broken, "suspended")
    behind = await client.invoke_async("hello_workflow", {"name": "B"}, partition_key=key)
    await transport.js.publish(transport.names.journal_subject(broken), b"\xffnot an entry")
    # Its timer wakes it up; its journal cannot be read: it fails, and the key goes on.
    result = await client.wait(behind, timeout=30)
    assert result.status == "completed"
    assert (await client.get_summary(broken)).status == "failed"


async def test_fork_from_step_two_and_rerun(stack: ProcessStack, client: Client) -> None:
    service = OrderServiceControl(stack.start_service().channel)
    stack.start_processor("p-fork")
    source = await client.invoke("order_processing", ORDER, id="fork-src", timeout=30)
    fork = ("fork", "fork-src", "--from-step", "2", "--id", "fork-new")
    cp = await asyncio.to_thread(stack.cli, *fork)
    assert cp.returncode == 0, cp.stderr
    forked = cp.stdout.strip()
    assert forked == "fork-new"
    result = await client.wait(forked, timeout=30)
    again_cp = await asyncio.to_thread(stack.cli, *fork)  # the same fork, not a second one
    assert (again_cp.returncode, again_cp.stdout.strip()) == (0, "fork-new"), again_cp.stderr
    assert result.status == "completed"
    assert [s.step for s in result.steps] == [1, 2, 3]
    assert service.method_counts("Validate") == {"fork-src:1": 1}  # step 1 replayed from source
    assert service.method_counts("Charge")[f"{forked}:2"] == 1
    assert service.method_counts("Ship")[f"{forked}:3"] == 1
    rerun = await client.rerun("fork-src")
    again = await client.wait(rerun, timeout=30)
    assert again.output["order_id"] == source.output["order_id"]
    assert f"{rerun}:1" in service.method_counts("Validate")  # a fresh run: every step
    with pytest.raises(InvalidInputError):
        await client.fork("fork-src", from_step=9)


async def test_execution_timeout_fails_a_sleeping_and_a_busy_invocation(
    stack: ProcessStack, client: Client
) -> None:
    service = OrderServiceControl(stack.start_service().channel)
    service.set_delay("Charge", 10_000)
    stack.start_processor("p-timeout")
    started = time.monotonic()
    sleeper = await client.invoke_async(
        "delayed_greeting", {"delay_seconds": 600}, execution_timeout=timedelta(seconds=3)
    )
    busy = await client.invoke_async(
        "order_processing", ORDER, execution_timeout=timedelta(seconds=2)
    )
    for inv in (sleeper, busy):
        result = await client.wait(inv, timeout=30)
        assert result.status == "failed"
        assert result.failure is not None and result.failure.type == "ExecutionTimeoutError"
    assert time.monotonic() - started < 8  # failed at the deadline, not at the sleep's end


async def test_a_processor_killed_mid_step_is_redriven_by_the_scheduler_not_ack_wait(
    stack: ProcessStack,
    client: Client,
    status_of: Callable[[str], Awaitable[str]],
    start_scheduler: Callable[..., tuple[ChildProcess, int]],
    metric: Callable[..., float],
) -> None:
    service = OrderServiceControl(stack.start_service().channel)
    service.set_delay("Charge", 3000)
    slow = {"durable_ack_wait": "300", "durable_lease_ttl": "3"}  # ack_wait alone: 5 min
    doomed = stack.start_processor("p-doomed", **slow)
    inv = "redrive-1"
    await client.invoke_async("order_processing", ORDER, id=inv)
    await assert_eventually_async(
        lambda: asyncio.to_thread(service.method_counts, "Charge"), 20, "step 2"
    )
    await asyncio.sleep(1)  # well inside the 3 s call
    doomed.kill()  # SIGKILL mid-step: its lease stops being renewed
    stack.start_processor("p-heir", **slow)
    await asyncio.sleep(6)  # twice the lease TTL: nothing but the scheduler can move it now
    assert await status_of(inv) == "running"

    killed_at = time.monotonic()
    _, port = start_scheduler("scheduler-redrive")
    result = await client.wait(inv, timeout=30)
    took = time.monotonic() - killed_at
    assert result.status == "completed"
    assert took < 20, f"re-driven after {took:.1f}s"  # lease TTL + a sweep + the rest of the run
    assert service.method_counts("Validate") == {f"{inv}:1": 1}  # journaled: not run again
    assert set(service.method_counts("Charge")) == {f"{inv}:2"}  # same key on the retry
    assert metric(port, "durable_scheduler_commands_redriven_total") >= 1


async def test_a_run_whose_command_was_lost_is_rescued_by_the_scheduler(
    stack: ProcessStack,
    client: Client,
    transport: Transport,
    start_scheduler: Callable[..., tuple[ChildProcess, int]],
    metric: Callable[..., float],
) -> None:
    """Issue 14: an invocation stayed RUNNING under a command that was never delivered again
    (soak 2, under faults). Reproduced by removing the command from the stream while its
    processor is dead: no redelivery, no re-drive can move it; every other command of it
    would stand aside. The scheduler's stranded-run sweep rescues it with a wake-up that
    supersedes the lost command, and it completes. Before the sweep it stayed RUNNING."""
    service = OrderServiceControl(stack.start_service().channel)
    service.set_delay("Charge", 3000)
    fast = {"durable_lease_ttl": "3"}
    doomed = stack.start_processor("p-lost", **fast)
    inv = "lost-1"
    await client.invoke_async("order_processing", ORDER, id=inv)
    await assert_eventually_async(
        lambda: asyncio.to_thread(service.method_counts, "Charge"), 20, "step 2"
    )
    doomed.kill()
    rec = await transport.get_state(inv)
    assert rec is not None and rec.state.status == pb.STATUS_RUNNING
    lost = rec.state.run_command_seq
    await transport.js.delete_msg(transport.names.command_stream, lost)  # the lost command
    stack.start_processor("p-after", **fast)
    _, port = start_scheduler(
        "scheduler-stranded", durable_stranded_sweep="1", durable_stranded_after="2"
    )
    result = await client.wait(inv, timeout=60)
    assert result.status == "completed"
    assert service.method_counts("Validate") == {f"{inv}:1": 1}  # journaled: not run again
    assert metric(port, "durable_scheduler_runs_rescued_total") >= 1
    claims = [
        r.entry.command_seq
        for r in await transport.read_journal(inv, current=True)
        if r.entry.kind == pb.ENTRY_KIND_CLAIM
    ]
    assert claims and claims[-1] != lost  # the rescue's command took the run over


async def test_backoff_intervals_are_kept_across_a_suspension_and_non_retryable_fails_at_once(
    stack: ProcessStack, client: Client
) -> None:
    stack.start_service()
    stack.start_processor("p-retry")
    # Two failures, then waits of 2.5 s and 2.5 * 1.6 = 4 s (each ± 10 %), both over the 2 s
    # that a step waits in-process: the invocation suspends on a server-side timer each time.
    # The third attempt succeeds.
    args = {"failures": 2, "attempts": 3, "interval_ms": 2500, "backoff": 1.6, "jitter": 0.1}
    result = await client.invoke("flaky", args, id="backoff-1", timeout=60)
    assert result.status == "completed" and result.output == {"succeeded_on_attempt": 3}
    (step,) = result.steps
    assert step.attempts == 3
    assert [f.message for f in step.attempt_errors] == [
        "transient failure 1 of 2",
        "transient failure 2 of 2",
    ]
    records = await client._t.read_journal("backoff-1", current=True)
    failed = [r.entry for r in records if r.entry.kind == pb.ENTRY_KIND_ATTEMPT_FAILED]
    done = next(r.entry for r in records if r.entry.kind == pb.ENTRY_KIND_RUN)
    ends = [e.timestamp_ms for e in failed] + [done.timestamp_ms]
    observed = [(b - a) / 1000 for a, b in zip(ends, ends[1:], strict=False)]
    for got, planned, e in zip(observed, (2.5, 4.0), failed, strict=True):
        assert planned * 0.9 - 0.05 <= (e.wake_at_ms - e.timestamp_ms) / 1000 <= planned * 1.1
        assert planned * 0.9 - 0.05 <= got <= planned * 1.1 + 1.0, observed  # ± jitter, + wake
    # Both waits were long enough to suspend: the invocation held no slot meanwhile.
    assert sum(r.entry.kind == pb.ENTRY_KIND_SUSPENDED for r in records) == 2

    started = time.monotonic()
    with pytest.raises(WorkflowFailedError) as err:
        await client.invoke("flaky", {"fatal": True, "interval_ms": 5000}, id="fatal-1", timeout=30)
    assert time.monotonic() - started < 3  # no 5 s backoff: PermissionError is non-retryable
    assert "refused on attempt 1" in str(err.value)
    failed_result = await client.get_result("fatal-1")
    assert [s.attempts for s in failed_result.steps] == [1]


async def test_finished_executions_expire_after_the_retention_period(
    stack: ProcessStack,
    client: Client,
    transport: Transport,
    status_of: Callable[[str], Awaitable[str]],
    wait_status: Callable[[str, str], Awaitable[None]],
    start_scheduler: Callable[..., tuple[ChildProcess, int]],
    metric: Callable[..., float],
) -> None:
    stack.start_service()
    stack.start_processor("p-retention")
    await client.invoke_async("delayed_greeting", {"name": "Old", "delay_seconds": 60}, id="nap")
    result = await client.invoke("hello_workflow", {"name": "Ada"}, id="exp-1", timeout=30)
    assert result.output == {"message": GREETING.format("Ada")}
    await wait_status("nap", "suspended")
    _, port = start_scheduler(
        "scheduler-retention",
        durable_retention="3",
        durable_retention_sweep="0.5",
        durable_expired_note_ttl="60",
    )

    async def expired() -> bool:
        try:
            await client.get_result("exp-1")
        except ExpiredError:
            return True
        return False

    await assert_eventually_async(expired, 20, "exp-1 to expire")
    with pytest.raises(ExpiredError) as err:
        await client.get_result("exp-1")
    assert err.value.status == "completed" and "has expired" in str(err.value)

    # The journal goes right after the state (expire_execution: the state, then the journal).
    async def journal_gone() -> bool:
        return await transport.read_journal("exp-1") == []

    await assert_eventually_async(journal_gone, 10, "exp-1's journal to be purged")
    cp = await asyncio.to_thread(stack.cli, "status", "exp-1")
    assert cp.returncode == 4 and "has expired" in cp.stderr, (cp.returncode, cp.stderr)
    with pytest.raises(NotFoundError) as never:
        await client.get_result("never-was")
    assert not isinstance(never.value, ExpiredError)
    # A suspended invocation is not finished: however old, it stays.
    assert await status_of("nap") == "suspended"
    assert metric(port, "durable_scheduler_executions_expired_total") >= 1


async def test_an_expired_executions_note_goes_after_its_ttl(
    stack: ProcessStack,
    client: Client,
    transport: Transport,
    start_scheduler: Callable[..., tuple[ChildProcess, int]],
) -> None:
    """The state bucket keeps no marker per invocation ever run (the soak's finding): the
    "expired" note carries a TTL, and after it the id is unknown and its subject empty."""
    stack.start_service()
    stack.start_processor("p-note")
    await client.invoke("hello_workflow", {"name": "Ada"}, id="note-1", timeout=30)
    start_scheduler(
        "scheduler-note",
        durable_retention="2",
        durable_retention_sweep="0.5",
        durable_expired_note_ttl="2",
    )

    async def expired_then_forgotten() -> bool:
        try:
            await client.get_result("note-1")
        except ExpiredError:
            return False
        except NotFoundError:
            return True
        return False

    await assert_eventually_async(expired_then_forgotten, 30, "note-1's expiry note to go")
    assert await transport.expiry_note("note-1") is None
    # Nothing at all is left on the key's subject (a marker would count as one message).
    assert "note-1" not in await transport.state_ids()


async def test_pause_and_cancel_reach_a_run_that_journals_without_a_break(
    stack: ProcessStack, client: Client, transport: Transport
) -> None:
    """A request from outside is appended fenced by the journal's last sequence, and read
    again on a conflict. Read whole each time, with its machine rebuilt, against a run that
    journals steps back to back (``many_steps``), it never got in: the pause or cancel
    blocked until the run had finished, then said "already completed" (an operator could
    not stop a runaway loop). Each round now reads only what is newer."""
    stack.start_service()
    stack.start_processor("p-busy")
    for inv, verb in (("busy-pause", client.pause), ("busy-cancel", client.cancel)):
        await client.invoke_async("many_steps", {"steps": 30_000}, id=inv)
        await assert_eventually_async(
            lambda inv=inv: _journaled(transport, inv, 500), 30, f"{inv} under way"
        )
        started = time.monotonic()
        await asyncio.wait_for(verb(inv), 20)
        took = time.monotonic() - started
        assert took < 5, f"{verb.__name__} of {inv} took {took:.1f} s"
        view = await client.describe(inv)
        assert view.status in ("running", "paused", "cancelled"), view.status
        done = len(view.steps)
        assert done < 30_000
        want = "paused" if verb == client.pause else "cancelled"
        await assert_eventually_async(
            lambda inv=inv, want=want: _status_is(client, inv, want), 20, f"{inv} {want}"
        )
        assert len((await client.describe(inv)).steps) <= done + 2  # stopped at a boundary
    await client.cancel("busy-pause")


async def _journaled(t: Transport, inv: str, at_least: int) -> bool:
    return len(await t.read_journal(inv)) >= at_least


async def _status_is(client: Client, inv: str, status: str) -> bool:
    return bool((await client.describe(inv)).status == status)
