"""One trace per invocation across client, processor and service processes.

An in-process OTLP/gRPC receiver (opentelemetry-proto's TraceService; what Jaeger's port 4317
speaks) collects the spans that the client (this process), the processors and the example
service (subprocesses with the standard OTEL_* variables) export.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import grpc
import grpc.aio
import httpx2 as httpx
import pytest
import pytest_asyncio
from opentelemetry import trace
from opentelemetry.context import Context as OtelContext
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from durable_core import Client
from durable_core._transport import Transport
from durable_core.testing import ProcessStack, assert_eventually_async, free_port
from order_processing.testing import OrderServiceControl

pytestmark = pytest.mark.integration

CLIENT, PROCESSOR, SERVICE = "test-client", "durable-processor", "hello-service"
HELLO = "durable_examples.hello.v1.HelloService/SayHello"
ORDER = "durable_examples.order.v1.OrderService/"
SERVER_KIND = trace_pb2.Span.SPAN_KIND_SERVER


@dataclass(frozen=True)
class Got:
    """A received span, flattened."""

    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    kind: int
    attributes: dict[str, Any]
    start_ns: int = 0
    end_ns: int = 0


def _value(v: common_pb2.AnyValue) -> Any:
    which = v.WhichOneof("value")
    return getattr(v, which) if which else None


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """Keeps every span exported to it."""

    def __init__(self) -> None:
        self.spans: list[Got] = []

    async def Export(  # noqa: N802 - the gRPC method's name
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        for rs in request.resource_spans:
            resource = {a.key: _value(a.value) for a in rs.resource.attributes}
            for ss in rs.scope_spans:
                for s in ss.spans:
                    self.spans.append(
                        Got(
                            service=str(resource.get("service.name", "")),
                            name=s.name,
                            trace_id=s.trace_id.hex(),
                            span_id=s.span_id.hex(),
                            parent_id=s.parent_span_id.hex(),
                            kind=s.kind,
                            attributes={a.key: _value(a.value) for a in s.attributes},
                            start_ns=s.start_time_unix_nano,
                            end_ns=s.end_time_unix_nano,
                        )
                    )
        return trace_service_pb2.ExportTraceServiceResponse()

    def find(self, service: str | None = None, name: str | None = None, **attrs: Any) -> list[Got]:
        return [
            s
            for s in self.spans
            if (service is None or s.service == service)
            and (name is None or s.name == name)
            and all(s.attributes.get(k) == v for k, v in attrs.items())
        ]


class _Switchable(SpanProcessor):
    """Forwards to ``inner`` until turned off: the global provider outlives this module's tests."""

    def __init__(self, inner: SpanProcessor) -> None:
        self.inner = inner
        self.on = True

    def on_start(self, span: Span, parent_context: OtelContext | None = None) -> None:
        if self.on:
            self.inner.on_start(span, parent_context)

    def on_end(self, span: ReadableSpan) -> None:
        if self.on:
            self.inner.on_end(span)

    def shutdown(self) -> None:
        self.on = False
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


@pytest_asyncio.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, int]]:
    port = free_port()
    server = grpc.aio.server()
    rec = Receiver()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(rec, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    try:
        yield rec, port
    finally:
        await server.stop(None)


@pytest.fixture
def client_tracing(receiver: tuple[Receiver, int]) -> Iterator[_Switchable]:
    """This process (the client) exports to the receiver through the global SDK provider."""
    _, port = receiver
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        from opentelemetry.sdk.resources import Resource

        trace.set_tracer_provider(
            TracerProvider(resource=Resource.create({"service.name": CLIENT}))
        )
        provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider)
    # Batched: the export runs in the processor's thread, never blocking this event loop (which
    # also serves the receiver).
    exporter = OTLPSpanExporter(endpoint=f"127.0.0.1:{port}", insecure=True)
    switch = _Switchable(BatchSpanProcessor(exporter, schedule_delay_millis=100))
    provider.add_span_processor(switch)
    try:
        yield switch
    finally:
        switch.shutdown()


