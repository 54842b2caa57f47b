"""Workflows that only the benchmarks run (``make bench``, ``bench/run.py``).

- ``many_steps``: ``n`` cheap ``ctx.run`` steps, to measure what one step costs the engine
  (journal append and bookkeeping) when the step itself costs nothing.
- ``sleeper``: one durable ``ctx.sleep``, to hold thousands of suspended invocations while the
  benchmark measures the processor's memory.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from durable_core import Context, WorkflowRegistry, hookimpl

MAX_STEPS = 100_000


def _one() -> int:
    return 1


async def _one_async() -> int:
    return 1


def _int_arg(args: dict[str, Any] | None, key: str, default: int, low: int, high: int) -> int:
    value = (args or {}).get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{key!r} must be an integer in [{low}, {high}], not {value!r}")
    return value


async def many_steps(ctx: Context, args: dict[str, Any] | None = None) -> dict[str, int]:
    """Run ``args["steps"]`` (default 1000) trivial ``ctx.run`` steps, one after another.

    Each step returns 1; the output ``{"steps": n, "sum": n}`` proves that every step ran or
    was replayed. ``args["sync"] = true`` makes the steps plain functions (which ``ctx.run``
    runs in a thread) instead of coroutines.
    """
    steps = _int_arg(args, "steps", 1000, 0, MAX_STEPS)
    fn = _one if (args or {}).get("sync") else _one_async
    total = 0
    for _ in range(steps):
        total += await ctx.run("step", fn)
    return {"steps": steps, "sum": total}


async def sleeper(ctx: Context, args: dict[str, Any] | None = None) -> dict[str, int]:
    """Sleep durably for ``args["seconds"]`` (default 3600), then return ``{"slept": s}``.

    Needs ``Context.sleep``; on an engine without it the invocation fails with AttributeError.
    """
    seconds = _int_arg(args, "seconds", 3600, 0, 366 * 24 * 3600)
    await ctx.sleep(timedelta(seconds=seconds))  # type: ignore[attr-defined,unused-ignore]
    return {"slept": seconds}


@hookimpl
def durable_register_workflows(registry: WorkflowRegistry) -> None:
    """Register this plugin's workflows."""
    registry.register(many_steps)
    registry.register(sleeper)
