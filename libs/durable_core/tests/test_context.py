"""Context over an in-memory journal: journaling order, replay, determinism, retries."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import grpc.aio
import pytest

from durable_core import (
    InvalidInputError,
    NonDeterminismError,
    RetryableError,
    RetryPolicy,
    StepFailedError,
    TerminalError,
    _codec,
    grpc_service,
)
from durable_core._grpc import MethodRef
from durable_core._journal import ReplayMachine, Wait
from durable_core._pb.durable.v1 import durable_pb2 as pb
from durable_core.engine._context import RunContext
from durable_core.engine._signals import LostHold
from durable_core.interceptors import Interceptor, StepInput, StepNext
from durable_examples.hello.v1.hello_pb2 import HelloRequest, HelloResponse
from durable_examples.hello.v1.hello_pb2_grpc import HelloServiceStub

hello = grpc_service(HelloServiceStub)
FAST = RetryPolicy(initial_interval=timedelta(milliseconds=1), maximum_attempts=3, jitter=0)
START_MS = 1_700_000_000_000


class FakeJournal:
    """Records appended entries; ``events`` interleaves them with what the workflow logs."""

    def __init__(self, events: list[str] | None = None) -> None:
        self.journaled: list[pb.JournalEntry] = []
        self.pending: pb.JournalEntry | None = None  # a deferred outcome, as the engine's
        self.events = events if events is not None else []
        self.lost: LostHold | None = None  # set: the run no longer surely holds its command

    @property
    def entries(self) -> list[pb.JournalEntry]:
        """What is journaled, and the deferred outcome (the engine journals it at the latest
        with the run's next entry)."""
        return self.journaled + ([self.pending] if self.pending is not None else [])

    async def append_step(self, entry: pb.JournalEntry, *, defer: bool = False) -> None:
        await self.settle()
        if defer:
            self.pending = entry
            return
        await self._write(entry)

    async def settle(self) -> None:
        if self.pending is not None:
            entry, self.pending = self.pending, None
            await self._write(entry)

    async def _write(self, entry: pb.JournalEntry) -> None:
        await asyncio.sleep(0.01)  # a durable write takes time; the context must wait for it
        self.journaled.append(entry)
        self.events.append(f"journaled step {entry.step}")

    def check_step(self) -> None:
        if self.lost is not None:
            raise self.lost

    def fence(self) -> int:
        return len(self.journaled)  # the engine's: the journal's last sequence

    def diverged(self) -> None:
        self.events.append("diverged")

    def halted(self) -> bool:
        return False

    def stopping(self) -> bool:
        return False


class FakeChannels:
    """ChannelPool stand-in: one async callable per method, recording metadata."""

    def __init__(self, answer: Callable[[Any], Any]) -> None:
        self.answer = answer
        self.sent: list[tuple[str, Any, dict[str, str], float | None]] = []

    def callable_for(self, method: MethodRef[Any, Any]) -> Callable[..., Awaitable[Any]]:
        async def invoke(request: Any, timeout: float | None = None, metadata: Any = None) -> Any:
            self.sent.append((method.path, request, dict(metadata or ()), timeout))
            return self.answer(request)

        return invoke


def make_ctx(
    *,
    invocation_id: str = "inv-1",
    entries: list[pb.JournalEntry] | None = None,
    journal: FakeJournal | None = None,
    channels: FakeChannels | None = None,
    interceptors: Sequence[Interceptor] = (),
) -> tuple[RunContext, FakeJournal]:
    journal = journal or FakeJournal()
    ctx = RunContext(
        invocation_id=invocation_id,
        workflow="wf",
        partition_key="pk",
        machine=ReplayMachine(invocation_id, entries or []),
        journal=journal,
        channels=channels,  # type: ignore[arg-type]
        start_time_ms=START_MS,
        interceptors=interceptors,
    )
    return ctx, journal


def greet(request: HelloRequest) -> HelloResponse:
    return HelloResponse(message=f"Hello, {request.name}!")


# -- ctx.run -------------------------------------------------------------------------------------


async def test_a_steps_outcome_is_journaled_before_the_next_step_is_decided() -> None:
    events: list[str] = []
    ctx, journal = make_ctx(journal=FakeJournal(events))

    def side_effect() -> int:
        events.append("ran")
        return 41

    result = await ctx.run("answer", side_effect)
    events.append("next line of the workflow")
    await ctx.run("second", lambda: events.append("ran second"))

    assert result == 41
    # The outcome may wait for the run's next entry (the engine sends a last step and the
    # final entry in one batch), but never past the decision of the next step.
    assert events == ["ran", "next line of the workflow", "journaled step 1", "ran second"]
    entry, _ = journal.entries
    assert entry.kind == pb.ENTRY_KIND_RUN
    assert entry.name == "answer"
    assert _codec.decode(entry.output) == 41
    assert entry.attempts == 1


async def test_replay_returns_the_recorded_result_without_running_again() -> None:
    calls = 0

    def side_effect(x: int) -> dict[str, int]:
        nonlocal calls
        calls += 1
        return {"doubled": x * 2}

    first, journal = make_ctx()
    assert await first.run("double", side_effect, 21) == {"doubled": 42}
    assert calls == 1

    second, second_journal = make_ctx(entries=journal.entries)
    assert second.is_replaying
    assert await second.run("double", side_effect, 21) == {"doubled": 42}
    assert not second.is_replaying
    assert calls == 1  # replayed, not re-run
    assert second_journal.entries == []


async def test_replay_with_other_arguments_is_nondeterminism() -> None:
    first, journal = make_ctx()
    await first.run("double", lambda x: x * 2, 21)
    second, _ = make_ctx(entries=journal.entries)
    with pytest.raises(NonDeterminismError):
        await second.run("double", lambda x: x * 2, 22)


async def test_sync_step_runs_off_the_event_loop_and_async_step_is_awaited() -> None:
    ctx, _ = make_ctx()
    loop_thread = threading.get_ident()

    async def async_effect() -> str:
        await asyncio.sleep(0)
        return "async"

    assert await ctx.run("thread", threading.get_ident) != loop_thread
    assert await ctx.run("async", async_effect) == "async"


# -- deterministic helpers ---------------------------------------------------------------------


async def test_now_is_start_time_then_the_recorded_step_time_on_replay() -> None:
    recorded_ms = START_MS + 5_000
    step = pb.JournalEntry(kind=pb.ENTRY_KIND_RUN, step=1, name="a", timestamp_ms=recorded_ms)
    step.output.CopyFrom(_codec.encode(1))
    ctx, _ = make_ctx(entries=[step])

    assert ctx.now() == datetime.fromtimestamp(START_MS / 1000, tz=UTC)
    await ctx.run("a", lambda: 1)
    assert ctx.now() == datetime.fromtimestamp(recorded_ms / 1000, tz=UTC)
    assert ctx.now().tzinfo is UTC


async def test_now_after_an_executed_step_is_that_steps_journal_time() -> None:
    ctx, journal = make_ctx()
    await ctx.run("a", lambda: 1)
    after_first_run = ctx.now()
    assert after_first_run == datetime.fromtimestamp(journal.entries[0].timestamp_ms / 1000, tz=UTC)

    replay, _ = make_ctx(entries=journal.entries)
    await replay.run("a", lambda: 1)
    assert replay.now() == after_first_run


def test_uuid_and_random_are_seeded_by_the_invocation_id() -> None:
    a, _ = make_ctx(invocation_id="inv-1")
    b, _ = make_ctx(invocation_id="inv-1")
    other, _ = make_ctx(invocation_id="inv-2")

    a_values = [a.uuid(), a.uuid(), a.random(), a.random()]
    assert [b.uuid(), b.uuid(), b.random(), b.random()] == a_values
    assert [other.uuid(), other.uuid(), other.random(), other.random()] != a_values
    assert a_values[0] != a_values[1]  # successive calls differ
    assert a_values[0].version == 4
    assert all(0 <= x < 1 for x in a_values[2:])


# -- ctx.call ----------------------------------------------------------------------------------


async def test_call_sends_the_idempotency_key_of_its_step() -> None:
    channels = FakeChannels(greet)
    ctx, journal = make_ctx(invocation_id="inv-9", channels=channels)

    await ctx.run("first", lambda: None)
    response = await ctx.call(
        hello.SayHello, HelloRequest(name="Ada"), timeout=timedelta(seconds=2)
    )

    assert response == HelloResponse(message="Hello, Ada!")
    ((path, request, metadata, timeout),) = channels.sent
    assert path == "/durable_examples.hello.v1.HelloService/SayHello"
    assert request == HelloRequest(name="Ada")
    assert metadata["idempotency-key"] == "inv-9:2"
    # The fence: the journal as far as this run knows it when the call leaves (step 1 in it).
    assert metadata["durable-fence"] == "1"
    assert timeout == 2.0
    entry = journal.entries[-1]
    assert (entry.kind, entry.step, entry.name) == (pb.ENTRY_KIND_CALL, 2, path)
    assert entry.input_hash == _codec.input_hash(HelloRequest(name="Ada").SerializeToString())


async def test_a_hold_lost_while_an_interceptor_waited_stops_the_call_before_it_is_sent() -> None:
    """The hold is checked again after the interceptors, right before the call leaves: one
    that waited (a rate limiter, a slow exporter) while the command's hold lapsed must not
    let the call out, as another processor may be running the step by then."""
    channels = FakeChannels(greet)
    journal = FakeJournal()

    class Waits(Interceptor):
        async def intercept_step(self, inp: StepInput, nxt: StepNext) -> Any:
            journal.lost = LostHold("no in-progress ack answered in time")
            return await nxt(inp)

    ctx, _ = make_ctx(channels=channels, journal=journal, interceptors=[Waits()])
    with pytest.raises(LostHold):
        await ctx.call(hello.SayHello, HelloRequest(name="Ada"))
    assert channels.sent == []


async def test_call_retries_transient_grpc_errors_with_the_same_key() -> None:
    attempts = 0

    def flaky(request: HelloRequest) -> HelloResponse:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise grpc.aio.AioRpcError(
                grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "down"
            )
        return greet(request)

    channels = FakeChannels(flaky)
    ctx, journal = make_ctx(channels=channels)
    await ctx.call(hello.SayHello, HelloRequest(name="Ada"), retry=FAST)

    assert attempts == 2
    assert {md["idempotency-key"] for _, _, md, _ in channels.sent} == {"inv-1:1"}
    # The second attempt's fence is above the first's: its failure was journaled in between,
    # so a late copy of the first attempt is refused by a service that keeps the highest.
    assert [md["durable-fence"] for _, _, md, _ in channels.sent] == ["0", "1"]
    failed, done = journal.entries
    # The failed attempt is journaled (history, and the count survives a crash) ...
    assert (failed.kind, failed.step, failed.attempts) == (pb.ENTRY_KIND_ATTEMPT_FAILED, 1, 1)
    assert failed.failure.code == "UNAVAILABLE" and "down" in failed.failure.message
    assert failed.wake_at_ms >= failed.timestamp_ms
    # ... then the result of the attempt that worked.
    assert (done.kind, done.attempts) == (pb.ENTRY_KIND_CALL, 2)


async def test_call_fails_at_once_on_a_permanent_grpc_error() -> None:
    def invalid(request: HelloRequest) -> HelloResponse:
        raise grpc.aio.AioRpcError(
            grpc.StatusCode.INVALID_ARGUMENT, grpc.aio.Metadata(), grpc.aio.Metadata(), "bad"
        )

    channels = FakeChannels(invalid)
    ctx, journal = make_ctx(channels=channels)
    with pytest.raises(StepFailedError) as info:
        await ctx.call(hello.SayHello, HelloRequest(name="Ada"), retry=FAST)

    assert info.value.code == "INVALID_ARGUMENT"
    assert len(channels.sent) == 1
    assert journal.entries[0].failure.code == "INVALID_ARGUMENT"


async def test_replayed_call_is_not_sent() -> None:
    channels = FakeChannels(greet)
    first, journal = make_ctx(channels=channels)
    await first.call(hello.SayHello, HelloRequest(name="Ada"))

    replay, _ = make_ctx(entries=journal.entries, channels=channels)
    response = await replay.call(hello.SayHello, HelloRequest(name="Ada"))
    assert response == HelloResponse(message="Hello, Ada!")
    assert isinstance(response, HelloResponse)
    assert len(channels.sent) == 1


async def test_call_rejects_something_that_is_not_a_method() -> None:
    ctx, _ = make_ctx(channels=FakeChannels(greet))
    with pytest.raises(TypeError, match="grpc_service"):
        await ctx.call("SayHello", HelloRequest())  # type: ignore[arg-type]


async def test_call_without_channels_is_terminal() -> None:
    ctx, _ = make_ctx(channels=None)
    with pytest.raises(TerminalError, match="no gRPC channels"):
        await ctx.call(hello.SayHello, HelloRequest())


# -- failures and retries ------------------------------------------------------------------------


async def test_failing_run_retries_per_policy_then_fails_and_journals_the_failure() -> None:
    attempts = 0

    def broken() -> None:
        nonlocal attempts
        attempts += 1
        raise ValueError(f"broken #{attempts}")

    ctx, journal = make_ctx()
    started = time.monotonic()
    with pytest.raises(StepFailedError) as info:
        await ctx.run("broken", broken, retry=FAST)

    assert attempts == 3
    assert time.monotonic() - started < 1.0  # tiny intervals, not the default backoff
    err = info.value
    assert (err.step, err.name, err.error_type) == (1, "broken", "ValueError")
    assert "broken #3" in str(err)
    *failed, entry = journal.entries
    assert entry.HasField("failure") and not entry.HasField("output")
    assert (entry.failure.type, entry.failure.step, entry.attempts) == ("ValueError", 1, 3)
    # Every attempt's error is in the journal: the two retried ones and the last.
    assert [(e.kind, e.attempts, e.failure.message) for e in failed] == [
        (pb.ENTRY_KIND_ATTEMPT_FAILED, 1, "broken #1"),
        (pb.ENTRY_KIND_ATTEMPT_FAILED, 2, "broken #2"),
    ]


async def test_run_that_recovers_within_its_retries_succeeds() -> None:
    attempts = 0

    def flaky() -> str:
        nonlocal attempts
        attempts += 1
        if attempts < 3:
            raise RetryableError("not yet")
        return "done"

    ctx, journal = make_ctx()
    assert await ctx.run("flaky", flaky, retry=FAST) == "done"
    assert journal.entries[-1].attempts == 3
    assert not journal.entries[-1].HasField("failure")
    assert [e.attempts for e in journal.entries[:-1]] == [1, 2]  # the two that failed


async def test_terminal_error_is_not_retried() -> None:
    attempts = 0

    def refuse() -> None:
        nonlocal attempts
        attempts += 1
        raise TerminalError("card declined")

    ctx, journal = make_ctx()
    with pytest.raises(StepFailedError) as info:
        await ctx.run("charge", refuse, retry=FAST)
    assert attempts == 1
    assert info.value.error_type == "TerminalError"
    assert journal.entries[0].failure.message == "card declined"


async def test_non_retryable_errors_by_class_name_are_not_retried() -> None:
    attempts = 0

    def lookup() -> None:
        nonlocal attempts
        attempts += 1
        raise KeyError("missing")

    policy = RetryPolicy(
        initial_interval=timedelta(milliseconds=1), non_retryable_errors=("KeyError",)
    )
    ctx, _ = make_ctx()
    with pytest.raises(StepFailedError):
        await ctx.run("lookup", lookup, retry=policy)
    assert attempts == 1


async def test_replayed_failure_raises_again_without_running() -> None:
    ctx, journal = make_ctx()
    with pytest.raises(StepFailedError):
        await ctx.run("charge", _raise_terminal)

    replay, _ = make_ctx(entries=journal.entries)
    ran = False

    def must_not_run() -> None:
        nonlocal ran
        ran = True

    with pytest.raises(StepFailedError) as info:
        await replay.run("charge", must_not_run)
    assert not ran
    assert (info.value.step, info.value.error_type) == (1, "TerminalError")


def _raise_terminal() -> None:
    raise TerminalError("no")


async def test_caught_nondeterminism_is_still_recorded_on_the_context() -> None:
    recorded = pb.JournalEntry(kind=pb.ENTRY_KIND_RUN, step=1, name="charge")
    ctx, _ = make_ctx(entries=[recorded])
    assert ctx.steps.nondeterminism is None

    # A workflow swallowing the error must not hide it from the engine.
    with contextlib.suppress(NonDeterminismError):
        await ctx.run("refund", lambda: None)

    assert ctx.steps.nondeterminism is not None
    assert ctx.steps.nondeterminism.step == 1
    assert ctx.steps.nondeterminism.invocation_id == "inv-1"


def test_identity_properties() -> None:
    ctx, _ = make_ctx(invocation_id="inv-3")
    assert (ctx.invocation_id, ctx.workflow, ctx.partition_key) == ("inv-3", "wf", "pk")
    assert not ctx.is_replaying


async def test_a_result_the_engine_cannot_store_does_not_rerun_the_side_effect() -> None:
    runs = 0

    def effect() -> datetime:
        nonlocal runs
        runs += 1
        return datetime.now(UTC)  # not JSON: the step cannot be journaled

    ctx, _ = make_ctx()
    with pytest.raises(StepFailedError, match="cannot store"):
        await ctx.run("effect", effect, retry=FAST)
    assert runs == 1


# -- retries across runs -----------------------------------------------------------------------


class SuspendingJournal(FakeJournal):
    """Also records what the context asked to be woken up for."""

    def __init__(self) -> None:
        super().__init__()
        self.waits: list[Wait] = []

    def request_suspend(self, waits: Sequence[Wait]) -> None:
        self.waits = list(waits)

    def cancelling(self) -> bool:
        return False


def _failed_attempt(step: int, name: str, attempt: int, due_ms: int) -> pb.JournalEntry:
    return pb.JournalEntry(
        kind=pb.ENTRY_KIND_ATTEMPT_FAILED,
        step=step,
        name=name,
        attempts=attempt,
        wake_at_ms=due_ms,
        failure=pb.Failure(type="ValueError", message=f"broken #{attempt}", step=step),
    )


async def test_attempts_journaled_by_an_earlier_run_count_towards_the_policy() -> None:
    calls = 0

    def broken() -> None:
        nonlocal calls
        calls += 1
        raise ValueError("still broken")

    # Two attempts failed before a crash; the policy allows three: one more, then it fails.
    earlier = [_failed_attempt(1, "broken", n, 0) for n in (1, 2)]
    ctx, journal = make_ctx(entries=earlier)
    with pytest.raises(StepFailedError):
        await ctx.run("broken", broken, retry=FAST)
    assert calls == 1
    (entry,) = journal.entries
    assert (entry.kind, entry.attempts) == (pb.ENTRY_KIND_RUN, 3)


async def test_a_long_backoff_parks_the_step_on_a_server_side_timer() -> None:
    journal = SuspendingJournal()
    ctx, _ = make_ctx(journal=journal)
    slow = RetryPolicy(
        initial_interval=timedelta(seconds=30),
        maximum_interval=timedelta(minutes=1),
        maximum_attempts=3,
        jitter=0,
    )

    def broken() -> None:
        raise ValueError("down")

    run = asyncio.ensure_future(ctx.run("broken", broken, retry=slow))
    for _ in range(100):
        await asyncio.sleep(0.01)
        if journal.waits:
            break
    (wait,) = journal.waits  # parked: the engine suspends and arms a timer
    (failed,) = journal.entries
    assert failed.kind == pb.ENTRY_KIND_ATTEMPT_FAILED and failed.attempts == 1
    assert (wait.step, wait.wake_at_ms, wait.tag) == (1, failed.wake_at_ms, "a2")
    assert 29_000 < failed.wake_at_ms - failed.timestamp_ms <= 30_000
    assert not run.done()
    run.cancel()


async def test_a_retry_due_already_runs_at_once_on_replay() -> None:
    ok = []
    earlier = [_failed_attempt(1, "flaky", 1, due_ms=1)]  # due long ago (the timer fired)
    ctx, journal = make_ctx(entries=earlier)
    assert await ctx.run("flaky", lambda: ok.append(1) or "fine", retry=FAST) == "fine"
    assert ok == [1]
    assert journal.entries[-1].attempts == 2


def test_the_public_context_is_only_the_workflow_api() -> None:
    # The user's Context is abstract and shows nothing of the engine: the run's state
    # (non-determinism, cancellation, children, parked waits) lives on the engine's side.
    from durable_core import Context

    public = {n for n in dir(Context) if not n.startswith("_")}
    assert public == {
        "awakeable", "call", "clear", "get", "invocation_id", "invoke", "is_replaying",
        "now", "partition_key", "patched", "random", "run", "send", "set", "sleep", "start",
        "uuid",
        "wait_for_signal", "workflow",
    }  # fmt: skip
    with pytest.raises(TypeError):
        Context()  # type: ignore[abstract]
    ctx, _ = make_ctx()
    for leaked in ("nondeterminism", "cancel_delivered", "children", "_parked"):
        assert not hasattr(ctx, leaked)


# -- ctx.patched -----------------------------------------------------------------------------------


async def patched_workflow(ctx: RunContext) -> list[str]:
    first = await ctx.run("first", lambda: "one")
    if ctx.patched("rename-second"):
        second = await ctx.run("second_v2", lambda: "two (new)")
    else:
        second = await ctx.run("second", lambda: "two (old)")
    assert ctx.patched("rename-second") is ctx.patched("rename-second")  # one answer per run
    return [first, second]


async def test_patched_fresh_journals_a_marker_before_the_next_step_and_takes_the_new_branch() -> (
    None
):
    ctx, journal = make_ctx()
    assert await patched_workflow(ctx) == ["one", "two (new)"]
    kinds = [(e.kind, e.step, e.name) for e in journal.entries]
    assert kinds == [
        (pb.ENTRY_KIND_RUN, 1, "first"),
        (pb.ENTRY_KIND_PATCH, 2, "rename-second"),  # no step: it names the step after it
        (pb.ENTRY_KIND_RUN, 2, "second_v2"),
    ]


async def test_patched_replays_the_branch_the_journal_recorded() -> None:
    # Recorded by code from before the change: no marker, step 2 is the old one.
    old = [
        pb.JournalEntry(kind=pb.ENTRY_KIND_RUN, step=1, name="first", output=_codec.encode("one")),
        pb.JournalEntry(
            kind=pb.ENTRY_KIND_RUN, step=2, name="second", output=_codec.encode("recorded old")
        ),
    ]
    ctx, journal = make_ctx(entries=old)
    assert await patched_workflow(ctx) == ["one", "recorded old"]
    assert journal.entries == []  # nothing new: no marker for an old run
    # Recorded by the new code: the marker is there, step 2 is the new one.
    new = [old[0], pb.JournalEntry(kind=pb.ENTRY_KIND_PATCH, step=2, name="rename-second")]
    new.append(
        pb.JournalEntry(
            kind=pb.ENTRY_KIND_RUN, step=2, name="second_v2", output=_codec.encode("recorded new")
        )
    )
    ctx, journal = make_ctx(entries=new)
    assert await patched_workflow(ctx) == ["one", "recorded new"]
    assert journal.entries == []


async def test_patched_past_the_recorded_steps_takes_the_new_branch() -> None:
    # An old run that stopped (asleep, say) before the changed code is not bound to the old
    # branch: nothing recorded contradicts the new one.
    first = pb.JournalEntry(
        kind=pb.ENTRY_KIND_RUN, step=1, name="first", output=_codec.encode("one")
    )
    ctx, journal = make_ctx(entries=[first])
    assert await patched_workflow(ctx) == ["one", "two (new)"]
    assert [e.kind for e in journal.entries] == [pb.ENTRY_KIND_PATCH, pb.ENTRY_KIND_RUN]


async def test_patched_refuses_a_bad_change_id() -> None:
    ctx, _ = make_ctx()
    for bad in ("", "x" * 257, 3):
        with pytest.raises(InvalidInputError):
            ctx.patched(bad)  # type: ignore[arg-type]


async def test_a_diverged_replay_tells_the_journal_before_the_workflow_sees_it() -> None:
    recorded = pb.JournalEntry(kind=pb.ENTRY_KIND_RUN, step=1, name="old", output=_codec.encode(1))
    events: list[str] = []
    ctx, _ = make_ctx(entries=[recorded], journal=FakeJournal(events))
    with pytest.raises(NonDeterminismError):
        await ctx.run("new", lambda: 1)
    assert events == ["diverged"]


async def test_only_trace_keys_grpc_takes_are_passed_on() -> None:
    """The invocation's trace context goes out with each call, keys lower case (as HTTP/2
    has them): one in upper case, as AWS X-Ray's propagator writes it, failed every call of
    the invocation."""
    channels = FakeChannels(greet)
    ctx, _ = make_ctx(channels=channels)
    ctx.pass_on(
        {
            "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "X-Amzn-Trace-Id": "Root=1-5759e988-bd862e3fe1be46a994272793",
            "idempotency-key": "forged",
        }
    )
    await ctx.call(hello.SayHello, HelloRequest(name="Ada"))
    ((_, _, metadata, _),) = channels.sent
    assert metadata["traceparent"].startswith("00-0af7")
    assert "X-Amzn-Trace-Id" not in metadata and metadata["x-amzn-trace-id"].startswith("Root=")
    assert metadata["idempotency-key"] != "forged"
