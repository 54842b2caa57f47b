"""The chaos workflows, replayed without NATS or OrderService."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

import chaos_workflows
from chaos_workflows import (
    GATE_RUNS,
    SIGNAL,
    careless_order,
    chaos_charge,
    chaos_fanout,
    chaos_retry,
    chaos_signals,
    chaos_waits,
    reckless_order,
)
from durable_core import StepFailedError, TerminalError, _codec, load_plugins
from durable_core._pb.durable.v1 import durable_pb2 as pb
from durable_core.testing import replay_workflow
from durable_examples.order.v1.order_pb2 import ChargeResponse, ShipResponse, ValidateResponse

ORDER = {"order_id": "o-1", "amount_cents": 700}


def fakes(failing: str = "") -> dict[str, Any]:
    def fail(req: Any) -> Any:
        raise TerminalError("refused")

    answers: dict[str, Any] = {
        "Validate": lambda req: ValidateResponse(valid=True),
        "Charge": lambda req: ChargeResponse(charge_id=f"ch-{req.order_id}"),
        "Ship": lambda req: ShipResponse(tracking_number=f"tr-{req.order_id}"),
    }
    if failing:
        answers[failing] = fail
    return answers


@pytest.mark.parametrize("workflow", [careless_order, reckless_order])
async def test_the_careless_orders_run_three_steps_and_catch_nothing_when_all_goes_well(
    workflow: Any,
) -> None:
    run = await replay_workflow(workflow, ORDER, calls=fakes())

    assert run.output == {
        "order_id": "o-1",
        "charge_id": "ch-o-1",
        "tracking_number": "tr-o-1",
        "caught": [],
    }
    assert [c.metadata["idempotency-key"] for c in run.calls] == [
        "test-invocation:1",
        "test-invocation:2",
        "test-invocation:3",
    ]


@pytest.mark.parametrize("workflow", [careless_order, reckless_order])
async def test_a_failed_step_is_caught_and_the_next_one_runs_anyway(workflow: Any) -> None:
    run = await replay_workflow(workflow, ORDER, calls=fakes(failing="Charge"))

    assert run.output["charge_id"] == ""
    assert run.output["tracking_number"] == "tr-o-1"
    assert len(run.output["caught"]) == 1
    assert run.output["caught"][0].startswith("Charge: StepFailedError")


async def test_chaos_waits_validates_sleeps_and_parks_on_its_awakeable() -> None:
    run = await replay_workflow(chaos_waits, {**ORDER, "sleep_ms": 0}, calls=fakes())

    assert run.suspended
    assert run.waiting_for == ("awakeable awk.test-invocation.1",)
    assert [e.step for e in run.new_entries] == [1, 2, 3]
    assert [c.path.rsplit("/", 1)[1] for c in run.calls] == ["Validate"]


async def test_chaos_waits_refuses_an_absurd_sleep() -> None:
    run = await replay_workflow(
        chaos_waits, {**ORDER, "sleep_ms": 10**9}, calls=fakes(), raise_on_error=False
    )
    assert isinstance(run.error, ValueError)
    assert run.calls == ()


async def test_chaos_charge_charges_once() -> None:
    run = await replay_workflow(chaos_charge, ORDER, calls=fakes())

    assert run.output == {"charge_id": "ch-o-1"}
    assert [c.metadata["idempotency-key"] for c in run.calls] == ["test-invocation:1"]


def test_the_plugin_registers_its_workflows() -> None:
    plugins = load_plugins(entry_points=False, extra=[chaos_workflows])

    names = ("chaos_waits", "chaos_charge", "careless_order", "reckless_order")
    for name in (*names, "chaos_retry", "chaos_signals", "chaos_fanout"):
        assert plugins.registry.get(name) is not None
    assert plugins.service_addresses == {"durable_examples.order.v1.OrderService": "127.0.0.1:9090"}


async def test_chaos_retry_fails_at_its_closed_gate_and_passes_it_once_open(
    tmp_path: Path,
) -> None:
    args = {**ORDER, "gate_dir": str(tmp_path)}
    run = await replay_workflow(chaos_retry, args, calls=fakes(), raise_on_error=False)
    assert isinstance(run.error, StepFailedError)
    assert "the gate of order o-1 is closed" in str(run.error)
    assert [c.path.rsplit("/", 1)[1] for c in run.calls] == ["Validate", "Charge"]

    (tmp_path / "o-1").touch()  # the workload opens the gate
    run = await replay_workflow(chaos_retry, args, calls=fakes())
    assert run.output == {"order_id": "o-1", "charge_id": "ch-o-1", "tracking_number": "tr-o-1"}
    runs = [json.loads(line) for line in (tmp_path / GATE_RUNS).read_text().splitlines()]
    assert [(r["invocation_id"], r["order_id"], r["open"]) for r in runs] == [
        ("test-invocation", "o-1", False),
        ("test-invocation", "o-1", True),
    ]


async def test_chaos_signals_waits_for_each_signal_then_ships() -> None:
    run = await replay_workflow(chaos_signals, {**ORDER, "signals": 2}, calls=fakes())
    assert run.suspended
    assert run.waiting_for == ("signal 'chaos'",)
    assert [e.step for e in run.new_entries] == [1, 2]

    signals = []
    for n in (0, 1):
        sig = pb.JournalEntry(kind=pb.ENTRY_KIND_SIGNAL, name=SIGNAL)
        sig.output.CopyFrom(_codec.encode({"n": n}))
        signals.append(sig)
    run = await replay_workflow(
        chaos_signals, {**ORDER, "signals": 2}, journal=signals, calls=fakes()
    )
    assert run.output == {"order_id": "o-1", "received": [0, 1], "tracking_number": "tr-o-1"}
    assert [c.metadata["idempotency-key"] for c in run.calls] == [
        "test-invocation:1",
        "test-invocation:4",
    ]


async def test_chaos_signals_refuses_a_count_out_of_range() -> None:
    run = await replay_workflow(
        chaos_signals, {**ORDER, "signals": 0}, calls=fakes(), raise_on_error=False
    )
    assert isinstance(run.error, ValueError)


def slow_first_item() -> dict[str, Any]:
    """The fakes, with item 1's Validate slow: the other items take both their steps first."""

    async def validate(req: Any) -> Any:
        await asyncio.sleep(0.05 if req.order_id.endswith("-1") else 0.001)
        return ValidateResponse(valid=True)

    return {**fakes(), "Validate": validate}


