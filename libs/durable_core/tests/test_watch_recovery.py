"""A KV watch whose consumer is lost (its node died, say) recovers within seconds, on a real
server: nats-py's default heartbeat (5 s, checked every two) left it stale for ~20 s."""

from __future__ import annotations

import asyncio
import time

from durable_core._transport import Transport
from durable_core._transport.records import watch_bucket


async def test_a_watch_whose_consumer_was_deleted_sees_the_next_change_soon(
    transport: Transport,
) -> None:
    kv = await transport.js.create_key_value(bucket=f"w{transport.names.prefix}")
    await kv.put("before", b"1")
    watch = watch_bucket(kv)
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
