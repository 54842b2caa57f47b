"""Fixtures the unit tests that need a real server share: one ``nats-server`` per module, a
``Transport`` on it with a prefix of its own per test, and an engine with a processor running
in the test's own process (``local_engine``)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import pytest_asyncio

from durable_core import Client, EngineConfig, Worker, WorkerConfig, WorkflowRegistry
from durable_core._transport import Transport
from durable_core.config import NatsConfig
from durable_core.errors import NatsUnavailableError
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


LocalEngine = Callable[..., contextlib.AbstractAsyncContextManager[tuple[Client, Transport]]]


@pytest.fixture
def local_engine(server: NatsServer) -> LocalEngine:
    """``async with local_engine(*workflows) as (client, transport)``: an engine of its own on
    the module's server, a processor (``Worker``) running ``workflows`` in this process, and a
    client. ``engine``/``worker``: other configurations; ``batches``: atomic batches on or off
    (one node: off by default, see ``Transport.atomic_batches``)."""

    @contextlib.asynccontextmanager
    async def run(
        *workflows: Callable[..., Any],
        engine: EngineConfig | None = None,
        worker: WorkerConfig | None = None,
        batches: bool | None = None,
    ) -> AsyncIterator[tuple[Client, Transport]]:
        engine = engine or EngineConfig(prefix="t" + uuid.uuid4().hex[:8])
        registry = WorkflowRegistry()
        for wf in workflows:
            registry.register(wf)
        transport = await Transport.connect(NatsConfig.from_url(server.url), engine, create=True)
        if batches is not None:
            transport.atomic_batches = batches
        processor = Worker(transport, registry, worker or WorkerConfig())
        task = asyncio.create_task(processor.run())
        try:
            await asyncio.wait_for(processor.consuming.wait(), 20)
            async with await Client.connect(server.url, engine=engine) as client:
                yield client, transport
        finally:
            processor.stop()
            await asyncio.wait_for(task, 30)
            await transport.close()

    return run


CutAppends = Callable[[Client, int], contextlib.AbstractContextManager[None]]


@pytest.fixture
def appends_cut_after() -> CutAppends:
    """``with appends_cut_after(client, n):`` the client's journal appends after the first
    ``n`` fail as if NATS were gone (a call cut short part way), until the block ends."""
    return _appends_cut_after


@contextlib.contextmanager
def _appends_cut_after(client: Client, n: int) -> Iterator[None]:
    append, calls = client._t.append, 0

    async def cut(*args: Any, **kwargs: Any) -> int:
        nonlocal calls
        calls += 1
        if calls > n:
            raise NatsUnavailableError("cut short")
        return int(await append(*args, **kwargs))

    client._t.append = cut  # type: ignore[method-assign]
    try:
        yield
    finally:
        client._t.append = append  # type: ignore[method-assign]
