"""Retries: a step that fails ``failures`` times, then succeeds (if attempts allow)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from durable_core import Context, RetryPolicy, WorkflowRegistry, grpc_service, hookimpl
from durable_examples.order.v1.order_pb2 import ChargeRequest, ShipRequest, ValidateRequest
from durable_examples.order.v1.order_pb2_grpc import OrderServiceStub

_attempts: dict[str, int] = {}
orders = grpc_service(OrderServiceStub)


async def flaky(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """Run a step that raises on its first ``failures`` attempts.

    Args (all optional): ``failures`` (2), ``attempts`` (5), ``interval_ms`` (100, the first
    backoff), ``backoff`` (2.0), ``jitter`` (0.1), and ``fatal``: raise PermissionError, which
    the policy names as non-retryable. The attempt count lives in the processor's memory:
    run one processor when a test counts attempts.

    What a retried invocation meets after the step failed for good: ``child_delay_seconds``
    starts the child ``delayed_greeting`` beside the step (it ends after the step failed, and
    the retried run needs its result); ``then_signal`` waits for the signal ``go`` after it.
    """
    failures = int(args.get("failures", 2))
    fatal = bool(args.get("fatal", False))
    key = ctx.invocation_id

    def unreliable() -> int:
        _attempts[key] = _attempts.get(key, 0) + 1
        if fatal:
            raise PermissionError(f"refused on attempt {_attempts[key]}")
        if _attempts[key] <= failures:
            raise ConnectionError(f"transient failure {_attempts[key]} of {failures}")
        return _attempts[key]

    policy = RetryPolicy(
        initial_interval=timedelta(milliseconds=int(args.get("interval_ms", 100))),
        backoff_coefficient=float(args.get("backoff", 2.0)),
        maximum_interval=timedelta(minutes=1),
        maximum_attempts=int(args.get("attempts", 5)),
        jitter=float(args.get("jitter", 0.1)),
        non_retryable_errors=("PermissionError",),
    )
    out: dict[str, Any] = {}
    if args.get("child_delay_seconds") is not None:
        child = {"name": "child", "delay_seconds": float(args["child_delay_seconds"])}
        greeting, attempt = await asyncio.gather(
            ctx.invoke("delayed_greeting", child), ctx.run("unreliable", unreliable, retry=policy)
        )
        out["child"] = greeting["message"]
    else:
        attempt = await ctx.run("unreliable", unreliable, retry=policy)
    if args.get("then_signal"):
        out["signal"] = await ctx.wait_for_signal("go")
    return {"succeeded_on_attempt": attempt, **out}


async def flaky_order(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """Validate an order, run a flaky step, ship: for retrying a failed invocation."""
    order_id = str(args.get("order_id", ctx.invocation_id))
    await ctx.call(orders.Validate, ValidateRequest(order_id=order_id, amount_cents=1))
    result = await flaky(ctx, args)
    shipment = await ctx.call(orders.Ship, ShipRequest(order_id=order_id))
    return {**result, "tracking_number": shipment.tracking_number}


async def calls_beside_a_child(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """A child and two calls at once: the child's result reaches the journal while both calls
    are in flight, and the shorter call's entry meets it first (for news during a call)."""
    order_id = str(args.get("order_id", ctx.invocation_id))
    greeting, charge, _ = await asyncio.gather(
        ctx.invoke("hello_workflow", {"name": order_id}),
        ctx.call(orders.Charge, ChargeRequest(order_id=order_id, amount_cents=1)),
        ctx.call(orders.Validate, ValidateRequest(order_id=order_id, amount_cents=1)),
    )
    return {"greeting": greeting["message"], "charge_id": charge.charge_id}


@hookimpl
def durable_register_workflows(registry: WorkflowRegistry) -> None:
    """Register this plugin's workflows."""
    registry.register(flaky)
    registry.register(flaky_order)
    registry.register(calls_beside_a_child)


@hookimpl
def durable_service_addresses() -> dict[str, str]:
    """The gRPC services this plugin's workflows call, by name, and their default addresses."""
    return {orders.name: "127.0.0.1:9090"}
