"""Tests for the example hello_service (in-process and as a real process)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from durable_core.testing import assert_eventually_async
from durable_examples.hello.v1 import hello_pb2, hello_pb2_grpc
from durable_examples.order.v1 import order_pb2, order_pb2_grpc
from hello_service.order import RECORD_FILE_ENV, OrderServicer, charge_id_for
from hello_service.probes import ProbeServer
from hello_service.server import HEALTH_SERVICES, HelloServer, build_server, create_server


@pytest_asyncio.fixture
async def running(tmp_path: Path) -> AsyncIterator[HelloServer]:
    built = await create_server(
        "127.0.0.1", 0, orders=OrderServicer(record_file=tmp_path / "calls.jsonl")
    )
    await built.start()
    try:
        yield built
    finally:
        await built.stop(None)


@pytest_asyncio.fixture
async def channel(running: HelloServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as ch:
        yield ch


def _key(key: str) -> tuple[tuple[str, str], ...]:
    return (("idempotency-key", key),)


@pytest.mark.asyncio
async def test_say_hello_with_and_without_name(channel: grpc.aio.Channel) -> None:
    stub = hello_pb2_grpc.HelloServiceStub(channel)
    named = await stub.SayHello(hello_pb2.HelloRequest(name="Ada"))
    assert named.message == "Hello, Ada! Welcome to Durable Execution on NATS JetStream."
    anonymous = await stub.SayHello(hello_pb2.HelloRequest())
    assert anonymous.message == "Hello, World! Welcome to Durable Execution on NATS JetStream."


@pytest.mark.asyncio
async def test_charge_is_idempotent_and_counted(channel: grpc.aio.Channel, tmp_path: Path) -> None:
    stub = order_pb2_grpc.OrderServiceStub(channel)
    request = order_pb2.ChargeRequest(order_id="o-1", amount_cents=1999)
    first = await stub.Charge(request, metadata=_key("inv-1/step-2"))
    second = await stub.Charge(request, metadata=_key("inv-1/step-2"))
    other = await stub.Charge(request, metadata=_key("inv-2/step-2"))
    assert first.charge_id == second.charge_id == charge_id_for("inv-1/step-2")
    assert other.charge_id != first.charge_id

    counts = await stub.GetCallCounts(order_pb2.GetCallCountsRequest())
    assert [(c.method, c.idempotency_key, c.count, c.cancelled) for c in counts.counts] == [
        ("Charge", "inv-1/step-2", 2, 0),
        ("Charge", "inv-2/step-2", 1, 0),
    ]

    records = [json.loads(line) for line in (tmp_path / "calls.jsonl").read_text().splitlines()]
    assert [(r["method"], r["idempotency_key"]) for r in records] == [
        ("Charge", "inv-1/step-2"),
        ("Charge", "inv-1/step-2"),
        ("Charge", "inv-2/step-2"),
    ]

    await stub.ResetCallCounts(order_pb2.ResetCallCountsRequest())
    assert not (await stub.GetCallCounts(order_pb2.GetCallCountsRequest())).counts


@pytest.mark.asyncio
async def test_a_call_with_a_lower_fence_than_its_key_has_seen_is_refused(
    channel: grpc.aio.Channel, tmp_path: Path
) -> None:
    """A run that was taken over (its fence below the one a later run called with) does
    nothing: refused, not counted, recorded as refused; equal or higher fences go through."""
    stub = order_pb2_grpc.OrderServiceStub(channel)
    request = order_pb2.ShipRequest(order_id="o-1")

    def fenced(key: str, fence: int) -> tuple[tuple[str, str], ...]:
        return (*_key(key), ("durable-fence", str(fence)))

    await stub.Ship(request, metadata=fenced("inv-1:3", 1296))
    await stub.Ship(request, metadata=fenced("inv-1:3", 1508))  # the run that took it over
    await stub.Ship(request, metadata=fenced("inv-1:3", 1508))  # its retry
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.Ship(request, metadata=fenced("inv-1:3", 1296))  # the first run, late
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "fence 1296" in (refused.value.details() or "")
    await stub.Ship(request, metadata=fenced("inv-2:3", 5))  # fences are per key
    await stub.Ship(request, metadata=_key("inv-1:3"))  # no fence: not checked

    counts = await stub.GetCallCounts(order_pb2.GetCallCountsRequest())
    assert [(c.idempotency_key, c.count) for c in counts.counts] == [("inv-1:3", 4), ("inv-2:3", 1)]
    records = [json.loads(line) for line in (tmp_path / "calls.jsonl").read_text().splitlines()]
    assert [(r["idempotency_key"], r.get("fence"), r.get("refused", False)) for r in records] == [
        ("inv-1:3", 1296, False),
        ("inv-1:3", 1508, False),
        ("inv-1:3", 1508, False),
        ("inv-1:3", 1296, True),
        ("inv-2:3", 5, False),
        ("inv-1:3", None, False),
    ]


@pytest.mark.asyncio
@pytest.mark.parametrize("fence", ["abc", "-5", str(2**64)])
async def test_a_malformed_fence_is_refused_not_taken_as_none(
    channel: grpc.aio.Channel, fence: str
) -> None:
    """A fence the caller meant but garbled is refused before anything runs or counts: taken
    as no fence, a superseded run's call would go through unchecked."""
    stub = order_pb2_grpc.OrderServiceStub(channel)
    request = order_pb2.ChargeRequest(order_id="o-1", amount_cents=1)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.Charge(request, metadata=(*_key("inv-9:2"), ("durable-fence", fence)))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "is not a decimal number" in (refused.value.details() or "")
    counts = await stub.GetCallCounts(order_pb2.GetCallCountsRequest())
    assert list(counts.counts) == []


