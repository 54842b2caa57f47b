"""A client whose server freezes while it writes leaves it for another server of its pool.

nats-py's own check (two unanswered pings) runs only between writes: with the socket to a
frozen (SIGSTOPped) server full, its flusher waits forever, its ping loop waits on the flusher,
and its reconnect waits for the unsent bytes. A processor stayed on a frozen node for the whole
fault that way (the cluster-fault test, under load). The engine's connection watchdog
(``durable_core._transport.connection``) notices and drops the socket.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from durable_core._transport.connection import connect_nats
from durable_core.config import NatsConfig
from durable_core.testing import NatsServer

pytestmark = pytest.mark.integration


async def test_a_client_leaves_a_server_that_froze_while_it_wrote(tmp_path: Path) -> None:
    with (
        NatsServer(store_dir=tmp_path / "a", work_dir=tmp_path, name="a") as a,
        NatsServer(store_dir=tmp_path / "b", work_dir=tmp_path, name="b") as b,
    ):
        nc = await connect_nats(
            NatsConfig(servers=(a.url, b.url), ping_interval=1.0, name="frozen-test")
        )
        try:
            assert nc.connected_url is not None
            first = f"nats://{nc.connected_url.hostname}:{nc.connected_url.port}"
            frozen, other = (a, b) if first == a.url else (b, a)
            frozen.pause()
            try:
                chunk = b"x" * 60_000
                started = time.monotonic()
                moved = None
                while time.monotonic() - started < 30:
                    # Keep writing, as a busy processor does: the socket to the frozen server
                    # fills, and then nats-py's own stale-connection check never fires.
                    for _ in range(20):
                        if nc.is_connected:
                            await nc.publish("frozen.test", chunk)
                    await asyncio.sleep(0.05)
                    url = nc.connected_url
                    if url is not None and f"nats://{url.hostname}:{url.port}" == other.url:
                        moved = time.monotonic() - started
                        break
                assert moved is not None, "still on the frozen server after 30 s"
                await nc.flush(timeout=5)  # and it works there
            finally:
                frozen.resume()
        finally:
            await nc.close()
