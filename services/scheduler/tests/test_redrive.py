"""The re-drive's decisions, on a stand-in for the transport, and one NATS answer lost on a real
server (the cluster test is in tests/integration/test_lifecycle.py)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest

from durable_core import EngineConfig
from durable_core._transport import StateConflict, Transport
from durable_core.admin import Engine
from durable_core.config import NatsConfig
from durable_core.testing import NatsServer
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


@pytest.fixture(scope="module")
def server() -> Iterator[NatsServer]:
    with NatsServer() as s:
        yield s


async def test_a_lease_delete_whose_answer_was_lost_still_hands_the_commands_back(
    server: NatsServer,
) -> None:
    """The delete landed but its answer was lost: the sweep gave up, the watch then dropped the
    lease (and the next sweep's delete met the delete marker), so no NAK was ever sent and the
    commands waited for ``ack_wait``."""
    engine = EngineConfig(prefix="rd" + uuid.uuid4().hex[:8])
    t = await Transport.connect(NatsConfig.from_url(server.url), engine, create=True)
    try:
        stream = t.names.command_stream
        held = [f"$JS.ACK.{stream}.gone.1.{k}.{k}.0.0" for k in (1, 2)]
        naks = await t.nc.subscribe(f"$JS.ACK.{stream}.gone.>")
        revision = await t.create_lease("p1.a", _lease(held))
        real = t.delete_lease

        async def answer_lost(name: str, revision: int = 0) -> None:
            t.delete_lease = real  # type: ignore[method-assign]
            await real(name, revision)
            raise TimeoutError("no answer to the delete")

        t.delete_lease = answer_lost  # type: ignore[method-assign]
        now = [0.0]
        r = Redriver(Engine(t), clock=lambda: now[0])
        r.saw("p1.a", _lease(held), revision)
        now[0] = 4.0
        assert await r.sweep() == 2
        assert await t.lease_record("p1.a") == (None, 0)
        got = [await naks.next_msg(timeout=5) for _ in held]
        assert sorted(m.subject for m in got) == held
        assert {m.data for m in got} == {b"-NAK"}
    finally:
        await t.close()
