"""Network partitions for the chaos suite: each NATS node in its own network namespace.

Where ``ip netns add`` is permitted (root, or CAP_NET_ADMIN), every node runs in a namespace of
its own, joined to the test's namespace by a veth pair on a private bridge with no uplink (the
addresses are reachable from this machine only). Cutting a node's veth isolates it from the
other nodes and from every client; bringing it back up heals the partition. Elsewhere
:func:`probe` says why not, and the suite runs the cluster on 127.0.0.1 without partitions.

Names carry a random token, so concurrent runs never touch each other's namespaces; everything
created is removed by :meth:`Netns.teardown` (also at interpreter exit).
"""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import os
import secrets
import shutil
import stat
import subprocess
from datetime import timedelta
from pathlib import Path

from durable_core.testing import NatsCluster, NatsServer, find_nats_server_binary

# Inside its own namespace every node can use the standard ports.
CLIENT_PORT, ROUTE_PORT, HTTP_PORT = 4222, 6222, 8222
# Go's pprof endpoints (the soak reads each node's heap statistics there). Listening costs
# nothing until asked; block profiling stays off.
PROF_PORT = 6060
PROF_CONFIG = f"prof_port: {PROF_PORT}\nprof_block_rate: 0"


def _ip(*args: str, netns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    cmd = ["ip", *(["-n", netns] if netns else []), *args]
    cp = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    if check and cp.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({cp.returncode}): {cp.stderr.strip()}")
    return cp


def probe() -> str:
    """Return "" when namespaces, veths and bridges can be made here, else the reason why not."""
    if not Path("/usr/sbin/ip").exists() and not Path("/sbin/ip").exists():
        return "no `ip` command (iproute2) on this machine"
    name = f"chaosprobe{secrets.token_hex(3)}"
    try:
        cp = _ip("netns", "add", name, check=False)
    except (OSError, subprocess.SubprocessError) as e:
        return f"`ip netns add` could not run: {e}"
    if cp.returncode != 0:
        return f"`ip netns add` is not permitted here: {cp.stderr.strip()}"
    try:
        cp = _ip("link", "add", f"{name[:11]}b", "type", "bridge", check=False)
        if cp.returncode != 0:
            return f"cannot create a bridge: {cp.stderr.strip()}"
        _ip("link", "del", f"{name[:11]}b", check=False)
    finally:
        _ip("netns", "del", name, check=False)
    return ""


def _free_subnet() -> ipaddress.IPv4Network:
    """A /24 in 10.200.0.0/13 that no route of this namespace covers yet."""
    routes = _ip("-4", "route", "show", "table", "all").stdout
    used = []
    for line in routes.splitlines():
        token = line.split()[0] if line.split() else ""
        if token in ("local", "broadcast", "unreachable") and len(line.split()) > 1:
            token = line.split()[1]
        with contextlib.suppress(ValueError):
            used.append(ipaddress.ip_network(token, strict=False))
    for _ in range(100):
        net = ipaddress.ip_network(f"10.{200 + secrets.randbelow(8)}.{secrets.randbelow(256)}.0/24")
        if not any(net.overlaps(u) for u in used if u.prefixlen > 0):
            return net
    raise RuntimeError("no free private /24 for the chaos bridge")


class Netns:
    """A bridge and one namespace per node; ``cut``/``heal`` partition a node away."""

    def __init__(self, names: list[str]) -> None:
        token = secrets.token_hex(2)
        self.token = token
        self.bridge = f"chb{token}"
        self.subnet = _free_subnet()
        hosts = list(self.subnet.hosts())
        self.gateway = str(hosts[0])
        self.names = list(names)
        self.netns = {n: f"chaos-{token}-{n}" for n in names}
        self.address = {n: str(hosts[10 + i]) for i, n in enumerate(names)}
        self._host_if = {n: f"ch{token}h{i}" for i, n in enumerate(names)}
        self._node_if = {n: f"ch{token}n{i}" for i, n in enumerate(names)}
        self._cut: set[str] = set()
        self._up = False
        self._accepting = False

    def setup(self) -> None:
        atexit.register(self.teardown)
        self._up = True
        prefix = str(self.subnet.prefixlen)
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.gateway}/{prefix}", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        self._forward(accept=True)
        for n in self.names:
            ns, host_if, node_if = self.netns[n], self._host_if[n], self._node_if[n]
            _ip("netns", "add", ns)
            _ip("link", "add", host_if, "type", "veth", "peer", "name", node_if)
            _ip("link", "set", node_if, "netns", ns)
            _ip("link", "set", host_if, "master", self.bridge)
            _ip("link", "set", host_if, "up")
            _ip("addr", "add", f"{self.address[n]}/{prefix}", "dev", node_if, netns=ns)
            _ip("link", "set", node_if, "up", netns=ns)
            _ip("link", "set", "lo", "up", netns=ns)

    def _forward(self, *, accept: bool) -> None:
        """Let the bridge forward between its own ports whatever the FORWARD chain's policy.

        With br_netfilter loaded, bridged frames pass iptables' FORWARD chain, and dockerd sets
        its policy to DROP (and leaves it so after it stops): the nodes' routes would then die
        silently. A rule of our own, first in the chain and for this bridge only, keeps them up
        and changes nothing else on the machine; teardown removes it.
        """
        iptables = shutil.which("iptables")
        if iptables is None:
            return  # no iptables: no netfilter rule can drop the bridge's traffic
        rule = ["FORWARD", "-i", self.bridge, "-o", self.bridge, "-j", "ACCEPT"]
        cmd = [
            iptables,
            "-w",
            "5",
            *(["-I", *rule[:1], "1", *rule[1:]] if accept else ["-D", *rule]),
        ]
        cp = subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=False)
        if accept and cp.returncode != 0:
            raise RuntimeError(
                f"cannot let {self.bridge} forward ({' '.join(cmd)}): {cp.stderr.strip()}"
            )
        self._accepting = accept and cp.returncode == 0

    def teardown(self) -> None:
        if not self._up:
            return
        self._up = False
        if self._accepting:
            self._forward(accept=False)
        for n in self.names:
            _ip("link", "del", self._host_if[n], check=False)
            _ip("netns", "del", self.netns[n], check=False)
        _ip("link", "del", self.bridge, check=False)

    def cut(self, name: str) -> None:
        """Isolate a node: no packet reaches it or leaves it (peers and clients alike)."""
        _ip("link", "set", self._host_if[name], "down")
        self._cut.add(name)

    def heal(self, name: str) -> None:
        _ip("link", "set", self._host_if[name], "up")
        self._cut.discard(name)

    def heal_all(self) -> None:
        for name in list(self._cut):
            self.heal(name)

    def wrapper(self, name: str, directory: Path) -> str:
        """An executable that runs nats-server inside the node's namespace, keeping its PID.

        ``ip netns exec`` enters the namespace and execs the command (no fork), so the PID the
        test holds is the server's own: SIGKILL and SIGSTOP reach the server itself.
        """
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"nats-server-{name}"
        path.write_text(
            f'#!/bin/sh\nexec ip netns exec {self.netns[name]} {find_nats_server_binary()} "$@"\n',
            encoding="utf-8",
        )
        path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        return os.fspath(path)


class NetnsCluster(NatsCluster):
    """A :class:`NatsCluster` of process nodes, each in its own namespace of ``net``."""

    def __init__(self, net: Netns, *, startup_timeout: timedelta = timedelta(seconds=60)) -> None:
        super().__init__(size=len(net.names), startup_timeout=startup_timeout)
        nodes = []
        for name in net.names:
            nodes.append(
                NatsServer(
                    store_dir=self.base_dir / name / "store",
                    work_dir=self.base_dir / name,
                    port=CLIENT_PORT,
                    http_port=HTTP_PORT,
                    host=net.address[name],
                    name=name,
                    cluster_name="durable",
                    cluster_port=ROUTE_PORT,
                    routes=[
                        f"nats://{net.address[other]}:{ROUTE_PORT}"
                        for other in net.names
                        if other != name
                    ],
                    binary=net.wrapper(name, self.base_dir / "bin"),
                    startup_timeout=startup_timeout,
                    extra_config=PROF_CONFIG,
                )
            )
        self._nodes = nodes  # the base class built loopback nodes; these replace them
        self.prof_urls = {n: f"http://{net.address[n]}:{PROF_PORT}" for n in net.names}
