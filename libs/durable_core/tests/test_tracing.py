"""TracingInterceptor with the SDK's in-memory exporter: spans, parents, attributes, replay."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode, format_span_id, format_trace_id

from durable_core import (
    Client,
    EngineConfig,
    RetryPolicy,
    StepFailedError,
    SuspendExecution,
    WorkflowInput,
    grpc_service,
)
from durable_core._grpc import MethodRef
from durable_core._journal import ReplayMachine, Submission, Wait
from durable_core._pb.durable.v1 import durable_pb2 as pb
from durable_core._transport import StateRecord
from durable_core.client._submit import trace_context_of as _trace_context
from durable_core.engine._context import RunContext
from durable_core.engine._intake import trace_id as _trace_id
from durable_core.engine._signals import (
    BadInputError,
    EngineFailure,
    Finished,
    LostClaim,
    NotIdle,
    Rerun,
)
from durable_core.interceptors import chain_workflows, outcome_of
from durable_core.tracing import TracingInterceptor, waits_ended
from durable_examples.hello.v1.hello_pb2 import HelloRequest, HelloResponse
from durable_examples.hello.v1.hello_pb2_grpc import HelloServiceStub

hello = grpc_service(HelloServiceStub)
FAST = RetryPolicy(initial_interval=timedelta(milliseconds=1), maximum_attempts=3, jitter=0)
SAY_HELLO = "/durable_examples.hello.v1.HelloService/SayHello"


@pytest.fixture
def spans() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    provider = TracerProvider()
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


class Journal:
    """In-memory journal that feeds the machine, keeps submissions and reports suspension."""

    def __init__(self, machine: ReplayMachine) -> None:
        self.machine = machine
        self.entries: list[pb.JournalEntry] = []
        self.submissions: list[Submission] = []
        self.suspended = asyncio.Event()

    async def append_step(self, entry: pb.JournalEntry, *, defer: bool = False) -> None:
        stored = pb.JournalEntry()
        stored.CopyFrom(entry)
        self.entries.append(stored)
        self.machine.record(stored)

    async def settle(self) -> None:
        pass  # nothing is deferred here

    async def submit(self, submission: Submission) -> None:
        self.submissions.append(submission)

    def request_suspend(self, waits: Sequence[Wait]) -> None:
        self.suspended.set()

    def cancelling(self) -> bool:
        return False

    def check_step(self) -> None:
        pass

    def fence(self) -> int:
        return 7


class Channels:
    """ChannelPool stand-in recording the metadata of each call."""

    def __init__(self, answer: Callable[[Any], Any]) -> None:
        self.answer = answer
        self.metadata: list[dict[str, str]] = []

    def callable_for(self, method: MethodRef[Any, Any]) -> Callable[..., Awaitable[Any]]:
        async def invoke(request: Any, timeout: float | None = None, metadata: Any = None) -> Any:
            self.metadata.append(dict(metadata or ()))
            return self.answer(request)

        return invoke


def make_ctx(
    icp: TracingInterceptor,
    entries: Sequence[pb.JournalEntry] = (),
    channels: Channels | None = None,
) -> tuple[RunContext, Journal]:
    machine = ReplayMachine("inv-1", list(entries))
    journal = Journal(machine)
    ctx = RunContext(
        invocation_id="inv-1",
        workflow="wf",
        partition_key="pk",
        machine=machine,
        journal=journal,
        channels=channels,  # type: ignore[arg-type]
        start_time_ms=1_700_000_000_000,
        interceptors=[icp],
    )
    return ctx, journal


async def run_workflow(
    icp: TracingInterceptor,
    body: Callable[[], Awaitable[Any]],
    headers: dict[str, str] | None = None,
    *,
    resumed: bool = False,
) -> Any:
    async def last(_: WorkflowInput) -> Any:
        return await body()

    run = chain_workflows([icp], last)
    return await run(WorkflowInput("inv-1", "wf", "pk", 1, headers or {}, resumed=resumed))


def by_name(exporter: InMemorySpanExporter) -> dict[str, list[ReadableSpan]]:
    out: dict[str, list[ReadableSpan]] = {}
    for span in exporter.get_finished_spans():
        out.setdefault(span.name, []).append(span)
    return out


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def traceparent_of(span: ReadableSpan) -> str:
    """The W3C traceparent of a span, up to its flags."""
    return f"00-{format_trace_id(span.context.trace_id)}-{format_span_id(span.context.span_id)}-"


def greet(request: HelloRequest) -> HelloResponse:
    return HelloResponse(message=f"Hello, {request.name}!")


# -- runs and calls ---------------------------------------------------------------------------


async def test_run_joins_the_incoming_trace_and_the_call_carries_its_own_span(
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = spans
    icp = TracingInterceptor(provider)
    client_span = provider.get_tracer("test").start_span("client")
    headers: dict[str, str] = {}
    propagate.inject(headers, context=trace.set_span_in_context(client_span))
    client_span.end()
    channels = Channels(greet)
    ctx, _ = make_ctx(icp, channels=channels)

    async def body() -> str:
        resp = await ctx.call(hello.SayHello, HelloRequest(name="Ada"))
        return resp.message

    assert await run_workflow(icp, body, headers) == "Hello, Ada!"

    named = by_name(exporter)
    (run,) = named["durable.workflow wf"]
    (call,) = named["durable.call durable_examples.hello.v1.HelloService/SayHello"]
    trace_id = client_span.get_span_context().trace_id
    assert run.context.trace_id == call.context.trace_id == trace_id
    assert parent_of(run) == client_span.get_span_context().span_id
    assert parent_of(call) == run.context.span_id
    assert run.kind == SpanKind.CONSUMER and call.kind == SpanKind.CLIENT
    assert dict(run.attributes or {}) == {
        "durable.invocation_id": "inv-1",
        "durable.workflow": "wf",
        "durable.partition_key": "pk",
        "durable.attempt": 1,
        "durable.resumed": False,
        "durable.outcome": "completed",
    }
    attrs = dict(call.attributes or {})
    assert attrs["durable.invocation_id"] == "inv-1"
    assert attrs["durable.step"] == 1
    assert attrs["durable.step.kind"] == "call"
    assert attrs["durable.step.name"] == SAY_HELLO
    assert attrs["durable.attempt"] == 1
    assert attrs["durable.replayed"] is False
    assert attrs["rpc.system"] == "grpc"
    assert attrs["rpc.service"] == "durable_examples.hello.v1.HelloService"
    assert attrs["rpc.method"] == "SayHello"
    # The service sees the call's span as its parent, next to the idempotency key.
    (sent,) = channels.metadata
    assert sent["idempotency-key"] == "inv-1:1"
    assert sent["traceparent"].startswith(traceparent_of(call))


async def test_replayed_steps_make_no_spans(
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = spans
    icp = TracingInterceptor(provider)
    ran: list[str] = []

    def work(name: str) -> str:
        ran.append(name)
        return name

    first, journal = make_ctx(icp)

    async def body_first() -> None:
        await first.run("one", work, "one")

    await run_workflow(icp, body_first)
    assert [s.name for s in exporter.get_finished_spans()] == [
        "durable.run one",
        "durable.workflow wf",
    ]
    exporter.clear()

    second, _ = make_ctx(icp, entries=journal.entries)

    async def body_second() -> None:
        await second.run("one", work, "one")  # read back from the journal
        await second.run("two", work, "two")  # executed

    await run_workflow(icp, body_second, resumed=True)
    assert ran == ["one", "two"]
    named = by_name(exporter)
    assert "durable.run one" not in named
    (two,) = named["durable.run two"]
    assert dict(two.attributes or {})["durable.step"] == 2
    (run,) = named["durable.workflow wf"]
    assert dict(run.attributes or {})["durable.resumed"] is True


async def test_each_attempt_is_a_span_and_failed_attempts_are_errors(
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = spans
    icp = TracingInterceptor(provider)
    ctx, _ = make_ctx(icp)
    tries = 0

    def flaky() -> str:
        nonlocal tries
        tries += 1
        if tries == 1:
            raise RuntimeError("first try fails")
        return "ok"

    async def body() -> str:
        return await ctx.run("flaky", flaky, retry=FAST)

    assert await run_workflow(icp, body) == "ok"
    attempts = sorted(by_name(exporter)["durable.run flaky"], key=lambda s: s.start_time or 0)
    assert [dict(s.attributes or {})["durable.attempt"] for s in attempts] == [1, 2]
    assert attempts[0].status.status_code == StatusCode.ERROR
    assert attempts[0].events[0].name == "exception"
    assert attempts[1].status.status_code == StatusCode.UNSET


async def test_a_failed_workflow_is_an_error_and_a_suspended_one_is_not(
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = spans
    icp = TracingInterceptor(provider)
    ctx, _ = make_ctx(icp)

    async def failing() -> None:
        await ctx.run("boom", _raise_terminal)

    with pytest.raises(StepFailedError):
        await run_workflow(icp, failing)
    (failed,) = by_name(exporter)["durable.workflow wf"]
    assert failed.status.status_code == StatusCode.ERROR
    assert dict(failed.attributes or {})["durable.outcome"] == "failed"
    exporter.clear()

    async def parked() -> None:
        await asyncio.Future()

    task = asyncio.ensure_future(run_workflow(icp, parked))
    await asyncio.sleep(0.01)
    task.cancel()  # what the engine does when every step is parked
    with pytest.raises(asyncio.CancelledError):
        await task
    (suspended,) = by_name(exporter)["durable.workflow wf"]
    assert suspended.status.status_code == StatusCode.UNSET
    assert dict(suspended.attributes or {})["durable.outcome"] == "suspended"


def _raise_terminal() -> None:
    from durable_core import TerminalError

    raise TerminalError("no")


# -- waits, children, sends, state ------------------------------------------------------------


async def test_waits_children_and_sends_are_spans_once_and_children_join_the_trace(
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = spans
    icp = TracingInterceptor(provider)
    ctx, journal = make_ctx(icp)

    async def body() -> None:
        await ctx.start("child_wf", {"n": 1})
        await ctx.send("other_wf", {"n": 2})
        await ctx.set("cart", [1])
        aw = ctx.awakeable()
        await asyncio.gather(ctx.sleep(timedelta(hours=1)), aw.result(), ctx.wait_for_signal("go"))

    task = asyncio.ensure_future(run_workflow(icp, body))
    await asyncio.wait_for(journal.suspended.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    named = by_name(exporter)
    kinds = {
        dict(s.attributes or {})["durable.step.kind"]: s
        for s in exporter.get_finished_spans()
        if s.name != "durable.workflow wf"
    }
    assert set(kinds) == {"child", "send", "state", "sleep", "awakeable", "signal"}
    assert set(named) == {
        "durable.workflow wf",
        "durable.child child_wf",
        "durable.send other_wf",
        "durable.state cart",
        "durable.sleep",
        "durable.awakeable awk.inv-1.1",
        "durable.signal go",
    }
    assert kinds["child"].kind == SpanKind.PRODUCER and kinds["sleep"].kind == SpanKind.INTERNAL
    assert [dict(s.attributes or {})["durable.step"] for s in kinds.values()] == [1, 2, 3, 4, 5, 6]
    (run,) = named["durable.workflow wf"]
    assert all(parent_of(s) == run.context.span_id for s in kinds.values())
    # The child's and the sent invocation's runs will continue the trace from these spans.
    child, sent = journal.submissions
    for submission, span in ((child, kinds["child"]), (sent, kinds["send"])):
        assert submission.headers["traceparent"].startswith(traceparent_of(span))
    assert _trace_id(child.headers) == format_trace_id(run.context.trace_id)

    # A later run (the wake-up) reads all six back: no new step spans.
    exporter.clear()
    again, _ = make_ctx(icp, entries=journal.entries)

    async def replay() -> None:
        await again.start("child_wf", {"n": 1})
        await again.send("other_wf", {"n": 2})
        await again.set("cart", [1])

    await run_workflow(icp, replay, resumed=True)
    assert [s.name for s in exporter.get_finished_spans()] == ["durable.workflow wf"]


# -- engine control flow -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "outcome"),
    [
        (None, "completed"),
        (asyncio.CancelledError(), "suspended"),
        (LostClaim([]), "abandoned"),
        (Finished(), "abandoned"),
        (Rerun(), "abandoned"),
        (NotIdle(), "abandoned"),
        (EngineFailure(ConnectionError("gone")), "abandoned"),
        (SuspendExecution("any engine signal"), "abandoned"),
        (BadInputError("bad input"), "failed"),
        (StepFailedError("x", step=1, name="n"), "failed"),
        (RuntimeError("user code"), "failed"),
    ],
)
def test_outcome_of_knows_the_engines_control_flow(exc: BaseException | None, outcome: str) -> None:
    assert outcome_of(exc) == outcome


def test_every_engine_signal_is_a_suspend_execution_that_except_exception_cannot_catch() -> None:
    for signal in (LostClaim, Finished, NotIdle, Rerun, EngineFailure):
        assert issubclass(signal, SuspendExecution), signal
        assert not issubclass(signal, Exception), signal


def test_trace_id_of_a_traceparent() -> None:
    tid = "4bf92f3577b34da6a3ce929d0e0e4736"
    assert _trace_id({"traceparent": f"00-{tid}-00f067aa0ba902b7-01"}) == tid
    assert _trace_id({}) == "" and _trace_id({"traceparent": "garbage"}) == ""


# -- the client starts the trace ---------------------------------------------------------------


class SubmitRecorder:
    """Transport stand-in for Client._submit: keeps the state and command it is given."""

    def __init__(self) -> None:
        self.engine = EngineConfig()
        self.payload_limit = self.engine.max_payload
        self.payloads = None  # no large values here: everything stays inline
        self.states: list[pb.ExecutionState] = []
        self.commands: list[pb.Command] = []

    @property
    def submitted(self) -> list[tuple[pb.ExecutionState, pb.Command]]:
        return list(zip(self.states, self.commands, strict=True))

    async def create_state(self, state: pb.ExecutionState) -> StateRecord:
        self.states.append(state)
        return StateRecord(state, 1)  # created (None would mean "the id existed")

    async def publish_command(self, cmd: pb.Command, *, msg_id: str) -> bool:
        self.commands.append(cmd)
        return True


@pytest.fixture(scope="module")
def global_spans() -> InMemorySpanExporter:
    """The client uses the global provider: install an SDK one (once per process) and listen."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        trace.set_tracer_provider(TracerProvider())
        provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


