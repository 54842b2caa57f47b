"""What a processor hands back, and when: a ``CancelledError`` of the workflow's own is a
failure, not a shutdown; a sync step still running in its thread at the end of the shutdown
grace is never run by another processor at the same time.

The workflows are a plugin written here (``release_probe``), installed on ``PYTHONPATH``."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from durable_core import Client, InvocationTimeoutError
from durable_core.testing import ChildProcess, ProcessStack, assert_eventually_async

pytestmark = pytest.mark.integration

_PLUGIN = '''
"""Workflows whose code raises CancelledError of its own, and a slow sync step."""

from __future__ import annotations

import asyncio
import os
import time
from datetime import timedelta
from typing import Any

from durable_core import Context, RetryPolicy, WorkflowRegistry, hookimpl


def _note(path: str, line: str) -> None:
    with open(path, "a") as f:
        f.write(line + "\\n")


async def cancelling_step(ctx: Context, args: dict[str, Any]) -> None:
    async def cancels() -> None:
        _note(args["calls"], "call")
        raise asyncio.CancelledError("raised by the step itself")

    policy = RetryPolicy(initial_interval=timedelta(milliseconds=50), maximum_attempts=3)
    await ctx.run("cancels", cancels, retry=policy)


async def cancelling_body(ctx: Context, args: dict[str, Any]) -> None:
    await ctx.run("fine", lambda: 1)
    raise asyncio.CancelledError("raised by the workflow itself")


async def slow_sync_step(ctx: Context, args: dict[str, Any]) -> int:
    def slow() -> int:
        _note(args["log"], f"start {os.getpid()} {time.time()}")
        time.sleep(float(args["seconds"]))
        _note(args["log"], f"end {os.getpid()} {time.time()}")
        return os.getpid()

    return await ctx.run("slow", slow)


@hookimpl
def durable_register_workflows(registry: WorkflowRegistry) -> None:
    registry.register(cancelling_step)
    registry.register(cancelling_body)
    registry.register(slow_sync_step)
'''


def write_plugin(root: Path) -> Path:
    """``release_probe`` as an installed distribution under ``root``."""
    home = root / "release_probe-1.0"
    (home / "release_probe").mkdir(parents=True)
    (home / "release_probe" / "__init__.py").write_text(_PLUGIN)
    info = home / "release_probe-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: release-probe\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[durable.plugins]\nrelease_probe = release_probe\n")
    (info / "top_level.txt").write_text("release_probe\n")
    return home


def start(stack: ProcessStack, name: str, home: Path, **env: str) -> ChildProcess:
    path = os.pathsep.join(filter(None, [str(home), os.environ.get("PYTHONPATH")]))
    return stack.start_processor(name, DURABLE_LOAD_PLUGINS="release_probe", PYTHONPATH=path, **env)


async def test_a_cancelled_error_raised_by_workflow_code_fails_the_invocation(
    stack: ProcessStack, client: Client, tmp_path: Path
) -> None:
    """Taken for a shutdown, such an error handed the command back at once: the step ran
    again, a CLAIM was appended each time, forever, and nothing was logged. A step's own
    CancelledError is an attempt failure (its retry policy allows 3 attempts); the workflow
    body's fails the invocation."""
    home = write_plugin(tmp_path)
    stack.start_service()
    processor = start(stack, "p-cancel", home)
    calls = tmp_path / "calls"
    by_step = await client.invoke_async("cancelling_step", {"calls": str(calls)})
    by_body = await client.invoke_async("cancelling_body", {})
    try:
        step_result = await client.wait(by_step, timeout=30)
        body_result = await client.wait(by_body, timeout=30)
    except InvocationTimeoutError:
        n = calls.read_text().count("call") if calls.exists() else 0
        pytest.fail(f"not finished; the step ran {n} times\n{processor.tail(40)}")
    assert step_result.status == "failed"
    assert step_result.failure is not None
    assert step_result.failure.type == "StepFailedError"
    await asyncio.sleep(1)  # a step run again after the end would show now
    assert calls.read_text().count("call") == 3
    assert body_result.status == "failed"
    assert body_result.failure is not None
    assert body_result.failure.type == "CancelledError"
    assert "raised by the workflow itself" in body_result.failure.message


async def test_a_sync_step_past_the_shutdown_grace_never_runs_beside_its_rerun(
    stack: ProcessStack, client: Client, tmp_path: Path
) -> None:
    """SIGTERM with a short grace while a sync step sleeps in its thread: the thread cannot
    be stopped, so its command is not handed back before it ended (the drain's bounded wait
    decides: past it, the command waits for its ack_wait). Before, the command was naked at
    once and the second processor ran the step while the first still ran it."""
    home = write_plugin(tmp_path)
    stack.start_service()
    # Every processor's consumer has one ack_wait; 15 s puts the redelivery well after the
    # step's end, if the first processor ever held the command that long.
    quick = {"DURABLE_ACK_WAIT": "15", "DURABLE_SHUTDOWN_GRACE": "0.5"}
    first = start(stack, "p-first", home, **quick)
    log = tmp_path / "steps"
    inv = await client.invoke_async("slow_sync_step", {"log": str(log), "seconds": 12})

    async def started() -> bool:
        return log.exists() and "start" in log.read_text()

    await assert_eventually_async(started, 30, "the step started")
    second = start(stack, "p-second", home, **quick)
    await asyncio.sleep(1)  # a couple of seconds into the step
    await asyncio.to_thread(first.stop, 40)
    result = await client.wait(inv, timeout=90)
    assert result.status == "completed", result.failure
    runs = [line.split() for line in log.read_text().splitlines()]
    pid_first, pid_second = runs[0][1], str(result.output)
    assert pid_first != pid_second, runs
    first_end = next(float(t) for what, pid, t in runs if what == "end" and pid == pid_first)
    second_start = next(float(t) for what, pid, t in runs if what == "start" and pid == pid_second)
    assert second_start >= first_end, (
        f"the second processor started the step {first_end - second_start:.1f}s before the "
        f"first one's run of it ended\n{second.tail(20)}"
    )
    assert "wait for a step running in a thread" in first.log()
