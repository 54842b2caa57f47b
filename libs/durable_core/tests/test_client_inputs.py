"""Bad input to the client's waits and delays is refused, typed, before anything is stored."""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from durable_core import (
    Client,
    Context,
    EngineConfig,
    InvalidInputError,
    NatsConfig,
)
from durable_core._transport import Transport
from durable_core.client._submit import start_at_ms
from durable_core.testing import NatsServer


@pytest.mark.parametrize("timeout", [math.nan, math.inf, -1.0, 0, None, "5", True])
async def test_a_wait_with_a_timeout_that_never_ends_or_is_no_number_is_refused(
    server: NatsServer, timeout: object
) -> None:
    """``timeout=nan`` never ran out: the wait polled NATS in a tight loop, for good; others
    raised TypeError or ValueError. ``invoke`` refuses it before submitting anything."""
    engine = EngineConfig(prefix="t" + uuid.uuid4().hex[:8])
    streams = await Transport.connect(NatsConfig.from_url(server.url), engine, create=True)
    client = await Client.connect(server.url, engine=engine)
    try:
        with pytest.raises(InvalidInputError, match="timeout"):
            await client.wait("some-id", timeout=timeout)  # type: ignore[arg-type]
        with pytest.raises(InvalidInputError, match="timeout"):
            await client.invoke(
                "hello_workflow", {"name": "x"}, id="never", timeout=timeout, queue_unserved=True
            )  # type: ignore[arg-type]
        assert await client._t.get_state("never") is None
    finally:
        await client.close()
        await streams.close()


def test_start_at_is_bounded_and_one_in_the_past_is_due_now() -> None:
    with pytest.raises(InvalidInputError, match="at most"):
        start_at_ms(None, datetime(9999, 1, 1, tzinfo=UTC))
    now = int(time.time() * 1000)
    assert start_at_ms(None, datetime(1960, 1, 1, tzinfo=UTC)) >= now  # not before 1970
    soon = datetime.now(UTC) + timedelta(minutes=5)
    assert start_at_ms(None, soon) == int(soon.timestamp() * 1000)


async def remind(ctx: Context, args: dict[str, str]) -> str:
    return args["to"]


async def test_a_second_submission_after_the_duplicate_window_keeps_the_due_time(
    local_engine: Callable[..., Any],
) -> None:
    """A delayed invocation submitted again with its id once the start's message id was
    forgotten (the duplicate window, 10 minutes by default): without a delay, the second
    start ran it at once; with one, it moved the start later. It runs at its due time."""
    engine = EngineConfig(prefix="t" + uuid.uuid4().hex[:8], duplicate_window=timedelta(seconds=1))
    async with local_engine(remind, engine=engine) as (client, _):
        args = {"to": "ada"}
        due = await client.invoke_async("remind", args, id="early", delay=timedelta(seconds=8))
        later = await client.invoke_async("remind", args, id="later", delay=timedelta(seconds=8))
        began = time.monotonic()
        await asyncio.sleep(2.5)  # past the duplicate window
        await client.invoke_async("remind", args, id=due)  # no delay
        await client.invoke_async("remind", args, id=later, delay=timedelta(seconds=60))
        await asyncio.sleep(2.0)
        assert (await client.get_result(due)).status == "pending"
        for invocation_id in (due, later):
            result = await client.wait(invocation_id, timeout=20)
            assert result.status == "completed"
        assert 7.0 <= time.monotonic() - began <= 14.0


async def test_a_processor_whose_clock_is_behind_starts_a_delayed_invocation_once(
    local_engine: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A processor 5 s behind the server takes a delayed start the server fires on time for
    one that comes early: it schedules it for its due time once, and runs the start that comes
    back (it rescheduled it again and again, at once each time, for the whole skew)."""
    from durable_core.engine import _execution

    monkeypatch.setattr(_execution, "now_ms", lambda: int(time.time() * 1000) - 5000)
    async with local_engine(remind) as (client, transport):
        scheduled: list[int] = []
        schedule = transport.schedule_command

        async def counted(cmd: object, **kwargs: Any) -> bool:
            scheduled.append(kwargs["at_ms"])
            return await schedule(cmd, **kwargs)  # type: ignore[arg-type]

        inv = await client.invoke_async("remind", {"to": "ada"}, delay=timedelta(seconds=2))
        monkeypatch.setattr(transport, "schedule_command", counted)
        result = await client.wait(inv, timeout=20)
        assert result.status == "completed"
        assert len(scheduled) <= 2, len(scheduled)  # once, and once more found done


BEGAN: dict[str, float] = {}


async def stamped(ctx: Context, _: int) -> float:
    return await ctx.run("began", lambda: BEGAN.setdefault(ctx.invocation_id, time.time()))


@pytest.mark.parametrize(
    ("delay_s", "paused"), [(0.7, False), (1.6, False), (2.3, False), (2.6, True)]
)
async def test_a_delayed_invocation_never_starts_before_it_is_due(
    local_engine: Callable[..., Any], delay_s: float, paused: bool
) -> None:
    """Server schedules are whole seconds, rounded down, and a delay of a second or less is
    published at once: the first step ran up to a second before the due time. Paused and
    resumed before it was due, its state said paused, not pending, and it ran early too."""
    inv = f"due-{int(delay_s * 10)}"
    async with local_engine(stamped) as (client, _):
        due = time.time() + delay_s
        await client.invoke_async("stamped", 1, id=inv, delay=timedelta(seconds=delay_s))
        if paused:
            await client.pause(inv)
            await asyncio.sleep(0.5)
            await client.resume(inv)
        assert (await client.wait(inv, timeout=20)).status == "completed"
    assert BEGAN[inv] >= due - 0.02, f"started {due - BEGAN[inv]:.3f} s before it was due"
