"""gRPC server wiring, command line and signal handling for hello_service."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from opentelemetry.sdk.trace import TracerProvider

from durable_examples.hello.v1 import hello_pb2, hello_pb2_grpc
from durable_examples.order.v1 import order_pb2, order_pb2_grpc
from hello_service.hello import HelloServicer
from hello_service.order import COUNTED_METHODS, OrderServicer
from hello_service.probes import start_probes
from hello_service.tracing import TracingServerInterceptor, configure_tracing, tracing_on


class PortTakenError(RuntimeError):
    """The server's address cannot be bound (another process has the port)."""


if TYPE_CHECKING:
    from durable_core.idempotency import IdempotencyStore

logger = logging.getLogger("hello_service")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9090
DEFAULT_HEALTH_PORT = 9091  # HTTP /livez and /readyz
SHUTDOWN_GRACE_S = 5.0

HEALTH_SERVICES = (
    "",
    hello_pb2.DESCRIPTOR.services_by_name["HelloService"].full_name,
    order_pb2.DESCRIPTOR.services_by_name["OrderService"].full_name,
)
"""Names the health service reports on: overall, then each served API."""

ORDER_METHODS = tuple(
    f"/{order_pb2.DESCRIPTOR.services_by_name['OrderService'].full_name}/{name}"
    for name in COUNTED_METHODS
)
"""The OrderService methods an idempotency store covers (the counted ones)."""


@dataclasses.dataclass
class HelloServer:
    """A built (not yet started) server and the servicers behind it.

    Attributes:
        server: The ``grpc.aio`` server.
        port: The port actually bound (useful when 0 was requested).
        health: Health servicer; SERVING for every name in ``HEALTH_SERVICES``.
        orders: The OrderService servicer, for in-process inspection.
        idempotency: The idempotency store its OrderService calls go through, if any.
    """

    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    orders: OrderServicer
    idempotency: IdempotencyStore | None = None

    async def start(self) -> None:
        """Starts serving."""
        await self.server.start()

    async def stop(self, grace: float | None = SHUTDOWN_GRACE_S) -> None:
        """Reports NOT_SERVING, then stops, letting in-flight calls finish for ``grace`` s.

        With an idempotency store, its keyed calls are drained first, while the port is still
        bound: the port is what tells a successor on it (same instance name) that this
        process still lives, so it must not run the keys this one still runs."""
        await self.health.enter_graceful_shutdown()
        started = time.monotonic()
        if self.idempotency is not None:
            await self.idempotency.drain(grace if grace is not None else SHUTDOWN_GRACE_S)
        left = None if grace is None else max(0.5, grace - (time.monotonic() - started))
        await self.server.stop(left)


async def create_server(
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    *,
    orders: OrderServicer | None = None,
    tracer_provider: TracerProvider | None = None,
    idempotency: IdempotencyStore | None = None,
) -> HelloServer:
    """Builds the server with all services registered and the port bound.

    Args:
        host: Interface to bind, e.g. ``127.0.0.1`` or ``0.0.0.0``.
        port: Port to bind; 0 picks a free one.
        orders: OrderService servicer to use; defaults to
            :meth:`OrderServicer.from_env`.
        tracer_provider: where the RPCs' spans go; the global provider by default. Without
            either (tracing off) the server has no tracing interceptor at all.
        idempotency: when given, OrderService's Validate, Charge and Ship are answered once
            per idempotency key from this store's records (durable_core.idempotency), across
            restarts of the service; without it the servicer's own checks (in memory) apply.

    Returns:
        The server handle; call :meth:`HelloServer.start` to serve.

    Raises:
        PortTakenError: If the address cannot be bound.
    """
    # Continues the caller's trace (traceparent in the metadata), when spans go anywhere.
    traced = tracer_provider is not None or tracing_on()
    interceptors: list[grpc.aio.ServerInterceptor] = []
    if traced:
        interceptors.append(TracingServerInterceptor(tracer_provider))
    if idempotency is not None:
        interceptors.append(idempotency.interceptor(methods=ORDER_METHODS))
    # With the store, the port is bound exclusively (no SO_REUSEPORT): no two live processes
    # share it, so `<hostname>:<address>:<port>` names this process's instance (see
    # IdempotencyStore; HelloServer.stop drains its calls before the port closes).
    options = [("grpc.so_reuseport", 0)] if idempotency is not None else []
    # The engine's channels ping a long call every 5 minutes (keepalive), gRPC's default floor
    # exactly: accepted down to one a minute, so clock drift never earns a "too_many_pings".
    options.append(("grpc.http2.min_recv_ping_interval_without_data_ms", 60_000))
    server = grpc.aio.server(interceptors=interceptors, options=options)
    hello_pb2_grpc.add_HelloServiceServicer_to_server(HelloServicer(), server)
    orders = orders if orders is not None else OrderServicer.from_env()
    order_pb2_grpc.add_OrderServiceServicer_to_server(orders, server)
    health_servicer = health.aio.HealthServicer()
    for name in HEALTH_SERVICES:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    try:
        bound_port = server.add_insecure_port(f"{_host_for_address(host)}:{port}")
    except RuntimeError as e:  # grpc's own "Failed to bind"
        raise PortTakenError(f"could not bind {host}:{port}") from e
    if bound_port == 0:
        raise PortTakenError(f"could not bind {host}:{port}")
    return HelloServer(
        server=server,
        port=bound_port,
        health=health_servicer,
        orders=orders,
        idempotency=idempotency,
    )


