"""The durable context's primitives on a real 3-node cluster: timers, awakeables, signals,
state, child and delayed invocations, typed I/O and per-key ordering."""

from __future__ import annotations

import asyncio
import json
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from durable_core import (
    AlreadyResolvedError,
    Client,
    InvalidInputError,
    InvocationFinishedError,
    NotFoundError,
    WorkflowFailedError,
)
from durable_core._transport import Transport
from durable_core.testing import ProcessStack, assert_eventually_async
from expense_approval import Decision, expense_approval
from order_processing.testing import OrderServiceControl

pytestmark = pytest.mark.integration

GREETING = "Hello, {}! Welcome to Durable Execution on NATS JetStream."


# -- durable sleep ------------------------------------------------------------------------


async def test_sleep_survives_a_processor_restart_and_wakes_on_time(
    stack: ProcessStack,
    client: Client,
    transport: Transport,
    kinds: Callable[[str], Awaitable[list[str]]],
    consumer_idle: Callable[[], Awaitable[bool]],
    wait_status: Callable[[str, str], Awaitable[None]],
) -> None:
    stack.start_service()
    first = stack.start_processor("p-sleep-1")
    inv = "sleepy-1"
    await client.invoke_async("delayed_greeting", {"name": "Sleepy", "delay_seconds": 6}, id=inv)
    await wait_status(inv, "suspended")
    first.kill()  # nothing runs it now; the timer lives on the server
    await assert_eventually_async(consumer_idle, 10, "no un-acked command while asleep")
    await asyncio.to_thread(time.sleep, 2)
    stack.start_processor("p-sleep-2")
    result = await client.wait(inv, timeout=30)
    done = time.time()
    started = datetime.fromisoformat(result.output["started_at"])
    woke = datetime.fromisoformat(result.output["woke_at"])
    deadline = started + timedelta(seconds=6)
    assert result.output["message"] == GREETING.format("Sleepy")
    assert woke >= deadline  # ctx.now() after waking reflects the recorded wake time
    assert done - deadline.timestamp() < 1.5, done - deadline.timestamp()  # on time
    assert [s.kind for s in result.steps] == ["sleep", "call"]
    assert "SUSPENDED" in await kinds(inv)


async def test_a_thousand_sleeping_workflows_hold_no_slots(
    stack: ProcessStack,
    client: Client,
    transport: Transport,
    consumer_idle: Callable[[], Awaitable[bool]],
    status_of: Callable[[str], Awaitable[str]],
) -> None:
    stack.start_service()
    stack.start_processor("p-many", "--max-concurrent", "20")
    ids = [f"nap-{i}" for i in range(1000)]
    for chunk in range(0, len(ids), 100):
        await asyncio.gather(
            *(
                client.invoke_async("delayed_greeting", {"delay_seconds": 600}, id=inv)
                for inv in ids[chunk : chunk + 100]
            )
        )

    async def all_asleep() -> bool:
        sample = await asyncio.gather(*(status_of(i) for i in ids[::50]))
        return all(s == "suspended" for s in sample) and await consumer_idle()

    await assert_eventually_async(all_asleep, 180, "1,000 workflows to be suspended")
    started = time.monotonic()
    result = await client.invoke("hello_workflow", {"name": "Awake"}, timeout=30)
    assert result.output == {"message": GREETING.format("Awake")}
    assert time.monotonic() - started < 5  # a further workflow runs at once
    statuses = await asyncio.gather(*(status_of(i) for i in ids))
    assert set(statuses) == {"suspended"}


# -- awakeables and signals ----------------------------------------------------------------


async def test_awakeable_resolved_while_no_processor_runs(
    stack: ProcessStack,
    client: Client,
    status_of: Callable[[str], Awaitable[str]],
    wait_status: Callable[[str, str], Awaitable[None]],
) -> None:
    stack.start_service()
    processor = stack.start_processor("p-awk-1")
    inv = "expense-1"
    await client.invoke_async(
        "expense_approval", {"expense_id": "e-1", "amount_cents": 4200}, id=inv
    )
    await wait_status(inv, "suspended")
    assert await asyncio.to_thread(processor.stop) == 0
    cp = await asyncio.to_thread(
        stack.cli, "awakeable", "resolve", f"awk.{inv}.1", "--payload", '{"approver": "ann"}'
    )
    assert cp.returncode == 0, cp.stderr
    with pytest.raises(AlreadyResolvedError):
        await client.resolve_awakeable(f"awk.{inv}.1", {"approver": "bob"})
    await asyncio.sleep(1)
    assert await status_of(inv) == "suspended"  # no processor: nothing ran
    stack.start_processor("p-awk-2")
    result = await client.wait(inv, timeout=30)
    assert result.output == {"expense_id": "e-1", "approved": True, "by": "ann", "reason": ""}


