"""Fixtures the unit tests that need a real server share: one ``nats-server`` per module and a
``Transport`` on it with a prefix of its own per test."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio

from durable_core import EngineConfig
from durable_core._transport import Transport
from durable_core.config import NatsConfig
from durable_core.testing import NatsServer


@pytest.fixture(scope="module")
def server() -> Iterator[NatsServer]:
    with NatsServer() as s:
        yield s


@pytest_asyncio.fixture
async def transport(server: NatsServer) -> AsyncIterator[Transport]:
    engine = EngineConfig(prefix="t" + uuid.uuid4().hex[:8])
    t = await Transport.connect(NatsConfig.from_url(server.url), engine, create=True)
    try:
        yield t
    finally:
        await t.close()
