"""Issue 14: configuration that cannot split the cluster.

Replicas were set in three places (processor, Client, CLI), and a client that connected first
with the default 1 created the streams R1, after which every processor configured for 3
refused to start (``replicas=1 (configured: 3)``). Now only processors create the streams;
everyone else binds to what exists and takes replicas and limits from the stored streams.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta

import nats.js.errors
import pytest

from durable_core import Client, EngineConfig, EngineNotFoundError
from durable_core._naming import Names
from durable_core._transport import Transport
from durable_core.config import NatsConfig
from durable_core.schedules import create_schedule
from durable_core.testing import NatsCluster

pytestmark = pytest.mark.integration


async def _stream_exists(t: Transport, name: str) -> bool:
    try:
        await t.js.stream_info(name)
    except nats.js.errors.NotFoundError:
        return False
    return True


async def test_a_client_first_on_a_prefix_creates_nothing_and_says_why(
    cluster: NatsCluster, prefix: str
) -> None:
    with pytest.raises(EngineNotFoundError) as caught:
        await Client.connect(cluster.url, engine=EngineConfig(prefix=prefix))
    message = str(caught.value)
    assert prefix in message and "start one" in message and "processor" in message
    assert caught.value.prefix == prefix
    probe = await Transport.connect(NatsConfig.from_url(cluster.url), bind=False)
    try:
        names = Names(prefix)
        for stream in (names.command_stream, names.journal_stream, f"KV_{names.state_bucket}"):
            assert not await _stream_exists(probe, stream), f"a client created {stream}"
    finally:
        await probe.close()


async def test_clients_use_the_replicas_and_limits_the_processor_created(
    cluster: NatsCluster, prefix: str
) -> None:
    nats_cfg = NatsConfig.from_url(cluster.url)
    waiting = asyncio.create_task(
        Client.connect(
            cluster.url,
            engine=EngineConfig(prefix=prefix),  # replicas 1, the default: not used
            wait_for_engine=timedelta(seconds=30),
        )
    )
    done, _ = await asyncio.wait({waiting}, timeout=0.5)
    assert not done, "the client did not wait for the streams"
    processor = await Transport.connect(
        nats_cfg, EngineConfig(prefix=prefix, replicas=3, max_payload=700_000), create=True
    )
    client = await asyncio.wait_for(waiting, 30)
    try:
        assert client._t.engine.replicas == 3
        assert client._t.payload_limit <= 700_000
        assert client._t.engine.max_payload == 700_000
        # A bucket a client creates later takes the engine's replicas, not the client's guess.
        await create_schedule(client._t, "nightly", "hello_workflow", {}, cron="0 0 3 * * *")
        info = await processor.js.stream_info(f"KV_{processor.names.schedules_bucket}")
        assert info.config.num_replicas == 3
        # A second processor with a different replicas setting refuses, naming both.
        with pytest.raises(Exception, match=r"replicas=3 \(configured: 1\)"):
            await Transport.connect(nats_cfg, EngineConfig(prefix=prefix, replicas=1), create=True)
    finally:
        await client.close()
        with contextlib.suppress(Exception):
            await processor.close()
