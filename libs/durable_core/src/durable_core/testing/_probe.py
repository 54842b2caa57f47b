"""Probing what the servers need and show: free ports, a Docker engine, the HTTP monitoring
endpoint, a NATS request over a raw socket, and a bounded poll. No NATS client library here."""

from __future__ import annotations

import functools
import http.client
import importlib
import importlib.metadata
import json
import os
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

_POLL_SECONDS = 0.05
_HTTP_TIMEOUT_SECONDS = 1.0

# The monitoring endpoint is local (or on the Docker host): never go through an HTTP proxy.
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# Ports handed out come from below the kernel's ephemeral range, so a server binding port 0 or
# an outgoing connection (which take theirs from that range) never lands on one that was handed
# out and not bound yet. Each pytest-xdist worker has its own slice of the range, and a process
# never hands the same port out twice: two picks in a row used to return the same just-closed
# port now and then (a processor's metrics port and a gRPC service's, in one test).
_PORTS_LOW = 20000
_PORTS_HIGH = 32000  # exclusive; the default ephemeral range starts at 32768
_handed_out: set[int] = set()
_cursor: list[int] = []  # the next candidate, once chosen


@functools.cache
def _ephemeral_low() -> int:
    """Where the kernel's ephemeral ports start (read once)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return _PORTS_HIGH


def _socket_for(host: str) -> socket.socket:
    return socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)


def _port_slice() -> tuple[int, int]:
    """This process's slice of the port range: the worker's share of it under pytest-xdist."""
    low, high = _PORTS_LOW, min(_PORTS_HIGH, _ephemeral_low())
    worker, workers = os.environ.get("PYTEST_XDIST_WORKER", ""), 1
    if worker.startswith("gw") and worker[2:].isdigit():
        workers = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1))
        index = int(worker[2:]) % workers
        size = (high - low) // workers
        low, high = low + index * size, low + (index + 1) * size
    return low, high


def _bindable(host: str, port: int) -> socket.socket | None:
    sock = _socket_for(host)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        return None
    return sock


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free on ``host`` right now.

    Args:
        host: The interface to probe.

    Returns:
        A port that binds on ``host`` now, never handed out before by this process.
    """
    return free_ports(1, host)[0]


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Return ``count`` distinct free ports, all held open until every one is chosen.

    They come from this process's slice of 20000-31999 (below the ephemeral range; see above),
    each bound once to check it is free; the kernel's ephemeral ports if the slice runs out.
    """
    low, high = _port_slice()
    if not _cursor:
        _cursor.append(low + (os.getpid() * 7919) % max(1, high - low))
    sockets: list[socket.socket] = []
    ports: list[int] = []
    try:
        for _ in range(max(0, high - low)):
            if len(ports) == count:
                break
            port = _cursor[0]
            _cursor[0] = low + (port + 1 - low) % (high - low)
            if port in _handed_out:
                continue
            sock = _bindable(host, port)
            if sock is not None:
                sockets.append(sock)
                ports.append(port)
        while len(ports) < count:  # the slice is used up: fall back to ephemeral ports
            sock = _socket_for(host)
            sockets.append(sock)
            sock.bind((host, 0))
            ports.append(int(sock.getsockname()[1]))
        _handed_out.update(ports)
        return ports
    finally:
        for sock in sockets:
            sock.close()


def docker_available() -> bool:
    """Tell, within about two seconds, whether a Docker engine answers.

    For a local engine its socket must exist; then ``docker.from_env(timeout=2).ping()`` must
    succeed. Any failure (no ``docker`` package, no engine, a timeout) means False.

    Returns:
        True if containers can be started.
    """
    try:
        docker_host = os.environ.get("DOCKER_HOST", "")
        local = not docker_host or docker_host.startswith("unix://")
        if local and not os.path.exists(
            docker_host.removeprefix("unix://") or "/var/run/docker.sock"
        ):
            return False
        client = importlib.import_module("docker").from_env(timeout=2)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # noqa: BLE001 - every failure means "no engine to use"
        return False


def http_get(url: str, timeout: float = _HTTP_TIMEOUT_SECONDS) -> tuple[int, bytes] | None:
    """GET ``url``; return (status, body), or None when nothing answered."""
    try:
        with _HTTP.open(url, timeout=timeout) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read()
    except (OSError, ValueError, http.client.HTTPException):
        return None


def get_json(url: str) -> dict[str, Any] | None:
    """GET a monitoring endpoint; return its JSON object, or None on any failure."""
    result = http_get(url)
    if result is None or result[0] != 200:
        return None
    try:
        data = json.loads(result[1])
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def healthy(monitor_url: str, *, js_enabled_only: bool) -> bool:
    """Tell whether ``/healthz`` (or ``/healthz?js-enabled-only=true``) answers ok."""
    data = get_json(f"{monitor_url}/healthz" + ("?js-enabled-only=true" if js_enabled_only else ""))
    return data is not None and data.get("status") == "ok"


def nats_request(
    host: str, port: int, subject: str, payload: bytes, *, timeout: float = 2.0
) -> bytes | None:
    """Send one request over a bare NATS protocol connection; return the reply's payload.

    Just enough of the client protocol for a readiness probe (no TLS, no credentials):
    CONNECT, SUB to an inbox, PUB with that inbox as reply subject, read until the reply.

    Returns:
        The reply's payload, or None when nothing subscribes to ``subject`` (no responders).

    Raises:
        ConnectionError: The server answered ``-ERR`` (e.g. authorization) or hung up.
        OSError: The connection failed or no reply came within ``timeout`` (TimeoutError).
    """
    deadline = time.monotonic() + timeout
    inbox = f"_INBOX.durable_testing.{os.urandom(8).hex()}"
    options = {"verbose": False, "pedantic": False, "headers": True, "no_responders": True}
    with socket.create_connection((host, port), timeout=timeout) as sock:
        reader = sock.makefile("rb")
        if not reader.readline().startswith(b"INFO "):
            raise ConnectionError(f"{host}:{port} is not a NATS server")
        sock.sendall(
            f"CONNECT {json.dumps(options)}\r\nSUB {inbox} 1\r\n"
            f"PUB {subject} {inbox} {len(payload)}\r\n".encode()
            + payload
            + b"\r\n"
        )
        while time.monotonic() < deadline:
            line = reader.readline()
            if not line:
                raise ConnectionError(f"{host}:{port} closed the connection")
            op, _, rest = line.strip().partition(b" ")
            if op == b"PING":
                sock.sendall(b"PONG\r\n")
            elif op == b"-ERR":
                raise ConnectionError(f"{host}:{port}: {rest.decode(errors='replace')}")
            elif op in (b"MSG", b"HMSG"):  # MSG subj sid size / HMSG subj sid hdr_len total
                args = rest.split()
                size = int(args[-1])
                header_len = int(args[-2]) if op == b"HMSG" else 0
                body = reader.read(size + 2)[:size]
                if body[:header_len].startswith(b"NATS/1.0 503"):
                    return None
                return body[header_len:]
            # INFO (topology updates), +OK and PONG need no answer.
    raise TimeoutError(f"no reply to {subject} from {host}:{port} within {timeout:.1f}s")


def poll(probe: Callable[[], Any], timeout: float, describe: Callable[[], str]) -> Any:
    """Call ``probe`` until it returns something other than None; TimeoutError after ``timeout``.

    Args:
        probe: Returns the awaited value, or None while the condition does not hold yet.
        timeout: Seconds.
        describe: Says what was awaited and what was last seen, for the error message.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{describe()} (waited {timeout:.1f}s)")
        time.sleep(_POLL_SECONDS)