async def build_server(
    host: str = DEFAULT_HOST, port: int = DEFAULT_PORT
) -> tuple[grpc.aio.Server, int]:
    """Builds the server with all services registered and the port bound.

    The server is not started; ``await server.start()`` to serve and
    ``await server.stop(grace)`` to stop. Use :func:`create_server` to also get
    the health and OrderService servicers.

    Args:
        host: Interface to bind.
        port: Port to bind; 0 picks a free one.

    Returns:
        ``(server, bound_port)``.
    """
    built = await create_server(host, port)
    return built.server, built.port


def _host_for_address(host: str) -> str:
    # IPv6 literals need brackets in a "host:port" target.
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


async def open_idempotency_store(
    url: str, prefix: str, port: int = 0, host: str = DEFAULT_HOST
) -> IdempotencyStore:
    """Connect the OrderService's idempotency store (needs durable-core installed: the
    ``idempotency`` extra); its bucket is bound at the first keyed call. With a fixed
    ``port`` the process is instance ``<hostname>:<host>:<port>`` (``host`` the address it
    binds: two processes may bind one port on two addresses): a restart on the same address
    takes over at once the keys its predecessor held when it died. The login and TLS come from the
    engine services' variables (``DURABLE_NATS_USER``, ``_PASSWORD``, ``_TOKEN``,
    ``_CREDS_FILE``, ``_NKEY_SEED_FILE``, ``_TLS_CA``, ``_TLS_CERT``, ``_TLS_KEY``), taken as
    set."""
    from durable_core import EngineConfig, NatsConfig
    from durable_core.idempotency import IdempotencyStore

    prefix_len = len("DURABLE_")
    settings = {
        name[prefix_len:].lower(): value
        for name, value in os.environ.items()
        if name.startswith("DURABLE_NATS_") and name != "DURABLE_NATS_URL"
    }
    cfg = NatsConfig.from_settings({**settings, "nats_url": url}, name="hello-service")
    cfg.check_files()
    instance = f"{socket.gethostname()}:{_host_for_address(host)}:{port}" if port else None
    return await IdempotencyStore.connect(
        cfg, engine=EngineConfig(prefix=prefix), instance=instance
    )


