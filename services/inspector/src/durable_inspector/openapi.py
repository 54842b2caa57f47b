"""The OpenAPI 3.1 document of the JSON API, served at ``/openapi.json``.

Written out rather than generated: the API is small, and a unit test checks that every route of
the app is described here and nothing else is.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from durable_core import Status

__all__ = ["document"]

_ERROR = {
    "type": "object",
    "required": ["error", "detail"],
    "properties": {
        "error": {
            "type": "string",
            "enum": [
                "invalid_input",
                "unauthorized",
                "forbidden",
                "not_found",
                "conflict",
                "not_implemented",
                "unavailable",
                "timeout",
                "internal",
            ],
        },
        "detail": {"type": "string"},
    },
}
_FAILURE = {
    "type": ["object", "null"],
    "properties": {
        "type": {"type": "string"},
        "message": {"type": "string"},
        "step": {"type": "integer"},
        "code": {"type": "string"},
    },
}
_TIME = {"type": ["string", "null"], "format": "date-time"}
_STATUS = {"type": "string", "enum": [s.value for s in Status]}
_HISTORY = {
    "type": "array",
    "description": "Status transitions the inspector's watch has seen (oldest first).",
    "items": {"type": "object", "properties": {"status": _STATUS, "at": _TIME}},
}
_SUMMARY = {
    "type": "object",
    "properties": {
        "invocation_id": {"type": "string"},
        "workflow": {"type": "string"},
        "status": _STATUS,
        "partition_key": {"type": "string"},
        "created_at": _TIME,
        "updated_at": _TIME,
        "duration_ms": {"type": ["number", "null"]},
        "failure": {"$ref": "#/components/schemas/Failure"},
        "journal_length": {"type": "integer"},
        "parent_id": {"type": ["string", "null"]},
        "trace_id": {"type": ["string", "null"]},
        "trace_url": {"type": "string", "description": "the trace (or a search for it) in Jaeger"},
        "revision": {"type": "integer"},
        "history": _HISTORY,
    },
}
_STEP = {
    "type": "object",
    "properties": {
        "step": {"type": "integer"},
        "kind": {"type": "string", "enum": ["call", "run"]},
        "name": {"type": "string"},
        "output": {"description": "the step's result as JSON (protobuf in its JSON form)"},
        "failure": {"$ref": "#/components/schemas/Failure"},
        "attempts": {"type": "integer"},
        "duration_ms": {"type": "number"},
        "started_at": _TIME,
        "at": _TIME,
        "executed": {"type": "boolean"},
        "replayed": {"type": ["boolean", "null"], "description": "null: not known"},
        "writer": {"type": ["string", "null"]},
    },
}
_DETAIL = {
    "type": "object",
    "properties": {
        **{k: v for k, v in _SUMMARY["properties"].items() if k != "revision"},  # type: ignore[attr-defined]
        "args": {},
        "output": {},
        "steps": {"type": "array", "items": {"$ref": "#/components/schemas/Step"}},
    },
}


def _err(*codes: int) -> dict[str, Any]:
    names = {
        400: "bad input",
        401: "missing or wrong token",
        403: "cross-site request refused",
        404: "not found",
        409: "refused in the current state",
        501: "the durable_core Client has no method for this yet",
        503: "NATS unavailable or index not ready",
    }
    return {
        str(c): {
            "description": names[c],
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
        for c in codes
    }


def _ok(code: int, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    body = {"description": description}
    if schema is not None:
        body["content"] = {"application/json": {"schema": schema}}  # type: ignore[assignment]
    return {str(code): body}


def _body(schema: dict[str, Any], required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {"application/json": {"schema": schema}}}


def _path(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": {"type": "string"},
    }


def _q(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema or {"type": "string"},
    }


_ID = _path("invocation_id", "the execution's invocation id")
_ACCEPTED = {"type": "object", "properties": {"invocation_id": {"type": "string"}}}
_PAYLOAD = {"type": "object", "properties": {"payload": {"description": "any JSON value"}}}


@cache
def document() -> dict[str, Any]:
    """The OpenAPI document (built once)."""
    action = {
        "summary": "Lifecycle action: pause, resume, cancel, retry, rerun or fork",
        "parameters": [
            _ID,
            {
                "name": "action",
                "in": "path",
                "required": True,
                "schema": {
                    "type": "string",
                    "enum": ["pause", "resume", "cancel", "retry", "rerun", "fork"],
                },
            },
        ],
        "requestBody": _body(
            {
                "type": "object",
                "description": 'empty, except for fork: {"from_step": N}',
                "properties": {"from_step": {"type": "integer", "minimum": 0}},
            },
            required=False,
        ),
        "responses": {
            **_ok(
                202,
                "accepted; rerun and fork name the new execution",
                {
                    "type": "object",
                    "properties": {
                        "invocation_id": {"type": "string"},
                        "action": {"type": "string"},
                        "new_invocation_id": {"type": "string"},
                    },
                },
            ),
            **_err(400, 401, 403, 404, 409, 501),
        },
    }
    paths: dict[str, Any] = {
        "/livez": {
            "get": {
                "summary": "The process is alive (a liveness probe; never looks at NATS)",
                "security": [],
                "responses": _ok(200, "alive (text)", {}),
            }
        },
        "/readyz": {
            "get": {
                "summary": "Connected to NATS, bound to the engine's streams, index loaded "
                "(a readiness probe; 503 with the reason in a line of text otherwise)",
                "security": [],
                "responses": {**_ok(200, "ready (text)", {}), **_err(503)},
            }
        },
        "/healthz": {
            "get": {
                "summary": "Ready once the index holds its snapshot (no token needed)",
                "security": [],
                "responses": {
                    **_ok(200, "ready", {"type": "object"}),
                    **_err(503),
                },
            }
        },
        "/openapi.json": {
            "get": {"summary": "This document", "responses": _ok(200, "the document", {})}
        },
        "/api/executions": {
            "get": {
                "summary": "List executions from the index (filters, sorting, cursor pages)",
                "parameters": [
                    _q("status", f"comma-separated statuses: {', '.join(s.value for s in Status)}"),
                    _q("workflow", "workflow name"),
                    _q("partition_key", "partition key"),
                    _q("created_after", "ISO 8601 or epoch ms; created_at >= this"),
                    _q("created_before", "ISO 8601 or epoch ms; created_at < this"),
                    _q("sort", "sort key", {"enum": ["created_at", "updated_at"]}),
                    _q("order", "sort order (default desc)", {"enum": ["asc", "desc"]}),
                    _q("limit", "page size, 1..500 (default 50)", {"type": "integer"}),
                    _q("cursor", "next_cursor of the previous page"),
                ],
                "responses": {
                    **_ok(
                        200,
                        "one page",
                        {
                            "type": "object",
                            "properties": {
                                "items": {
                                    "type": "array",
                                    "items": {"$ref": "#/components/schemas/Summary"},
                                },
                                "total": {"type": "integer"},
                                "next_cursor": {"type": ["string", "null"]},
                                "ready": {"type": "boolean"},
                            },
                        },
                    ),
                    **_err(400, 401),
                },
            },
            "post": {
                "summary": "Start an execution",
                "requestBody": _body(
                    {
                        "type": "object",
                        "required": ["workflow"],
                        "properties": {
                            "workflow": {"type": "string"},
                            "args": {"description": "any JSON value"},
                            "id": {"type": "string"},
                            "partition_key": {"type": "string"},
                        },
                    }
                ),
                "responses": {
                    **_ok(202, "submitted (Location: the execution)", _ACCEPTED),
                    **_err(400, 401, 403, 503),
                },
            },
        },
        "/api/stats": {
            "get": {
                "summary": "Counts by status and by workflow",
                "responses": {**_ok(200, "counts", {"type": "object"}), **_err(401)},
            }
        },
        "/api/events": {
            "get": {
                "summary": "Server-sent events: execution, deleted, ready, reset; with ?id= also "
                "steps (new journal steps of that execution)",
                "parameters": [_q("id", "only this execution's events")],
                "responses": {
                    "200": {
                        "description": "an event stream",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    },
                    **_err(401, 503),
                },
            }
        },
        "/api/executions/{invocation_id}": {
            "get": {
                "summary": "An execution: state, status history and journal steps",
                "parameters": [_ID],
                "responses": {
                    **_ok(200, "the execution", {"$ref": "#/components/schemas/Detail"}),
                    **_err(400, 401, 404),
                },
            }
        },
        "/api/executions/{invocation_id}/{action}": {"post": action},
        "/api/executions/{invocation_id}/signals/{name}": {
            "post": {
                "summary": "Send a signal to an execution",
                "parameters": [_ID, _path("name", "signal name")],
                "requestBody": _body(_PAYLOAD, required=False),
                "responses": {**_ok(202, "sent", {}), **_err(400, 401, 403, 404, 409, 501)},
            }
        },
        "/api/awakeables/{awakeable_id}/{action}": {
            "post": {
                "summary": 'Resolve ({"payload": ...}) or reject ({"reason": ...}) an awakeable',
                "parameters": [
                    _path("awakeable_id", "the awakeable's id"),
                    {
                        "name": "action",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "enum": ["resolve", "reject"]},
                    },
                ],
                "requestBody": _body(
                    {
                        "type": "object",
                        "properties": {"payload": {}, "reason": {"type": "string"}},
                    },
                    required=False,
                ),
                "responses": {**_ok(202, "done", {}), **_err(400, 401, 403, 404, 409, 501)},
            }
        },
        "/api/schedules": {
            "get": {
                "summary": "List schedules",
                "responses": {**_ok(200, "schedules", {"type": "object"}), **_err(401, 501)},
            },
            "post": {
                "summary": "Create a schedule (exactly one of cron or every)",
                "requestBody": _body(
                    {
                        "type": "object",
                        "required": ["name", "workflow"],
                        "properties": {
                            "name": {"type": "string"},
                            "workflow": {"type": "string"},
                            "args": {},
                            "cron": {"type": "string"},
                            "every": {"type": "number", "description": "seconds"},
                            "partition_key": {"type": "string"},
                        },
                    }
                ),
                "responses": {**_ok(201, "created", {}), **_err(400, 401, 403, 409, 501)},
            },
        },
        "/api/schedules/{name}": {
            "delete": {
                "summary": "Delete a schedule",
                "parameters": [_path("name", "schedule name")],
                "responses": {**_ok(200, "deleted", {}), **_err(401, 403, 404, 501)},
            }
        },
        "/api/schedules/{name}/{action}": {
            "post": {
                "summary": "Pause or resume a schedule",
                "parameters": [
                    _path("name", "schedule name"),
                    {
                        "name": "action",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "enum": ["pause", "resume"]},
                    },
                ],
                "responses": {**_ok(202, "done", {}), **_err(401, 403, 404, 501)},
            }
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "durable inspector",
            "version": "0.1.0",
            "description": "Executions of the durable engine: list, inspect, start and steer. "
            'Errors are {"error": code, "detail": message}.',
        },
        "paths": paths,
        "components": {
            "schemas": {
                "Error": _ERROR,
                "Failure": _FAILURE,
                "Summary": _SUMMARY,
                "Step": _STEP,
                "Detail": _DETAIL,
            },
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "DURABLE_INSPECTOR_TOKEN, when the inspector has one",
                },
                "cookie": {"type": "apiKey", "in": "cookie", "name": "durable_inspector_token"},
            },
        },
        "security": [{"bearer": []}, {"cookie": []}],
    }
