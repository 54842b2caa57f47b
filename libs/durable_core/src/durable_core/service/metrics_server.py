"""A tiny asyncio HTTP server for ``/metrics`` (Prometheus) and the health probes.

``/livez`` answers 200 while the event loop runs (a liveness probe: it never asks NATS, so a NATS
outage restarts nothing); ``/readyz`` and ``/healthz`` answer 200 only while ``healthy()`` holds.

Shared by the processor and the scheduler. No threads, no framework: it answers ``GET`` and
``HEAD`` of the two paths and closes each connection.
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


class MetricsServer:
    """Serves ``GET /metrics`` from a registry and ``GET /healthz`` from a health check.

    Args:
        registry: the metrics to expose.
        healthy: called on each ``/healthz``; True answers 200, False (or an exception) 503.
        host: interface to bind (``0.0.0.0`` in containers).
        port: port to bind; 0 picks a free one (see ``port`` after ``start``).
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        healthy: Callable[[], bool],
        *,
        host: str = "127.0.0.1",
        port: int = 9464,
    ) -> None:
        self.registry = registry
        self.healthy = healthy
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
        if path not in ("/metrics", "/healthz", "/livez", "/readyz"):
            return 404, "text/plain; charset=utf-8", b"not found: try /metrics, /livez or /readyz\n"
        if method not in ("GET", "HEAD"):
            return 405, "text/plain; charset=utf-8", b"method not allowed\n"
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, generate_latest(self.registry)
        if path == "/livez":  # answered by the event loop itself: it is alive
            return 200, "text/plain; charset=utf-8", b"ok\n"
        try:
            ok = bool(self.healthy())
        except Exception:  # noqa: BLE001 - a failing check means unhealthy
            log.debug("health check raised", exc_info=True)
            ok = False
        if ok:
            return 200, "text/plain; charset=utf-8", b"ok\n"
        return 503, "text/plain; charset=utf-8", b"unavailable\n"

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
    registry: CollectorRegistry, healthy: Callable[[], bool], host: str, port: int
) -> MetricsServer | None:
    """Serve /metrics and /healthz (200 while ``healthy()``), unless ``port`` is 0.

    A port that cannot be bound (another service on this host has it) is logged, not fatal.
    """
    if not port:
        return None
    server = MetricsServer(registry, healthy, host=host, port=port)
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
    log.info("metrics on http://%s:%d/metrics", host, server.port)
    return server
