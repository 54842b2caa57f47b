"""Tests of durable_core.testing's server fixtures, against real nats-server processes."""

from __future__ import annotations

import ast
import asyncio
import json
import os
import socket
import time
import urllib.request
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path

import nats
import pytest
from nats.js.api import StreamConfig

import durable_core.testing
from durable_core.testing import (
    NatsCluster,
    NatsServer,
    _probe,
    assert_eventually_async,
    docker_available,
    find_nats_server_binary,
    free_port,
    free_ports,
)

_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _healthz(server: NatsServer, timeout: float = 2.0) -> object:
    url = f"{server.monitor_url}/healthz?js-enabled-only=true"
    with _NO_PROXY.open(url, timeout=timeout) as response:
        return json.loads(response.read())


def _banner(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        data = b""
        while len(data) < 6:
            chunk = sock.recv(64)
            if not chunk:
                break
            data += chunk
        return data


def _pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_find_binary_and_free_port() -> None:
    assert os.access(find_nats_server_binary(), os.X_OK)
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))  # really free


def test_free_ports_never_repeat_and_stay_out_of_the_ephemeral_range(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Two picks in a row once returned the same just-closed port (a processor's metrics port
    # and the gRPC service's): a process never hands a port out twice now.
    picks = [free_port() for _ in range(200)] + free_ports(50)
    assert len(set(picks)) == 250
    assert all(20000 <= p < 32000 for p in picks)
    # pytest-xdist workers get disjoint slices.
    slices = []
    for worker in ("gw0", "gw1", "gw2"):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
        monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "3")
        slices.append(range(*_probe._port_slice()))
    assert sum(len(s) for s in slices) == len(set().union(*slices)) >= 3 * 3000


def test_server_modules_do_not_import_the_nats_client() -> None:
    package = Path(durable_core.testing.__file__).parent
    for module in ("_servers.py", "_cluster.py", "_binary.py", "_probe.py", "_nodes.py"):
        tree = ast.parse((package / module).read_text(encoding="utf-8"))
        imported = {
            alias.name for n in ast.walk(tree) if isinstance(n, ast.Import) for alias in n.names
        }
        imported |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert not {m for m in imported if m == "nats" or m.startswith("nats.")}, module


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_single_node_lifecycle() -> None:
    async with NatsServer() as server:
        pid, store = server.pid, server.store_dir
        assert pid is not None and store is not None
        assert _healthz(server) == {"status": "ok"}
        assert _banner(server.port).startswith(b"INFO {")

        nc = await nats.connect(server.url)
        try:
            js = nc.jetstream()
            await js.add_stream(StreamConfig(name="S", subjects=["s.>"]))
            assert (await js.publish("s.1", b"hello")).seq == 1
        finally:
            await nc.close()

        server.pause()
        assert server.paused and server.running
        with pytest.raises(OSError):  # frozen: the monitoring port accepts but never answers
            _healthz(server, timeout=0.5)
        server.resume()
        assert _healthz(server) == {"status": "ok"}

    assert server.pid is None and not server.running
    assert _pid_gone(pid)
    assert not await asyncio.to_thread(store.exists)  # the temporary store is removed


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_single_node_restart_keeps_ports_and_store(tmp_path: Path) -> None:
    store = tmp_path / "store"
    async with NatsServer(store_dir=store, name="keep") as server:
        port, first_pid = server.port, server.pid
        nc = await nats.connect(server.url)
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name="K", subjects=["k"]))
        await js.publish("k", b"1")
        await nc.close()

        server.kill()
        assert first_pid is not None and _pid_gone(first_pid)
        await asyncio.to_thread(server.start)
        assert server.port == port and server.pid != first_pid

        nc = await nats.connect(server.url)
        try:
            assert (await nc.jetstream().stream_info("K")).state.messages == 1
        finally:
            await nc.close()
    assert await asyncio.to_thread((store / "jetstream").is_dir)  # a caller's store is kept
    assert await asyncio.to_thread((tmp_path / "keep.log").is_file)


async def _eventually(attempt: Callable[[], Awaitable[object]], within: float) -> float:
    """Retry ``attempt`` until it succeeds (bounded); return the seconds it took."""
    began = time.monotonic()

    async def succeeds() -> bool:
        await attempt()
        return True

    await assert_eventually_async(
        succeeds, within, "a write to succeed", interval=0.2, retry_on=Exception
    )
    return time.monotonic() - began


@pytest.mark.asyncio
@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.timeout(120)
async def test_cluster_failover_and_catch_up() -> None:
    names = {"n1", "n2", "n3"}
    cluster = NatsCluster()
    began = time.monotonic()
    async with cluster:
        started_in = time.monotonic() - began
        assert cluster.backend == "process"
        assert [node.name for node in cluster.nodes] == ["n1", "n2", "n3"]
        assert cluster.url.split(",") == cluster.urls
        assert cluster.meta_leader() in names

        nc = await nats.connect(
            servers=cluster.urls, reconnect_time_wait=0.2, max_reconnect_attempts=-1
        )
        try:
            # Creating an R3 stream can take over 2 s on a loaded 2-core machine (CI 2026-12-06).
            js = nc.jetstream(timeout=10)
            await js.add_stream(StreamConfig(name="T", subjects=["t.>"], num_replicas=3))
            kv = await js.create_key_value(bucket="B", replicas=3)
            # Right after a create, the node this client uses may not know the new leader's
            # interest yet ("no responders", seen in ~7% of runs): retry like any writer must.
            await _eventually(lambda: js.publish("t.1", b"1", headers={"Nats-Msg-Id": "m1"}), 10)
            await _eventually(lambda: kv.put("k", b"v"), 10)
            assert cluster.kv_leader("B") in names

            leader = cluster.stream_leader("T")
            assert leader in names
            cluster.kill_node(leader)
            assert not cluster.node(leader).running

            failover = await _eventually(
                lambda: js.publish("t.2", b"2", headers={"Nats-Msg-Id": "m2"}, timeout=2), 20
            )
            new_leader = cluster.stream_leader("T")
            assert new_leader in names - {leader}

            with pytest.raises(TimeoutError, match="not current"):  # a replica is down
                await asyncio.to_thread(
                    cluster.wait_stream_current, "T", timeout=timedelta(seconds=1)
                )

            began = time.monotonic()
            await asyncio.to_thread(cluster.restart_node, leader)
            current = await asyncio.to_thread(
                cluster.wait_stream_current, "T", timeout=timedelta(seconds=30)
            )
            caught_up = time.monotonic() - began
            assert current in names
            # The restarted node has both messages itself (the check above asked it directly).
            assert (await js.stream_info("T")).state.messages == 2
        finally:
            await nc.close()
        pids = [node.pid for node in cluster.nodes]  # the restarted node's new one included
        base = cluster.base_dir
        print(
            f"\ncluster start {started_in:.2f}s, leader failover {failover:.2f}s, "
            f"restart + catch-up {caught_up:.2f}s"
        )
    assert all(pid is not None and _pid_gone(pid) for pid in pids)
    assert not await asyncio.to_thread(base.exists)


def test_docker_is_not_used_without_an_engine() -> None:
    began = time.monotonic()
    available = docker_available()
    assert time.monotonic() - began < 3
    if not os.environ.get("DOCKER_HOST") and not os.path.exists("/var/run/docker.sock"):
        assert available is False
        assert NatsCluster.create(prefer_docker=True).backend == "process"