async def test_client_starts_a_producer_span_and_sends_its_context(
    global_spans: InMemorySpanExporter,
) -> None:
    transport = SubmitRecorder()
    client = Client(transport)  # type: ignore[arg-type]
    await client.invoke_async(
        "hello_workflow", {"name": "Ada"}, id="inv-client-1", queue_unserved=True
    )

    (state, cmd) = transport.submitted[0]
    (span,) = [
        s for s in global_spans.get_finished_spans() if s.name == "durable.invoke hello_workflow"
    ]
    assert span.kind == SpanKind.PRODUCER and span.parent is None
    assert dict(span.attributes or {})["durable.invocation_id"] == "inv-client-1"
    assert dict(cmd.metadata) == dict(state.trace_context)
    assert state.trace_context["traceparent"].startswith(traceparent_of(span))
    assert state.trace_id == format_trace_id(span.context.trace_id)


async def test_client_joins_the_callers_trace(global_spans: InMemorySpanExporter) -> None:
    transport = SubmitRecorder()
    client = Client(transport)  # type: ignore[arg-type]
    with trace.get_tracer("app").start_as_current_span("handle request") as caller:
        await client.invoke_async("hello_workflow", None, id="inv-client-2", queue_unserved=True)

    (state, _) = transport.submitted[0]
    (span,) = [
        s
        for s in global_spans.get_finished_spans()
        if s.name == "durable.invoke hello_workflow"
        and dict(s.attributes or {})["durable.invocation_id"] == "inv-client-2"
    ]
    assert span.parent is not None and span.parent.span_id == caller.get_span_context().span_id
    assert state.trace_id == format_trace_id(caller.get_span_context().trace_id)


