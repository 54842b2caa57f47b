"""A value or an error too large for a journal entry is a typed failure, never a run that
the engine hands back and starts again without end.

The journal's entries are bounded (the engine's max_payload plus room for the rest). A
``ctx.set`` of a larger value, or an exception whose message is larger (an HTTP body in an
error), failed the append with "message size exceeds maximum allowed": taken for NATS
trouble, the run was released and redelivered every 2 s, re-running its step each time."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from durable_core import Context, RetryPolicy
from durable_core.errors import PayloadTooLargeError

BIG = 600_000  # beyond the default max_payload (500,000) and the journal's room for it
RUNS: Counter[str] = Counter()


async def big_state(ctx: Context, n: int) -> str:
    try:
        await ctx.set("k", "s" * n)
    except PayloadTooLargeError as e:
        return f"refused: {type(e).__name__}"
    return "stored"


async def big_error(ctx: Context, n: int) -> None:
    raise ValueError("e" * n)


def _boom(invocation_id: str, n: int) -> None:
    RUNS[invocation_id] += 1
    raise RuntimeError("r" * n)


async def big_step_error(ctx: Context, n: int) -> None:
    await ctx.run("boom", _boom, ctx.invocation_id, n, retry=RetryPolicy(maximum_attempts=2))


async def test_an_oversized_state_value_is_refused_in_the_workflow(
    local_engine: Callable[..., Any],
) -> None:
    async with local_engine(big_state) as (client, _):
        result = await client.invoke("big_state", BIG, timeout=20)
        assert result.output == "refused: PayloadTooLargeError"
        assert (await client.invoke("big_state", 1000, timeout=20)).output == "stored"


@pytest.mark.parametrize("workflow", ["big_error", "big_step_error"])
async def test_an_oversized_error_fails_the_invocation_with_its_message_cut(
    local_engine: Callable[..., Any], workflow: str
) -> None:
    async with local_engine(big_error, big_step_error) as (client, _):
        inv = f"huge-{workflow.replace('_', '-')}"
        await client.invoke_async(workflow, BIG, id=inv)
        result = await client.wait(inv, timeout=20)
        assert result.status.value == "failed", result
        message = result.failure.message
        assert len(message) < 20_000 and "characters cut" in message, message[-200:]
        if workflow == "big_step_error":
            assert RUNS[inv] == 2  # its two attempts, never run again


async def test_rejecting_an_awakeable_with_an_oversized_reason_is_refused(
    local_engine: Callable[..., Any],
) -> None:
    async with local_engine(big_state) as (client, _):
        with pytest.raises(PayloadTooLargeError):
            await client.reject_awakeable("awk.nobody.1", "z" * BIG)


async def test_an_entry_the_journal_refuses_for_its_size_is_typed(transport: Any) -> None:
    """Refused as NATS trouble before ("cannot reach NATS ... Is nats-server running?"):
    the engine released the run and started it again."""
    from durable_core._pb.durable.v1 import durable_pb2 as pb

    entry = pb.JournalEntry(kind=pb.ENTRY_KIND_RUN, step=1, failure=pb.Failure(message="x" * BIG))
    with pytest.raises(PayloadTooLargeError, match="larger than the journal takes"):
        await transport.append("too-big", entry, 0, "m1")