@pytest.mark.asyncio
async def test_validate_ship_and_missing_key(channel: grpc.aio.Channel) -> None:
    stub = order_pb2_grpc.OrderServiceStub(channel)
    ok = await stub.Validate(order_pb2.ValidateRequest(order_id="o-1", amount_cents=5))
    assert ok.valid and not ok.reason
    bad = await stub.Validate(order_pb2.ValidateRequest(order_id="o-1", amount_cents=0))
    assert not bad.valid and bad.reason
    ship_a = await stub.Ship(order_pb2.ShipRequest(order_id="o-1"), metadata=_key("k"))
    ship_b = await stub.Ship(order_pb2.ShipRequest(order_id="o-1"), metadata=_key("k"))
    assert ship_a.tracking_number == ship_b.tracking_number != ""

    counts = await stub.GetCallCounts(order_pb2.GetCallCountsRequest())
    assert {(c.method, c.idempotency_key): c.count for c in counts.counts} == {
        ("Ship", "k"): 2,
        ("Validate", ""): 2,
    }


@pytest.mark.asyncio
async def test_delay_is_cancellable_and_cancellation_is_counted(
    channel: grpc.aio.Channel,
) -> None:
    stub = order_pb2_grpc.OrderServiceStub(channel)
    await stub.SetDelay(order_pb2.SetDelayRequest(method="Charge", delay_ms=10_000))
    call = stub.Charge(
        order_pb2.ChargeRequest(order_id="o-1", amount_cents=1), metadata=_key("slow")
    )
    await asyncio.sleep(0.3)  # let the call reach the server and start sleeping
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call

    async def cancelled_count() -> int:
        counts = await stub.GetCallCounts(order_pb2.GetCallCountsRequest())
        return sum(c.cancelled for c in counts.counts if c.idempotency_key == "slow")

    async def cancelled_once() -> bool:
        return await cancelled_count() == 1

    await assert_eventually_async(cancelled_once, 5, "the call counted as cancelled", interval=0.05)

    await stub.SetDelay(order_pb2.SetDelayRequest(method="Charge", delay_ms=0))
    started = time.monotonic()
    await stub.Charge(
        order_pb2.ChargeRequest(order_id="o-1", amount_cents=1), metadata=_key("fast")
    )
    assert time.monotonic() - started < 5

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.SetDelay(order_pb2.SetDelayRequest(method="Refund", delay_ms=1))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.asyncio
async def test_health_serving(channel: grpc.aio.Channel) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    assert HEALTH_SERVICES == (
        "",
        "durable_examples.hello.v1.HelloService",
        "durable_examples.order.v1.OrderService",
    )
    for service in HEALTH_SERVICES:
        response = await stub.Check(health_pb2.HealthCheckRequest(service=service))
        assert response.status == health_pb2.HealthCheckResponse.SERVING, service


@pytest.mark.asyncio
async def test_build_server_returns_unstarted_server_and_port() -> None:
    server, port = await build_server("127.0.0.1", 0)
    assert port > 0
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            reply = await hello_pb2_grpc.HelloServiceStub(ch).SayHello(hello_pb2.HelloRequest())
        assert reply.message.startswith("Hello, World!")
    finally:
        await server.stop(None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_process_serves_and_exits_zero_on_sigterm(tmp_path: Path) -> None:
    port = _free_port()
    record_file = tmp_path / "calls.jsonl"
    env = {**os.environ, RECORD_FILE_ENV: str(record_file), "PYTHONUNBUFFERED": "1"}
    health_port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "hello_service", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**env, "HEALTH_PORT": str(health_port)},
    )
    try:
        assert proc.stdout is not None
        # readline blocks until the service logs; killed by the finally on hang
        lines = [proc.stdout.readline().strip() for _ in range(2)]
        assert lines == [
            f"probes on http://127.0.0.1:{health_port} (/livez, /readyz)",
            f"hello_service listening on 127.0.0.1:{port}",
        ]
        for path, answer in (("/livez", "ok"), ("/readyz", "ready")):
            with urllib.request.urlopen(f"http://127.0.0.1:{health_port}{path}", timeout=5) as r:
                assert (r.status, r.read().decode().strip()) == (200, answer)

        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            reply = hello_pb2_grpc.HelloServiceStub(ch).SayHello(
                hello_pb2.HelloRequest(name="proc"), timeout=10
            )
            assert reply.message == "Hello, proc! Welcome to Durable Execution on NATS JetStream."
            order_pb2_grpc.OrderServiceStub(ch).Charge(
                order_pb2.ChargeRequest(order_id="o-9", amount_cents=1),
                metadata=_key("proc-key"),
                timeout=10,
            )

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()

    # The service's own record survives the process.
    records = [json.loads(line) for line in record_file.read_text().splitlines()]
    assert [(r["method"], r["idempotency_key"], r["order_id"]) for r in records] == [
        ("Charge", "proc-key", "o-9")
    ]