async def serve(
    host: str,
    port: int,
    health_port: int = DEFAULT_HEALTH_PORT,
    *,
    idempotency_url: str = "",
    prefix: str = "durable",
) -> None:
    """Runs the server until SIGTERM or SIGINT, then shuts down gracefully.

    Logs ``hello_service listening on HOST:PORT`` once serving. HTTP ``/livez`` and
    ``/readyz`` are served on ``health_port`` (0: not at all). With ``idempotency_url`` the
    OrderService's calls are answered once per key from records in that NATS (the engine
    ``prefix``'s ``<prefix>_calls`` bucket).
    """
    state = "starting"
    probes = await start_probes(lambda: None if state == "serving" else state, host, health_port)
    store = (
        await open_idempotency_store(idempotency_url, prefix, port, host)
        if idempotency_url
        else None
    )
    built = await create_server(host, port, idempotency=store)
    await built.start()
    state = "serving"
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    logger.info("hello_service listening on %s:%d", host, built.port)
    await stop.wait()
    state = "shutting down"
    logger.info("hello_service shutting down")
    await built.stop(SHUTDOWN_GRACE_S)
    if store is not None:
        await store.close()
    if probes is not None:
        await probes.stop()
    logger.info("hello_service stopped")


def _env_port(name: str, default: int) -> int:
    """Port variable ``name`` (``default`` when unset); ValueError naming it if it is not a
    port number (``main`` reports it as a configuration error, exit code 2)."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        port = int(raw)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise ValueError(f"{name} must be a port number (0 to 65535), got {raw!r}")
    return port


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="hello-service",
        description="Serve the example HelloService and OrderService over gRPC.",
    )
    parser.add_argument(
        "--host",
        default=os.environ.get("GRPC_HOST", DEFAULT_HOST),
        help=f"interface to bind (env GRPC_HOST, default {DEFAULT_HOST}; 0.0.0.0 in containers)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=_env_port("GRPC_PORT", DEFAULT_PORT),
        help=f"port to bind, 0 for any free one (env GRPC_PORT, default {DEFAULT_PORT})",
    )
    parser.add_argument(
        "--health-port",
        type=int,
        default=_env_port("HEALTH_PORT", DEFAULT_HEALTH_PORT),
        help="HTTP port of /livez and /readyz, on the same interface; 0: none "
        f"(env HEALTH_PORT, default {DEFAULT_HEALTH_PORT})",
    )
    parser.add_argument(
        "--idempotency-store",
        default=os.environ.get("IDEMPOTENCY_STORE_URL", ""),
        metavar="NATS_URL",
        help="answer OrderService's Validate, Charge and Ship once per idempotency key from "
        "records in this NATS (durable_core.idempotency; needs durable-core installed), "
        "across restarts; env IDEMPOTENCY_STORE_URL, default: off (checks in memory)",
    )
    parser.add_argument(
        "--engine-prefix",
        default=os.environ.get("DURABLE_PREFIX", "durable"),
        help="the engine's prefix, for --idempotency-store (env DURABLE_PREFIX, default durable)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point (``hello-service`` / ``python -m hello_service``).

    Args:
        argv: Arguments without the program name; defaults to ``sys.argv[1:]``.

    Returns:
        Process exit code (0 after a graceful shutdown).
    """
    try:
        args = _parse_args(argv)
    except ValueError as e:  # a variable argparse does not check (GRPC_PORT=abc)
        print(f"hello-service: configuration error: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        provider = configure_tracing()
    except ValueError as e:
        print(f"hello-service: configuration error: {e}", file=sys.stderr)
        return 2
    store_errors: tuple[type[Exception], ...] = ()
    if args.idempotency_store:
        try:
            import durable_core.idempotency  # noqa: F401 - refused before serving, not after
            from durable_core.errors import ConfigError, NatsUnavailableError

            store_errors = (ConfigError, NatsUnavailableError)
        except ImportError:
            print(
                "hello-service: configuration error: --idempotency-store needs durable-core "
                "installed (pip install 'durable-hello-service[idempotency]')",
                file=sys.stderr,
            )
            return 2
    try:
        asyncio.run(
            serve(
                args.host,
                args.port,
                args.health_port,
                idempotency_url=args.idempotency_store,
                prefix=args.engine_prefix,
            )
        )
    except PortTakenError as e:
        print(f"hello-service: {e}", file=sys.stderr)
        return 1
    except store_errors as e:
        # The store's NATS unreachable or refusing the login, or a missing credentials file.
        print(f"hello-service: idempotency store: {e}", file=sys.stderr)
        return 1
    finally:
        if provider is not None:
            provider.shutdown()  # flushes the spans still batched
    return 0
