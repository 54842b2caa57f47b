"""A partition key's queued commands are read from a replica that has the caller's own
delivery, never from one behind it (chaos, seed 19203 with three shards: a node catching up
after a pause answered the direct get without an earlier start of the key, and a later start
ran first)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import nats.js.errors

from durable_core._naming import Names
from durable_core._pb.durable.v1 import durable_pb2 as pb
from durable_core._transport.commands import Commands

T = TypeVar("T")


class _Msg:
    def __init__(self, seq: int, invocation_id: str) -> None:
        self.seq = seq
        self.headers = {"Nats-Sequence": str(seq)}
        self.data = pb.Command(
            invocation_id=invocation_id, kind=pb.COMMAND_KIND_START
        ).SerializeToString()


class _Replica:
    """Direct gets answered by replicas, each holding the stream up to some sequence."""

    def __init__(self, stream: list[_Msg], applied: list[int]) -> None:
        self.stream, self.applied, self.asked = stream, applied, 0

    async def batch(
        self, stream: str, subject: str, start: int, batch: int
    ) -> tuple[list[_Msg], bool]:
        upto = self.applied[min(self.asked, len(self.applied) - 1)]
        self.asked += 1
        return [m for m in self.stream if m.seq <= upto][:batch], False


class _Leader:
    def __init__(self, stream: list[_Msg]) -> None:
        self.stream, self.asked = stream, 0

    async def get_msg(self, stream: str, *, seq: int, subject: str, next: bool) -> _Msg:
        self.asked += 1
        for m in self.stream:
            if m.seq >= seq:
                return m
        raise nats.js.errors.NotFoundError


class _Link:
    def __init__(self, leader: _Leader) -> None:
        self.names = Names("durable")
        self.js = leader

    async def retry(self, what: str, fn: Callable[[], Awaitable[T]]) -> T:
        return await fn()


def _commands(replicas: _Replica, leader: _Leader) -> Commands:
    return Commands(_Link(leader), replicas, provision=None)  # type: ignore[arg-type]


# The key's stream: an earlier start (10), the caller's own delivery (12).
STREAM = [_Msg(10, "earlier"), _Msg(12, "mine")]


async def test_an_answer_without_the_callers_own_delivery_is_not_used() -> None:
    replicas, leader = _Replica(STREAM, applied=[9, 9, 9]), _Leader(STREAM)
    got = await _commands(replicas, leader).queued("k", 12)
    assert [c.invocation_id for c in got] == ["earlier"]  # from the leader
    assert replicas.asked == 3 and leader.asked == 2


async def test_a_replica_that_catches_up_is_asked_again() -> None:
    replicas, leader = _Replica(STREAM, applied=[9, 12]), _Leader(STREAM)
    got = await _commands(replicas, leader).queued("k", 12)
    assert [c.invocation_id for c in got] == ["earlier"]
    assert replicas.asked == 2 and leader.asked == 0


async def test_a_current_replica_answers_at_once() -> None:
    replicas, leader = _Replica(STREAM, applied=[12]), _Leader(STREAM)
    assert [c.invocation_id for c in await _commands(replicas, leader).queued("k", 12)] == [
        "earlier"
    ]
    assert (replicas.asked, leader.asked) == (1, 0)
