"""Typed results of the workflow API: checked by ``make typecheck`` (mypy --strict), not run.

``assert_type`` fails the type check if a result is not typed as written here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, assert_type

from durable_core import Context


@dataclass
class Order:
    id: str


async def workflow(ctx: Context, inp: dict[str, Any]) -> None:
    assert_type(await ctx.invoke("child", inp, as_type=Order), Order)
    assert_type(await ctx.invoke("child", inp), Any)
    assert_type(await ctx.wait_for_signal("approved", as_type=bool), bool)
    assert_type(await ctx.wait_for_signal("approved"), Any)
    assert_type(await ctx.awakeable().result(as_type=int), int)
    assert_type(await ctx.awakeable().result(), Any)
    assert_type(ctx.get("count", 0, as_type=int), int)
    assert_type(ctx.get("count", as_type=int), int | None)
    assert_type(ctx.get("count"), Any)
    assert_type(await ctx.run("step", lambda: 3), int)
