"""The processor's metrics interceptor, consumer poller, HTTP endpoint, log context, settings."""

from __future__ import annotations

import asyncio
import logging
import os
import urllib.error
import urllib.request
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider

from durable_core import ConfigError, StepInput, WorkflowInput
from durable_core.engine._signals import LostClaim
from durable_core.interceptors import EngineEvent, chain_steps, chain_workflows
from durable_core.service.metrics_server import MetricsServer
from durable_core.service.telemetry import otlp_protocol
from durable_core.testing import OtlpHttpReceiver, assert_eventually_async
from durable_processor.metrics import MetricsInterceptor, ProcessorMetrics, poll_consumer
from durable_processor.settings import load_settings
from durable_processor.telemetry import (
    LogContextFilter,
    LogContextInterceptor,
    configure_tracing,
    tracing_exporters,
)


def value(m: ProcessorMetrics, name: str, **labels: str) -> float:
    got = m.registry.get_sample_value(name, labels)
    return 0.0 if got is None else got


def run_input(workflow: str = "wf", *, resumed: bool = False) -> WorkflowInput:
    return WorkflowInput("inv-1", workflow, "pk", 1, {}, resumed=resumed)


async def run(icp: MetricsInterceptor, inp: WorkflowInput, body: Any) -> Any:
    return await chain_workflows([icp], body)(inp)


# -- the interceptor -----------------------------------------------------------------------------


async def test_runs_are_counted_by_outcome_and_workflow() -> None:
    m = ProcessorMetrics(runtime_collectors=False)
    icp = MetricsInterceptor(m)
    seen_in_flight: list[float] = []

    async def ok(_: WorkflowInput) -> str:
        seen_in_flight.append(value(m, "durable_executions_in_flight"))
        return "done"

    async def boom(_: WorkflowInput) -> None:
        raise RuntimeError("workflow failed")

    async def parked(_: WorkflowInput) -> None:
        raise asyncio.CancelledError  # the engine cancels a run whose steps all wait

    async def lost(_: WorkflowInput) -> None:
        raise LostClaim([])  # another processor took it over: not a failure

    assert await run(icp, run_input("hello"), ok) == "done"
    assert seen_in_flight == [1.0]
    with pytest.raises(RuntimeError):
        await run(icp, run_input("hello"), boom)
    with pytest.raises(asyncio.CancelledError):
        await run(icp, run_input("sleepy"), parked)
    await run(icp, run_input("sleepy", resumed=True), ok)  # the wake-up: not a new start
    with pytest.raises(LostClaim):
        await run(icp, run_input("hello", resumed=True), lost)

    assert value(m, "durable_invocations_started_total", workflow="hello") == 2
    assert value(m, "durable_invocations_started_total", workflow="sleepy") == 1
    assert value(m, "durable_invocations_suspended_total", workflow="sleepy") == 1
    assert value(m, "durable_executions_in_flight") == 0
    # How a run ended is not how the invocation ended (a caught cancellation, a deadline):
    # those come from the engine's "finished" events.
    assert value(m, "durable_invocations_completed_total", workflow="hello") == 0
    assert value(m, "durable_invocations_failed_total", workflow="hello") == 0


def test_engine_events_count_final_statuses_latencies_and_redeliveries() -> None:
    """Cancellations were never counted (no run outcome said so, or the workflow caught its
    cancellation and returned): the final status the engine journals is counted now."""
    m = ProcessorMetrics(runtime_collectors=False)
    icp = MetricsInterceptor(m)
    for status, seconds in (
        ("completed", 0.02),
        ("cancelled", 3.5),
        ("cancelled", 7),
        ("failed", 1),
    ):
        icp.observe(EngineEvent("finished", "i", "wf", seconds=seconds, status=status))
    icp.observe(EngineEvent("started", "i", "wf", seconds=0.004))
    icp.observe(EngineEvent("appended", "i", "wf", seconds=0.0008, entry="call"))
    icp.observe(EngineEvent("delivered", "i", "wf", attempt=1))
    icp.observe(EngineEvent("delivered", "i", "wf", attempt=3))
    icp.observe(EngineEvent("blocked", "i", "wf"))
    assert value(m, "durable_invocations_blocked_total", workflow="wf") == 1
    assert value(m, "durable_invocations_cancelled_total", workflow="wf") == 2
    assert value(m, "durable_invocations_completed_total", workflow="wf") == 1
    assert value(m, "durable_invocations_failed_total", workflow="wf") == 1
    assert (
        value(m, "durable_invocation_duration_seconds_count", workflow="wf", status="cancelled")
        == 2
    )
    assert (
        value(m, "durable_invocation_duration_seconds_sum", workflow="wf", status="cancelled")
        == 10.5
    )
    assert (
        value(m, "durable_invocation_schedule_to_start_seconds_bucket", workflow="wf", le="0.005")
        == 1
    )
    assert value(m, "durable_journal_append_seconds_bucket", entry="call", le="0.001") == 1
    assert value(m, "durable_commands_redelivered_total", workflow="wf") == 1


