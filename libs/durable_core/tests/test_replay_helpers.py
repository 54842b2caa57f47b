"""durable_core.testing's journal replayer: entries as the engine writes them, and runs."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import grpc.aio
import pytest

from durable_core import (
    ConfigError,
    Context,
    InvalidInputError,
    NonDeterminismError,
    RetryPolicy,
    StepFailedError,
    _codec,
    grpc_service,
)
from durable_core._pb.durable.v1 import durable_pb2 as pb
from durable_core.testing import (
    RecordedCall,
    WorkflowRun,
    call_entry,
    failed_entry,
    patch_entry,
    replay_workflow,
    run_entry,
)
from durable_examples.hello.v1.hello_pb2 import HelloRequest, HelloResponse
from durable_examples.hello.v1.hello_pb2_grpc import HelloServiceStub

hello = grpc_service(HelloServiceStub)
SAY_HELLO = "/durable_examples.hello.v1.HelloService/SayHello"
FAST = RetryPolicy(initial_interval=timedelta(milliseconds=1), maximum_attempts=2, jitter=0)


def greet(request: HelloRequest) -> HelloResponse:
    return HelloResponse(message=f"Hello, {request.name}!")


async def greet_twice(ctx: Context, args: dict[str, str]) -> list[str]:
    first = await ctx.call(hello.SayHello, HelloRequest(name=args["a"]))
    second = await ctx.call(hello.SayHello, HelloRequest(name=args["b"]))
    return [first.message, second.message]


async def add(ctx: Context, args: list[int]) -> int:
    total = 0
    for i, n in enumerate(args):
        total = await ctx.run(f"add-{i}", lambda n=n, t=total: t + n)
    return total


# -- building entries ----------------------------------------------------------------------------


def test_call_entry_is_a_call_step_holding_the_response() -> None:
    entry = call_entry(hello.SayHello, HelloResponse(message="hi"))
    assert entry.kind == pb.ENTRY_KIND_CALL
    assert entry.name == SAY_HELLO
    assert entry.step == 0  # numbered by replay_workflow
    assert entry.input_hash == b""  # request not given: not checked
    assert _codec.decode(entry.output) == HelloResponse(message="hi")
    assert not entry.HasField("failure")


def test_call_entry_hashes_the_serialized_request() -> None:
    entry = call_entry(hello.SayHello, HelloResponse(), request=HelloRequest(name="Ada"), step=4)
    assert entry.input_hash == _codec.input_hash(HelloRequest(name="Ada").SerializeToString())
    assert entry.step == 4


def test_call_entry_checks_its_arguments() -> None:
    with pytest.raises(TypeError, match="returns HelloResponse, not HelloRequest"):
        call_entry(hello.SayHello, HelloRequest())
    with pytest.raises(TypeError, match="grpc_service"):
        call_entry("SayHello", HelloResponse())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="start at 1"):
        call_entry(hello.SayHello, HelloResponse(), step=0)


def test_run_entry_holds_the_encoded_value() -> None:
    entry = run_entry("pick", {"n": 3}, step=2)
    assert (entry.kind, entry.name, entry.step) == (pb.ENTRY_KIND_RUN, "pick", 2)
    assert _codec.decode(entry.output) == {"n": 3}
    assert entry.input_hash == b""
    assert run_entry("nothing", None).output.encoding == pb.ENCODING_UNSPECIFIED


def test_run_entry_rejects_a_value_the_engine_cannot_store() -> None:
    with pytest.raises(InvalidInputError):
        run_entry("when", datetime.now())


def test_failed_entry_for_a_call_and_for_a_run() -> None:
    call = failed_entry(hello.SayHello, "down", code="UNAVAILABLE", error_type="AioRpcError")
    assert (call.kind, call.name) == (pb.ENTRY_KIND_CALL, SAY_HELLO)
    assert (call.failure.message, call.failure.code, call.failure.type) == (
        "down",
        "UNAVAILABLE",
        "AioRpcError",
    )
    assert not call.HasField("output")

    run = failed_entry("charge", "declined", step=3)
    assert (run.kind, run.name, run.step, run.failure.step) == (pb.ENTRY_KIND_RUN, "charge", 3, 3)
    assert run.failure.type == "TerminalError"


def test_failed_entry_rejects_mismatched_arguments() -> None:
    with pytest.raises(TypeError):
        failed_entry("charge", "x", code="UNAVAILABLE")
    with pytest.raises(TypeError):
        failed_entry("charge", "x", request=HelloRequest())
    with pytest.raises(TypeError):
        failed_entry(hello.SayHello, "x", args=[1])


# -- entries match what the engine writes --------------------------------------------------------


async def test_call_entry_matches_what_an_executed_call_journals() -> None:
    run = await replay_workflow(greet_twice, {"a": "Ada", "b": "Bob"}, calls={"SayHello": greet})
    written = run.new_entries[0]
    built = call_entry(
        hello.SayHello, HelloResponse(message="Hello, Ada!"), request=HelloRequest(name="Ada")
    )
    assert (built.kind, built.name, built.input_hash, built.output) == (
        written.kind,
        written.name,
        written.input_hash,
        written.output,
    )


@pytest.mark.parametrize(
    ("args", "kwargs"), [((), {}), ((2, "x"), {}), ((), {"k": [1]}), ((1,), {"k": None})]
)
async def test_run_entry_matches_what_an_executed_run_journals(
    args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    async def wf(ctx: Context) -> Any:
        return await ctx.run("step", lambda *a, **k: "value", *args, **kwargs)

    run = await replay_workflow(wf)
    written = run.new_entries[0]
    built = run_entry("step", "value", args=args, kwargs=kwargs)
    assert (built.kind, built.name, built.input_hash, built.output) == (
        written.kind,
        written.name,
        written.input_hash,
        written.output,
    )
    # And the built entry replays: its hash is the one the context computes.
    replayed = await replay_workflow(wf, journal=[built])
    assert (replayed.output, replayed.replayed_steps) == ("value", 1)


async def test_failed_entry_matches_what_a_failed_run_journals() -> None:
    def refuse(x: int) -> None:
        raise ValueError("nope")

    async def wf(ctx: Context) -> None:
        await ctx.run("refuse", refuse, 1, retry=FAST)

    run = await replay_workflow(wf, raise_on_error=False)
    written = run.new_entries[-1]
    built = failed_entry("refuse", "nope", error_type="ValueError", args=[1], step=1)
    assert (built.kind, built.name, built.input_hash, built.failure) == (
        written.kind,
        written.name,
        written.input_hash,
        written.failure,
    )


# -- replaying and executing ---------------------------------------------------------------------


async def test_recorded_steps_replay_and_the_rest_execute() -> None:
    run = await replay_workflow(
        greet_twice,
        {"a": "Ada", "b": "Bob"},
        journal=[call_entry(hello.SayHello, HelloResponse(message="recorded"))],
        calls={"SayHello": greet},
    )
    assert run.output == ["recorded", "Hello, Bob!"]
    assert (run.replayed_steps, run.executed_steps) == (1, 1)
    assert run.calls == (RecordedCall(SAY_HELLO, HelloRequest(name="Bob"), run.calls[0].metadata),)
    assert run.calls[0].metadata["idempotency-key"] == "test-invocation:2"
    (entry,) = run.new_entries
    assert (entry.step, entry.index) == (2, 2)  # numbered after the given journal
    assert run.error is None


async def test_a_full_journal_makes_no_calls() -> None:
    journal = [
        call_entry(hello.SayHello, HelloResponse(message="one")),
        call_entry(hello.SayHello, HelloResponse(message="two")),
    ]
    run = await replay_workflow(greet_twice, {"a": "A", "b": "B"}, journal=journal)
    assert run.output == ["one", "two"]
    assert (run.replayed_steps, run.executed_steps, run.calls, run.new_entries) == (2, 0, (), ())


async def test_fakes_are_found_by_path_or_method_name_and_may_be_async() -> None:
    async def slow_greet(request: HelloRequest) -> HelloResponse:
        await asyncio.sleep(0)
        return HelloResponse(message="by path")

    by_path = await replay_workflow(
        greet_twice,
        {"a": "A", "b": "B"},
        calls={SAY_HELLO: slow_greet, "SayHello": greet},  # the path wins
    )
    assert by_path.output == ["by path", "by path"]


async def test_metadata_carries_one_key_per_step_and_a_chosen_invocation_id() -> None:
    run = await replay_workflow(
        greet_twice, {"a": "A", "b": "B"}, calls={"SayHello": greet}, invocation_id="order-7"
    )
    keys = [call.metadata["idempotency-key"] for call in run.calls]
    assert keys == ["order-7:1", "order-7:2"]
    path, request, metadata = run.calls[0]  # a plain tuple too
    assert (path, request) == (SAY_HELLO, HelloRequest(name="A"))


async def test_a_missing_fake_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match=f"no fake for gRPC method {SAY_HELLO}") as info:
        await replay_workflow(greet_twice, {"a": "A", "b": "B"}, calls={"Other": greet})
    assert "'SayHello'" in str(info.value)
    assert "Other" in str(info.value)


async def test_a_fake_returning_the_wrong_type_fails_the_step_at_once() -> None:
    run = await replay_workflow(
        greet_twice,
        {"a": "A", "b": "B"},
        calls={"SayHello": lambda request: {"message": "dict"}},
        raise_on_error=False,
    )
    assert isinstance(run.error, StepFailedError)
    assert "must return HelloResponse" in str(run.error)
    assert len(run.calls) == 1  # not retried


async def test_a_failing_fake_is_retried_like_a_real_call() -> None:
    attempts = 0

    def flaky(request: HelloRequest) -> HelloResponse:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise grpc.aio.AioRpcError(
                grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "down"
            )
        return greet(request)

    async def wf(ctx: Context) -> str:
        response = await ctx.call(hello.SayHello, HelloRequest(name="Ada"), retry=FAST)
        return str(response.message)

    run = await replay_workflow(wf, calls={"SayHello": flaky})
    assert run.output == "Hello, Ada!"
    assert len(run.calls) == 2
    assert {c.metadata["idempotency-key"] for c in run.calls} == {"test-invocation:1"}
    assert run.new_entries[-1].attempts == 2


async def test_a_recorded_failure_raises_on_replay() -> None:
    journal = [failed_entry(hello.SayHello, "gone", code="NOT_FOUND", error_type="AioRpcError")]
    with pytest.raises(StepFailedError) as info:
        await replay_workflow(greet_twice, {"a": "A", "b": "B"}, journal=journal)
    assert (info.value.step, info.value.code, info.value.error_type) == (
        1,
        "NOT_FOUND",
        "AioRpcError",
    )


async def test_ctx_run_executes_for_real_unless_recorded() -> None:
    run = await replay_workflow(add, [1, 2, 3], journal=[run_entry("add-0", 100)])
    assert run.output == 105  # step 1 replayed as 100, then +2, +3 executed
    assert (run.replayed_steps, run.executed_steps) == (1, 2)
    assert [e.name for e in run.new_entries] == ["add-1", "add-2"]


# -- step numbering ----------------------------------------------------------------------------


async def test_entries_without_numbers_are_numbered_in_list_order() -> None:
    journal = [run_entry("add-0", 1), run_entry("add-1", 2)]
    run = await replay_workflow(add, [5, 5, 5], journal=journal)
    assert run.output == 7  # steps 1 and 2 replay (1, then 2); step 3 executes 2 + 5
    assert (run.replayed_steps, run.executed_steps) == (2, 1)
    assert [e.step for e in run.new_entries] == [3]
    assert journal[0].step == 0  # the caller's entries are not modified


async def test_explicit_numbers_may_come_in_any_order() -> None:
    journal = [run_entry("add-1", 20, step=2), run_entry("add-0", 10, step=1)]
    run = await replay_workflow(add, [0, 0], journal=journal)
    assert (run.output, run.replayed_steps, run.executed_steps) == (20, 2, 0)


async def test_an_unnumbered_entry_follows_the_one_before_it() -> None:
    journal = [run_entry("add-1", 20, step=2), run_entry("add-2", 30)]  # -> step 3
    run = await replay_workflow(add, [1, 1, 1], journal=journal)
    # step 1 executes (0 + 1), steps 2 and 3 replay
    assert (run.output, run.replayed_steps, run.executed_steps) == (30, 2, 1)


async def test_duplicate_step_numbers_are_rejected() -> None:
    with pytest.raises(ValueError, match="step 1 twice"):
        await replay_workflow(add, [1], journal=[run_entry("a", 1), run_entry("b", 2, step=1)])


# -- non-determinism ---------------------------------------------------------------------------


async def test_a_changed_workflow_raises_nondeterminism() -> None:
    with pytest.raises(NonDeterminismError) as info:
        await replay_workflow(add, [1], journal=[run_entry("subtract-0", 1)])
    assert info.value.step == 1
    assert "test-invocation" in str(info.value)


async def test_a_changed_request_raises_nondeterminism_when_it_was_recorded() -> None:
    journal = [call_entry(hello.SayHello, HelloResponse(), request=HelloRequest(name="Ada"))]
    with pytest.raises(NonDeterminismError):
        await replay_workflow(greet_twice, {"a": "Grace", "b": "B"}, journal=journal)


async def test_nondeterminism_the_workflow_catches_is_still_the_error() -> None:
    async def swallow(ctx: Context) -> str:
        try:
            await ctx.run("new-name", lambda: 1)
        except NonDeterminismError:
            return "pretend all is well"
        return "unreachable"

    run = await replay_workflow(swallow, journal=[run_entry("old-name", 1)], raise_on_error=False)
    assert isinstance(run.error, NonDeterminismError)
    assert run.output is None


# -- inputs, outputs, errors ---------------------------------------------------------------------


async def test_errors_are_raised_by_default_and_captured_on_request() -> None:
    async def boom(ctx: Context) -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await replay_workflow(boom)
    run = await replay_workflow(boom, raise_on_error=False)
    assert isinstance(run.error, RuntimeError)
    assert run.output is None


async def test_input_goes_through_the_engine_codec() -> None:
    seen: list[Any] = []

    async def wf(ctx: Context, args: Any) -> None:
        seen.append(args)

    await replay_workflow(wf, {"pair": (1, 2)})
    await replay_workflow(wf)
    assert seen == [{"pair": [1, 2]}, None]


async def test_input_the_engine_cannot_store_is_rejected() -> None:
    async def wf(ctx: Context, args: Any) -> None:
        return None

    with pytest.raises(InvalidInputError):
        await replay_workflow(wf, object())


async def test_output_the_engine_cannot_store_is_an_error() -> None:
    async def wf(ctx: Context) -> object:
        return object()

    with pytest.raises(InvalidInputError, match="returned a value the engine cannot store"):
        await replay_workflow(wf)


async def test_workflow_signature_is_checked() -> None:
    async def no_input(ctx: Context) -> None:
        return None

    def not_async(ctx: Context) -> None:
        return None

    with pytest.raises(TypeError, match="takes no input"):
        await replay_workflow(no_input, {"x": 1})
    with pytest.raises(TypeError, match="async def"):
        await replay_workflow(not_async)  # type: ignore[arg-type]


async def test_identity_and_start_time_reach_the_context() -> None:
    seen: dict[str, Any] = {}

    async def wf(ctx: Context) -> None:
        seen.update(
            id=ctx.invocation_id, workflow=ctx.workflow, key=ctx.partition_key, now=ctx.now()
        )

    start = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    await replay_workflow(wf, invocation_id="inv-5", partition_key="cust-1", start_time=start)
    assert seen == {"id": "inv-5", "workflow": "wf", "key": "cust-1", "now": start}

    await replay_workflow(wf, workflow="renamed", start_time=datetime(2024, 5, 1, 12, 0))
    assert seen["workflow"] == "renamed"
    assert seen["now"] == start  # a naive start time is UTC


async def test_replayed_step_timestamp_moves_now() -> None:
    recorded_at = datetime(2024, 5, 1, 12, 30, tzinfo=UTC)
    times: list[datetime] = []

    async def wf(ctx: Context) -> None:
        times.append(ctx.now())
        await ctx.run("a", lambda: 1)
        times.append(ctx.now())

    await replay_workflow(
        wf,
        journal=[run_entry("a", 1, timestamp=recorded_at)],
        start_time=datetime(2024, 5, 1, 12, 0, tzinfo=UTC),
    )
    assert times == [datetime(2024, 5, 1, 12, 0, tzinfo=UTC), recorded_at]


async def test_uuid_and_random_depend_on_the_invocation_id_only() -> None:
    async def wf(ctx: Context) -> list[str]:
        return [str(ctx.uuid()), str(ctx.random())]

    a = await replay_workflow(wf, invocation_id="same")
    b = await replay_workflow(wf, invocation_id="same")
    c = await replay_workflow(wf, invocation_id="other")
    assert a.output == b.output != c.output


def test_workflow_run_is_frozen() -> None:
    run = WorkflowRun(None, None, (), 0, 0, ())
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.output = 1  # type: ignore[misc]


async def test_a_patched_workflow_is_tested_against_old_and_new_journals() -> None:
    async def wf(ctx: Context) -> str:
        await ctx.run("a", lambda: 1)
        if ctx.patched("greet-v2"):
            return str(await ctx.run("greet_v2", lambda: "new"))
        return str(await ctx.run("greet", lambda: "old"))

    old = await replay_workflow(wf, journal=[run_entry("a", 1), run_entry("greet", "old!")])
    assert old.output == "old!" and old.executed_steps == 0
    new = await replay_workflow(
        wf, journal=[run_entry("a", 1), patch_entry("greet-v2"), run_entry("greet_v2", "new!")]
    )
    assert new.output == "new!" and new.executed_steps == 0
    fresh = await replay_workflow(wf, journal=[run_entry("a", 1)])
    assert fresh.output == "new" and fresh.executed_steps == 1
    assert [(e.kind, e.step, e.name) for e in fresh.new_entries] == [
        (pb.ENTRY_KIND_PATCH, 2, "greet-v2"),
        (pb.ENTRY_KIND_RUN, 2, "greet_v2"),
    ]
    # An unmarked change diverges: the engine would block such an invocation, never fail it.
    with pytest.raises(NonDeterminismError):
        await replay_workflow(wf, journal=[run_entry("a", 1), run_entry("greet_v1", "x")])
