"""A JetStream cluster (three nodes by default) of local processes or Docker containers.

Nodes can be killed, restarted on the same store and ports, paused and resumed; the cluster
reads the nodes' ``/jsz`` monitoring endpoint to tell the meta leader, a stream's leader, and
whether every replica of a stream has caught up. Like :mod:`._servers`, this module does not
import the NATS client.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import shutil
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

from durable_core.testing._nodes import (
    _CLIENT_PORT,
    _HTTP_PORT,
    _ROUTE_PORT,
    ClusterNode,
    _DockerNode,
)
from durable_core.testing._probe import (
    docker_available,
    free_ports,
    get_json,
    nats_request,
    poll,
)
from durable_core.testing._servers import (
    DEFAULT_MAX_FILE_STORE,
    DEFAULT_MAX_MEMORY_STORE,
    DEFAULT_MAX_PAYLOAD,
    ClusterBlock,
    NatsServer,
    render_config,
)

DEFAULT_DOCKER_IMAGE = "nats:2.15-alpine"

# A follower answers the leader about once a second, but the leader keeps calling a silent peer
# "current" for ~10 s (measured with 2.15.1); older news than this is not trusted.
_REPLICA_STALE_NS = 3_000_000_000


class NatsCluster:
    """A JetStream cluster of ``size`` nodes named ``n1`` … ``nN``.

    The ``"process"`` backend runs local ``nats-server`` processes on free loopback ports, each
    with its own client, route and monitoring port, store, config and log under ``base_dir``.
    The ``"docker"`` backend runs ``image`` containers on a private Docker network with the same
    config; :meth:`create` picks it when an engine answers. :attr:`backend` tells which.

    Example:
        >>> async with NatsCluster() as cluster:  # doctest: +SKIP
        ...     nc = await nats.connect(servers=cluster.urls)
        ...     cluster.kill_node(cluster.stream_leader("ORDERS"))

    Args:
        size: Number of nodes.
        base_dir: Parent of the nodes' directories (``<base_dir>/n1/store``, ``n1.conf``,
            ``n1.log``). None: a temporary directory removed by :meth:`stop`.
        cluster_name: The cluster's name.
        host: Loopback interface for the process backend.
        backend: ``"process"`` or ``"docker"``.
        image: Container image of the Docker backend.
        max_payload: Largest accepted message payload, in bytes.
        max_memory_store: JetStream memory storage limit per node, in bytes.
        max_file_store: JetStream file storage limit per node, in bytes.
        extra_config: Config text appended to every node's config.
        binary: ``nats-server`` executable of the process backend.
        startup_timeout: How long :meth:`start` waits for a healthy cluster with a meta leader.
    """

    def __init__(
        self,
        *,
        size: int = 3,
        base_dir: Path | str | None = None,
        cluster_name: str = "durable",
        host: str = "127.0.0.1",
        backend: Literal["process", "docker"] = "process",
        image: str = DEFAULT_DOCKER_IMAGE,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        max_memory_store: int = DEFAULT_MAX_MEMORY_STORE,
        max_file_store: int = DEFAULT_MAX_FILE_STORE,
        extra_config: str = "",
        binary: str | None = None,
        startup_timeout: timedelta = timedelta(seconds=30),
    ) -> None:
        if size < 1:
            raise ValueError(f"a cluster needs at least one node, not {size}")
        if backend not in ("process", "docker"):
            raise ValueError(f"unknown backend {backend!r}: use 'process' or 'docker'")
        self.backend: Literal["process", "docker"] = backend
        self.startup_timeout = startup_timeout
        self._owns_base_dir = base_dir is None
        self._base_dir = (  # created by the nodes when they start
            Path(base_dir)
            if base_dir is not None
            else Path(tempfile.gettempdir()) / f"nats-cluster-{uuid.uuid4().hex[:12]}"
        )
        self._network: Any = None
        self._placement_refusal = "not probed yet"
        self._probe_stream = f"DURABLE_TESTING_PROBE_{uuid.uuid4().hex[:8]}"
        names = [f"n{i}" for i in range(1, size + 1)]
        self._nodes: list[ClusterNode] = []
        if backend == "process":
            ports = free_ports(3 * size, host)
            clients, routes, https = ports[:size], ports[size : 2 * size], ports[2 * size :]
            for i, name in enumerate(names):
                node = NatsServer(
                    store_dir=self._base_dir / name / "store",
                    work_dir=self._base_dir / name,
                    port=clients[i],
                    http_port=https[i],
                    host=host,
                    name=name,
                    cluster_name=cluster_name,
                    cluster_port=routes[i],
                    routes=[f"nats://{host}:{p}" for j, p in enumerate(routes) if j != i],
                    extra_config=extra_config,
                    binary=binary,
                    startup_timeout=startup_timeout,
                    max_payload=max_payload,
                    max_memory_store=max_memory_store,
                    max_file_store=max_file_store,
                )
                self._nodes.append(node)
        else:
            ports = free_ports(2 * size)
            for i, name in enumerate(names):
                block = ClusterBlock(
                    name=cluster_name,
                    listen=f"0.0.0.0:{_ROUTE_PORT}",
                    routes=tuple(f"nats://{peer}:{_ROUTE_PORT}" for peer in names if peer != name),
                )
                config = render_config(
                    server_name=name,
                    listen=f"0.0.0.0:{_CLIENT_PORT}",
                    http=f"0.0.0.0:{_HTTP_PORT}",
                    store_dir="/data",
                    cluster=block,
                    extra_config=extra_config,
                    max_payload=max_payload,
                    max_memory_store=max_memory_store,
                    max_file_store=max_file_store,
                )
                self._nodes.append(
                    _DockerNode(
                        name=name,
                        image=image,
                        config=config,
                        client_port=ports[2 * i],
                        http_port=ports[2 * i + 1],
                    )
                )

    @classmethod
    def create(cls, *, prefer_docker: bool = True, **options: Any) -> NatsCluster:
        """Return a cluster on Docker if preferred and an engine answers, else on processes.

        Args:
            prefer_docker: Use containers when :func:`docker_available` says so.
            **options: Keyword options of :class:`NatsCluster` other than ``backend``.

        Returns:
            A cluster, not started; :attr:`backend` says which was chosen.
        """
        use_docker = prefer_docker and docker_available()
        return cls(backend="docker" if use_docker else "process", **options)

    @property
    def nodes(self) -> list[ClusterNode]:
        """The nodes, ``n1`` first."""
        return list(self._nodes)

    @property
    def urls(self) -> list[str]:
        """Every node's client URL (nats-py ``servers``)."""
        return [node.url for node in self._nodes]

    @property
    def url(self) -> str:
        """Every node's client URL, joined by commas."""
        return ",".join(self.urls)

    @property
    def base_dir(self) -> Path:
        """Where the process backend keeps the nodes' stores, configs and logs."""
        return self._base_dir

    def node(self, name: str) -> ClusterNode:
        """Return the node with this ``server_name``.

        Raises:
            KeyError: There is no such node.
        """
        for node in self._nodes:
            if node.name == name:
                return node
        raise KeyError(f"no node {name!r} in the cluster (nodes: {[n.name for n in self._nodes]})")

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> Self:
        """Start every node and wait until the cluster can place a stream on all of them.

        That is: JetStream up everywhere, a meta leader reporting every other node current,
        a full route mesh, a probe stream of R=size created and deleted, every ``/healthz`` ok.

        Returns:
            This cluster.

        Raises:
            RuntimeError: A node exited while starting.
            TimeoutError: Not ready within ``startup_timeout``; everything started is stopped.
        """
        deadline = time.monotonic() + self.startup_timeout.total_seconds()

        def left() -> timedelta:
            return timedelta(seconds=max(0.0, deadline - time.monotonic()))

        try:
            if self.backend == "docker":
                network = importlib.import_module("testcontainers.core.network")
                self._network = network.Network().create()
                for node in self._nodes:
                    assert isinstance(node, _DockerNode)
                    node.network = self._network
            for node in self._nodes:
                node.start(wait=False)
            for node in self._nodes:
                node.wait_ready(timeout=left())
            self.wait_for_meta_leader(timeout=left(), all_peers=True)
            poll(self._placement_probe, left().total_seconds(), lambda: self._placement_refusal)
            for node in self._nodes:
                node.wait_ready(timeout=left(), js_enabled_only=False)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every node (in parallel); remove containers, network and a temporary base dir."""
        if self._nodes:
            with ThreadPoolExecutor(max_workers=len(self._nodes)) as pool:
                for future in [pool.submit(node.stop) for node in self._nodes]:
                    with contextlib.suppress(Exception):
                        future.result()
        for node in self._nodes:
            if isinstance(node, _DockerNode):
                node.remove()
        if self._network is not None:
            with contextlib.suppress(Exception):
                self._network.remove()
            self._network = None
        if self._owns_base_dir:
            shutil.rmtree(self._base_dir, ignore_errors=True)

    def kill_node(self, name: str) -> None:
        """Crash one node (SIGKILL / ``docker kill``); its store is kept."""
        self.node(name).kill()

    def restart_node(self, name: str, *, timeout: timedelta = timedelta(seconds=30)) -> None:
        """Start a stopped or killed node again, on the same store and ports.

        Returns once the node's ``/healthz`` answers ok, which does not mean its replicas have
        caught up: use :meth:`wait_stream_current` for that.

        Args:
            name: The node's ``server_name``.
            timeout: How long to wait for the node to be healthy.
        """
        deadline = time.monotonic() + timeout.total_seconds()
        node = self.node(name)
        node.start(wait=False)
        for js_enabled_only in (True, False):
            left = timedelta(seconds=max(0.0, deadline - time.monotonic()))
            node.wait_ready(timeout=left, js_enabled_only=js_enabled_only)

    def isolate_node(self, name: str) -> None:
        """Partition one node away from the others and from every client (Docker backend).

        Raises:
            NotImplementedError: The process backend shares one loopback: it cannot partition.
        """
        node = self.node(name)
        if not isinstance(node, _DockerNode):
            raise NotImplementedError("partitions need the Docker backend (or network namespaces)")
        node.isolate()

    def rejoin_node(self, name: str) -> None:
        """Heal the partition :meth:`isolate_node` made."""
        node = self.node(name)
        if not isinstance(node, _DockerNode):
            raise NotImplementedError("partitions need the Docker backend (or network namespaces)")
        node.rejoin()

    def pause_node(self, name: str) -> None:
        """Freeze one node (SIGSTOP / ``docker pause``)."""
        self.node(name).pause()

    def resume_node(self, name: str) -> None:
        """Unfreeze a paused node."""
        self.node(name).resume()

    # -- what the nodes report -------------------------------------------------------------------

    def _reachable(self) -> list[ClusterNode]:
        return [node for node in self._nodes if node.running and not node.paused]

    @staticmethod
    def _jsz(node: ClusterNode, *, streams: bool = False) -> dict[str, Any]:
        query = "?accounts=true&streams=true&consumers=false&config=true" if streams else ""
        return get_json(f"{node.monitor_url}/jsz{query}") or {}

    def meta_leader(self) -> str | None:
        """Return the JetStream meta leader if a running node confirms it leads, else None."""
        by_name = {node.name: node for node in self._reachable()}
        for node in by_name.values():
            leader = (self._jsz(node).get("meta_cluster") or {}).get("leader")
            if leader not in by_name:
                continue  # none yet, or a node that is down
            if leader == node.name:
                return node.name
            if (self._jsz(by_name[leader]).get("meta_cluster") or {}).get("leader") == leader:
                return str(leader)
        return None

    def wait_for_meta_leader(
        self, *, timeout: timedelta = timedelta(seconds=30), all_peers: bool = False
    ) -> str:
        """Wait until a running node leads the JetStream meta group, and return its name.

        Args:
            timeout: How long to wait.
            all_peers: Also wait until the leader reports every other node current and every
                node has routes to all the others (placing an R=size stream needs that).

        Raises:
            TimeoutError: No meta leader (or not all peers) in time.
        """
        seen = "no meta leader"

        def probe() -> str | None:
            nonlocal seen
            leader = self.meta_leader()
            if leader is None or not all_peers:
                return leader
            seen = self._peers_missing(leader)
            return None if seen else leader

        leader: str = poll(probe, timeout.total_seconds(), lambda: seen)
        return leader

    def _placement_probe(self) -> bool | None:
        """Create and delete an R=size memory stream over the bare protocol: True if that works.

        The meta leader can report every peer current yet still refuse placement ("no suitable
        peers for placement, peer offline", err 10005) for about half a second, until it has
        each server's statistics; no monitoring endpoint shows that, so ask JetStream itself.
        """
        reachable = self._reachable()
        if not reachable:
            self._placement_refusal = "no node is running"
            return None
        node = reachable[0]
        name = self._probe_stream  # the same name on every try: a create is idempotent
        config = {
            "name": name,
            "subjects": [f"_durable_testing_probe.{name}"],
            "storage": "memory",
            "num_replicas": len(self._nodes),
        }
        try:
            reply = nats_request(
                node.host,
                node.client_port,
                f"$JS.API.STREAM.CREATE.{name}",
                json.dumps(config).encode(),
            )
        except OSError as exc:
            # The bare probe speaks neither TLS nor credentials: a secured cluster cannot be
            # probed, so the monitoring checks must do.
            secured = (get_json(f"{node.monitor_url}/varz") or {}).get("tls_required")
            if secured or "authorization" in str(exc).lower():
                return True
            self._placement_refusal = f"placement probe failed: {exc}"
            return None
        if reply is None:
            self._placement_refusal = "the JetStream API has no responders yet"
            return None
        error = json.loads(reply).get("error") or {}
        if error.get("err_code") == 10005:
            self._placement_refusal = f"cannot place an R{len(self._nodes)} stream: {error}"
            return None
        if not error:
            poll(
                lambda: self._deleted(node, name),
                10.0,
                lambda: f"could not delete the placement probe stream {name}",
            )
        return True  # other errors come from the config (accounts, limits): not ours to judge

    @staticmethod
    def _deleted(node: ClusterNode, stream: str) -> bool | None:
        """Delete a stream over the bare protocol: True once deleted or not found (10059)."""
        try:
            reply = nats_request(
                node.host, node.client_port, f"$JS.API.STREAM.DELETE.{stream}", b""
            )
        except OSError:
            return None
        if reply is None:
            return None
        error = json.loads(reply).get("error") or {}
        return True if not error or error.get("err_code") == 10059 else None

    def _peers_missing(self, leader: str) -> str:
        """Say which node the meta leader or the route mesh lacks; "" when none."""
        meta = self._jsz(self.node(leader)).get("meta_cluster") or {}
        peers = {str(p.get("name")): p for p in meta.get("replicas") or ()}
        for node in self._nodes:
            peer = peers.get(node.name)
            if node.name != leader and (
                peer is None
                or not peer.get("current")
                or peer.get("offline")
                or int(peer.get("active") or 0) > _REPLICA_STALE_NS
            ):
                return f"meta leader {leader} does not report {node.name} current: {peer}"
            remotes = int((get_json(f"{node.monitor_url}/varz") or {}).get("remotes") or 0)
            if remotes < len(self._nodes) - 1:
                return f"{node.name} has routes to {remotes} of {len(self._nodes) - 1} servers"
        return ""

    def _stream_detail(
        self, node: ClusterNode, stream: str, account: str | None
    ) -> dict[str, Any] | None:
        # /jsz?accounts=true&streams=true: account_details[].stream_detail[] with, for a
        # clustered stream, cluster.leader and cluster.replicas[] (the peers other than the
        # reporting node, each {name, current, active (ns since last heard), lag?, offline?}).
        for acc in self._jsz(node, streams=True).get("account_details") or ():
            if account is not None and account not in (acc.get("name"), acc.get("id")):
                continue
            for detail in acc.get("stream_detail") or ():
                if detail.get("name") == stream:
                    return dict(detail)
        return None

    def stream_leader(self, stream: str, *, account: str | None = None) -> str | None:
        """Return the ``server_name`` leading the stream, or None while it has no leader.

        A node that names itself leader is believed first. Otherwise the leader the other
        nodes agree on is returned if it runs (it may be paused); a killed leader not yet
        replaced gives None.

        Args:
            stream: The stream's name.
            account: Only this account (name or id); any account when None.
        """
        named: set[str] = set()
        for node in self._reachable():
            detail = self._stream_detail(node, stream, account) or {}
            leader = (detail.get("cluster") or {}).get("leader")
            if leader == node.name:
                return node.name
            if leader:
                named.add(str(leader))
        if len(named) == 1:
            (leader,) = named
            with contextlib.suppress(KeyError):
                if self.node(leader).running:
                    return leader
        return None

    def kv_leader(self, bucket: str, *, account: str | None = None) -> str | None:
        """Return the ``server_name`` leading a KV bucket (its stream ``KV_<bucket>``), or None."""
        return self.stream_leader(f"KV_{bucket}", account=account)

    def _why_not_current(self, stream: str, account: str | None) -> tuple[str | None, str]:
        """Return (leader, "") if every replica of the stream is current, else (None, reason)."""
        leader = self.stream_leader(stream, account=account)
        if leader is None:
            return None, "no leader"
        detail = self._stream_detail(self.node(leader), stream, account) or {}
        cluster = detail.get("cluster") or {}
        if cluster.get("leader") != leader:
            return None, f"{leader} does not confirm it leads"
        followers: list[dict[str, Any]] = list(cluster.get("replicas") or ())
        expected = int((detail.get("config") or {}).get("num_replicas") or 1) - 1
        if len(followers) < expected:
            return None, f"{leader} sees {len(followers)} of {expected} followers"
        leader_seq = int((detail.get("state") or {}).get("last_seq") or 0)
        for peer in followers:
            name = str(peer.get("name"))
            if (
                not peer.get("current")
                or peer.get("offline")
                or int(peer.get("lag") or 0) > 0
                or int(peer.get("active") or 0) > _REPLICA_STALE_NS
            ):
                return None, f"{leader} reports follower {name} not current: {peer}"
            try:
                follower = self.node(name)
            except KeyError:
                continue  # not ours to query: the leader's word is all there is
            if not follower.running or follower.paused:
                return None, f"follower {name} is down"
            own = self._stream_detail(follower, stream, account)
            if own is None:
                return None, f"follower {name} does not report the stream yet"
            seq = int((own.get("state") or {}).get("last_seq") or 0)
            if seq < leader_seq:
                return None, f"follower {name} is at sequence {seq}, the leader at {leader_seq}"
        return leader, ""

    def wait_stream_current(
        self,
        stream: str,
        *,
        timeout: timedelta = timedelta(seconds=30),
        account: str | None = None,
    ) -> str:
        """Wait until the stream has a leader and every replica has caught up.

        A replica is current when the leader reports it ``current`` (not offline, no lag, heard
        from within 3 s) and the replica itself reports the stream at a last sequence no lower
        than the leader's. A restarted node answers ``/healthz`` before this holds.

        Args:
            stream: The stream's name (``KV_<bucket>`` for a KV bucket).
            timeout: How long to wait.
            account: Only this account (name or id); any account when None.

        Returns:
            The leader's ``server_name``.

        Raises:
            TimeoutError: Not current in time; the message says what was last seen.
        """
        reason = "not checked"

        def probe() -> str | None:
            nonlocal reason
            leader, reason = self._why_not_current(stream, account)
            return leader

        leader: str = poll(
            probe, timeout.total_seconds(), lambda: f"stream {stream!r} not current: {reason}"
        )
        return leader

    # -- context managers ------------------------------------------------------------------------

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        return await asyncio.to_thread(self.start)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.stop)

    def __repr__(self) -> str:
        return f"NatsCluster(backend={self.backend!r}, urls={self.urls!r})"