async def test_rejected_awakeable_and_bad_resolutions(
    stack: ProcessStack, client: Client, wait_status: Callable[[str, str], Awaitable[None]]
) -> None:
    stack.start_service()
    stack.start_processor("p-awk")
    inv = "expense-2"
    await client.invoke_async("expense_approval", {"expense_id": "e-2", "amount_cents": 1}, id=inv)
    await wait_status(inv, "suspended")
    await client.reject_awakeable(f"awk.{inv}.1", "over budget")
    result = await client.wait(inv, timeout=30)
    assert result.output["approved"] is False and result.output["reason"] == "over budget"
    with pytest.raises(InvocationFinishedError):
        await client.resolve_awakeable(f"awk.{inv}.1", {})
    with pytest.raises(NotFoundError):
        await client.resolve_awakeable("awk.no-such-invocation.1", {})
    with pytest.raises(NotFoundError):
        await client.resolve_awakeable("not-an-awakeable", {})
    cp = await asyncio.to_thread(stack.cli, "awakeable", "reject", f"awk.{inv}.1")
    assert cp.returncode == 6 and "already" in cp.stderr


async def test_signal_sent_before_the_wait_is_kept(
    stack: ProcessStack, client: Client, wait_status: Callable[[str, str], Awaitable[None]]
) -> None:
    stack.start_service()
    stack.start_processor("p-sig")
    inv = "signal-1"
    await client.invoke_async("expense_by_signal", {"sleep_seconds": 4}, id=inv)
    await wait_status(inv, "suspended")  # asleep, not yet waiting for the signal
    await client.signal(inv, "approved", {"by": "carol"})
    result = await client.wait(inv, timeout=30)
    assert result.output == {"approved": True, "payload": {"by": "carol"}}
    with pytest.raises(InvocationFinishedError):
        await client.signal(inv, "approved", {})
    cp = await asyncio.to_thread(stack.cli, "signal", inv, "approved")
    assert cp.returncode == 6


# -- state, children, delayed sends --------------------------------------------------------


async def test_state_children_and_delayed_sends(
    stack: ProcessStack,
    client: Client,
    transport: Transport,
    kinds: Callable[[str], Awaitable[list[str]]],
) -> None:
    stack.start_service()
    stack.start_processor("p-kids")
    cart = await client.invoke("ticket_cart", {"ticket": "T-7", "expiry_seconds": 3}, timeout=30)
    assert cart.output["released"] is True and cart.output["cart"] == []
    assert cart.output["held_seconds"] >= 3
    assert [s.kind for s in cart.steps] == ["run", "set", "sleep", "run", "clear"]

    parent = await client.invoke(
        "greet_many", {"names": ["Ann", "Bo"], "detached": ["Cy"]}, id="parent-1", timeout=60
    )
    assert parent.output["messages"] == [GREETING.format("Ann"), GREETING.format("Bo")]
    (detached,) = parent.output["started"]
    children = ["parent-1-1", "parent-1-2", detached]
    for child in children:
        child_result = await client.wait(child, timeout=30)
        assert child_result.status == "completed"
    rec = await transport.get_state("parent-1")
    assert rec is not None and list(rec.state.child_ids) == children
    child_state = await transport.get_state("parent-1-1")
    assert child_state is not None and child_state.state.parent_id == "parent-1"

    with pytest.raises(WorkflowFailedError) as err:
        await client.invoke("fail_child", {}, timeout=60)
    assert err.value.error_type == "ChildWorkflowError"

    later = await client.invoke(
        "greet_later",
        {"name": "Later", "delay_seconds": 2, "then_sleep": 4},
        id="sender-1",
        timeout=60,
    )
    sent = later.output["sent"]
    sent_result = await client.wait(sent, timeout=30)
    assert sent_result.output == {"message": GREETING.format("Later")}
    # The sender was replayed after its sleep; the send was read back, never repeated.
    assert (await kinds("sender-1")).count("SEND") == 1
    assert (await kinds(sent)).count("COMPLETED") == 1
    assert "CLAIM" not in await kinds(sent)  # one delivery of the start: run once


async def test_delayed_invocation_from_the_client(
    stack: ProcessStack, client: Client, status_of: Callable[[str], Awaitable[str]]
) -> None:
    stack.start_service()
    stack.start_processor("p-delay")
    submitted = time.time()
    inv = await client.invoke_async("hello_workflow", {"name": "Soon"}, delay=timedelta(seconds=3))
    await asyncio.sleep(1)
    assert await status_of(inv) == "pending"
    result = await client.wait(inv, timeout=30)
    assert result.output == {"message": GREETING.format("Soon")}
    assert result.steps[0].at.timestamp() >= submitted + 2.0  # it did not start early
    start_at = datetime.now(UTC) + timedelta(seconds=2)
    inv2 = await client.invoke_async("hello_workflow", {"name": "At"}, start_at=start_at)
    assert (await client.wait(inv2, timeout=30)).steps[0].at >= start_at - timedelta(seconds=1)


