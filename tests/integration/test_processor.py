"""Processor behaviour: concurrency, clean shutdown, the seed's test command, `durable demo`."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from durable_core import Client, Context, EngineConfig, NatsConfig, Worker, WorkerConfig
from durable_core._pb.durable.v1 import durable_pb2 as pb
from durable_core._transport import Transport
from durable_core.plugins import WorkflowRegistry
from durable_core.testing import (
    NatsCluster,
    ProcessStack,
    assert_eventually,
    assert_eventually_async,
    free_port,
    free_ports,
)
from durable_examples.order.v1 import order_pb2
from order_processing.testing import OrderServiceControl

pytestmark = pytest.mark.integration

GREETING = "Hello, {}! Welcome to Durable Execution on NATS JetStream."


async def test_max_concurrent_executions_really_run_at_once(
    cluster: NatsCluster, engine: EngineConfig, client: Client
) -> None:
    running = 0
    peak = 0

    async def busy(ctx: Context) -> int:
        async def hold() -> int:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            await asyncio.sleep(0.4)
            running -= 1
            return peak

        return await ctx.run("hold", hold)

    registry = WorkflowRegistry()
    registry.register(busy)
    transport = await Transport.connect(NatsConfig.from_url(cluster.url), engine, create=True)
    worker = Worker(transport, registry, WorkerConfig(max_concurrent=4))
    task = asyncio.create_task(worker.run())
    try:
        await asyncio.wait_for(worker.consuming.wait(), 20)  # registered: intake accepts busy
        ids = [await client.invoke_async("busy") for _ in range(12)]
        results = await asyncio.gather(*(client.wait(i, timeout=60) for i in ids))
        assert all(r.status == "completed" for r in results)
        assert peak == 4  # never more than max_concurrent, and really that many at once
    finally:
        worker.stop()
        await task
        await transport.close()


async def test_an_entry_landing_as_the_run_suspends_reruns_it(
    cluster: NatsCluster, engine: EngineConfig, client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    """A signal journaled between a run's decision to suspend and its SUSPENDED append: the
    append's conflict reruns the workflow with the signal (it completes on this delivery).
    Before the fix the rerun signal escaped ``_suspend``, the execution task crashed (seen in
    the soak) and the command waited for its ack wait to run again."""

    async def waits(ctx: Context) -> str:
        return str(await ctx.wait_for_signal("go"))

    registry = WorkflowRegistry()
    registry.register(waits)
    transport = await Transport.connect(NatsConfig.from_url(cluster.url), engine, create=True)
    real_append = transport.append
    signalled: list[str] = []

    async def append_after_a_signal(invocation_id: str, entry, *args, **kwargs):  # type: ignore[no-untyped-def]
        if entry.kind == pb.ENTRY_KIND_SUSPENDED and not signalled:
            signalled.append(invocation_id)
            await client.signal(invocation_id, "go", "now")  # lands first
        return await real_append(invocation_id, entry, *args, **kwargs)

    transport.append = append_after_a_signal  # type: ignore[method-assign]
    worker = Worker(transport, registry, WorkerConfig(ack_wait=timedelta(seconds=30)))
    task = asyncio.create_task(worker.run())
    try:
        await asyncio.wait_for(worker.consuming.wait(), 20)
        inv = await client.invoke_async("waits")
        result = await client.wait(inv, timeout=20)  # not ack_wait (30 s) later
        assert signalled == [inv]
        assert (result.status, result.output) == ("completed", "now")
        crashed = [r for r in caplog.records if "execution task crashed" in r.getMessage()]
        assert not crashed, crashed[0].getMessage()
    finally:
        worker.stop()
        await task
        await transport.close()


async def test_sigterm_lets_in_flight_work_finish(stack: ProcessStack, client: Client) -> None:
    service = OrderServiceControl(stack.start_service().channel)
    service.set_delay("Charge", 1500)
    processor = stack.start_processor("p-term")
    inv = "order-term-1"
    await client.invoke_async("order_processing", {"order_id": "o-term", "amount_cents": 1}, id=inv)
    await assert_eventually_async(
        lambda: service.method_counts("Charge"), 10, "step 2 (Charge) in flight", interval=0.05
    )
    assert await asyncio.to_thread(processor.stop) == 0  # SIGTERM: exits cleanly...
    result = await client.get_result(inv)
    assert result.status == "completed"  # ...after finishing the in-flight invocation
    assert "processor stopped (completed 1" in processor.log()


async def test_sigterm_past_the_grace_releases_work_to_another_processor(
    stack: ProcessStack, client: Client
) -> None:
    service = OrderServiceControl(stack.start_service().channel)
    service.set_delay("Charge", 4000)
    processor = stack.start_processor("p-short", DURABLE_SHUTDOWN_GRACE="0.5")
    inv = "order-release-1"
    await client.invoke_async("order_processing", {"order_id": "o-rel", "amount_cents": 1}, id=inv)
    await assert_eventually_async(
        lambda: service.method_counts("Charge"), 10, "step 2 (Charge) in flight", interval=0.05
    )
    assert await asyncio.to_thread(processor.stop) == 0
    assert "released 1 executions" in processor.log()
    stack.start_processor("p-next")
    result = await client.wait(inv, timeout=60)
    assert result.status == "completed"
    assert [s.step for s in result.steps] == [1, 2, 3]
    assert service.method_counts("Validate") == {f"{inv}:1": 1}  # replayed, not re-run


async def test_submit_test_command_runs_hello_workflow(stack: ProcessStack) -> None:
    stack.start_service()
    processor = stack.start_processor("p-seed", SUBMIT_TEST_COMMAND="true")
    await asyncio.to_thread(processor.wait_log, "submitted test command", 20)
    line = next(x for x in processor.log().splitlines() if "submitted test command" in x)
    invocation_id = line.split("invocation_id=")[1].split()[0]
    async with await Client.connect(
        stack.nats_url, engine=EngineConfig(prefix=stack.prefix, replicas=3)
    ) as client:
        result = await client.wait(invocation_id, timeout=timedelta(seconds=30))
    assert result.output == {"message": GREETING.format("World")}


def test_durable_demo_prints_the_greeting() -> None:
    cp = subprocess.run(
        [sys.executable, "-m", "durable_core.cli", "demo"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert cp.stdout.strip().splitlines()[-1] == GREETING.format("World")


def test_cli_reports_unreachable_nats_and_bad_args() -> None:
    cp = subprocess.run(
        [
            sys.executable,
            "-m",
            "durable_core.cli",
            "--nats-url",
            "nats://127.0.0.1:1",
            "status",
            "x",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cp.returncode == 3
    assert "cannot reach NATS at nats://127.0.0.1:1" in cp.stderr
    cp = subprocess.run(
        [sys.executable, "-m", "durable_core.cli", "invoke", "hello_workflow", "--args", "{x"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cp.returncode == 2
    assert "--args is not valid JSON" in cp.stderr


def free_port_pair() -> int:
    """A free port whose successor is free too (the processor's and the scheduler's metrics);
    both handed out, so no later free_port() returns the successor."""
    for _ in range(50):
        first, second = free_ports(2)
        if second == first + 1:
            return first
    raise AssertionError("no two consecutive free ports")


def _durable_dev(
    tmp_path: Path, nats_port: int, inspector_port: int, metrics_port: int
) -> subprocess.Popen[str]:
    """`durable dev` on these ports, its data in ``tmp_path``, its output on a pipe, in a
    session of its own (as from a terminal)."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "durable_core.cli",
            "dev",
            "--data-dir",
            str(tmp_path / "dev"),
            "--nats-port",
            str(nats_port),
            "--grpc-port",
            str(free_port()),
            "--inspector-port",
            str(inspector_port),
            "--metrics-port",
            str(metrics_port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


async def test_durable_dev_runs_a_schedule_end_to_end(tmp_path: Path) -> None:
    """`durable dev` brings up NATS, the hello service, a processor, the scheduler and the
    inspector; a schedule created against it fires and its runs complete; Ctrl-C stops all."""
    nats_port, inspector_port, metrics_port = free_port(), free_port(), free_port_pair()
    proc = _durable_dev(tmp_path, nats_port, inspector_port, metrics_port)
    lines: list[str] = []
    started = threading.Event()

    def read_output() -> None:  # until EOF, so the child never blocks on a full pipe
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "Ctrl-C stops everything" in line:
                started.set()
        started.set()

    reader = threading.Thread(target=read_output, daemon=True)
    reader.start()
    try:
        await asyncio.to_thread(started.wait, 60)
        assert proc.poll() is None and lines, "durable dev exited:\n" + "".join(lines)
        assert any(line.startswith("scheduler") for line in lines), lines
        # The banner lists every metrics endpoint, and each answers.
        urls = [
            f"http://127.0.0.1:{metrics_port}/metrics",
            f"http://127.0.0.1:{metrics_port + 1}/metrics",
            f"http://127.0.0.1:{inspector_port}/metrics",
        ]
        for url in urls:
            assert any(f"metrics {url}" in line for line in lines), (url, lines)
            with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: ASYNC210 - brief
                assert resp.status == 200 and b"durable_" in resp.read()
        try:
            async with await Client.connect(f"nats://127.0.0.1:{nats_port}") as client:
                await client.create_schedule(
                    "tick", "hello_workflow", {"name": "Dev"}, every=timedelta(seconds=1)
                )

                async def a_run_completed() -> bool:
                    runs = await client.list_executions(workflow="hello_workflow")
                    return any(r.status.value == "completed" for r in runs)

                await assert_eventually_async(a_run_completed, 30, "a scheduled run to complete")
        except BaseException as e:
            nats_log = tmp_path / "dev" / "durable-dev.log"
            log = nats_log.read_text()[-20000:] if nats_log.exists() else "(no NATS log)"
            e.add_note("durable dev printed:\n" + "".join(lines) + "\nNATS log:\n" + log)
            raise
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        reader.join(10)
    assert proc.returncode == 0


def test_durable_dev_stops_everything_when_its_terminal_closes(tmp_path: Path) -> None:
    """SIGHUP (the terminal closed, an SSH session dropped) ended `durable dev` at once, and
    everything it had started (each child in a session of its own) ran on, holding its ports:
    the next `durable dev` found port 4222 taken."""
    nats_port, inspector_port = free_port(), free_port()
    proc = _durable_dev(tmp_path, nats_port, inspector_port, free_port_pair())
    assert proc.stdout is not None
    seen = []
    try:
        for line in proc.stdout:
            seen.append(line)
            if "Ctrl-C stops everything" in line:
                break
        assert proc.poll() is None, "durable dev exited:\n" + "".join(seen)
        proc.send_signal(signal.SIGHUP)
        proc.communicate(timeout=40)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)

    def taken(port: int) -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    assert_eventually(
        lambda: not taken(nats_port) and not taken(inspector_port), 10, "its ports free again"
    )


