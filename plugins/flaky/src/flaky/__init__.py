"""Retries: a step that fails ``failures`` times, then succeeds (if attempts allow)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from durable_core import Context, RetryPolicy, WorkflowRegistry, hookimpl

_attempts: dict[str, int] = {}


async def flaky(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """Run a step that raises on its first ``failures`` attempts."""
    failures = int(args.get("failures", 2))
    key = ctx.invocation_id

    def unreliable() -> int:
        _attempts[key] = _attempts.get(key, 0) + 1
        if _attempts[key] <= failures:
            raise ConnectionError(f"transient failure {_attempts[key]} of {failures}")
        return _attempts[key]

    policy = RetryPolicy(
        initial_interval=timedelta(milliseconds=100),
        maximum_attempts=int(args.get("attempts", 5)),
    )
    attempt = await ctx.run("unreliable", unreliable, retry=policy)
    return {"succeeded_on_attempt": attempt}


@hookimpl
def durable_register_workflows(registry: WorkflowRegistry) -> None:
    registry.register(flaky)
