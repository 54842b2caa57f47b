"""The hello workflow, replayed without NATS or a running HelloService."""

from __future__ import annotations

import grpc
import grpc.aio
import pytest

from durable_core import StepFailedError, load_plugins
from durable_core.testing import call_entry, replay_workflow
from durable_examples.hello.v1.hello_pb2 import HelloRequest, HelloResponse
from hello_workflow import hello, hello_workflow

SAY_HELLO = "/durable_examples.hello.v1.HelloService/SayHello"


def say_hello(request: HelloRequest) -> HelloResponse:
    """What HelloService answers (hello_service.hello.greeting)."""
    name = request.name or "World"
    return HelloResponse(message=f"Hello, {name}! Welcome to Durable Execution on NATS JetStream.")


async def test_greets_by_name() -> None:
    run = await replay_workflow(hello_workflow, {"name": "Ada"}, calls={"SayHello": say_hello})

    assert run.output == {"message": "Hello, Ada! Welcome to Durable Execution on NATS JetStream."}
    ((path, request, metadata),) = run.calls
    assert path == SAY_HELLO
    assert request == HelloRequest(name="Ada")
    assert metadata["idempotency-key"] == "test-invocation:1"
    assert run.executed_steps == 1


@pytest.mark.parametrize("args", [{}, None])
async def test_empty_args_call_say_hello_with_an_empty_name(args: dict[str, str] | None) -> None:
    run = await replay_workflow(hello_workflow, args, calls={"SayHello": say_hello})

    assert [call.request for call in run.calls] == [HelloRequest(name="")]
    assert run.output == {
        "message": "Hello, World! Welcome to Durable Execution on NATS JetStream."
    }


async def test_a_recorded_greeting_is_replayed_without_calling_the_service() -> None:
    recorded = call_entry(
        hello.SayHello, HelloResponse(message="from the journal"), request=HelloRequest(name="Ada")
    )
    run = await replay_workflow(hello_workflow, {"name": "Ada"}, journal=[recorded])

    assert run.output == {"message": "from the journal"}
    assert (run.replayed_steps, run.calls) == (1, ())


async def test_a_non_string_name_fails_before_any_call() -> None:
    run = await replay_workflow(
        hello_workflow, {"name": 42}, calls={"SayHello": say_hello}, raise_on_error=False
    )
    assert isinstance(run.error, TypeError)
    assert "'name' must be a string" in str(run.error)
    assert run.calls == ()


async def test_a_failed_call_fails_the_workflow() -> None:
    def reject(request: HelloRequest) -> HelloResponse:
        # INVALID_ARGUMENT is not retried, so the step fails at once.
        raise grpc.aio.AioRpcError(
            grpc.StatusCode.INVALID_ARGUMENT, grpc.aio.Metadata(), grpc.aio.Metadata(), "no"
        )

    run = await replay_workflow(
        hello_workflow, {"name": "Ada"}, calls={"SayHello": reject}, raise_on_error=False
    )
    assert isinstance(run.error, StepFailedError)
    assert (run.error.step, run.error.code) == (1, "INVALID_ARGUMENT")
    assert run.new_entries[0].failure.code == "INVALID_ARGUMENT"
    assert len(run.calls) == 1


def test_registered_through_its_entry_point_with_a_default_address() -> None:
    plugins = load_plugins()
    assert plugins.registry.get("hello_workflow").fn is hello_workflow
    assert plugins.service_addresses[hello.name] == "127.0.0.1:9090"
    assert hello.name == "durable_examples.hello.v1.HelloService"
