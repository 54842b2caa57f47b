"""The seed's ticket cart: reserve a ticket, keep it in the cart, release it after an expiry.

The expiry is a durable sleep (15 minutes by default; ``expiry_seconds`` changes it), so the
reservation is released on time even if every processor restarted meanwhile.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from durable_core import Context, WorkflowRegistry, hookimpl

log = logging.getLogger("ticket_cart")
DEFAULT_EXPIRY = timedelta(minutes=15)


def _reserve(ticket: str) -> dict[str, Any]:
    log.info("reserved ticket %s", ticket)
    return {"ticket": ticket, "reserved": True}


def _release(ticket: str) -> dict[str, Any]:
    log.info("released ticket %s", ticket)
    return {"ticket": ticket, "released": True}


async def ticket_cart(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """Reserve ``ticket``, hold it in the cart for the expiry, then release it."""
    ticket = str(args["ticket"])
    expiry = timedelta(seconds=float(args.get("expiry_seconds", DEFAULT_EXPIRY.total_seconds())))
    await ctx.run("reserve", _reserve, ticket)
    await ctx.set("cart", [ticket])
    reserved_at = ctx.now()
    await ctx.sleep(expiry)
    released = await ctx.run("release", _release, ticket)
    cart = [t for t in ctx.get("cart", []) if t != ticket]
    await ctx.clear("cart")
    return {
        "ticket": ticket,
        "released": released["released"],
        "held_seconds": (ctx.now() - reserved_at).total_seconds(),
        "cart": cart,
    }


@hookimpl
def durable_register_workflows(registry: WorkflowRegistry) -> None:
    """Register this plugin's workflows."""
    registry.register(ticket_cart)
