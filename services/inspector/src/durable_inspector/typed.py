"""Typed routes: each API endpoint declares its query, body and responses as Python types, and
the OpenAPI document is generated from them (``/openapi.json``, browsed at ``/docs``).

A small layer over Starlette's ``Route`` rather than FastAPI: the API's errors are exactly
``{"error", "detail"}`` with 400 (FastAPI's validation answers 422 in its own shape), and the
types here are the same TypedDicts the code builds its answers from (``durable_core.views``),
checked by mypy, so the document cannot drift from the answers.

Types map to JSON Schema as usual: TypedDicts become components (their docstring the
description, ``NotRequired`` keys optional), ``X | None`` allows null, ``Literal`` is an enum.
``Annotated[T, "text"]`` describes a field; ``"format:date-time"`` sets a format.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import types
import typing
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

__all__ = ["Endpoint", "Router", "openapi", "schema_of", "template"]

Handler = Callable[[Request], Awaitable[Response]]
_PRIMITIVES: dict[Any, dict[str, Any]] = {
    str: {"type": "string"},
    bytes: {"type": "string", "format": "binary"},
    int: {"type": "integer"},
    float: {"type": "number"},
    bool: {"type": "boolean"},
    type(None): {"type": "null"},
    Any: {},
}


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """One operation: what it takes and what it answers (status -> type, or None: no body)."""

    method: str
    path: str
    handler: Handler
    summary: str
    tag: str
    query: Any = None  # a TypedDict of (optional) query parameters
    body: Any = None  # a TypedDict of the JSON body
    body_required: bool = True
    responses: dict[int, Any] = dataclasses.field(default_factory=dict)
    errors: tuple[int, ...] = ()
    media_type: str = "application/json"
    path_help: dict[str, str] = dataclasses.field(default_factory=dict)


class Router:
    """Collects endpoints: ``@router.get(path, ...)`` on a ``async def handler(request)``."""

    def __init__(self) -> None:
        self.endpoints: list[Endpoint] = []

    def add(self, method: str, path: str, **meta: Any) -> Callable[[Handler], Handler]:
        """Declare a route for ``method`` and ``path``, with its types in ``meta``."""

        def register(handler: Handler) -> Handler:
            summary = meta.pop("summary", None) or inspect.getdoc(handler) or handler.__name__
            self.endpoints.append(Endpoint(method, path, handler, summary, **meta))
            return handler

        return register

    def get(self, path: str, **meta: Any) -> Callable[[Handler], Handler]:
        """Declare a GET route."""
        return self.add("GET", path, **meta)

    def post(self, path: str, **meta: Any) -> Callable[[Handler], Handler]:
        """Declare a POST route."""
        return self.add("POST", path, **meta)

    def delete(self, path: str, **meta: Any) -> Callable[[Handler], Handler]:
        """Declare a DELETE route."""
        return self.add("DELETE", path, **meta)

    def routes(self) -> list[Route]:
        """The declared routes, for Starlette."""
        return [Route(e.path, e.handler, methods=[e.method]) for e in self.endpoints]


def _describe(schema: dict[str, Any], metadata: Sequence[Any]) -> dict[str, Any]:
    for m in metadata:
        if isinstance(m, str) and m.startswith("format:"):
            schema = {**schema, "format": m.removeprefix("format:")}
        elif isinstance(m, str):
            schema = {**schema, "description": m}
    return schema


def _is_typeddict(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, dict) and hasattr(tp, "__required_keys__")


def schema_of(tp: Any, components: dict[str, Any]) -> dict[str, Any]:
    """The JSON Schema of a type; TypedDicts are added to ``components`` and referenced."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Annotated:
        return _describe(schema_of(args[0], components), tp.__metadata__)
    if origin in (typing.NotRequired, typing.Required):
        return schema_of(args[0], components)
    if tp in _PRIMITIVES:
        return dict(_PRIMITIVES[tp])
    if origin is typing.Literal:
        return {"enum": list(args)}
    if origin is typing.Union or origin is types.UnionType:
        options = [schema_of(a, components) for a in args]
        return {"anyOf": options}
    if origin in (list, Sequence, tuple):
        return {"type": "array", "items": schema_of(args[0], components) if args else {}}
    if origin is dict:
        return {"type": "object", "additionalProperties": schema_of(args[1], components)}
    if _is_typeddict(tp):
        name = tp.__name__
        if name not in components:
            components[name] = {}  # placeholder: recursive types stop here
            hints = typing.get_type_hints(tp, include_extras=True)
            components[name] = {
                "type": "object",
                "description": inspect.cleandoc(tp.__doc__ or name),
                "properties": {k: schema_of(v, components) for k, v in hints.items()},
                "required": sorted(tp.__required_keys__),
            }
        return {"$ref": f"#/components/schemas/{name}"}
    raise TypeError(f"no JSON Schema for {tp!r}")