async def test_step_latency_is_observed_per_kind_and_workflow() -> None:
    m = ProcessorMetrics(runtime_collectors=False)
    icp = MetricsInterceptor(m)

    async def slow(_: StepInput) -> str:
        await asyncio.sleep(0.02)
        return "ok"

    async def failing(_: StepInput) -> None:
        raise RuntimeError("attempt failed")

    step = chain_steps([icp], slow)
    await step(StepInput("inv-1", "wf", 1, "call", "/pkg.Svc/M", 1))
    await step(StepInput("inv-1", "wf", 2, "call", "/pkg.Svc/M", 1))
    with pytest.raises(RuntimeError):
        await chain_steps([icp], failing)(StepInput("inv-1", "wf", 3, "run", "x", 1))

    await step(StepInput("inv-1", "wf", 2, "call", "/pkg.Svc/M", 2))  # a retry
    labels = {"kind": "call", "workflow": "wf"}
    assert value(m, "durable_step_attempts_retried_total", **labels) == 1
    assert value(m, "durable_step_attempts_failed_total", kind="run", workflow="wf") == 1
    assert value(m, "durable_step_attempts_failed_total", **labels) == 0
    assert value(m, "durable_step_duration_seconds_count", **labels) == 3
    assert value(m, "durable_step_duration_seconds_sum", **labels) >= 0.06
    assert value(m, "durable_step_duration_seconds_bucket", le="0.01", **labels) == 0
    assert value(m, "durable_step_duration_seconds_count", kind="run", workflow="wf") == 1


class FakeTransport:
    def __init__(self) -> None:
        self.calls = 0

    async def consumer_stats(self, consumer: str) -> tuple[int, int, int]:
        self.calls += 1
        if self.calls == 1:
            raise ConnectionError("NATS is away")
        return 7, 3, 1


async def test_consumer_poller_copies_the_counts_and_survives_errors() -> None:
    m = ProcessorMetrics(runtime_collectors=False)
    transport = FakeTransport()
    task = asyncio.create_task(poll_consumer(transport, "processor", m, interval=0.01))
    try:
        await assert_eventually_async(
            lambda: value(m, "durable_consumer_pending_messages") == 7,
            2,
            "the pending count copied",
            interval=0.01,
        )
    finally:
        task.cancel()
    assert transport.calls >= 2
    assert value(m, "durable_consumer_pending_messages") == 7
    assert value(m, "durable_consumer_ack_pending_messages") == 3
    assert value(m, "durable_consumer_redelivered_messages") == 1


# -- the HTTP endpoint ---------------------------------------------------------------------------


def fetch(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], e.read().decode()


async def test_metrics_and_healthz_over_http() -> None:
    m = ProcessorMetrics()
    m.completed.labels("hello_workflow").inc()
    connected = True
    async with MetricsServer(m.registry, lambda: connected, port=0) as server:
        base = f"http://127.0.0.1:{server.port}"
        status, ctype, body = await asyncio.to_thread(fetch, f"{base}/metrics")
        assert status == 200 and ctype.startswith("text/plain")
        assert 'durable_invocations_completed_total{workflow="hello_workflow"} 1.0' in body
        assert "process_cpu_seconds_total" in body or "python_info" in body
        assert await asyncio.to_thread(fetch, f"{base}/healthz") == (
            200,
            "text/plain; charset=utf-8",
            "ok\n",
        )
        connected = False
        status, _, _ = await asyncio.to_thread(fetch, f"{base}/healthz")
        assert status == 503
        status, _, _ = await asyncio.to_thread(fetch, f"{base}/nothing")
        assert status == 404


def test_livez_never_asks_readyz_says_why_not_in_one_line() -> None:
    registry = ProcessorMetrics(runtime_collectors=False).registry
    reason: str | None = "not connected to NATS\n(reconnecting)"
    server = MetricsServer(registry, lambda: False, ready=lambda: reason)
    assert server.respond("GET", "/livez") == (200, "text/plain; charset=utf-8", b"ok\n")
    assert server.respond("GET", "/readyz") == (
        503,
        "text/plain; charset=utf-8",
        b"not ready: not connected to NATS (reconnecting)\n",
    )
    reason = None
    assert server.respond("HEAD", "/readyz")[:2] == (200, "text/plain; charset=utf-8")
    assert server.respond("GET", "/healthz")[0] == 503  # /healthz keeps its own check

    def broken() -> str | None:
        raise RuntimeError("no worker")

    assert server.respond("GET", "/livez")[0] == 200
    server.ready = broken
    assert (
        server.respond("GET", "/readyz")[2] == b"not ready: readiness check failed: "
        b"RuntimeError: no worker\n"
    )
    # Without a readiness check, /readyz follows /healthz.
    plain = MetricsServer(registry, lambda: True)
    assert plain.respond("GET", "/readyz")[0] == 200