async def test_invokes_whose_state_starts_with_the_run_survive_a_processor_killed_under_them(
    stack: ProcessStack, client: Client, transport: Transport
) -> None:
    """Blocking ``invoke``s (their state created RUNNING by the processor that starts them)
    while one of two processors is SIGKILLed: every one completes, with each step run at most
    twice (the one in flight at the kill may run again, nothing else).

    The doomed processor is made to hold eight runs mid-step before the kill (it runs alone
    while they start, and ``Charge`` waits long), so the take-over is certain, not left to which
    processor happened to pull the commands on a loaded machine."""
    service = OrderServiceControl(stack.start_service().channel)
    service.set_delay("Charge", 60_000)
    quick = {"DURABLE_ACK_WAIT": "5", "DURABLE_LEASE_TTL": "3"}
    doomed = stack.start_processor("p-doomed", **quick)

    async def order(i: int) -> Any:
        args = {"order_id": f"o{i}", "amount_cents": 100 + i}
        return await client.invoke("order_processing", args, id=f"crash-{i}", timeout=90)

    held = 8
    tasks = [asyncio.create_task(order(i)) for i in range(held)]
    await assert_eventually_async(
        lambda: len(service.method_counts("Charge")) >= held, 30, f"{held} runs inside Charge"
    )
    stack.start_processor("p-other", **quick)
    stack.start_scheduler()
    service.set_delay("Charge", 300)
    doomed.kill()
    for i in range(held, 24):
        tasks.append(asyncio.create_task(order(i)))
        await asyncio.sleep(0.05)
    results = await asyncio.gather(*tasks)
    assert [r.status for r in results] == ["completed"] * 24
    assert all(r.output and r.output.get("order_id") == f"o{i}" for i, r in enumerate(results))
    for method in ("Validate", "Charge", "Ship"):
        counts = service.method_counts(method)
        assert len(counts) == 24 and max(counts.values()) <= 2, (method, counts)
    taken_over = {
        r.invocation_id
        for r in results
        if any(
            rec.entry.kind == pb.ENTRY_KIND_CLAIM
            for rec in await transport.read_journal(r.invocation_id, current=True)
        )
    }
    assert {r.invocation_id for r in results[:held]} <= taken_over, taken_over


