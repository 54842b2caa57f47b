"""The event stream over real HTTP (uvicorn in this process, a fake client, no NATS)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx2 as httpx
import pytest
import uvicorn

from durable_core import Status
from durable_core.testing import assert_eventually_async, free_port
from durable_inspector import api
from durable_inspector.app import create_app
from durable_inspector.feed import Event as FeedEvent
from durable_inspector.feed import Subscription

from ._fakes import FakeClient, deleted, result, settings, step, summary


@contextlib.asynccontextmanager
async def serve(fake: FakeClient, token: str | None = None) -> AsyncIterator[str]:
    port = free_port()
    config = uvicorn.Config(
        create_app(settings(token), client=fake),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    base = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(base_url=base, timeout=5) as http:

        async def healthy() -> bool:
            return (await http.get("/healthz")).status_code == 200

        await assert_eventually_async(
            healthy, 5, "the inspector to start", interval=0.01, retry_on=httpx.TransportError
        )
    try:
        yield base
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


async def events(lines: AsyncIterator[str]) -> AsyncIterator[tuple[str, Any]]:
    """(event, data) pairs from a text/event-stream."""
    name = None
    async for line in lines:
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: ") and name is not None:
            yield name, json.loads(line[6:])
            name = None


async def next_event(stream: AsyncIterator[tuple[str, Any]], kind: str) -> Any:
    async def find() -> Any:
        async for name, data in stream:
            if name == kind:
                return data
        raise AssertionError("stream ended")

    return await asyncio.wait_for(find(), 10)


async def test_stream_delivers_changes_and_deletes() -> None:
    fake = FakeClient([summary("a", created=1)])
    async with (
        serve(fake) as base,
        httpx.AsyncClient(base_url=base, timeout=10) as http,
        http.stream("GET", "/api/events") as resp,
    ):
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        stream = events(resp.aiter_lines())
        hello = await next_event(stream, "hello")
        assert hello == {"ready": True, "executions": 1, "id": None}
        fake.push(summary("a", status=Status.COMPLETED, created=1, updated=5, revision=2))
        change = await next_event(stream, "execution")
        assert change["invocation_id"] == "a" and change["status"] == "completed"
        assert [h["status"] for h in change["history"]] == ["running", "completed"]
        fake.push(deleted("a"))
        assert await next_event(stream, "deleted") == {"invocation_id": "a"}


async def test_stream_for_one_execution_sends_its_new_steps(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(api, "STEP_POLL_INTERVAL", 0.05)
    fake = FakeClient([summary("a", created=1), summary("b", created=2)])
    fake.results["a"] = result("a", status=Status.RUNNING, steps=(step(1, "one", 1),))
    async with (
        serve(fake) as base,
        httpx.AsyncClient(base_url=base, timeout=10) as http,
        http.stream("GET", "/api/events?id=a") as resp,
    ):
        stream = events(resp.aiter_lines())
        await next_event(stream, "hello")
        fake.push(summary("b", status=Status.COMPLETED, created=2, revision=2))  # not ours
        fake.results["a"] = result(
            "a", status=Status.RUNNING, steps=(step(1, "one", 1), step(2, "two", {"x": 2}))
        )
        new = await next_event(stream, "steps")
        assert new["invocation_id"] == "a" and new["count"] == 2
        assert [(s["step"], s["name"], s["output"]) for s in new["steps"]] == [(2, "two", {"x": 2})]
        fake.push(summary("a", status=Status.COMPLETED, created=1, revision=2))
        change = await next_event(stream, "execution")
        assert change["invocation_id"] == "a"  # b's change never came through


async def test_stream_needs_the_token() -> None:
    fake = FakeClient([summary("a", created=1)])
    async with serve(fake, token="tok") as base, httpx.AsyncClient(base_url=base) as http:
        assert (await http.get("/api/events")).status_code == 401
        async with http.stream(
            "GET", "/api/events", headers={"Authorization": "Bearer tok"}
        ) as resp:
            assert resp.status_code == 200
            assert (await next_event(events(resp.aiter_lines()), "hello"))["ready"] is True


async def test_stream_for_a_malformed_id_is_refused() -> None:
    fake = FakeClient([summary("a", created=1)])
    async with serve(fake) as base, httpx.AsyncClient(base_url=base, timeout=5) as http:
        for bad in ("a.b", "a*", "x" * 129):
            resp = await http.get("/api/events", params={"id": bad})
            assert resp.status_code == 400, bad
            assert resp.json()["error"] == "invalid_input"
            assert "invalid invocation id" in resp.json()["detail"]


def test_a_slow_reader_gets_a_reset_instead_of_unbounded_memory() -> None:
    sub = Subscription(None, asyncio.Queue(3))
    for i in range(5):
        sub.offer(FeedEvent("deleted", f"x{i}"))
    assert sub.queue.qsize() == 2  # two after the reset that replaced the first three
    assert sub.queue.get_nowait().kind == "reset"