def test_probes_answer_livez_always_and_readyz_with_the_reason() -> None:
    state: str | None = "shutting down"
    probes = ProbeServer(lambda: state, "127.0.0.1", 0)
    assert probes.respond("GET", "/livez") == (200, b"ok\n")
    assert probes.respond("GET", "/readyz") == (503, b"not ready: shutting down\n")
    state = None
    assert probes.respond("GET", "/readyz") == (200, b"ready\n")
    assert probes.respond("POST", "/readyz")[0] == 405
    assert probes.respond("GET", "/metrics")[0] == 404


@pytest.mark.asyncio
async def test_counts_are_kept_for_the_latest_pairs_only(tmp_path: Path) -> None:
    built = await create_server("127.0.0.1", 0, orders=OrderServicer(max_tallies=3))
    await built.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{built.port}") as ch:
            stub = order_pb2_grpc.OrderServiceStub(ch)
            request = order_pb2.ShipRequest(order_id="o")
            for key in ("k1", "k2", "k1", "k3", "k4"):
                await stub.Ship(request, metadata=_key(key))
            counts = await stub.GetCallCounts(order_pb2.GetCallCountsRequest())
    finally:
        await built.stop(None)
    # k1 was the first pair called: it made room for k4; k1's second call counted as before.
    assert [(c.idempotency_key, c.count) for c in counts.counts] == [
        ("k2", 1),
        ("k3", 1),
        ("k4", 1),
    ]


# A login the engine services read from DURABLE_NATS_*: the store logs in with the same one.
STORE_USER, STORE_PASSWORD = "svc", "007 yes #x"


async def _make_engine(url: str, prefix: str) -> None:
    from durable_core import EngineConfig, NatsConfig
    from durable_core._transport import Transport

    cfg = NatsConfig.from_url(url, user=STORE_USER, password=STORE_PASSWORD)
    t = await Transport.connect(cfg, EngineConfig(prefix=prefix), create=True)
    await t.close()


def _serve_with_store(url: str, password: str, port: int) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "HEALTH_PORT": "0",
        "IDEMPOTENCY_STORE_URL": url,
        "DURABLE_PREFIX": "hs",
        "DURABLE_NATS_USER": STORE_USER,
        "DURABLE_NATS_PASSWORD": password,
    }
    return subprocess.Popen(
        [sys.executable, "-m", "hello_service", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


def test_the_idempotency_store_logs_in_as_the_engine_services_do(tmp_path: Path) -> None:
    """With --idempotency-store the service logs in with DURABLE_NATS_USER and _PASSWORD (taken
    as set), like the processor; a refused login is one line and exit 1, not a traceback."""
    from durable_core.testing import NatsServer

    user = f'{{ user: "{STORE_USER}", password: "{STORE_PASSWORD}" }}'
    login = f"authorization {{ users: [ {user} ] }}"
    with NatsServer(extra_config=login, work_dir=tmp_path) as server:
        asyncio.run(_make_engine(server.url, "hs"))
        port = _free_port()
        proc = _serve_with_store(server.url, STORE_PASSWORD, port)
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == f"hello_service listening on 127.0.0.1:{port}"
            with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
                charge = order_pb2_grpc.OrderServiceStub(ch).Charge.with_call
                request = order_pb2.ChargeRequest(order_id="o-1", amount_cents=1)
                first, _ = charge(request, metadata=_key("store-key"), timeout=10)
                again, call = charge(request, metadata=_key("store-key"), timeout=10)
            assert again.charge_id == first.charge_id
            assert ("durable-answer", "stored") in call.trailing_metadata()
        finally:
            proc.terminate()
            proc.wait(15)
            assert proc.stdout is not None
            proc.stdout.close()

        refused = _serve_with_store(server.url, STORE_PASSWORD + "x", _free_port())
        out, _ = refused.communicate(timeout=30)
        assert refused.returncode == 1, out
        assert out.strip().splitlines()[-1].startswith("hello-service: idempotency store: "), out
        assert "authorization failed" in out and "Traceback" not in out, out
