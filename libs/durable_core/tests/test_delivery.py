"""Delivery: until when a command is surely still ours, and what it settles (no NATS)."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

from durable_core._transport import Delivery


class _Msg:
    def __init__(self, num_delivered: int = 1, seq: int = 7) -> None:
        self.data = b""
        self.subject = "t.cmd.dw.any.k"
        self.reply = f"$JS.ACK.S.c.{num_delivered}.{seq}.1.0.0"
        self.metadata = SimpleNamespace(
            num_delivered=num_delivered, sequence=SimpleNamespace(stream=seq), num_pending=0
        )
        self.sent: list[str] = []

    async def ack(self) -> None:
        self.sent.append("ack")

    async def nak(self, delay: float | None = None) -> None:
        self.sent.append("nak")

    async def term(self) -> None:
        self.sent.append("term")


class _Nc:
    """Answers in-progress acks after ``latency`` seconds (or never)."""

    def __init__(self, latency: float | None = 0.0) -> None:
        self.latency = latency
        self.requests: list[tuple[str, bytes]] = []

    async def request(self, subject: str, data: bytes, timeout: float) -> Any:
        self.requests.append((subject, data))
        if self.latency is None:
            raise TimeoutError
        await asyncio.sleep(self.latency)
        return SimpleNamespace(data=b"")


def _delivery(nc: _Nc, *, ack_wait: float = 1.0, floor: float | None = None) -> Delivery:
    return Delivery(
        _Msg(),  # type: ignore[arg-type]
        nc=nc,  # type: ignore[arg-type]
        ack_wait=ack_wait,
        floor=time.monotonic() if floor is None else floor,
    )


async def test_the_bound_counts_from_the_pull_request_and_moves_one_answered_ack_behind() -> None:
    nc = _Nc()
    start = time.monotonic()
    d = _delivery(nc, floor=start - 0.2)  # its pull request went out 0.2 s ago
    assert abs(d.held_until - (start + 0.8)) < 0.05
    assert await d.heartbeat(timeout=1)
    assert nc.requests == [(d.reply, b"+WPI")]
    # The first answered ack moves the bound to ack_wait after the previous one (the floor):
    # the consumer leader answers before it replicates, so the latest may be lost.
    assert abs(d.held_until - (start + 0.8)) < 0.05
    second = time.monotonic()
    assert await d.heartbeat(timeout=1)
    assert d.held_until >= second - 0.05 + 0.9  # now from the first answered ack
    assert d.surely_held(margin=0.5)


async def test_an_answer_after_the_bound_loses_the_delivery_for_good() -> None:
    d = _delivery(_Nc(latency=0.3), ack_wait=1.0, floor=time.monotonic() - 0.8)
    assert not await d.heartbeat(timeout=1)
    assert d.lost and not d.surely_held()
    d._nc = _Nc()  # type: ignore[assignment]
    assert not await d.heartbeat(timeout=1)  # a later, timely answer proves nothing either
    assert d.lost


async def test_an_unanswered_ack_leaves_the_bound_where_it_was() -> None:
    d = _delivery(_Nc(latency=None))
    before = d.held_until
    assert not await d.heartbeat(timeout=0.1)
    assert d.held_until == before and not d.lost


async def test_nak_and_term_only_while_surely_held_and_ack_of_a_finished_run_always() -> None:
    d = _delivery(_Nc(), ack_wait=1.0, floor=time.monotonic() - 2.0)  # the bound has passed
    msg = d._msg
    await d.nak()
    await d.term()
    await d.ack()
    assert msg.sent == [] and not d.settled  # type: ignore[attr-defined]
    await d.ack(finished=True)
    assert msg.sent == ["ack"] and d.settled  # type: ignore[attr-defined]
    await d.nak(stale_ok=True)  # where run locks make a stale NAK harmless
    assert msg.sent == ["ack", "nak"]  # type: ignore[attr-defined]
    held = _delivery(_Nc())
    await held.nak()
    assert held._msg.sent == ["nak"]  # type: ignore[attr-defined]


async def test_a_redelivery_adopted_by_the_run_in_progress_brings_its_own_bound() -> None:
    d = _delivery(_Nc(), floor=time.monotonic() - 2.0)
    d.lost = True
    again = Delivery(
        _Msg(num_delivered=2),  # type: ignore[arg-type]
        nc=None,
        ack_wait=1.0,
        floor=time.monotonic(),
    )
    d.adopt(again)
    assert d.num_delivered == 2 and d.reply == again.reply
    assert d.surely_held() and not d.lost
