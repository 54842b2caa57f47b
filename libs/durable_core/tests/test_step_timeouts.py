"""ctx.run's per-attempt timeout."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta

import grpc
import grpc.aio
import pytest

from durable_core import Context, RetryPolicy, StepFailedError
from durable_core.engine._step_io import attempt_failure
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


async def test_a_workflow_default_retry_policy_applies_unless_a_step_has_its_own() -> None:
    calls = {"default": 0, "own": 0}

    def fails(which: str) -> None:
        calls[which] += 1
        raise ConnectionError(which)

    async def wf(ctx: Context) -> None:
        with contextlib.suppress(StepFailedError):
            await ctx.run("default", fails, "default")
        own = RetryPolicy(initial_interval=timedelta(milliseconds=1), maximum_attempts=3)
        await ctx.run("own", fails, "own", retry=own)

    policy = RetryPolicy(initial_interval=timedelta(milliseconds=1), maximum_attempts=2)
    with pytest.raises(StepFailedError):
        await replay_workflow(wf, retry=policy)
    assert calls == {"default": 2, "own": 3}


def test_registration_takes_a_default_retry_policy() -> None:
    from durable_core import WorkflowRegistry

    async def wf(ctx: Context) -> None:
        return None

    policy = RetryPolicy(maximum_attempts=2)
    registry = WorkflowRegistry()
    registry.register(wf, retry=policy)
    assert registry.get("wf").retry is policy


@pytest.mark.parametrize(
    ("details", "retryable"),
    [
        ("SERVER: Received message larger than max (5242880 vs. 4194304)", False),
        ("CLIENT: Received message larger than max (5242880 vs. 4194304)", False),
        ("quota exceeded, try later", True),
    ],
)
def test_a_message_over_a_size_limit_is_not_retried(details: str, retryable: bool) -> None:
    """RESOURCE_EXHAUSTED for a message over a size limit was retried (the same message is
    as large every time: the service ran its effect again for an answer that never came);
    quotas and rate limits still are."""
    error = grpc.aio.AioRpcError(
        grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.aio.Metadata(), grpc.aio.Metadata(), details
    )
    failure, again = attempt_failure(error, 3, RetryPolicy())
    assert (failure.code, again) == ("RESOURCE_EXHAUSTED", retryable)
