"""durable_core.idempotency on the 3-node cluster: the example OrderService with its records in
JetStream answers a workflow's step once, and refuses a superseded run's late call, even after
the service process was killed and started again (its memory gone)."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

import grpc
import pytest

from durable_core import Client
from durable_core.testing import ProcessStack, ServiceProcess, assert_eventually_async
from durable_examples.order.v1 import order_pb2
from order_processing.testing import OrderServiceControl

pytestmark = pytest.mark.integration


def _charge(service: ServiceProcess, key: str, fence: int) -> Any:
    stub = OrderServiceControl(service.channel).stub
    return stub.Charge(
        order_pb2.ChargeRequest(order_id="s-1", amount_cents=5),
        metadata=(("idempotency-key", key), ("durable-fence", str(fence))),
        timeout=10,
    )


async def _charge_in_flight(
    stack: ProcessStack, client: Client, env: dict[str, str], order_id: str, delay_ms: int
) -> tuple[ServiceProcess, str, str]:
    """The service (with ``env``) and a processor; an order whose Charge takes ``delay_ms``,
    once its Charge is in flight: the service, the invocation and the Charge's key."""
    served = stack.start_service(**env)
    stack.start_processor("p1")
    OrderServiceControl(served.channel).set_delay("Charge", delay_ms)
    inv = await client.invoke_async("order_processing", {"order_id": order_id, "amount_cents": 5})
    key = f"{inv}:2"
    await assert_eventually_async(
        lambda: key in OrderServiceControl(served.channel).method_counts("Charge"),
        30,
        "Charge in flight",
    )
    return served, inv, key


async def test_a_services_records_answer_a_step_once_and_refuse_a_stale_call_after_a_restart(
    stack: ProcessStack, client: Client, tmp_path: Path
) -> None:
    record = tmp_path / "calls.jsonl"
    env = {
        "ORDER_SERVICE_RECORD_FILE": str(record),
        "IDEMPOTENCY_STORE_URL": stack.nats_url,
        "DURABLE_PREFIX": stack.prefix,
    }
    served = stack.start_service(**env)
    stack.start_processor("p1")
    inv = await client.invoke_async("order_processing", {"order_id": "s-1", "amount_cents": 5})
    result = await client.wait(inv, timeout=60)
    assert result.status == "completed", result
    key = f"{inv}:2"
    counts = OrderServiceControl(served.channel).counts()
    assert {k: n for k, n in counts.items() if k[1].startswith(inv)} == {
        ("Validate", f"{inv}:1"): 1,
        ("Charge", key): 1,
        ("Ship", f"{inv}:3"): 1,
    }
    fence = next(
        r["fence"]
        for r in map(json.loads, record.read_text().splitlines())
        if r["idempotency_key"] == key
    )
    assert fence > 0

    # The service dies (SIGKILL: whatever it kept in memory is gone) and comes back.
    served.kill()
    again = ServiceProcess(stack.log_dir, env, port=served.port, name="service-again")
    stack.procs.append(again)
    again.wait_ready()

    # A processor that crashed after the call and before journaling it calls again: the
    # stored answer, and Charge does not run.
    answer = await asyncio.to_thread(_charge, again, key, fence + 5)
    assert answer.charge_id == result.output["charge_id"]
    # The late call of a run that was superseded (a lower fence): refused, though this process
    # has seen no fence at all.
    with pytest.raises(grpc.RpcError) as refused:
        await asyncio.to_thread(_charge, again, key, fence - 1)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert OrderServiceControl(again.channel).method_counts("Charge") == {}

    # Without the records, the same restarted service runs both (what the store prevents).
    plain = ServiceProcess(stack.log_dir, {"ORDER_SERVICE_RECORD_FILE": str(record)})
    stack.procs.append(plain)
    plain.wait_ready()
    await asyncio.to_thread(_charge, plain, key, fence - 1)
    assert OrderServiceControl(plain.channel).method_counts("Charge") == {key: 1}


async def test_a_call_in_flight_when_the_service_died_runs_at_once_on_its_restarted_process(
    stack: ProcessStack, client: Client, tmp_path: Path
) -> None:
    """The key of a call the service was running when it was killed stays held (a hold lasts
    the call's deadline, 30 s, plus 5 s), but the process that comes back on the same port is
    the same instance (``<hostname>:<address>:<port>``): it knows its predecessor is gone and
    runs the engine's retry at once, instead of making it wait out the hold."""
    env = {"IDEMPOTENCY_STORE_URL": stack.nats_url, "DURABLE_PREFIX": stack.prefix}
    served, inv, key = await _charge_in_flight(stack, client, env, "s-2", 60_000)
    served.kill()
    again = ServiceProcess(stack.log_dir, env, port=served.port, name="service-again")
    stack.procs.append(again)
    again.wait_ready()
    result = await client.wait(inv, timeout=20)  # not the 35 s the hold would last
    assert result.status == "completed", result
    assert OrderServiceControl(again.channel).method_counts("Charge") == {key: 1}

    # Its port is its own: a second process on it does not start.
    other = ServiceProcess(stack.log_dir, env, port=served.port, name="service-twin")
    stack.procs.append(other)
    assert other.proc.wait(20) != 0


async def test_a_service_shutting_down_keeps_its_port_until_its_keyed_calls_are_answered(
    stack: ProcessStack, client: Client, tmp_path: Path
) -> None:
    """SIGTERM in the middle of a Charge: the port closed at once while the handler ran on
    in its grace, so a successor bound it as the same instance (``<hostname>:<address>:
    <port>``), took the live process's hold for a dead one's and ran the same key again. The
    service now drains its keyed calls first: the successor cannot bind until the Charge is
    answered, and the key runs once."""
    record = tmp_path / "calls.jsonl"
    env = {
        "ORDER_SERVICE_RECORD_FILE": str(record),
        "IDEMPOTENCY_STORE_URL": stack.nats_url,
        "DURABLE_PREFIX": stack.prefix,
    }
    served, inv, key = await _charge_in_flight(stack, client, env, "s-3", 3_000)
    served.proc.send_signal(signal.SIGTERM)
    early = ServiceProcess(stack.log_dir, env, port=served.port, name="service-early")
    stack.procs.append(early)
    assert early.proc.wait(20) != 0  # the port is still its predecessor's
    assert served.proc.wait(20) == 0
    again = ServiceProcess(stack.log_dir, env, port=served.port, name="service-again")
    stack.procs.append(again)
    again.wait_ready()
    result = await client.wait(inv, timeout=40)
    assert result.status == "completed", result
    charges = [
        json.loads(line)
        for line in record.read_text().splitlines()
        if json.loads(line).get("method") == "Charge"
    ]
    assert [c["idempotency_key"] for c in charges] == [key]
