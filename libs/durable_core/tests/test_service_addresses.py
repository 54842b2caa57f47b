"""A processor without the address of a gRPC service its workflows call refuses to start.

It used to start, and every call of that service raised ConfigError at ``ctx.call``: the error
reached the workflow and the invocation was journaled FAILED for good, although another
processor, with the address, could have run it."""

from __future__ import annotations

import asyncio

import pytest

from durable_core import ConfigError, Context, WorkerConfig, WorkflowRegistry, grpc_service
from durable_core._grpc import ChannelPool
from durable_core._transport import Transport
from durable_core.engine import Worker
from durable_examples.hello.v1.hello_pb2 import HelloRequest
from durable_examples.hello.v1.hello_pb2_grpc import HelloServiceStub

hello = grpc_service(HelloServiceStub)


async def greets(ctx: Context, name: str) -> str:
    answer = await ctx.call(hello.SayHello, HelloRequest(name=name))
    return str(answer)


def _registry() -> WorkflowRegistry:
    registry = WorkflowRegistry()
    registry.register(greets)
    return registry


async def test_a_processor_missing_a_service_address_refuses_to_start(
    transport: Transport,
) -> None:
    worker = Worker(transport, _registry(), WorkerConfig(services={"OtherService": "h:1"}))
    with pytest.raises(ConfigError) as e:
        await asyncio.wait_for(worker.run(), 10)
    message = str(e.value)
    assert "\n" not in message
    assert "durable_examples.hello.v1.HelloService (called by greets" in message
    assert "DURABLE_SERVICES__HelloService=host:port" in message
    assert not worker.consuming.is_set()


@pytest.mark.parametrize(
    ("addresses", "defaults"),
    [
        ({"HelloService": "127.0.0.1:1"}, {}),
        ({"durable_examples.hello.v1.HelloService": "127.0.0.1:1"}, {}),
        ({"*": "127.0.0.1:1"}, {}),
        ({}, {"durable_examples.hello.v1.HelloService": "127.0.0.1:1"}),  # a plugin's default
    ],
)
def test_an_address_from_settings_or_a_plugin_default_will_do(
    addresses: dict[str, str], defaults: dict[str, str]
) -> None:
    ChannelPool(addresses, defaults).check_addresses([("greets", greets)])


async def test_a_processor_with_the_address_starts(transport: Transport) -> None:
    worker = Worker(
        transport,
        _registry(),
        WorkerConfig(),
        service_defaults={"durable_examples.hello.v1.HelloService": "127.0.0.1:1"},
    )
    run = asyncio.create_task(worker.run())
    await asyncio.wait_for(worker.consuming.wait(), 20)
    worker.stop()
    await asyncio.wait_for(run, 20)
