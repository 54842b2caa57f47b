"""Entry point: ``durable-inspector`` / ``python -m durable_inspector``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

import uvicorn

from durable_core import DurableError, NatsUnavailableError
from durable_core.admin import Engine
from durable_core.service.logs import configure_logging
from durable_core.service.telemetry import configure_tracing, shutdown_tracing
from durable_inspector.app import create_app
from durable_inspector.settings import InspectorSettings, load_settings

log = logging.getLogger("durable_inspector")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line's options (each overrides its setting)."""
    p = argparse.ArgumentParser(
        prog="durable-inspector",
        description="Serve the durable inspector: a JSON API and a web UI over executions.",
    )
    p.add_argument("--nats-url", help="NATS URL(s), comma-separated (env NATS_URL)")
    p.add_argument("--prefix", help="engine prefix (env DURABLE_PREFIX)")
    p.add_argument("--host", help="interface to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port to listen on (default 8080; 0 = any free port)")
    p.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR")
    return p.parse_args(argv)


async def serve(settings: InspectorSettings) -> int:
    """Serve the inspector until stopped; the process's exit code."""
    # Connect to NATS before listening, so that a wrong URL fails fast with the library's clear
    # message; the engine's streams are bound in the background (/readyz says when).
    engine = await Engine.connect(settings.nats, settings.engine, bind=False)
    try:
        app = create_app(settings, engine=engine)
        config = uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            log_level=settings.log_level.lower(),
            access_log=settings.log_level == "DEBUG",
            timeout_graceful_shutdown=2,  # event streams never end by themselves
            lifespan="on",
        )
        server = uvicorn.Server(config)
        announce = asyncio.create_task(_announce(server))
        try:
            await server.serve()
        finally:
            announce.cancel()
        return 0 if server.started else 1
    finally:
        await engine.close()


async def _announce(server: uvicorn.Server) -> None:
    while not server.started:  # noqa: ASYNC110 - uvicorn has no event for this; poll its flag
        await asyncio.sleep(0.05)
    host, port = server.config.host, server.config.port
    for srv in getattr(server, "servers", []):  # the real port when asked for port 0
        for sock in srv.sockets:
            host, port = sock.getsockname()[:2]
            break
    shown = f"[{host}]" if ":" in str(host) else host
    print(f"inspector listening on http://{shown}:{port}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """The ``durable-inspector`` command; its exit code."""
    args = parse_args(argv)
    overrides = {
        "nats_url": args.nats_url,
        "prefix": args.prefix,
        "inspector_host": args.host,
        "inspector_port": args.port,
        "log_level": args.log_level,
    }
    try:
        settings = load_settings(overrides)
    except DurableError as e:
        print(f"durable-inspector: configuration error: {e}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    # Executions started or steered from the UI or the API: their traces begin here.
    provider = configure_tracing("durable-inspector")
    try:
        return asyncio.run(serve(settings))
    except NatsUnavailableError as e:
        log.error("%s", e)
        return 3
    except DurableError as e:
        log.error("%s", e)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        shutdown_tracing(provider)