def _parameters(e: Endpoint, components: dict[str, Any]) -> list[dict[str, Any]]:
    params = [
        {
            "name": name,
            "in": "path",
            "required": True,
            "schema": {"type": "string"},
            **({"description": e.path_help[name]} if name in e.path_help else {}),
        }
        for name in re.findall(r"{(\w+)(?::\w+)?}", e.path)
    ]
    if e.query is not None:
        for name, tp in typing.get_type_hints(e.query, include_extras=True).items():
            schema = schema_of(tp, components)
            description = schema.pop("description", None)
            param = {"name": name, "in": "query", "required": False, "schema": schema}
            if description:
                param["description"] = description
            params.append(param)
    return params


_REASONS = {
    200: "OK",
    201: "created",
    202: "accepted",
    400: "invalid input",
    401: "the token is missing or wrong",
    403: "a cross-site request",
    404: "not found",
    409: "the state forbids it",
    501: "not available in this durable-core",
    503: "NATS unreachable, or the index is loading",
}


def openapi(
    endpoints: Sequence[Endpoint], *, info: dict[str, Any], error: Any, extra: dict[str, Any]
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``endpoints``; ``error`` is the type of error bodies."""
    components: dict[str, Any] = {}
    error_ref = schema_of(error, components)
    paths: dict[str, dict[str, Any]] = {}
    for e in endpoints:
        responses: dict[str, Any] = {}
        for status, tp in sorted(e.responses.items()):
            answer: dict[str, Any] = {"description": _REASONS.get(status, "OK")}
            if tp is not None:
                answer["content"] = {e.media_type: {"schema": schema_of(tp, components)}}
            responses[str(status)] = answer
        for status in (*e.errors, 401, 503):
            responses.setdefault(
                str(status),
                {
                    "description": _REASONS.get(status, "error"),
                    "content": {"application/json": {"schema": error_ref}},
                },
            )
        operation: dict[str, Any] = {
            "summary": e.summary.splitlines()[0],
            "operationId": e.handler.__name__,
            "tags": [e.tag],
            "parameters": _parameters(e, components),
            "responses": responses,
        }
        if len(e.summary.splitlines()) > 1:
            operation["description"] = e.summary
        if e.body is not None:
            operation["requestBody"] = {
                "required": e.body_required,
                "content": {"application/json": {"schema": schema_of(e.body, components)}},
            }
        paths.setdefault(template(e.path), {})[e.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": info,
        "paths": paths,
        "components": {"schemas": dict(sorted(components.items())), **extra},
        "security": [{}, {"bearer": []}],
    }


def template(path: str) -> str:
    """A route's path as OpenAPI writes it: ``{name:path}`` is ``{name}``."""
    return re.sub(r"{(\w+):\w+}", r"{\1}", path)


def unknown_fields(body: dict[str, Any], tp: Any) -> list[str]:
    """Keys of ``body`` that the TypedDict ``tp`` does not have."""
    return sorted(set(body) - set(typing.get_type_hints(tp)))
