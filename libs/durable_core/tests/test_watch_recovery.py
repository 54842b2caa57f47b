"""A KV watch whose consumer is lost (its node died, say) recovers within seconds, on a real
server: nats-py's default heartbeat (5 s, checked every two) left it stale for ~20 s."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import timedelta

import pytest

from durable_core import Client, EngineConfig, NatsConfig
from durable_core._transport import Transport
from durable_core._transport.records import watch_bucket
from durable_core.errors import NatsUnavailableError
from durable_core.testing import NatsServer


async def test_a_watch_whose_consumer_was_deleted_sees_the_next_change_soon(
    transport: Transport,
) -> None:
    kv = await transport.js.create_key_value(bucket=f"w{transport.names.prefix}")
    await kv.put("before", b"1")
    watch = watch_bucket(kv, transport._link)
    try:
        assert await anext(watch) == ("before", b"1", 1)
        assert await anext(watch) is None  # caught up
        stream = f"KV_w{transport.names.prefix}"
        consumers = await transport.js.consumers_info(stream)
        assert len(consumers) == 1
        await transport.js.delete_consumer(stream, consumers[0].name)
        await kv.put("after", b"2")
        started = time.monotonic()
        item = await asyncio.wait_for(anext(watch), 15)
        took = time.monotonic() - started
        assert item == ("after", b"2", 2)
        assert took < 6.0, took  # two missed heartbeats (1 s each), then a new consumer
    finally:
        await watch.aclose()


async def test_a_listing_with_nats_gone_is_nats_unavailable_not_a_nats_py_error() -> None:
    """The listing's watch asked the server for its consumer once: with the node gone (or
    quorum lost), nats-py's own TimeoutError or ServiceUnavailableError came out of
    list_executions, and `durable list` printed a traceback (outside-in)."""
    engine = EngineConfig(prefix="t" + uuid.uuid4().hex[:8], append_deadline=timedelta(seconds=2))
    with NatsServer() as server:
        t = await Transport.connect(NatsConfig.from_url(server.url), engine, create=True)
        try:
            async with await Client.connect(server.url, engine=engine) as client:
                assert await client.list_executions() == []
                server.stop()
                started = time.monotonic()
                with pytest.raises(NatsUnavailableError):
                    await asyncio.wait_for(client.list_executions(), 20)
                assert time.monotonic() - started < 10
        finally:
            await t.close()
