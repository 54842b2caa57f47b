"""The hello workflow: one durable gRPC call to HelloService.SayHello."""

from __future__ import annotations

from typing import Any

from durable_core import Context, WorkflowRegistry, grpc_service, hookimpl
from durable_examples.hello.v1.hello_pb2 import HelloRequest
from durable_examples.hello.v1.hello_pb2_grpc import HelloServiceStub

hello = grpc_service(HelloServiceStub)


async def hello_workflow(ctx: Context, args: dict[str, Any] | None = None) -> dict[str, str]:
    """Greet ``args["name"]`` (``World`` when absent) and return ``{"message": ...}``."""
    name = (args or {}).get("name", "")
    if not isinstance(name, str):
        raise TypeError(f"hello_workflow: 'name' must be a string, not {type(name).__name__}")
    response = await ctx.call(hello.SayHello, HelloRequest(name=name))
    return {"message": response.message}


@hookimpl
def durable_register_workflows(registry: WorkflowRegistry) -> None:
    """Register this plugin's workflows."""
    registry.register(hello_workflow)


@hookimpl
def durable_service_addresses() -> dict[str, str]:
    """The gRPC services this plugin's workflows call, by name, and their default addresses."""
    return {hello.name: "127.0.0.1:9090"}
