"""Requests over one long-lived inbox (``_transport.inbox.Requests``), on a real server: each
answer reaches its own request, a missing one times out, nobody listening is said at once, and
an answer after its request gave up goes nowhere."""

from __future__ import annotations

import asyncio
import time

import nats
import nats.errors
import pytest
from nats.aio.msg import Msg

from durable_core._transport.inbox import Requests
from durable_core.testing import NatsServer


async def test_answers_timeouts_and_no_responders(server: NatsServer) -> None:
    nc = await nats.connect(server.url)
    held: list[Msg] = []
    try:

        async def echo(msg: Msg) -> None:
            body = msg.data
            if body == b"late":
                held.append(msg)  # answered by the test, after the request gave up
                return
            if body.startswith(b"slow"):
                await asyncio.sleep(0.05)
            headers = {"Got": msg.headers["Tag"]} if msg.headers else None
            await nc.publish(msg.reply, b"re:" + body, headers=headers)

        await nc.subscribe("svc.echo", cb=echo)
        requests = Requests(nc)

        # Side by side, answered out of order: each gets its own answer.
        bodies = [b"slow-a", b"b", b"slow-c", b"d"] * 5
        answers = await asyncio.gather(*(requests.request("svc.echo", b) for b in bodies))
        assert [a.data for a in answers] == [b"re:" + b for b in bodies]

        tagged = await requests.request("svc.echo", b"x", headers={"Tag": "t1"})
        assert tagged.data == b"re:x" and tagged.headers == {"Got": "t1"}

        started = time.monotonic()
        with pytest.raises(nats.errors.TimeoutError):
            await requests.request("svc.echo", b"late", timeout=0.2)
        assert 0.15 < time.monotonic() - started < 2
        # Its answer, sent now, is dropped: the next request gets its own.
        await nc.publish(held[0].reply, b"too late")
        assert (await requests.request("svc.echo", b"next")).data == b"re:next"

        started = time.monotonic()
        with pytest.raises(nats.errors.NoRespondersError):
            await requests.request("svc.nobody", b"?", timeout=3)
        assert time.monotonic() - started < 1  # the server said so; no timeout waited out

        assert requests._waiting == {}  # nothing left behind
    finally:
        await nc.close()
