"""Bad input to the client's waits and delays is refused, typed, before anything is stored."""

from __future__ import annotations

import math
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from durable_core import Client, EngineConfig, InvalidInputError, NatsConfig
from durable_core._transport import Transport
from durable_core.client._submit import start_at_ms
from durable_core.testing import NatsServer


@pytest.mark.parametrize("timeout", [math.nan, math.inf, -1.0, 0, None, "5", True])
async def test_a_wait_with_a_timeout_that_never_ends_or_is_no_number_is_refused(
    server: NatsServer, timeout: object
) -> None:
    """``timeout=nan`` never ran out: the wait polled NATS in a tight loop, for good; others
    raised TypeError or ValueError. ``invoke`` refuses it before submitting anything."""
    engine = EngineConfig(prefix="t" + uuid.uuid4().hex[:8])
    streams = await Transport.connect(NatsConfig.from_url(server.url), engine, create=True)
    client = await Client.connect(server.url, engine=engine)
    try:
        with pytest.raises(InvalidInputError, match="timeout"):
            await client.wait("some-id", timeout=timeout)  # type: ignore[arg-type]
        with pytest.raises(InvalidInputError, match="timeout"):
            await client.invoke(
                "hello_workflow", {"name": "x"}, id="never", timeout=timeout, queue_unserved=True
            )  # type: ignore[arg-type]
        assert await client._t.get_state("never") is None
    finally:
        await client.close()
        await streams.close()


def test_start_at_is_bounded_and_one_in_the_past_is_due_now() -> None:
    with pytest.raises(InvalidInputError, match="at most"):
        start_at_ms(None, datetime(9999, 1, 1, tzinfo=UTC))
    now = int(time.time() * 1000)
    assert start_at_ms(None, datetime(1960, 1, 1, tzinfo=UTC)) >= now  # not before 1970
    soon = datetime.now(UTC) + timedelta(minutes=5)
    assert start_at_ms(None, soon) == int(soon.timestamp() * 1000)
