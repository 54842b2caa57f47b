"""Durable timers: greet after a sleep, or send a greeting that starts later."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from durable_core import Context, WorkflowRegistry, grpc_service, hookimpl
from durable_examples.hello.v1.hello_pb2 import HelloRequest
from durable_examples.hello.v1.hello_pb2_grpc import HelloServiceStub

hello = grpc_service(HelloServiceStub)


async def delayed_greeting(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """Sleep ``delay_seconds`` (durably: no slot held), then greet ``name``."""
    started = ctx.now()
    await ctx.sleep(timedelta(seconds=float(args.get("delay_seconds", 5))))
    woke = ctx.now()
    response = await ctx.call(hello.SayHello, HelloRequest(name=str(args.get("name", ""))))
    return {
        "message": response.message,
        "started_at": started.isoformat(),
        "woke_at": woke.isoformat(),
    }


async def greet_later(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """Send hello_workflow to start after ``delay_seconds``; then sleep ``then_sleep``."""
    sent = await ctx.send(
        "hello_workflow",
        {"name": str(args.get("name", ""))},
        delay=timedelta(seconds=float(args.get("delay_seconds", 5))),
    )
    await ctx.sleep(timedelta(seconds=float(args.get("then_sleep", 0))))
    return {"sent": sent}


@hookimpl
def durable_register_workflows(registry: WorkflowRegistry) -> None:
    """Register this plugin's workflows."""
    registry.register(delayed_greeting)
    registry.register(greet_later)


@hookimpl
def durable_service_addresses() -> dict[str, str]:
    """The gRPC services this plugin's workflows call, by name, and their default addresses."""
    return {hello.name: "127.0.0.1:9090"}
