"""Example 3-step workflow: validate, charge, ship.

Each step is a durable gRPC call to the example OrderService, which counts calls per
idempotency key; the crash tests use those counts to prove each step ran once.
"""

from __future__ import annotations

from typing import Any

from durable_core import (
    Context,
    InvocationCancelledError,
    TerminalError,
    WorkflowRegistry,
    grpc_service,
    hookimpl,
)
from durable_examples.order.v1.order_pb2 import ChargeRequest, ShipRequest, ValidateRequest
from durable_examples.order.v1.order_pb2_grpc import OrderServiceStub

orders = grpc_service(OrderServiceStub)


async def order_processing(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """Validate, charge and ship ``{"order_id": str, "amount_cents": int}``."""
    order_id = str(args.get("order_id", ""))
    amount = int(args.get("amount_cents", 0))
    valid = await ctx.call(orders.Validate, ValidateRequest(order_id=order_id, amount_cents=amount))
    if not valid.valid:
        raise TerminalError(f"order {order_id} is invalid: {valid.reason}")
    charge = await ctx.call(orders.Charge, ChargeRequest(order_id=order_id, amount_cents=amount))
    shipment = await ctx.call(orders.Ship, ShipRequest(order_id=order_id))
    return {
        "order_id": order_id,
        "charge_id": charge.charge_id,
        "tracking_number": shipment.tracking_number,
    }


def _refund(charge_id: str) -> dict[str, str]:
    # A real system would call the payment provider; the journal records that it happened.
    return {"refunded": charge_id}


async def cancellable_order(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """Like order_processing, but a cancellation after the charge refunds it (compensation)."""
    order_id = str(args.get("order_id", ""))
    amount = int(args.get("amount_cents", 0))
    charge = await ctx.call(orders.Charge, ChargeRequest(order_id=order_id, amount_cents=amount))
    try:
        shipment = await ctx.call(orders.Ship, ShipRequest(order_id=order_id))
    except InvocationCancelledError:
        if args.get("validate_before_refund"):  # a compensation with a call in it (tests)
            await ctx.call(orders.Validate, ValidateRequest(order_id=order_id, amount_cents=amount))
        await ctx.run("refund", _refund, charge.charge_id)
        raise
    return {"charge_id": charge.charge_id, "tracking_number": shipment.tracking_number}


@hookimpl
def durable_register_workflows(registry: WorkflowRegistry) -> None:
    """Register this plugin's workflows."""
    registry.register(order_processing)
    registry.register(cancellable_order)


@hookimpl
def durable_service_addresses() -> dict[str, str]:
    """The gRPC services this plugin's workflows call, by name, and their default addresses."""
    return {orders.name: "127.0.0.1:9090"}
