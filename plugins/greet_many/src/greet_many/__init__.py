"""Child workflows: greet each name of a list through its own hello_workflow invocation."""

from __future__ import annotations

from typing import Any

from durable_core import Context, WorkflowRegistry, hookimpl


async def greet_many(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """``{"names": [...]}``: await one child hello_workflow per name (in order).

    ``{"detached": [...]}`` names are started with ``ctx.start`` and not awaited.
    """
    messages = []
    for name in args.get("names", []):
        child = await ctx.invoke("hello_workflow", {"name": name})
        messages.append(child["message"])
    started = [await ctx.start("hello_workflow", {"name": n}) for n in args.get("detached", [])]
    return {"messages": messages, "started": started}


async def fail_child(ctx: Context, args: dict[str, Any]) -> str:
    """Invoke a child that fails; its error propagates as ChildWorkflowError."""
    await ctx.invoke("flaky", {"failures": 99, "attempts": 2})
    return "unreachable"


@hookimpl
def durable_register_workflows(registry: WorkflowRegistry) -> None:
    """Register this plugin's workflows."""
    registry.register(greet_many)
    registry.register(fail_child)