# -- typed I/O and bad input ---------------------------------------------------------------


async def test_typed_input_is_checked_at_intake(stack: ProcessStack, client: Client) -> None:
    stack.start_service()
    stack.start_processor("p-typed")
    with pytest.raises(InvalidInputError, match="Expense"):
        await client.invoke(expense_approval, {"amount": "lots"})
    result = await client.invoke(expense_approval, {"expense_id": "e-9", "amount_cents": -5})
    assert result.output == Decision("e-9", False, reason="amount must be positive")
    with pytest.raises(WorkflowFailedError) as err:
        await client.invoke("expense_approval", {"amount": "lots"}, id="typed-bad", timeout=30)
    assert err.value.error_type == "InvalidInputError"
    assert (await client.get_result("typed-bad")).steps == ()  # refused before any step


async def test_bad_sleep_fails_clearly(stack: ProcessStack, client: Client) -> None:
    stack.start_service()
    stack.start_processor("p-bad")
    with pytest.raises(WorkflowFailedError) as err:
        await client.invoke("delayed_greeting", {"delay_seconds": -1}, timeout=30)
    assert err.value.error_type == "InvalidInputError" and "out of range" in str(err.value)
    with pytest.raises(InvalidInputError):
        await client.invoke_async("hello_workflow", {}, delay=timedelta(days=-1))


# -- per-key ordering ------------------------------------------------------------------------


async def test_per_key_order_across_four_processors(
    stack: ProcessStack, client: Client, tmp_path: Path
) -> None:
    record = tmp_path / "calls.jsonl"
    stack.start_service(ORDER_SERVICE_RECORD_FILE=str(record))
    for i in range(4):
        stack.start_processor(f"p-key-{i}")
    ids = []
    for n in range(200):
        key = f"k{n % 10}"
        ids.append(
            await client.invoke_async(
                "order_processing",
                {"order_id": f"{key}-{n // 10:02d}", "amount_cents": 1},
                partition_key=key,
            )
        )
    results = await asyncio.gather(*(client.wait(i, timeout=120) for i in ids))
    assert all(r.status == "completed" for r in results)
    calls: dict[str, list[str]] = defaultdict(list)
    for line in record.read_text().splitlines():
        call = json.loads(line)
        key, n = call["order_id"].split("-")
        calls[key].append(f"{n}:{call['method'].rsplit('/', 1)[-1]}")
    assert len(calls) == 10
    for key, seen in calls.items():
        expected = [f"{n:02d}:{m}" for n in range(20) for m in ("Validate", "Charge", "Ship")]
        assert seen == expected, f"key {key} ran out of order or overlapped: {seen[:12]}"


async def test_other_keys_run_while_one_key_is_busy(
    stack: ProcessStack, client: Client, status_of: Callable[[str], Awaitable[str]]
) -> None:
    service = OrderServiceControl(stack.start_service().channel)
    service.set_delay("Charge", 3000)
    stack.start_processor("p-keys")
    slow = await client.invoke_async(
        "order_processing", {"order_id": "slow", "amount_cents": 1}, partition_key="busy"
    )
    queued = await client.invoke_async(
        "order_processing", {"order_id": "queued", "amount_cents": 1}, partition_key="busy"
    )
    await asyncio.sleep(0.5)
    free = await client.invoke("hello_workflow", {"name": "Free"}, partition_key="other")
    assert free.status == "completed"
    assert await status_of(queued) == "pending"
    first, second = await client.wait(slow, timeout=30), await client.wait(queued, timeout=30)
    assert first.updated_at is not None and second.steps[0].at >= first.updated_at


async def test_news_for_a_waiting_branch_never_sends_a_call_in_flight_again(
    stack: ProcessStack, client: Client
) -> None:
    """A child's result reached the journal while two calls were in flight beside its wait;
    the shorter call's entry met it, and the run was interrupted at once to see it: the longer
    call, cancelled in flight, was sent again by the rerun (twice, with no fault). The run
    goes again only once no step is in flight now."""
    service = OrderServiceControl(stack.start_service().channel)
    service.set_delay("Charge", 3000)
    service.set_delay("Validate", 1000)
    stack.start_processor("p-news")
    result = await client.invoke("calls_beside_a_child", {"order_id": "news-1"}, timeout=30)
    assert result.status == "completed"
    assert result.output["greeting"].startswith("Hello, news-1!")
    assert sorted(service.method_counts("Charge").values()) == [1]
    assert sorted(service.method_counts("Validate").values()) == [1]