def test_a_health_check_that_raises_is_unhealthy() -> None:
    def broken() -> bool:
        raise RuntimeError("no transport")

    server = MetricsServer(ProcessorMetrics(runtime_collectors=False).registry, broken)
    assert server.respond("GET", "/healthz")[0] == 503
    assert server.respond("POST", "/metrics")[0] == 405


def test_liveness_never_asks_the_health_check_and_readiness_does() -> None:
    """A NATS outage makes the service unready, never dead: liveness restarts nothing."""
    asked: list[str] = []

    def disconnected() -> bool:
        asked.append("check")
        return False

    server = MetricsServer(ProcessorMetrics(runtime_collectors=False).registry, disconnected)
    assert server.respond("GET", "/livez")[0] == 200
    assert asked == []
    assert server.respond("GET", "/readyz")[0] == 503
    assert asked == ["check"]


# -- settings ------------------------------------------------------------------------------------


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("DURABLE_", "OTEL_")) or name == "NATS_URL":
            monkeypatch.delenv(name)


@pytest.mark.usefixtures("clean_environment")
def test_metrics_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    s = load_settings()
    assert (s.metrics_host, s.metrics_port) == ("127.0.0.1", 9464)
    monkeypatch.setenv("DURABLE_METRICS_HOST", "0.0.0.0")
    monkeypatch.setenv("DURABLE_METRICS_PORT", "0")
    s = load_settings()
    assert (s.metrics_host, s.metrics_port) == ("0.0.0.0", 0)
    monkeypatch.setenv("DURABLE_METRICS_PORT", "70000")
    with pytest.raises(Exception, match="metrics_port"):
        load_settings()


# -- tracing switch and log context -------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "exporters"),
    [
        ({}, []),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://jaeger:4317"}, ["otlp"]),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, ["otlp"]),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://j:4317"}, []),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, []),
        ({"OTEL_TRACES_EXPORTER": "console,zipkin"}, ["console"]),
    ],
)
def test_tracing_is_on_only_when_the_otel_variables_say_so(
    env: dict[str, str], exporters: list[str]
) -> None:
    assert tracing_exporters(env) == exporters


def test_no_tracer_provider_without_otel_variables() -> None:
    assert configure_tracing(env={}) is None


def test_tracer_provider_names_the_service(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("opentelemetry.trace.set_tracer_provider", lambda provider: None)
    provider = configure_tracing(env={"OTEL_TRACES_EXPORTER": "console"})
    assert isinstance(provider, TracerProvider)
    assert provider.resource.attributes["service.name"] == "durable-processor"
    provider.shutdown()
    named = configure_tracing(env={"OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "p2"})
    assert isinstance(named, TracerProvider)
    assert named.resource.attributes["service.name"] == "p2"
    named.shutdown()


async def test_log_records_carry_the_invocation_step_and_trace() -> None:
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("test.durable.logs")
    handler = Keep()
    handler.addFilter(LogContextFilter())
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    provider = TracerProvider()
    tracer = provider.get_tracer("test")
    icp = LogContextInterceptor()

    async def step(_: StepInput) -> None:
        logger.info("inside the step")

    async def body(inp: WorkflowInput) -> None:
        with tracer.start_as_current_span("run") as span:
            await chain_steps([icp], step)(StepInput(inp.invocation_id, "wf", 2, "run", "x", 1))
            records.append(logging.makeLogRecord({"trace": span.get_span_context().trace_id}))

    try:
        await chain_workflows([icp], body)(run_input())
        logger.info("outside")
    finally:
        logger.removeHandler(handler)
    inside, marker, outside = records
    assert inside.invocation_id == "inv-1" and inside.step == 2  # type: ignore[attr-defined]
    assert inside.trace_id == f"{marker.trace:032x}"  # type: ignore[attr-defined]
    assert inside.durable_context.startswith(" [invocation_id=inv-1 step=2 trace_id=")  # type: ignore[attr-defined]
    assert outside.durable_context == ""  # type: ignore[attr-defined]


def test_otlp_over_http_reaches_an_http_receiver_and_other_protocols_are_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf sends spans to an OTLP/HTTP receiver (port
    4318 of a collector); an unsupported value stops the start-up instead of exporting nowhere."""
    monkeypatch.setattr("opentelemetry.trace.set_tracer_provider", lambda provider: None)
    with OtlpHttpReceiver() as receiver:
        # The exporter reads its endpoint from the process environment, as in a service.
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        monkeypatch.setenv("OTEL_SERVICE_NAME", "p-test")
        provider = configure_tracing()
        assert provider is not None
        provider.get_tracer("t").start_span("one").end()
        provider.shutdown()  # flushes
        assert [(s["service"], s["name"]) for s in receiver.spans] == [("p-test", "one")]
        assert receiver.paths == ["/v1/traces"]
    with pytest.raises(ConfigError, match="http/json"):
        configure_tracing(
            env={"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}
        )
    assert otlp_protocol({}) == "grpc"
