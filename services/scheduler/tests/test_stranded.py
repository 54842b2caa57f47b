"""The stranded-run sweep's decisions, on a stand-in for the engine (the cluster test, with a
command really lost, is in tests/integration/test_lifecycle.py)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from durable_core._pb.durable.v1 import durable_pb2 as pb
from durable_core.admin import StateRecord
from durable_scheduler.redrive import Redriver
from durable_scheduler.stranded import StrandedRuns


class _Engine:
    def __init__(self) -> None:
        self.states: list[StateRecord] = []
        self.processors: list[tuple[str, int]] = [("h", 1)]
        self.rescued: list[str] = []
        self.published: set[tuple[str, int, int]] = set()

    async def live_processors(self) -> list[tuple[str, int]]:
        return self.processors

    async def watch_states(self) -> AsyncIterator[tuple[str, StateRecord | None] | None]:
        for rec in self.states:
            yield rec.state.invocation_id, rec
        yield None

    async def rescue(self, rec: StateRecord) -> bool:
        """As the stream does: a copy of a rescue (same id, command, revision) is dropped."""
        self.rescued.append(rec.state.invocation_id)
        key = (rec.state.invocation_id, rec.state.run_command_seq, rec.revision)
        if key in self.published:
            return False
        self.published.add(key)
        return True


def _lease(seqs: list[int], **extra: object) -> bytes:
    record = {"processor": "p1", "ttl_ms": 3000, "pid": 1, "host": "h", "seqs": seqs, **extra}
    return json.dumps(record).encode()


def _running(invocation_id: str, seq: int, updated_at_ms: int, revision: int = 1) -> StateRecord:
    state = pb.ExecutionState(
        invocation_id=invocation_id,
        status=pb.STATUS_RUNNING,
        run_command_seq=seq,
        updated_at_ms=updated_at_ms,
    )
    return StateRecord(state, revision)


def _sweep(engine: _Engine, redriver: Redriver, now: list[float]) -> StrandedRuns:
    return StrandedRuns(
        engine,  # type: ignore[arg-type]
        redriver,
        min_age=60,
        confirm=10,
        clock=lambda: now[0],
        wall_ms=lambda: int(now[0] * 1000),
    )


async def test_only_an_unheld_unchanged_run_is_rescued_and_only_once_confirmed() -> None:
    now = [1000.0]
    engine, redriver = _Engine(), Redriver(None)  # type: ignore[arg-type]
    redriver.synced = True
    redriver.saw("p1.a", _lease([7]), 1)
    engine.states = [
        _running("held", 7, 0),  # its command is listed: a long step
        _running("young", 8, 990_000),  # changed 10 s ago
        _running("lost", 9, 0),
        StateRecord(pb.ExecutionState(invocation_id="parked", status=pb.STATUS_SUSPENDED), 1),
    ]
    stranded = _sweep(engine, redriver, now)
    assert await stranded.sweep() == 0  # a suspect, not yet confirmed
    now[0] += 5
    assert await stranded.sweep() == 0
    now[0] += 6
    assert await stranded.sweep() == 1
    assert engine.rescued == ["lost"]
    engine.states[2] = _running("lost", 9, 0, revision=2)  # it moved (the rescue ran)
    assert await stranded.sweep() == 0  # a new suspect: the clock starts again


async def test_a_command_listed_meanwhile_is_not_rescued() -> None:
    now = [1000.0]
    engine, redriver = _Engine(), Redriver(None)  # type: ignore[arg-type]
    redriver.synced = True
    redriver.saw("p1.a", _lease([]), 1)
    engine.states = [_running("lost", 9, 0)]
    stranded = _sweep(engine, redriver, now)
    await stranded.sweep()
    redriver.saw("p1.a", _lease([9]), 2)  # a processor took it (a late redelivery)
    now[0] += 11
    assert await stranded.sweep() == 0 and engine.rescued == []


async def test_it_stands_aside_while_it_cannot_know_what_is_held() -> None:
    now = [1000.0]
    engine, redriver = _Engine(), Redriver(None)  # type: ignore[arg-type]
    engine.states = [_running("lost", 9, 0)]
    stranded = _sweep(engine, redriver, now)
    assert "caught up" in await stranded.blind()
    redriver.synced = True
    assert "runs without a lease" in await stranded.blind()  # ("h", 1) has none
    redriver.saw("p1.a", _lease([], truncated=True), 1)
    assert "lists fewer" in await stranded.blind()
    redriver.saw("p1.a", _lease([]), 2)
    assert await stranded.blind() == ""
    assert await stranded.sweep() == 0  # a suspect
    now[0] += 11
    assert await stranded.sweep() == 1 and engine.rescued == ["lost"]
    now[0] += 5
    assert await stranded.sweep() == 0  # still stuck: again only a confirm later
    now[0] += 6
    assert await stranded.sweep() == 0  # published again, but a copy: not counted
    assert engine.rescued == ["lost", "lost"]


async def test_a_repeated_rescue_is_not_counted() -> None:
    """The stream drops a rescue published again for the same state revision (its message
    id): it was counted and logged as a rescue every ``confirm`` while the run stayed stuck."""
    now = [1000.0]
    engine, redriver = _Engine(), Redriver(None)  # type: ignore[arg-type]
    redriver.synced = True
    redriver.saw("p1.a", _lease([]), 1)
    engine.states = [_running("lost", 9, 0)]
    stranded = _sweep(engine, redriver, now)
    await stranded.sweep()
    now[0] += 11
    assert await stranded.sweep() == 1
    now[0] += 11
    assert await stranded.sweep() == 0
    assert engine.rescued == ["lost", "lost"]
    assert stranded.metrics.rescued._value.get() == 1


async def test_a_blind_sweep_keeps_its_suspects() -> None:
    """While blind (a processor's fleet record without a lease, for ~20 s after it dies) a
    sweep cleared every suspect, so processors coming and going put rescues off for good."""
    now = [1000.0]
    engine, redriver = _Engine(), Redriver(None)  # type: ignore[arg-type]
    redriver.synced = True
    redriver.saw("p1.a", _lease([]), 1)
    engine.states = [_running("lost", 9, 0)]
    stranded = _sweep(engine, redriver, now)
    assert await stranded.sweep() == 0  # a suspect
    engine.processors.append(("h", 2))  # a processor whose lease is not there (yet, or now)
    now[0] += 5
    assert await stranded.sweep() == 0  # blind: no rescue
    engine.processors.remove(("h", 2))
    now[0] += 6
    assert await stranded.sweep() == 1  # first seen a confirm ago, still unheld
    assert engine.rescued == ["lost"]