def otel_env(port: int) -> dict[str, str]:
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "DURABLE_METRICS_PORT": "0",
    }


async def flush_client(switch: _Switchable) -> None:
    assert await asyncio.to_thread(switch.force_flush, 10_000)


def the_client_span(rec: Receiver, invocation_id: str, workflow: str) -> Got:
    found = [
        s
        for s in rec.find(name=f"durable.invoke {workflow}")
        if s.attributes.get("durable.invocation_id") == invocation_id
    ]
    assert len(found) == 1, found
    span = found[0]
    assert span.kind == trace_pb2.Span.SPAN_KIND_PRODUCER
    return span


# -- one trace: client -> processor -> service -----------------------------------------------------


async def test_one_trace_from_client_through_processor_to_service(
    stack: ProcessStack,
    client: Client,
    transport: Transport,
    receiver: tuple[Receiver, int],
    client_tracing: _Switchable,
) -> None:
    rec, port = receiver
    stack.start_service(OTEL_SERVICE_NAME=SERVICE, **otel_env(port))
    stack.start_processor("p-traced", **otel_env(port))

    hello = await client.invoke("hello_workflow", {"name": "Ada"}, id="trace-hello", timeout=30)
    order = await client.invoke(
        "order_processing", {"order_id": "o-1", "amount_cents": 500}, id="trace-order", timeout=30
    )
    assert hello.status == "completed" and order.status == "completed"
    await flush_client(client_tracing)

    # hello_workflow: client -> run -> call step -> service RPC, one trace.
    await assert_eventually_async(
        lambda: rec.find(SERVICE, HELLO), 15, "the service's SayHello span"
    )
    await assert_eventually_async(
        lambda: rec.find(PROCESSOR, "durable.workflow hello_workflow"), 15, "the run's span"
    )
    root = the_client_span(rec, "trace-hello", "hello_workflow")
    (run,) = rec.find(PROCESSOR, "durable.workflow hello_workflow")
    (call,) = rec.find(PROCESSOR, f"durable.call {HELLO}")
    (rpc,) = rec.find(SERVICE, HELLO)
    assert root.trace_id == run.trace_id == call.trace_id == rpc.trace_id
    assert rpc.parent_id == call.span_id and rpc.kind == SERVER_KIND
    assert call.parent_id == run.span_id
    assert run.parent_id == root.span_id
    assert rpc.attributes["durable.idempotency_key"] == "trace-hello:1"
    assert run.attributes == {
        "durable.invocation_id": "trace-hello",
        "durable.workflow": "hello_workflow",
        "durable.partition_key": "trace-hello",
        "durable.attempt": 1,
        "durable.resumed": False,
        "durable.outcome": "completed",
    }
    assert call.attributes["durable.invocation_id"] == "trace-hello"
    assert call.attributes["durable.workflow"] == "hello_workflow"
    assert call.attributes["durable.step"] == 1
    assert call.attributes["durable.step.kind"] == "call"
    assert call.attributes["durable.attempt"] == 1
    assert call.attributes["durable.replayed"] is False
    state = await transport.get_state("trace-hello")
    assert state is not None and state.state.trace_id == root.trace_id
    assert state.state.trace_context["traceparent"].split("-")[2] == root.span_id

    # order_processing: three steps, each with its service span, all under the client's span.
    await assert_eventually_async(
        lambda: rec.find(SERVICE, ORDER + "Ship"), 15, "the Ship RPC's span"
    )
    await assert_eventually_async(
        lambda: rec.find(PROCESSOR, "durable.workflow order_processing"), 15, "the order run"
    )
    root = the_client_span(rec, "trace-order", "order_processing")
    (run,) = rec.find(PROCESSOR, "durable.workflow order_processing")
    assert run.parent_id == root.span_id and run.trace_id == root.trace_id
    for step, method in enumerate(("Validate", "Charge", "Ship"), start=1):
        (call,) = rec.find(PROCESSOR, f"durable.call {ORDER}{method}")
        (rpc,) = rec.find(SERVICE, ORDER + method)
        assert call.trace_id == rpc.trace_id == root.trace_id
        assert call.parent_id == run.span_id and rpc.parent_id == call.span_id
        assert call.attributes["durable.step"] == step
        assert call.attributes["rpc.method"] == method
        assert rpc.attributes["durable.idempotency_key"] == f"trace-order:{step}"


