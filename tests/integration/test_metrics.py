"""The processor's Prometheus endpoint moves as workflows run; /healthz follows NATS."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from durable_core import Client
from durable_core.testing import ProcessStack, assert_eventually_async, free_port
from order_processing.testing import OrderServiceControl

pytestmark = pytest.mark.integration


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


async def scrape(base: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    status, text = await asyncio.to_thread(get, f"{base}/metrics")
    assert status == 200
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sample(
    metrics: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return metrics.get((name, frozenset(labels.items())), 0.0)


async def test_counters_and_step_latency_move_and_healthz_is_ok(
    stack: ProcessStack, client: Client
) -> None:
    port = free_port()
    stack.start_service()
    stack.start_processor("p-metrics", DURABLE_METRICS_PORT=str(port))
    base = f"http://127.0.0.1:{port}"

    assert await asyncio.to_thread(get, f"{base}/healthz") == (200, "ok\n")
    before = await scrape(base)
    for name in ("Ada", "Bo"):
        result = await client.invoke("hello_workflow", {"name": name}, timeout=30)
        assert result.status == "completed"

    # The counters move when the run returns, a moment before the state says completed.
    async def both_counted() -> dict[tuple[str, frozenset[tuple[str, str]]], float] | None:
        m = await scrape(base)
        completed = "durable_invocations_completed_total"
        moved = sample(m, completed, workflow="hello_workflow") - sample(
            before, completed, workflow="hello_workflow"
        )
        return m if moved >= 2 else None

    after = await assert_eventually_async(both_counted, 10, "two completions counted")

    def delta(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert delta("durable_invocations_completed_total", workflow="hello_workflow") == 2
    assert delta("durable_invocations_started_total", workflow="hello_workflow") == 2
    assert delta("durable_invocations_failed_total", workflow="hello_workflow") == 0
    call = {"kind": "call", "workflow": "hello_workflow"}
    assert delta("durable_step_duration_seconds_count", **call) == 2
    assert delta("durable_step_duration_seconds_sum", **call) > 0
    assert sample(after, "durable_executions_in_flight") == 0


async def test_consumer_gauges_show_pending_and_unacknowledged_commands(
    stack: ProcessStack, client: Client
) -> None:
    port = free_port()
    service = OrderServiceControl(stack.start_service().channel)
    service.set_delay("Charge", 6000)  # longer than the 5 s poll interval
    stack.start_processor(
        "p-busy",
        "--max-concurrent",
        "1",
        DURABLE_METRICS_PORT=str(port),
        DURABLE_SHUTDOWN_GRACE="1",
    )
    base = f"http://127.0.0.1:{port}"
    for n in (1, 2):  # one runs (unacknowledged), the other waits for the only slot
        await client.invoke_async("order_processing", {"order_id": f"o-{n}", "amount_cents": 1})

    seen: tuple[float, ...] = ()

    async def one_running_one_waiting() -> bool:
        nonlocal seen
        now = await scrape(base)
        seen = (
            sample(now, "durable_consumer_ack_pending_messages"),
            sample(now, "durable_consumer_pending_messages"),
            sample(now, "durable_executions_in_flight"),
        )
        return seen == (1, 1, 1)

    try:
        await assert_eventually_async(
            one_running_one_waiting, 15, "one command unacked, one pending", interval=0.2
        )
    except AssertionError as e:
        raise AssertionError(f"{e}: (ack pending, pending, in flight) = {seen}") from None


async def test_cancellations_retries_and_latencies_are_counted(
    stack: ProcessStack, client: Client
) -> None:
    """Issue 17: two cancellations left durable_invocations_cancelled_total at 0; nothing
    counted failed or retried attempts; there was no end-to-end, schedule-to-start or
    journal-append latency."""
    port = free_port()
    stack.start_service()
    stack.start_processor("p-metrics", DURABLE_METRICS_PORT=str(port))
    base = f"http://127.0.0.1:{port}"
    waiting = [
        await client.invoke_async("expense_approval", {"expense_id": "e", "amount_cents": 5}),
        await client.invoke_async("delayed_greeting", {"name": "x", "delay_seconds": 600}),
    ]
    for inv in waiting:

        async def suspended(inv: str = inv) -> bool:
            return (await client.get_summary(inv)).status == "suspended"

        await assert_eventually_async(suspended, 20, f"{inv} to suspend")
        await client.cancel(inv)
        await client.wait(inv, timeout=30)
    flaky = await client.invoke("flaky", {"failures": 1, "attempts": 3, "interval_ms": 10})
    assert flaky.status == "completed"

    # The client learns the result before the processor has settled the command (and counted
    # its final status): scrape until the last counts are in.
    async def last_counts_in() -> dict[tuple[str, frozenset[tuple[str, str]]], float] | None:
        m = await scrape(base)
        done = sample(m, "durable_invocations_cancelled_total", workflow="delayed_greeting")
        finished = sample(
            m, "durable_invocation_duration_seconds_count", workflow="flaky", status="completed"
        )
        return m if done >= 1 and finished >= 1 else None

    m = await assert_eventually_async(last_counts_in, 10, "the last cancellation and run counted")
    assert sample(m, "durable_invocations_cancelled_total", workflow="expense_approval") == 1
    assert sample(m, "durable_invocations_cancelled_total", workflow="delayed_greeting") == 1
    run = {"kind": "run", "workflow": "flaky"}
    assert sample(m, "durable_step_attempts_failed_total", **run) == 1
    assert sample(m, "durable_step_attempts_retried_total", **run) == 1
    assert (
        sample(m, "durable_invocation_duration_seconds_count", workflow="flaky", status="completed")
        == 1
    )
    assert sample(m, "durable_invocation_schedule_to_start_seconds_count", workflow="flaky") == 1
    assert sample(m, "durable_journal_append_seconds_count", entry="run") >= 1
    assert sample(m, "durable_journal_append_seconds_count", entry="suspended") >= 2
