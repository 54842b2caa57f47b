"""The re-drive's decisions, on a stand-in for the transport (the cluster test is in
tests/integration/test_lifecycle.py)."""

from __future__ import annotations

import json

from durable_core._transport import StateConflict
from durable_scheduler.redrive import Redriver


class _Transport:
    def __init__(self) -> None:
        self.revisions: dict[str, int] = {}
        self.naked: list[str] = []

    async def delete_lease(self, name: str, revision: int = 0) -> None:
        if self.revisions.get(name) != revision:
            raise StateConflict(f"{name} moved on")
        del self.revisions[name]

    async def redrive_lease(self, name: str, revision: int, held: list[str]) -> int:
        await self.delete_lease(name, revision)
        self.naked.extend(held)
        return len(held)


def _lease(held: list[str], ttl_ms: int = 3000) -> bytes:
    return json.dumps({"processor": "p1", "ttl_ms": ttl_ms, "held": held}).encode()


async def test_a_lapsed_lease_is_claimed_once_and_its_commands_handed_back() -> None:
    now = [100.0]
    t = _Transport()
    r = Redriver(t, clock=lambda: now[0])  # type: ignore[arg-type]
    t.revisions["p1.a"] = 7
    r.saw("p1.a", _lease(["$JS.ACK.X.1", "$JS.ACK.X.2"]), 7)
    now[0] += 2.9
    assert await r.sweep() == 0  # not lapsed yet
    now[0] += 0.2
    assert await r.sweep() == 2
    assert t.naked == ["$JS.ACK.X.1", "$JS.ACK.X.2"]
    assert await r.sweep() == 0  # claimed: never twice
    assert r.metrics.redriven._value.get() == 2


async def test_a_renewed_lease_or_one_claimed_elsewhere_is_left_alone() -> None:
    now = [0.0]
    t = _Transport()
    r = Redriver(t, clock=lambda: now[0])  # type: ignore[arg-type]
    t.revisions["p1.a"] = 1
    r.saw("p1.a", _lease(["$JS.ACK.X.1"]), 1)
    now[0] = 2.0
    t.revisions["p1.a"] = 2
    r.saw("p1.a", _lease(["$JS.ACK.X.1"]), 2)  # renewed: the clock starts again
    now[0] = 4.0
    assert await r.sweep() == 0
    now[0] = 5.5
    t.revisions["p1.a"] = 3  # renewed, but our watch has not seen it yet
    assert await r.sweep() == 0 and t.naked == []
    r.saw("p1.a", None, 4)  # deleted (a clean exit, or another replica claimed it)
    assert r.leases == {}


async def test_a_re_watch_does_not_restart_the_clock_and_junk_is_ignored() -> None:
    now = [0.0]
    t = _Transport()
    r = Redriver(t, clock=lambda: now[0])  # type: ignore[arg-type]
    t.revisions["p1.a"] = 5
    r.saw("p1.a", _lease([]), 5)
    now[0] = 2.0
    r.saw("p1.a", _lease([]), 5)  # the same revision again after a reconnect
    now[0] = 3.5
    assert await r.sweep() == 0  # lapsed and claimed (nothing held)
    assert "p1.a" not in t.revisions
    r.saw("bad", b"not json", 1)
    r.saw("bad2", json.dumps({"ttl_ms": 0}).encode(), 1)
    assert r.leases == {}
