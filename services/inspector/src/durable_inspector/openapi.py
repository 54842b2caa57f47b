"""The OpenAPI 3.1 document of the JSON API, generated from the typed routes of ``api.router``
(served at ``/openapi.json``; ``/docs`` browses it with Swagger UI, served from ``static/``)."""

from __future__ import annotations

from functools import cache
from typing import Any

from durable_inspector.schema import ErrorBody
from durable_inspector.typed import openapi

__all__ = ["document"]

_INFO = {
    "title": "durable inspector",
    "version": "1",
    "description": "Executions of the durable engine: list, inspect, start and steer them; "
    "resolve awakeables, send signals, manage schedules. Errors are always "
    '{"error": code, "detail": message}. With DURABLE_INSPECTOR_TOKEN set, send '
    "an Authorization header with Bearer and the token (or log in: the page's cookie works here "
    "too).",
}


@cache
def document() -> dict[str, Any]:
    """The document (built once: the routes do not change while the app runs)."""
    from durable_inspector.api import router

    return openapi(
        router.endpoints,
        info=_INFO,
        error=ErrorBody,
        extra={
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "DURABLE_INSPECTOR_TOKEN, when the inspector has one",
                }
            }
        },
    )
