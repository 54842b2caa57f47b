"""Workflows the chaos suite and the soak run (``tests/chaos``), around the example OrderService.

Every side effect is an OrderService call, which records each call with its idempotency key
(``<invocation>:<step>``), so the chaos checker can hold every step against the journal.

- ``chaos_waits``: Validate, a durable sleep, an awakeable that the workload resolves from
  outside, a child workflow (``chaos_charge``) that charges, then Ship. Step numbers: 1
  Validate, 2 sleep, 3 awakeable, 4 child, 5 Ship; the child's Charge is its own step 1.
- ``chaos_charge``: the child: one Charge.
- ``careless_order``: order_processing written carelessly: every step inside
  ``try: ... except Exception:``, the error noted and the next step run regardless. The engine's
  control-flow signals are BaseExceptions, so a run that loses its claim still stops; what
  the workflow caught is in its output (``caught``), which the checker wants empty.
- ``reckless_order``: the same with ``except BaseException``, which swallows even those
  signals; the engine must still refuse every step of a run it stopped.
- ``chaos_retry``: Validate, Charge, a local step ``gate`` that fails for good
  (``TerminalError``) while the order's gate is closed, then Ship (steps 1-4). The gate is a
  file, ``<gate_dir>/<order_id>``, outside the journal: the workload opens it once it saw the
  invocation FAILED, then retries it, so the first run fails and the retried one completes.
  Every execution of the gate step appends a line to ``<gate_dir>/gate-runs.jsonl`` (the
  invocation, the order, when, open or not) before it decides, as the OrderService records its
  calls, so the checker can hold the gate's executions against the journal too.
- ``chaos_signals``: Validate, then ``signals`` waits for the signal ``chaos`` (steps 2 to
  ``signals + 1``), then Ship; returns the ``n`` of each signal it received, in order, so a
  signal delivered twice shows in its output.
- ``chaos_fanout``: ``items`` branches side by side (``asyncio.gather``), each a Validate of
  its own item (order id ``<order_id>-<n>``, n from 1, see ``item_order_id``), a local step
  ``hold`` that sleeps the item's ``hold_ms`` (so the items reach their Charge in an order of
  the arguments' choosing, not always in item order) and a Charge of the item; then Ship of the
  whole order; returns the charge ids (in item order) and the tracking number. Branch ``"n"``
  is item n (the n-th task the workflow started); which global step number each step gets
  depends on which branch's step finished first, so the checker holds its journal by (branch,
  step in the branch) rather than by number: root ``""`` step 1 is Ship, branch ``"n"`` steps
  1 to 3 are item n's Validate, hold and Charge.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from durable_core import Context, TerminalError, WorkflowRegistry, grpc_service, hookimpl
from durable_examples.order.v1.order_pb2 import ChargeRequest, ShipRequest, ValidateRequest
from durable_examples.order.v1.order_pb2_grpc import OrderServiceStub

orders = grpc_service(OrderServiceStub)

MAX_SLEEP_MS = 60_000
MAX_SIGNALS = 10
MAX_ITEMS = 5
MAX_HOLD_MS = 5_000
SIGNAL = "chaos"
"""The name of the signal ``chaos_signals`` waits for."""
GATE_RUNS = "gate-runs.jsonl"
"""The record of every execution of ``chaos_retry``'s gate step, in its ``gate_dir``."""


def _order(args: dict[str, Any] | None) -> tuple[str, int]:
    args = args or {}
    return str(args.get("order_id", "")), int(args.get("amount_cents", 0))