# -- a crash and a replay add no duplicate step spans -------------------------------------------


async def test_replay_after_a_crash_adds_no_duplicate_step_spans(
    stack: ProcessStack, client: Client, receiver: tuple[Receiver, int], client_tracing: _Switchable
) -> None:
    rec, port = receiver
    service_proc = stack.start_service(OTEL_SERVICE_NAME=SERVICE, **otel_env(port))
    service = OrderServiceControl(service_proc.channel)
    service.set_delay("Charge", 2000)
    doomed = stack.start_processor("p-doomed", "--ack-wait", "3", **otel_env(port))
    inv = "trace-crash"
    await client.invoke_async(
        "order_processing", {"order_id": "o-crash", "amount_cents": 700}, id=inv
    )
    await assert_eventually_async(
        lambda: service.method_counts("Charge"), 20, "step 2 (Charge) to be in flight"
    )
    # Step 1's span ended 2 s before the kill; with a 100 ms batch delay it has been exported.
    await assert_eventually_async(
        lambda: rec.find(PROCESSOR, f"durable.call {ORDER}Validate"), 10, "step 1's span"
    )
    doomed.kill()
    rescuer = stack.start_processor("p-rescuer", "--ack-wait", "3", **otel_env(port))

    result = await client.wait(inv, timeout=60)
    assert result.status == "completed"
    await flush_client(client_tracing)
    # SIGTERM: the batch processors flush on the way out (to this loop's receiver: don't block).
    await asyncio.to_thread(rescuer.stop)
    await asyncio.to_thread(service_proc.stop)

    root = the_client_span(rec, inv, "order_processing")
    mine = [s for s in rec.spans if s.trace_id == root.trace_id]
    steps = [s for s in mine if s.service == PROCESSOR and s.name.startswith("durable.call ")]
    by_name: dict[str, int] = {}
    for s in steps:
        by_name[s.name] = by_name.get(s.name, 0) + 1
    assert by_name[f"durable.call {ORDER}Validate"] == 1  # the rescuer only read it back
    assert by_name[f"durable.call {ORDER}Ship"] == 1
    assert by_name[f"durable.call {ORDER}Charge"] == 1  # the doomed one's never ended
    assert {s.attributes["durable.step"] for s in steps} == {1, 2, 3}
    runs = [s for s in mine if s.name == "durable.workflow order_processing"]
    (rescue,) = [r for r in runs if r.attributes["durable.resumed"]]
    assert rescue.attributes["durable.attempt"] == 2  # the redelivered command
    assert rescue.attributes["durable.outcome"] == "completed"
    assert rescue.parent_id == root.span_id  # the redelivery continues the client's trace
    charge = next(s for s in steps if s.name.endswith("Charge"))
    assert charge.parent_id == rescue.span_id
    assert (
        len(rec.find(SERVICE, ORDER + "Validate", **{"durable.idempotency_key": f"{inv}:1"})) == 1
    )


# -- wake-ups and children stay in the invocation's trace ------------------------------------------


