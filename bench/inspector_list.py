"""Benchmark of the inspector's listing: p50/p99 of ``GET /api/executions`` over HTTP.

    .venv/bin/python bench/inspector_list.py [--count 10000] [--requests 500]

Creating 10,000 real executions takes minutes, so the inspector is fed synthetic
``ExecutionSummary`` objects through the same code path as the real ones: a stand-in client whose
``watch_executions()`` yields them (then ``None``, as the KV watch does), into the real feed, index
and app. The server is a separate process (this script with ``--serve``) running uvicorn as
``durable-inspector`` does; this process measures with one keep-alive HTTP connection, one request
at a time, after a warm-up. It also times the index alone (no HTTP) for the same queries.

Not a test: it prints numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx2 as httpx

from durable_core import EngineConfig, ExecutionSummary, Failure, NatsConfig, Status
from durable_core.testing import free_port

WORKFLOWS = ["order_processing", "hello_workflow", "refund", "nightly_report", "signup"]
STATUS_MIX = [
    (Status.COMPLETED, 70),
    (Status.FAILED, 10),
    (Status.RUNNING, 10),
    (Status.PENDING, 5),
    (Status.CANCELLED, 5),
]
NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def synthetic(count: int, seed: int = 1) -> list[ExecutionSummary]:
    """``count`` executions created over the last 24 h, 5 workflows, 1,000 partition keys."""
    rng = random.Random(seed)
    statuses = [s for s, weight in STATUS_MIX for _ in range(weight)]
    out = []
    for i in range(count):
        created = NOW - timedelta(seconds=rng.uniform(0, 86_400))
        status = rng.choice(statuses)
        out.append(
            ExecutionSummary(
                invocation_id=f"inv{i:07d}",
                workflow=rng.choice(WORKFLOWS),
                status=status,
                partition_key=f"pk-{rng.randrange(1000)}",
                created_at=created,
                updated_at=created + timedelta(seconds=rng.uniform(0, 60)),
                failure=Failure("TerminalError", "synthetic", 2)
                if status == Status.FAILED
                else None,
                journal_length=rng.randrange(1, 10),
                parent_id="",
                trace_id="",
                revision=i + 1,
            )
        )
    return out


class SyntheticSource:
    """Stands in for ``Client``: the watch yields the synthetic executions, then waits."""

    def __init__(self, summaries: list[ExecutionSummary]) -> None:
        self.summaries = summaries

    async def watch_executions(self) -> AsyncIterator[ExecutionSummary | None]:
        for s in self.summaries:
            yield s
        yield None
        await asyncio.Event().wait()

    async def close(self) -> None:
        pass


def queries() -> list[tuple[str, str]]:
    hour_ago = (NOW - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    two_hours_ago = (NOW - timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return [
        ("newest 50 (default)", "limit=50"),
        ("status=running", "status=running&limit=50"),
        ("status=failed & workflow", "status=failed&workflow=refund&limit=50"),
        ("partition_key (~10 rows)", "partition_key=pk-17&limit=50"),
        ("created in a 1 h window", f"created_after={two_hours_ago}&created_before={hour_ago}"),
        ("sort=updated_at asc, 200", "sort=updated_at&order=asc&limit=200"),
        ("completed, page 20 (cursor)", "status=completed&limit=50&cursor={cursor}"),
    ]


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# -- the server process ----------------------------------------------------------------------


def serve(port: int, count: int) -> None:
    import uvicorn

    from durable_inspector.app import create_app
    from durable_inspector.settings import InspectorSettings

    settings = InspectorSettings(
        nats=NatsConfig(), engine=EngineConfig(), port=port, load_plugins=False
    )
    app = create_app(settings, client=SyntheticSource(synthetic(count)))
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


# -- the measuring process -------------------------------------------------------------------


def measure_index(count: int, rounds: int) -> tuple[float, list[tuple[str, float, float]]]:
    """Apply ``count`` summaries to a bare index, then time each query (no HTTP, no JSON)."""
    from durable_inspector.api import parse_query
    from durable_inspector.index import ExecutionIndex

    summaries = synthetic(count)
    index = ExecutionIndex()
    t0 = time.perf_counter()
    index.begin_snapshot()
    for s in summaries:
        index.apply(s)
    index.end_snapshot()
    load_s = time.perf_counter() - t0
    cursor = _page_cursor(lambda q: _index_page(index, parse_query, q), 19)
    rows = []
    for name, qs in queries():
        q = parse_query(_params(qs.format(cursor=cursor)))
        samples = []
        for _ in range(rounds):
            t = time.perf_counter()
            index.query(q)
            samples.append((time.perf_counter() - t) * 1000)
        rows.append((name, pct(samples, 0.5), pct(samples, 0.99)))
    return load_s, rows


def _params(qs: str) -> dict[str, str]:
    from urllib.parse import parse_qsl

    return dict(parse_qsl(qs))


def _index_page(index: Any, parse_query: Any, qs: str) -> str | None:
    return index.query(parse_query(_params(qs))).next_cursor  # type: ignore[no-any-return]


def _page_cursor(fetch: Any, pages: int) -> str:
    """The cursor of page ``pages + 1`` of the completed executions."""
    cursor = ""
    for _ in range(pages):
        cursor = fetch(
            f"status=completed&limit=50&cursor={cursor}" if cursor else "status=completed&limit=50"
        )
    return cursor


def measure_http(base: str, requests: int) -> list[tuple[str, float, float, int]]:
    rows = []
    with httpx.Client(base_url=base, timeout=30) as http:
        cursor = _page_cursor(
            lambda qs: http.get(f"/api/executions?{qs}").json()["next_cursor"], 19
        )
        for name, qs in [*queries(), ("stats", "")]:
            url = "/api/stats" if name == "stats" else f"/api/executions?{qs.format(cursor=cursor)}"
            for _ in range(20):  # warm-up
                http.get(url).raise_for_status()
            samples = []
            size = 0
            for _ in range(requests):
                t = time.perf_counter()
                resp = http.get(url)
                samples.append((time.perf_counter() - t) * 1000)
                resp.raise_for_status()
                size = len(resp.content)
            rows.append((name, pct(samples, 0.5), pct(samples, 0.99), size))
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--count", type=int, default=10_000, help="executions in the index")
    p.add_argument("--requests", type=int, default=500, help="timed requests per query")
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        serve(args.port, args.count)
        return 0

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", "--port", str(port), "--count", str(args.count)],
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        t0 = time.perf_counter()
        deadline = time.monotonic() + 120
        while True:
            try:
                health = httpx.get(f"{base}/healthz", timeout=2)
                if health.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                print("the inspector did not start", file=sys.stderr)
                return 1
            time.sleep(0.05)
        ready_s = time.perf_counter() - t0
        assert health.json()["executions"] == args.count
        http_rows = measure_http(base, args.requests)
    finally:
        server.terminate()
        server.wait(20)
    load_s, index_rows = measure_index(args.count, args.requests)

    print(
        f"inspector list benchmark: {args.count:,} synthetic executions, {args.requests} requests "
        f"per query, one keep-alive connection (python {sys.version.split()[0]}, "
        f"{os.cpu_count()} CPUs)"
    )
    print(
        f"  server start to /healthz ok (imports, then the snapshot via the feed): {ready_s:.2f} s"
    )
    print(f"  index alone: {args.count:,} summaries applied in {load_s * 1000:.0f} ms\n")
    index_by_name = {name: (p50, p99) for name, p50, p99 in index_rows}
    head = f"{'HTTP p50':>9} {'HTTP p99':>9} {'bytes':>8}   {'index p50':>9} {'index p99':>9}"
    print(f"  {'query':30} {head}")
    for name, p50, p99, size in http_rows:
        index = "{:7.3f}ms {:7.3f}ms".format(*index_by_name[name]) if name in index_by_name else ""
        print(f"  {name:30} {p50:7.2f}ms {p99:7.2f}ms {size:8,}   {index}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