async def chaos_waits(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """Validate, sleep ``sleep_ms``, wait for the awakeable ``awk.<id>.1``, charge in a child
    workflow, ship; returns the order, the awakeable's payload, the charge and the shipment."""
    order_id, amount = _order(args)
    sleep_ms = int(args.get("sleep_ms", 1000))
    if not 0 <= sleep_ms <= MAX_SLEEP_MS:
        raise ValueError(f"sleep_ms must be 0..{MAX_SLEEP_MS}, not {sleep_ms}")
    await ctx.call(orders.Validate, ValidateRequest(order_id=order_id, amount_cents=amount))
    await ctx.sleep(timedelta(milliseconds=sleep_ms))
    approval = await ctx.awakeable().result()
    child = await ctx.invoke("chaos_charge", {"order_id": order_id, "amount_cents": amount})
    shipment = await ctx.call(orders.Ship, ShipRequest(order_id=order_id))
    return {
        "order_id": order_id,
        "approval": approval,
        "charge_id": child["charge_id"],
        "tracking_number": shipment.tracking_number,
    }


async def chaos_charge(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """Charge the order (the child of ``chaos_waits``)."""
    order_id, amount = _order(args)
    charge = await ctx.call(orders.Charge, ChargeRequest(order_id=order_id, amount_cents=amount))
    return {"charge_id": charge.charge_id}


async def _order_catching(
    ctx: Context, args: dict[str, Any], catching: type[BaseException]
) -> dict[str, Any]:
    """order_processing's three calls, each inside ``try: ... except catching:``."""
    order_id, amount = _order(args)
    caught: list[str] = []
    charge_id = tracking = ""
    try:
        await ctx.call(orders.Validate, ValidateRequest(order_id=order_id, amount_cents=amount))
    except catching as e:
        caught.append(f"Validate: {type(e).__name__}: {e}")
    try:
        charge = await ctx.call(
            orders.Charge, ChargeRequest(order_id=order_id, amount_cents=amount)
        )
        charge_id = charge.charge_id
    except catching as e:
        caught.append(f"Charge: {type(e).__name__}: {e}")
    try:
        shipment = await ctx.call(orders.Ship, ShipRequest(order_id=order_id))
        tracking = shipment.tracking_number
    except catching as e:
        caught.append(f"Ship: {type(e).__name__}: {e}")
    return {
        "order_id": order_id,
        "charge_id": charge_id,
        "tracking_number": tracking,
        "caught": caught,
    }


async def careless_order(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """order_processing with every step inside ``try/except Exception`` (see the module)."""
    return await _order_catching(ctx, args, Exception)


async def reckless_order(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """order_processing with every step inside ``try/except BaseException`` (see the module)."""
    return await _order_catching(ctx, args, BaseException)


def pass_gate(gate_dir: str, order_id: str, invocation_id: str) -> dict[str, str]:
    """The gate step of ``chaos_retry``: recorded, then passed if ``<gate_dir>/<order_id>``
    exists; closed, it fails for good (a retry of the invocation runs it again)."""
    gate = Path(gate_dir)
    at = time.time()  # when the execution began, as the OrderService stamps a call's arrival
    is_open = (gate / order_id).exists()
    line = json.dumps(
        {"invocation_id": invocation_id, "order_id": order_id, "ts": at, "open": is_open},
        sort_keys=True,
    )
    # One append per line keeps lines whole when several processors share the file.
    with (gate / GATE_RUNS).open("a", encoding="utf-8") as f:
        f.write(line + "\n")
    if not is_open:
        raise TerminalError(f"the gate of order {order_id} is closed")
    return {"passed": order_id}


async def chaos_retry(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """Validate, charge, pass the order's gate (a file in ``gate_dir``; fails while it is
    closed), ship; returns the order, the charge and the shipment."""
    order_id, amount = _order(args)
    gate_dir = str(args.get("gate_dir", ""))
    if not gate_dir:
        raise ValueError("chaos_retry needs a gate_dir")
    await ctx.call(orders.Validate, ValidateRequest(order_id=order_id, amount_cents=amount))
    charge = await ctx.call(orders.Charge, ChargeRequest(order_id=order_id, amount_cents=amount))
    await ctx.run("gate", pass_gate, gate_dir, order_id, ctx.invocation_id)
    shipment = await ctx.call(orders.Ship, ShipRequest(order_id=order_id))
    return {
        "order_id": order_id,
        "charge_id": charge.charge_id,
        "tracking_number": shipment.tracking_number,
    }


async def chaos_signals(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """Validate, wait for ``signals`` signals called ``chaos``, ship; returns the order, the
    ``n`` of each signal received (in order) and the shipment."""
    order_id, amount = _order(args)
    count = int(args.get("signals", 1))
    if not 1 <= count <= MAX_SIGNALS:
        raise ValueError(f"signals must be 1..{MAX_SIGNALS}, not {count}")
    await ctx.call(orders.Validate, ValidateRequest(order_id=order_id, amount_cents=amount))
    received = []
    for _ in range(count):
        got = await ctx.wait_for_signal(SIGNAL)
        received.append(got.get("n") if isinstance(got, dict) else got)
    shipment = await ctx.call(orders.Ship, ShipRequest(order_id=order_id))
    return {
        "order_id": order_id,
        "received": received,
        "tracking_number": shipment.tracking_number,
    }


def item_order_id(order_id: str, n: int) -> str:
    """The order id item ``n`` (from 1) of a ``chaos_fanout`` validates and charges."""
    return f"{order_id}-{n}"


def item_amount(amount: int, n: int) -> int:
    """The amount item ``n`` (from 1) of a ``chaos_fanout`` is validated and charged for."""
    return amount + n


def hold(ms: int) -> int:
    """The local step between an item's Validate and its Charge: sleeps ``ms``."""
    time.sleep(ms / 1000)
    return ms


async def chaos_fanout(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """Validate, hold (``hold_ms[n - 1]``, 0 by default) and charge ``items`` items side by
    side (one branch each), then ship; returns the order, each item's charge id in item order
    and the shipment."""
    order_id, amount = _order(args)
    count = int(args.get("items", 2))
    if not 1 <= count <= MAX_ITEMS:
        raise ValueError(f"items must be 1..{MAX_ITEMS}, not {count}")
    holds = [int(ms) for ms in args.get("hold_ms") or [0] * count]
    if len(holds) != count or not all(0 <= ms <= MAX_HOLD_MS for ms in holds):
        raise ValueError(f"hold_ms must be {count} times 0..{MAX_HOLD_MS}, not {holds}")

    async def item(n: int) -> str:
        item_id, cents = item_order_id(order_id, n), item_amount(amount, n)
        await ctx.call(orders.Validate, ValidateRequest(order_id=item_id, amount_cents=cents))
        await ctx.run("hold", hold, holds[n - 1])
        charge = await ctx.call(orders.Charge, ChargeRequest(order_id=item_id, amount_cents=cents))
        return charge.charge_id

    charges = await asyncio.gather(*(item(n) for n in range(1, count + 1)))
    shipment = await ctx.call(orders.Ship, ShipRequest(order_id=order_id))
    return {
        "order_id": order_id,
        "charge_ids": list(charges),
        "tracking_number": shipment.tracking_number,
    }


@hookimpl
def durable_register_workflows(registry: WorkflowRegistry) -> None:
    """Register the chaos suite's workflows."""
    for fn in (
        chaos_waits,
        chaos_charge,
        careless_order,
        reckless_order,
        chaos_retry,
        chaos_signals,
        chaos_fanout,
    ):
        registry.register(fn)


@hookimpl
def durable_service_addresses() -> dict[str, str]:
    """Where the example OrderService listens by default."""
    return {orders.name: "127.0.0.1:9090"}