async def test_wake_ups_and_children_continue_the_trace(
    stack: ProcessStack, client: Client, receiver: tuple[Receiver, int], client_tracing: _Switchable
) -> None:
    rec, port = receiver
    stack.start_service(OTEL_SERVICE_NAME=SERVICE, **otel_env(port))
    stack.start_processor("p-traced", **otel_env(port))

    # Longer than the in-process timer (2 s): the run suspends and a WAKE command (which
    # carries no metadata) resumes it.
    slept = await client.invoke(
        "delayed_greeting", {"name": "Ada", "delay_seconds": 3}, id="trace-sleep", timeout=30
    )
    assert slept.status == "completed"
    many = await client.invoke("greet_many", {"names": ["Bo"]}, id="trace-many", timeout=30)
    assert many.status == "completed"
    await flush_client(client_tracing)

    name = "durable.workflow delayed_greeting"
    runs = await assert_eventually_async(
        lambda: (r := rec.find(PROCESSOR, name)) and len(r) == 2 and r, 15, "both runs' spans"
    )
    root = the_client_span(rec, "trace-sleep", "delayed_greeting")
    first, second = sorted(runs, key=lambda r: r.attributes["durable.resumed"])
    assert first.attributes["durable.outcome"] == "suspended"
    assert second.attributes["durable.outcome"] == "completed"
    assert second.attributes["durable.resumed"] is True
    assert first.parent_id == second.parent_id == root.span_id
    assert first.trace_id == second.trace_id == root.trace_id
    (sleep,) = rec.find(PROCESSOR, "durable.sleep", **{"durable.invocation_id": "trace-sleep"})
    assert sleep.parent_id == first.span_id
    calls = rec.find(PROCESSOR, f"durable.call {HELLO}", **{"durable.invocation_id": "trace-sleep"})
    assert [c.parent_id for c in calls] == [second.span_id]

    # greet_many -> child hello_workflow: the child's run hangs under the parent's child step.
    (child_run,) = await assert_eventually_async(
        lambda: rec.find(
            PROCESSOR,
            "durable.workflow hello_workflow",
            **{"durable.invocation_id": "trace-many-1"},
        ),
        15,
        "the child's run",
    )
    await assert_eventually_async(
        lambda: len(rec.find(PROCESSOR, "durable.workflow greet_many")) == 2, 15, "parent runs"
    )
    root = the_client_span(rec, "trace-many", "greet_many")
    (child_step,) = rec.find(PROCESSOR, "durable.child hello_workflow")
    assert child_step.kind == trace_pb2.Span.SPAN_KIND_PRODUCER
    assert child_step.attributes["durable.invocation_id"] == "trace-many"
    assert child_run.parent_id == child_step.span_id
    assert child_run.trace_id == child_step.trace_id == root.trace_id
    rpc = await assert_eventually_async(
        lambda: [
            s
            for s in rec.find(SERVICE, HELLO)
            if s.attributes.get("durable.idempotency_key") == "trace-many-1:1"
        ],
        15,
        "the child's SayHello span",
    )
    assert rpc[0].trace_id == root.trace_id


# -- every entry point starts a trace; a wait is a span from park to wake (issue 17) ----------


def _only(spans: list[Got], what: str) -> Got:
    assert len(spans) == 1, f"{what}: {spans}"
    return spans[0]


