"""The order workflow (validate, charge, ship), replayed without NATS or OrderService."""

from __future__ import annotations

from typing import Any

import pytest

from durable_core import TerminalError, load_plugins
from durable_core.testing import call_entry, replay_workflow
from durable_examples.order.v1.order_pb2 import (
    ChargeRequest,
    ChargeResponse,
    ShipRequest,
    ShipResponse,
    ValidateRequest,
    ValidateResponse,
)
from order_processing import order_processing, orders

ORDER = {"order_id": "o-17", "amount_cents": 1250}
SERVICE = "/durable_examples.order.v1.OrderService"


def fakes() -> dict[str, Any]:
    return {
        "Validate": lambda req: ValidateResponse(valid=req.amount_cents > 0),
        "Charge": lambda req: ChargeResponse(charge_id=f"ch-{req.order_id}"),
        "Ship": lambda req: ShipResponse(tracking_number=f"tr-{req.order_id}"),
    }


async def test_a_fresh_order_runs_all_three_steps_in_order() -> None:
    run = await replay_workflow(order_processing, ORDER, calls=fakes())

    assert run.output == {"order_id": "o-17", "charge_id": "ch-o-17", "tracking_number": "tr-o-17"}
    assert [call.path for call in run.calls] == [
        f"{SERVICE}/Validate",
        f"{SERVICE}/Charge",
        f"{SERVICE}/Ship",
    ]
    assert [call.request for call in run.calls] == [
        ValidateRequest(order_id="o-17", amount_cents=1250),
        ChargeRequest(order_id="o-17", amount_cents=1250),
        ShipRequest(order_id="o-17"),
    ]
    assert [c.metadata["idempotency-key"] for c in run.calls] == [
        "test-invocation:1",
        "test-invocation:2",
        "test-invocation:3",
    ]


async def test_resumes_after_charge_and_only_ships() -> None:
    journal = [
        call_entry(
            orders.Validate,
            ValidateResponse(valid=True),
            request=ValidateRequest(order_id="o-17", amount_cents=1250),
        ),
        call_entry(
            orders.Charge,
            ChargeResponse(charge_id="ch-recorded"),
            request=ChargeRequest(order_id="o-17", amount_cents=1250),
        ),
    ]
    run = await replay_workflow(
        order_processing, ORDER, journal=journal, calls=fakes(), invocation_id="order-o-17"
    )

    assert [call.path for call in run.calls] == [f"{SERVICE}/Ship"]
    assert run.calls[0].metadata["idempotency-key"] == "order-o-17:3"
    assert (run.replayed_steps, run.executed_steps) == (2, 1)
    assert run.output == {
        "order_id": "o-17",
        "charge_id": "ch-recorded",  # from the journal, not charged again
        "tracking_number": "tr-o-17",
    }
    (shipped,) = run.new_entries
    assert (shipped.step, shipped.name) == (3, f"{SERVICE}/Ship")


async def test_an_invalid_order_raises_terminal_error_and_charges_nothing() -> None:
    def invalid(req: ValidateRequest) -> ValidateResponse:
        return ValidateResponse(valid=False, reason="amount must be positive")

    with pytest.raises(TerminalError, match="order o-0 is invalid: amount must be positive"):
        await replay_workflow(
            order_processing,
            {"order_id": "o-0", "amount_cents": 0},
            calls={**fakes(), "Validate": invalid},
        )


async def test_an_invalid_order_calls_only_validate() -> None:
    run = await replay_workflow(
        order_processing,
        {"order_id": "o-0", "amount_cents": -5},
        calls=fakes(),
        raise_on_error=False,
    )
    assert isinstance(run.error, TerminalError)
    assert [call.path for call in run.calls] == [f"{SERVICE}/Validate"]


def test_registered_through_its_entry_point_with_a_default_address() -> None:
    plugins = load_plugins()
    assert plugins.registry.get("order_processing").fn is order_processing
    assert plugins.service_addresses[orders.name] == "127.0.0.1:9090"
