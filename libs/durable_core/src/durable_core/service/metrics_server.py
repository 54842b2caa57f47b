"""A tiny asyncio HTTP server for ``/metrics`` (Prometheus) and the health probes.

Shared by the processor and the scheduler. No threads, no framework: it answers ``GET`` and
``HEAD`` and closes each connection.

- ``/livez``: 200 while the process and its event loop are alive (the answer comes from that
  loop). It never depends on NATS: a NATS outage must not get the service restarted.
- ``/readyz``: 200 when the service does its job (connected to NATS, consuming), else 503
  with a one-line reason.
- ``/healthz``: the older probe, kept as it was (200 while connected to NATS).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

__all__ = ["MetricsServer", "start_metrics_server"]

log = logging.getLogger(__name__)

_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}
_READ_TIMEOUT = 10.0
_MAX_HEADER_LINES = 100


Ready = Callable[[], str | None]
"""A readiness check: None when ready, else why not (one line)."""

_PATHS = ("/metrics", "/livez", "/readyz", "/healthz")


class MetricsServer:
    """Serves ``/metrics`` from a registry, ``/livez``, ``/readyz`` and ``/healthz``.

    Args:
        registry: the metrics to expose.
        healthy: called on each ``/healthz``; True answers 200, False (or an exception) 503.
        host: interface to bind (``0.0.0.0`` in containers).
        port: port to bind; 0 picks a free one (see ``port`` after ``start``).
        ready: called on each ``/readyz``: None answers 200, a reason 503 (an exception is a
            reason too). Without it ``/readyz`` follows ``healthy``.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        healthy: Callable[[], bool],
        *,
        host: str = "127.0.0.1",
        port: int = 9464,
        ready: Ready | None = None,
    ) -> None:
        self.registry = registry
        self.healthy = healthy
        self.ready = ready
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        """Bind and start serving.

        Raises:
            OSError: the address cannot be bound (in use, not permitted).
        """
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and close open connections."""
        if self._server is not None:
            self._server.close()
            close_clients = getattr(self._server, "close_clients", None)  # Python >= 3.13
            if close_clients is not None:
                close_clients()  # else wait_closed waits for a probe's keep-alive connection
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
            self._server = None

    async def __aenter__(self) -> MetricsServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def respond(self, method: str, path: str) -> tuple[int, str, bytes]:
        """Status, content type and body for a request (no I/O; unit-testable)."""
        text = "text/plain; charset=utf-8"
        if path not in _PATHS:
            return 404, text, b"not found: try /metrics, /livez, /readyz or /healthz\n"
        if method not in ("GET", "HEAD"):
            return 405, text, b"method not allowed\n"
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, generate_latest(self.registry)
        if path == "/livez":
            return 200, text, b"ok\n"  # answered by the event loop: it is alive
        if path == "/readyz":
            reason = self._not_ready()
            if reason is None:
                return 200, text, b"ready\n"
            return 503, text, f"not ready: {reason}\n".encode()
        if self._healthy():
            return 200, text, b"ok\n"
        return 503, text, b"unavailable\n"

    def _healthy(self) -> bool:
        try:
            return bool(self.healthy())
        except Exception:  # a failing check means unhealthy
            log.debug("health check raised", exc_info=True)
            return False

    def _not_ready(self) -> str | None:
        if self.ready is None:
            return None if self._healthy() else "not connected to NATS"
        try:
            reason = self.ready()
        except Exception as e:  # noqa: BLE001 - a failing check means not ready
            return f"readiness check failed: {type(e).__name__}: {e}"
        return None if reason is None else " ".join(str(reason).split())  # one line

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), _READ_TIMEOUT)
            for _ in range(_MAX_HEADER_LINES):  # the headers are not needed: skip them
                line = await asyncio.wait_for(reader.readline(), _READ_TIMEOUT)
                if line in (b"\r\n", b"\n", b""):
                    break
            parts = request.decode("latin-1").split()
            if len(parts) < 2:
                return
            method, target = parts[0].upper(), parts[1]
            status, content_type, body = self.respond(method, target.split("?", 1)[0])
            head = (
                f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
                f"Content-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n"
            )
            writer.write(head.encode("latin-1") + (b"" if method == "HEAD" else body))
            await writer.drain()
        except (TimeoutError, ConnectionError, UnicodeDecodeError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


async def start_metrics_server(
    registry: CollectorRegistry,
    healthy: Callable[[], bool],
    host: str,
    port: int,
    *,
    ready: Ready | None = None,
) -> MetricsServer | None:
    """Serve /metrics, /livez, /readyz and /healthz (200 while ``healthy()``), unless
    ``port`` is 0.

    A port that cannot be bound (another service on this host has it) is logged, not fatal.
    """
    if not port:
        return None
    server = MetricsServer(registry, healthy, host=host, port=port, ready=ready)
    try:
        await server.start()
    except OSError as e:
        log.warning(
            "metrics endpoint off: cannot listen on %s:%d (%s); set DURABLE_METRICS_PORT",
            host,
            port,
            e.strerror or e,
        )
        return None
    log.info("metrics and probes on http://%s:%d (/metrics, /livez, /readyz)", host, server.port)
    return server