# -- waits: a span from park to wake (issue 17) ------------------------------------------------

T0_MS = 1_780_000_000_000


def _entry(kind: int, at: int, **kw: Any) -> pb.JournalEntry:
    return pb.JournalEntry(kind=kind, timestamp_ms=T0_MS + at, **kw)  # type: ignore[arg-type]


PARKED = [
    _entry(pb.ENTRY_KIND_RUN, 10, step=1, name="ask", duration_us=5000),
    _entry(pb.ENTRY_KIND_SLEEP, 20, step=2, name="sleep", wake_at_ms=T0_MS + 3_020),
    _entry(pb.ENTRY_KIND_AWAKEABLE, 20, step=3, name="awk.inv.1"),
    _entry(pb.ENTRY_KIND_SUSPENDED, 21),
    _entry(
        pb.ENTRY_KIND_AWAKEABLE_RESULT,
        1_500,
        name="awk.inv.1",
        failure=pb.Failure(type="AwakeableRejectedError", message="no"),
    ),
]


def test_a_wake_up_ends_the_waits_begun_before_the_suspension() -> None:
    """A sleep's span covered only its journaling, not the wait: now the wake-up run draws
    each wait from the moment it began to the moment it completed."""
    now = datetime.fromtimestamp((T0_MS + 3_100) / 1000, tz=UTC)
    ended = {w.name: w for w in waits_ended("inv", PARKED, now)}
    assert set(ended) == {"durable.wait sleep", "durable.wait awakeable awk.inv.1"}
    sleep = ended["durable.wait sleep"]
    assert (sleep.start_ns, sleep.end_ns) == ((T0_MS + 20) * 10**6, (T0_MS + 3_020) * 10**6)
    assert ended["durable.wait awakeable awk.inv.1"].outcome == "failed"
    early = datetime.fromtimestamp((T0_MS + 1_600) / 1000, tz=UTC)  # sleep due in 1.4 s
    assert {w.name for w in waits_ended("inv", PARKED, early)} == set(ended)
    # The wake-up run's own claim is no obstacle; a second one (a run took over) or a step is.
    claim = _entry(pb.ENTRY_KIND_CLAIM, 3_050)
    assert len(waits_ended("inv", [*PARKED, claim], now)) == 2
    assert waits_ended("inv", [*PARKED, claim, claim], now) == []
    step = _entry(pb.ENTRY_KIND_RUN, 3_060, step=4, name="x")
    assert waits_ended("inv", [*PARKED, claim, step], now) == []
    assert waits_ended("inv", PARKED[:3], now) == []  # never suspended


