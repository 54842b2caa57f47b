"""Human in the loop: an expense waits for an approval, durably.

``expense_approval`` hands out an awakeable (its id is the same on every replay) and waits;
``durable awakeable resolve <id> --payload '{"approver": "ann"}'`` (or reject) completes it.
``expense_by_signal`` waits for the signal ``approved`` instead. An expense with
``hold_seconds`` is also held that long (a durable sleep running alongside the wait for
approval: both must complete before the decision).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from durable_core import AwakeableRejectedError, Context, WorkflowRegistry, hookimpl

log = logging.getLogger("expense_approval")


@dataclass
class Expense:
    """An expense claim (typed input: a payload of another shape is refused at intake)."""

    expense_id: str
    amount_cents: int
    submitter: str = ""
    hold_seconds: float = 0  # paid out no earlier than this after submission


@dataclass
class Decision:
    """The workflow's typed result."""

    expense_id: str
    approved: bool
    by: str = ""
    reason: str = ""


def _ask_for_approval(expense_id: str, awakeable_id: str) -> str:
    # A real system would send an e-mail or a chat message carrying the awakeable id.
    log.info("approval needed for %s: resolve awakeable %s", expense_id, awakeable_id)
    return awakeable_id


async def expense_approval(ctx: Context, expense: Expense) -> Decision:
    """Ask for approval through an awakeable and wait (suspended) for the answer."""
    if expense.amount_cents <= 0:
        return Decision(expense.expense_id, False, reason="amount must be positive")
    approval = ctx.awakeable()
    await ctx.run("ask for approval", _ask_for_approval, expense.expense_id, approval.id)
    await ctx.set("awakeable", approval.id)
    if expense.hold_seconds > 0:
        # Both wait at once (the invocation suspends with a timer and an awakeable pending);
        # return_exceptions: a rejection still waits out the hold, so no wait is left behind.
        _, answer = await asyncio.gather(
            ctx.sleep(timedelta(seconds=expense.hold_seconds)),
            approval.result(),
            return_exceptions=True,
        )
    else:
        try:
            answer = await approval.result()
        except AwakeableRejectedError as e:
            answer = e
    if isinstance(answer, AwakeableRejectedError):
        return Decision(expense.expense_id, False, reason=answer.reason)
    if isinstance(answer, BaseException):
        raise answer
    return Decision(expense.expense_id, True, by=str((answer or {}).get("approver", "")))


async def expense_by_signal(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """Optionally sleep, then wait for the signal ``approved`` (kept if it came earlier)."""
    if args.get("sleep_seconds"):
        await ctx.sleep(timedelta(seconds=float(args["sleep_seconds"])))
    payload = await ctx.wait_for_signal("approved")
    return {"approved": True, "payload": payload}


@hookimpl
def durable_register_workflows(registry: WorkflowRegistry) -> None:
    """Register this plugin's workflows."""
    registry.register(expense_approval)
    registry.register(expense_by_signal)
