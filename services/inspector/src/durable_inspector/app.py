"""The ASGI app: ``create_app(settings)``.

Starlette, not FastAPI: the API is a dozen routes whose errors must be exactly
``{"error", "detail"}`` with 400 (FastAPI answers bad input with its own 422 shape), and the
event stream, the pages (Jinja2 templates) and the typed routes from which the OpenAPI document
is generated (``typed.py``) need nothing beyond Starlette.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from durable_core import DurableError, load_plugins
from durable_core.admin import Engine
from durable_inspector import api, pages
from durable_inspector.auth import LOOPBACK_HOSTS, AuthMiddleware, wants_json
from durable_inspector.errors import ApiError, from_exception
from durable_inspector.feed import Feed
from durable_inspector.index import ExecutionIndex
from durable_inspector.metrics import InspectorMetrics, MetricsMiddleware, metrics_endpoint
from durable_inspector.runtime import Runtime
from durable_inspector.settings import InspectorSettings

__all__ = ["create_app"]

log = logging.getLogger("durable_inspector")
STATIC = Path(__file__).with_name("static")
BIND_RETRY = 2.0  # seconds between attempts to bind to the engine's streams


def _respond(request: Request, err: ApiError) -> Response:
    if wants_json(request.url.path):
        return JSONResponse(err.body(), status_code=err.status)
    return pages.error_page(request, err.status, err.error, err.detail)


async def _on_error(request: Request, exc: Exception) -> Response:
    return _respond(request, from_exception(exc))


async def _on_http(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        err = ApiError(404, "not_found", f"no such page or route: {request.url.path}")
    elif exc.status_code == 405:
        err = ApiError(405, "method_not_allowed", f"{request.method} is not allowed here")
    else:
        err = ApiError(exc.status_code, "error", str(exc.detail))
    return _respond(request, err)


def create_app(
    settings: InspectorSettings, *, client: Any = None, engine: Engine | None = None
) -> Starlette:
    """The inspector as an ASGI app.

    Args:
        settings: validated settings (:func:`durable_inspector.settings.load_settings`).
        client: a connected durable_core ``Client`` (or a test double with the same methods).
        engine: without ``client``, a NATS connection not yet bound to the engine's
            streams (``Engine.connect(..., bind=False)``): the app binds it in the
            background, waiting for a processor to create them. Neither: the app connects on
            start-up with ``settings.nats``. What the app connected, it closes on shutdown.

    The app serves at once; ``/readyz`` answers 200 once it is bound and the index holds the
    snapshot (``/healthz`` once the index does; ``/livez`` always). Serve it with uvicorn and
    ``timeout_graceful_shutdown`` of a few seconds: event streams stay open until the server
    cuts them.
    """
    rt = Runtime(settings=settings, index=ExecutionIndex(), client=client, engine=engine)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        own = None  # the connection the app made, and closes
        if settings.load_plugins:
            _import_plugins()
        if rt.client is None and rt.engine is None:
            rt.engine = own = await Engine.connect(settings.nats, settings.engine, bind=False)
        task = asyncio.create_task(_watch(rt), name="inspector-watch")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            if own is not None:
                await own.close()

    metrics = InspectorMetrics(lambda: rt)
    app = Starlette(
        routes=[
            *api.routes,
            *pages.routes,
            Route("/metrics", metrics_endpoint, methods=["GET"]),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ],
        middleware=[
            Middleware(MetricsMiddleware, metrics=metrics),
            Middleware(
                AuthMiddleware,
                token=settings.token,
                hosts=(*LOOPBACK_HOSTS, settings.host, *settings.allowed_hosts),
            ),
        ],
        exception_handlers={
            ApiError: _on_error,
            DurableError: _on_error,
            HTTPException: _on_http,
            Exception: _on_error,
        },
        lifespan=lifespan,
    )
    # No redirect to the path without its trailing slash: an id that decodes to "/" (GET
    # /api/executions/%2F, found by the hostile tests) was answered with the list, after a 307;
    # a path that names nothing is a 404.
    app.router.redirect_slashes = False
    app.state.inspector = rt
    app.state.metrics = metrics
    return app


async def _watch(rt: Runtime, *, retry_after: float = BIND_RETRY) -> None:
    """Bind to the engine's streams (waiting for a processor to create them), then keep the
    index up to date."""
    if rt.client is None:
        assert rt.engine is not None  # create_app: a client, an engine, or one it connects
        while True:
            # bind gives up once NATS has been away for the append deadline; the inspector
            # must not stay unready for good after an outage, so it binds again.
            try:
                await rt.engine.bind(wait=math.inf)
                break
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - retried; /readyz shows the last error
                rt.bind_error = f"{type(e).__name__}: {e}"
                log.warning("binding to the engine's streams failed (%s); retrying", e)
            await asyncio.sleep(retry_after)
        rt.bind_error = None
        rt.client = rt.engine.client()
    rt.feed = Feed(rt.client, rt.index, reconcile_every=rt.settings.reconcile_interval)
    await rt.feed.run()


def _import_plugins() -> None:
    """Import the installed workflow plugins: their modules import the protobuf messages of the
    services they call, so step results of those types decode to JSON instead of hex."""
    try:
        found = load_plugins()
    except Exception as e:  # noqa: BLE001 - a broken plugin must not keep the inspector down
        log.warning("could not load workflow plugins (payloads may show as hex): %s", e)
        return
    log.info("plugins loaded for payload types: %s", ", ".join(found.plugins) or "none")
