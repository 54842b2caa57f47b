"""HTTP probes for the hello service: ``/livez`` and ``/readyz``.

The engine's services get these from ``durable_core.service.metrics_server``; this example
service stands for anybody's gRPC service and depends on nothing of the engine (its image
installs only its own packages), so it has its own few lines on the standard library. It also
serves the gRPC health protocol (``grpc.health.v1``) on its gRPC port.

- ``/livez``: 200 while the process and its event loop are alive.
- ``/readyz``: 200 while the gRPC server serves, else 503 with a one-line reason (starting,
  shutting down).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

__all__ = ["ProbeServer", "start_probes"]

logger = logging.getLogger("hello_service")

_READ_TIMEOUT = 10.0


class ProbeServer:
    """Answers ``GET``/``HEAD`` of ``/livez`` and ``/readyz``; every connection is closed after
    one answer.

    Args:
        ready: None when ready, else why not (one line).
        host: interface to bind.
        port: port to bind; 0 picks a free one (see ``port`` after ``start``).
    """

    def __init__(self, ready: Callable[[], str | None], host: str, port: int) -> None:
        self.ready = ready
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        """Raises OSError if the address cannot be bound."""
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop serving the probes."""
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
            self._server = None

    def respond(self, method: str, path: str) -> tuple[int, bytes]:
        """Status and body of a request (no I/O)."""
        if path not in ("/livez", "/readyz"):
            return 404, b"not found: try /livez or /readyz\n"
        if method not in ("GET", "HEAD"):
            return 405, b"method not allowed\n"
        if path == "/livez":
            return 200, b"ok\n"
        reason = self.ready()
        return (200, b"ready\n") if reason is None else (503, f"not ready: {reason}\n".encode())

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), _READ_TIMEOUT)
            for _ in range(100):  # the headers are not needed: skip them
                if await asyncio.wait_for(reader.readline(), _READ_TIMEOUT) in (
                    b"\r\n",
                    b"\n",
                    b"",
                ):
                    break
            parts = request.decode("latin-1").split()
            if len(parts) < 2:
                return
            method, path = parts[0].upper(), parts[1].split("?", 1)[0]
            status, body = self.respond(method, path)
            reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed"}.get(
                status, "Service Unavailable"
            )
            head = (
                f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode("latin-1") + (b"" if method == "HEAD" else body))
            await writer.drain()
        except (TimeoutError, ConnectionError, UnicodeDecodeError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


async def start_probes(ready: Callable[[], str | None], host: str, port: int) -> ProbeServer | None:
    """Serve the probes unless ``port`` is 0; a port that cannot be bound is logged, not fatal."""
    if not port:
        return None
    server = ProbeServer(ready, host, port)
    try:
        await server.start()
    except OSError as e:
        logger.warning(
            "probes off: cannot listen on %s:%d (%s); set HEALTH_PORT", host, port, e.strerror or e
        )
        return None
    logger.info("probes on http://%s:%d (/livez, /readyz)", host, server.port)
    return server