async def test_each_call_carries_its_runs_fence_and_a_superseded_runs_late_call_is_refused(
    stack: ProcessStack, client: Client, transport: Transport, tmp_path: Path
) -> None:
    """Every ``ctx.call`` carries ``durable-fence``: the journal's last sequence as its run
    knows it. The run that takes an invocation over appends a CLAIM first, so its calls carry
    a higher fence than every call of the run it superseded; the example OrderService keeps
    the highest per key and refuses a lower one. So the call a frozen processor sends late
    (after another run committed the step) does nothing: sent here by hand, as it would be."""
    record = tmp_path / "calls.jsonl"
    served = stack.start_service(ORDER_SERVICE_RECORD_FILE=str(record))
    service = OrderServiceControl(served.channel)
    service.set_delay("Charge", 60_000)
    quick = {"DURABLE_ACK_WAIT": "5", "DURABLE_LEASE_TTL": "3"}
    doomed = stack.start_processor("p-frozen", **quick)
    inv = await client.invoke_async("order_processing", {"order_id": "f-1", "amount_cents": 5})
    key = f"{inv}:2"
    await assert_eventually_async(
        lambda: key in service.method_counts("Charge"), 30, "the first run inside Charge"
    )
    stack.start_processor("p-next", **quick)
    service.set_delay("Charge", 0)
    doomed.kill()
    result = await client.wait(inv, timeout=90)
    assert result.status == "completed"

    records = [json.loads(line) for line in record.read_text().splitlines()]
    journal = await transport.read_journal(inv, current=True)
    seqs = {(r.entry.kind, r.entry.step): r.seq for r in journal}
    claim = seqs[(pb.ENTRY_KIND_CLAIM, 0)]
    fences = {
        (rec["method"], n): rec["fence"]
        for n, rec in enumerate(r for r in records if r["idempotency_key"].startswith(inv))
    }
    # Validate (step 1) on an empty journal; the first Charge after step 1's entry; the
    # second Charge, by the run that took over, after its CLAIM; Ship after step 2's entry.
    assert fences == {
        ("Validate", 0): 0,
        ("Charge", 1): seqs[(pb.ENTRY_KIND_CALL, 1)],
        ("Charge", 2): claim,
        ("Ship", 3): seqs[(pb.ENTRY_KIND_CALL, 2)],
    }, (fences, seqs)
    assert fences[("Charge", 1)] < claim < seqs[(pb.ENTRY_KIND_CALL, 2)]

    # The first run's Charge, arriving now (after the step was committed), is refused.
    stale = (("idempotency-key", key), ("durable-fence", str(fences[("Charge", 1)])))
    with pytest.raises(Exception) as refused:
        await asyncio.to_thread(
            service.stub.Charge,
            order_pb2.ChargeRequest(order_id="f-1", amount_cents=5),
            metadata=stale,
            timeout=5,
        )
    assert "FAILED_PRECONDITION" in str(refused.value) and "stale call" in str(refused.value)
    assert service.method_counts("Charge")[key] == 2  # the refused call was not counted
    last = json.loads(record.read_text().splitlines()[-1])
    assert (last["idempotency_key"], last.get("refused")) == (key, True)