async def test_the_interceptor_emits_each_wait_once(
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = spans
    icp = TracingInterceptor(provider)
    parent = trace.get_tracer("t", tracer_provider=provider).start_span("durable.invoke wf")
    headers: dict[str, str] = {}
    propagate.inject(headers, context=trace.set_span_in_context(parent))
    inp = WorkflowInput("inv", "wf", "inv", 1, headers, resumed=True, journal=PARKED)

    async def body(_: WorkflowInput) -> str:
        return "done"

    await icp.intercept_workflow(inp, body)
    await icp.intercept_workflow(inp, body)  # a rerun of the same wake-up in this process
    waits = [s for s in exporter.get_finished_spans() if s.name.startswith("durable.wait")]
    assert sorted(s.name for s in waits) == [
        "durable.wait awakeable awk.inv.1",
        "durable.wait sleep",
    ]
    sleep = next(s for s in waits if s.name == "durable.wait sleep")
    assert sleep.start_time == (T0_MS + 20) * 10**6 and sleep.end_time == (T0_MS + 3_020) * 10**6
    assert sleep.parent is not None and sleep.parent.span_id == parent.get_span_context().span_id
    assert sleep.attributes is not None and sleep.attributes["durable.step"] == 2


def test_an_invocation_gets_a_trace_id_without_an_sdk() -> None:
    """Runs started from the CLI (no SDK) stored no trace id, and the processors started a new
    trace for every run: now a sampled context is made up and sent with the invocation."""
    carrier, trace_id = _trace_context(trace.NonRecordingSpan(trace.INVALID_SPAN_CONTEXT))
    version, sent_trace, span_id, flags = carrier["traceparent"].split("-")
    assert sent_trace == trace_id and len(trace_id) == 32 and int(trace_id, 16)
    assert flags == "01" and int(span_id, 16)  # sampled: the processors record their spans
