"""The benchmark workflows, replayed without NATS."""

from __future__ import annotations

import hashlib
import io
from datetime import timedelta
from typing import Any

import pytest

from bench_workflows import Generated, large_payload, many_steps, sleeper
from durable_core import Context, NonDeterminismError, load_plugins
from durable_core.testing import WorkflowRun, replay_workflow, run_entry


@pytest.mark.parametrize("sync", [False, True])
async def test_many_steps_executes_every_step_once(sync: bool) -> None:
    run = await replay_workflow(many_steps, {"steps": 25, "sync": sync})

    assert run.output == {"steps": 25, "sum": 25}
    assert (run.executed_steps, run.replayed_steps) == (25, 0)
    assert [e.step for e in run.new_entries] == list(range(1, 26))
    assert {e.name for e in run.new_entries} == {"step"}


async def test_many_steps_defaults_to_a_thousand_steps() -> None:
    run = await replay_workflow(many_steps, None)

    assert run.output == {"steps": 1000, "sum": 1000}
    assert run.executed_steps == 1000


async def test_many_steps_replays_journaled_steps_and_runs_only_the_rest() -> None:
    journal = [run_entry("step", 1, args=()) for _ in range(7)]

    run = await replay_workflow(many_steps, {"steps": 10}, journal=journal)

    assert run.output == {"steps": 10, "sum": 10}
    assert (run.replayed_steps, run.executed_steps) == (7, 3)
    assert [e.step for e in run.new_entries] == [8, 9, 10]


async def test_many_steps_detects_a_journal_of_another_workflow() -> None:
    run = await replay_workflow(
        many_steps, {"steps": 3}, journal=[run_entry("other", 1)], raise_on_error=False
    )
    assert isinstance(run.error, NonDeterminismError)


@pytest.mark.parametrize("args", [{"steps": -1}, {"steps": "9"}, {"steps": True}])
async def test_many_steps_rejects_a_bad_step_count(args: dict[str, Any]) -> None:
    run = await replay_workflow(many_steps, args, raise_on_error=False)
    assert isinstance(run.error, ValueError)
    assert run.executed_steps == 0


class _SleepOnly:
    """A stand-in context that records what ``sleep`` was asked for."""

    def __init__(self) -> None:
        self.slept: list[timedelta] = []

    async def sleep(self, duration: timedelta) -> None:
        self.slept.append(duration)


async def test_sleeper_sleeps_durably_for_the_given_seconds() -> None:
    ctx = _SleepOnly()
    assert await sleeper(ctx, {"seconds": 90}) == {"slept": 90}  # type: ignore[arg-type]
    assert ctx.slept == [timedelta(seconds=90)]


async def test_sleeper_rejects_a_negative_duration_before_sleeping() -> None:
    ctx = _SleepOnly()
    with pytest.raises(ValueError, match="seconds"):
        await sleeper(ctx, {"seconds": -5})  # type: ignore[arg-type]
    assert ctx.slept == []


def test_both_workflows_are_registered_through_the_entry_point() -> None:
    registry = load_plugins().registry
    assert registry.get("many_steps").fn is many_steps
    assert registry.get("sleeper").fn is sleeper


@pytest.mark.skipif(
    not (hasattr(Context, "sleep") and hasattr(WorkflowRun, "suspended")),
    reason="ctx.sleep and suspension in replay_workflow are not in durable_core yet",
)
async def test_sleeper_suspends_the_invocation_instead_of_finishing() -> None:
    run = await replay_workflow(sleeper, {"seconds": 3600})

    assert run.suspended
    assert (run.output, run.error) == (None, None)


async def test_large_payload_streams_through_blobs() -> None:
    """Without NATS (the test replayer keeps blobs in memory): the digests of the argument
    and of the generated result, four times its size."""
    data = b"a" * 1000
    run = await replay_workflow(large_payload, io.BytesIO(data))
    expected = hashlib.sha256(Generated(4000).read()).hexdigest()
    assert run.output == {
        "argument": {"sha256": hashlib.sha256(data).hexdigest(), "size": 1000},
        "result": {"sha256": expected, "size": 4000},
    }


def test_generated_bytes_do_not_depend_on_how_they_are_read() -> None:
    whole = Generated(3 * Generated.BLOCK + 5).read()
    g = Generated(3 * Generated.BLOCK + 5)
    pieces = b"".join(iter(lambda: g.read(777_777), b""))
    assert pieces == whole and len(whole) == 3 * Generated.BLOCK + 5