async def test_chaos_fanout_charges_each_item_in_its_branch_then_ships() -> None:
    run = await replay_workflow(chaos_fanout, {**ORDER, "items": 3}, calls=slow_first_item())

    assert run.output == {
        "order_id": "o-1",
        "charge_ids": ["ch-o-1-1", "ch-o-1-2", "ch-o-1-3"],
        "tracking_number": "tr-o-1",
    }
    where = {
        (e.branch, e.branch_step): (e.step, e.name.rsplit("/", 1)[-1]) for e in run.new_entries
    }
    names = {ident: name for ident, (_, name) in where.items()}
    assert names == {
        **{(str(n), 1): "Validate" for n in (1, 2, 3)},
        **{(str(n), 2): "hold" for n in (1, 2, 3)},
        **{(str(n), 3): "Charge" for n in (1, 2, 3)},
        ("", 1): "Ship",
    }
    # Numbered in the order asked for: the three Validates at once; item 1's slow Validate
    # let the other items hold and charge first; Ship last.
    assert sorted(step for step, _ in where.values()) == list(range(1, 11))
    assert [where[(str(n), 1)][0] for n in (1, 2, 3)] == [1, 2, 3]
    assert (where[("1", 2)][0], where[("1", 3)][0], where[("", 1)][0]) == (8, 9, 10)
    # Each call's key is its step's place, not its number: item n's Validate and Charge are
    # branch n's steps 1 and 3, Ship the root's first step (step 10).
    keys = {
        (c.path.rsplit("/", 1)[1], c.request.order_id): c.metadata["idempotency-key"]
        for c in run.calls
    }
    assert keys == {
        **{("Validate", f"o-1-{n}"): f"test-invocation:{n}/1" for n in (1, 2, 3)},
        **{("Charge", f"o-1-{n}"): f"test-invocation:{n}/3" for n in (1, 2, 3)},
        ("Ship", "o-1"): "test-invocation:1",
    }

    # A replay of the whole journal, whichever branch asks first now, executes nothing.
    again = await replay_workflow(
        chaos_fanout, {**ORDER, "items": 3}, journal=run.new_entries, calls=fakes()
    )
    assert (again.output, again.calls, again.replayed_steps) == (run.output, (), 10)


async def test_chaos_fanout_holds_reorder_the_charges() -> None:
    args = {**ORDER, "items": 3, "hold_ms": [120, 60, 0]}
    run = await replay_workflow(chaos_fanout, args, calls=fakes())
    charges = [c.request.order_id for c in run.calls if c.path.endswith("/Charge")]
    assert charges == ["o-1-3", "o-1-2", "o-1-1"]
    assert run.output["charge_ids"] == ["ch-o-1-1", "ch-o-1-2", "ch-o-1-3"]


async def test_chaos_fanout_refuses_an_item_count_out_of_range() -> None:
    for bad in ({"items": 0}, {"items": 2, "hold_ms": [0]}, {"items": 1, "hold_ms": [-1]}):
        run = await replay_workflow(
            chaos_fanout, {**ORDER, **bad}, calls=fakes(), raise_on_error=False
        )
        assert isinstance(run.error, ValueError), bad
        assert run.calls == ()
