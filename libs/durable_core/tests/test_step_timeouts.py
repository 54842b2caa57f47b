"""ctx.run's per-attempt timeout."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from durable_core import Context, RetryPolicy, StepFailedError
from durable_core.testing import replay_workflow


async def test_a_run_attempt_over_its_timeout_is_retried_then_fails() -> None:
    attempts = 0

    async def slow() -> str:
        nonlocal attempts
        attempts += 1
        await asyncio.sleep(1)
        return "never"

    async def wf(ctx: Context) -> str:
        policy = RetryPolicy(initial_interval=timedelta(milliseconds=10), maximum_attempts=2)
        return await ctx.run("slow", slow, timeout=timedelta(milliseconds=50), retry=policy)

    with pytest.raises(StepFailedError) as err:
        await replay_workflow(wf)
    assert err.value.error_type == "StepTimeoutError"
    assert attempts == 2


async def test_a_run_within_its_timeout_succeeds() -> None:
    async def wf(ctx: Context) -> int:
        return await ctx.run("quick", lambda: 7, timeout=timedelta(seconds=5))

    assert (await replay_workflow(wf)).output == 7
