"""Prometheus metrics of the inspector, served at ``/metrics`` (same token rules as the API).

| metric | type | labels | what |
|---|---|---|---|
| ``durable_inspector_http_requests_total`` | counter | method, route, status | requests answered |
| ``durable_inspector_http_request_duration_seconds`` | histogram | method, route | time to answer (event streams excluded: they last as long as the page) |
| ``durable_inspector_executions`` | gauge | status | executions in the index |
| ``durable_inspector_index_ready`` | gauge | | 1 once the index holds its snapshot |
| ``durable_inspector_event_streams`` | gauge | | open event streams (pages kept live) |

``route`` is the route's template (``/api/executions/{invocation_id}``), never the raw path, so
the label set stays small.
"""  # noqa: E501 - a table

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["InspectorMetrics", "MetricsMiddleware", "metrics_endpoint"]

_TRACER = trace.get_tracer("durable_inspector")


class _IndexCollector(Collector):
    """Gauges read from the running inspector when scraped."""

    def __init__(self, runtime: Callable[[], Any]) -> None:
        self.runtime = runtime

    def collect(self) -> Iterator[GaugeMetricFamily]:
        rt = self.runtime()
        executions = GaugeMetricFamily(
            "durable_inspector_executions", "Executions in the index.", labels=["status"]
        )
        for status, n in rt.index.stats()["by_status"].items():
            executions.add_metric([status], n)
        yield executions
        yield GaugeMetricFamily(
            "durable_inspector_index_ready",
            "1 once the index holds the state bucket's snapshot.",
            value=1 if rt.ready else 0,
        )
        streams = len(rt.feed.subscriptions) if rt.feed is not None else 0
        yield GaugeMetricFamily(
            "durable_inspector_event_streams", "Open event streams.", value=streams
        )


class InspectorMetrics:
    """The inspector's metrics in their own registry (plus process and runtime metrics)."""

    def __init__(self, runtime: Callable[[], Any], *, runtime_collectors: bool = True) -> None:
        registry = self.registry = CollectorRegistry()
        if runtime_collectors:
            for collector in (PROCESS_COLLECTOR, GC_COLLECTOR, PLATFORM_COLLECTOR):
                registry.register(collector)
        self.requests = Counter(
            "durable_inspector_http_requests",
            "HTTP requests answered.",
            ["method", "route", "status"],
            registry=registry,
        )
        self.duration = Histogram(
            "durable_inspector_http_request_duration_seconds",
            "Time to answer an HTTP request (event streams excluded).",
            ["method", "route"],
            registry=registry,
        )
        registry.register(_IndexCollector(runtime))


class MetricsMiddleware:
    """Counts and times every HTTP request by its route template (pure ASGI: streams pass),
    and traces the ones that change something (a SERVER span, the parent of the invocation's
    own spans when an action starts or steers one)."""

    def __init__(self, app: ASGIApp, metrics: InspectorMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Count the request and time it by route."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        streaming = False

        async def sending(message: Message) -> None:
            nonlocal status, streaming
            if message["type"] == "http.response.start":
                status = message["status"]
                for name, value in message.get("headers", []):
                    if name == b"content-type" and value.startswith(b"text/event-stream"):
                        streaming = True
            await send(message)

        method = scope["method"]
        span = None
        if method not in ("GET", "HEAD", "OPTIONS"):
            span = _TRACER.start_span(
                f"{method} {scope['path']}",
                kind=SpanKind.SERVER,
                attributes={"http.request.method": method, "url.path": scope["path"]},
            )
        try:
            if span is None:
                await self.app(scope, receive, sending)
            else:
                with trace.use_span(span, end_on_exit=False):
                    await self.app(scope, receive, sending)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or (
                "/static" if scope["path"].startswith("/static/") else "other"
            )
            self.metrics.requests.labels(method, template, str(status)).inc()
            if not streaming:
                elapsed = time.perf_counter() - started
                self.metrics.duration.labels(method, template).observe(elapsed)
            if span is not None:
                span.update_name(f"{method} {template}")
                span.set_attribute("http.route", template)
                span.set_attribute("http.response.status_code", status)
                if status >= 500:
                    span.set_status(Status(StatusCode.ERROR))
                span.end()


async def metrics_endpoint(request: Request) -> Response:
    """``/metrics``: the inspector's metrics in Prometheus's text format."""
    metrics: InspectorMetrics = request.app.state.metrics
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