async def test_cli_inspector_and_scheduler_start_traces_and_waits_span_park_to_wake(
    stack: ProcessStack, client: Client, receiver: tuple[Receiver, int]
) -> None:
    rec, port = receiver
    stack.start_service(OTEL_SERVICE_NAME=SERVICE, **otel_env(port))
    stack.start_processor("p-traced", **otel_env(port))
    otel = {**os.environ, **stack.env, **otel_env(port)}
    otel.pop("OTEL_SERVICE_NAME", None)

    # The CLI: `durable.cli invoke` -> `durable.invoke` -> the processor's runs, one trace; the
    # 3 s sleep is a span from when the workflow parked to when it woke.
    cp = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "durable_core.cli", "invoke", "delayed_greeting", "--json",
         "--id", "trace-cli", "--args", '{"name": "Ada", "delay_seconds": 3}'],
        env=otel, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert cp.returncode == 0, cp.stderr
    stored = json.loads(cp.stdout)["trace_id"]
    cli_span = await assert_eventually_async(
        lambda: rec.find("durable-cli", "durable.cli invoke"), 15, "CLI span"
    )
    invoke = _only(rec.find("durable-cli", "durable.invoke delayed_greeting"), "client span")
    assert invoke.parent_id == cli_span[0].span_id and invoke.trace_id == stored
    runs = await assert_eventually_async(
        lambda: (r := rec.find(PROCESSOR, "durable.workflow delayed_greeting")) and len(r) == 2
        and r, 15, "both runs",
    )  # fmt: skip
    assert {r.trace_id for r in runs} == {stored}
    wait = _only(
        await assert_eventually_async(
            lambda: rec.find(PROCESSOR, "durable.wait sleep"), 15, "the wait's span"
        ),
        "wait span",
    )
    assert wait.trace_id == stored and wait.parent_id == invoke.span_id
    assert wait.attributes["durable.invocation_id"] == "trace-cli"
    assert 2.9e9 <= wait.end_ns - wait.start_ns <= 3.5e9  # park to wake, not the journaling
    first = min(runs, key=lambda r: r.start_ns)
    assert wait.start_ns <= first.end_ns  # it parked during the first run

    # Without any OTEL_* setting the CLI still stores a trace id, and the processors use it.
    plain = {k: v for k, v in {**os.environ, **stack.env}.items() if not k.startswith("OTEL_")}
    cp = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "durable_core.cli", "invoke", "hello_workflow", "--json"],
        env=plain, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert cp.returncode == 0, cp.stderr
    plain_view = json.loads(cp.stdout)
    assert plain_view["trace_id"]
    run = await assert_eventually_async(
        lambda: rec.find(
            PROCESSOR, "durable.workflow hello_workflow",
            **{"durable.invocation_id": plain_view["invocation_id"]},
        ),
        15, "the plain invocation's run",
    )  # fmt: skip
    assert run[0].trace_id == plain_view["trace_id"]

    # The inspector: its POST is a server span, the parent of the invocation's client span.
    inspector = stack.start(
        "inspector-traced",
        ["-m", "durable_inspector", "--port", "0"],
        {**otel_env(port), "DURABLE_JAEGER_URL": "http://jaeger.test:16686"},
        ready="inspector listening on",
        timeout=30,
    )
    url = re.search(r"inspector listening on (http://\S+)", inspector.log())
    assert url
    async with httpx.AsyncClient(base_url=url.group(1), timeout=20) as http:

        async def ready() -> bool:  # it listens at once and binds to the engine after
            return (await http.get("/readyz")).status_code == 200

        await assert_eventually_async(ready, 30, "the inspector ready")
        resp = await http.post("/api/executions", json={"workflow": "hello_workflow"})
        assert resp.status_code == 202, resp.text
        started = resp.json()["invocation_id"]
        await client.wait(started, timeout=30)
        detail = (await http.get(f"/api/executions/{started}")).json()
    server = _only(
        await assert_eventually_async(
            lambda: rec.find("durable-inspector", "POST /api/executions"), 15, "POST"
        ),
        "inspector span",
    )
    assert server.kind == SERVER_KIND
    invoke = _only(rec.find("durable-inspector", "durable.invoke hello_workflow"), "client span")
    assert invoke.parent_id == server.span_id and invoke.trace_id == detail["trace_id"]
    assert detail["trace_url"] == f"http://jaeger.test:16686/trace/{detail['trace_id']}"

    # The scheduler: each tick's invocation begins under `durable.schedule <name>`.
    stack.start_scheduler("scheduler-traced", **otel_env(port))
    await client.create_schedule("traced", "hello_workflow", every=timedelta(seconds=1))
    tick = await assert_eventually_async(
        lambda: rec.find("durable-scheduler", "durable.schedule traced"), 20, "a tick's span"
    )
    await client.delete_schedule("traced")
    first_tick = min(tick, key=lambda t: t.start_ns)
    invoke = await assert_eventually_async(
        lambda: [s for s in rec.find("durable-scheduler", "durable.invoke hello_workflow")
                 if s.parent_id == first_tick.span_id],
        15, "the tick's client span",
    )  # fmt: skip
    assert invoke[0].trace_id == first_tick.trace_id
