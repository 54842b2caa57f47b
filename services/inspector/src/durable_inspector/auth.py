"""Access control: the optional token, and refusing cross-site actions.

With ``DURABLE_INSPECTOR_TOKEN`` set, every page and API call must present it, as
``Authorization: Bearer <token>`` or as the cookie that ``/login`` (or ``?token=`` once, on any
page) sets. Only the probes ``/healthz``, ``/livez`` and ``/readyz`` (they tell nothing but a
count), ``/metrics`` (for Prometheus; counts only), ``/login`` and ``/static/`` are open.

With or without a token, a state-changing request (POST, PUT, PATCH, DELETE) that a browser marks
as cross-site is refused: otherwise any web page could make the browser of someone running the
inspector on 127.0.0.1 cancel their executions. Clients that are not browsers send no ``Origin``
and are not affected.
"""

from __future__ import annotations

import hmac
import json
from typing import Any
from urllib.parse import urlencode, urlsplit

from starlette.datastructures import URL, Headers, QueryParams
from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["COOKIE", "AuthMiddleware", "token_matches"]

COOKIE = "durable_inspector_token"
_PROBES = ("/livez", "/readyz", "/healthz", "/metrics")  # no token: they tell nothing but a state
_OPEN = (*_PROBES, "/login", "/static/")
_SAFE = frozenset({"GET", "HEAD", "OPTIONS"})


def token_matches(given: str | None, token: str) -> bool:
    """Whether ``given`` is the token (compared in constant time)."""
    return given is not None and hmac.compare_digest(given.encode(), token.encode())


def cookie_header(value: str, *, max_age: int = 30 * 24 * 3600) -> str:
    # Lax: sent on top-level navigation (links from Jaeger work), never on cross-site POSTs.
    return f"{COOKIE}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age}"


def _cookies(headers: Headers) -> dict[str, str]:
    out = {}
    for part in headers.get("cookie", "").split(";"):
        name, _, value = part.strip().partition("=")
        if name:
            out[name] = value
    return out


def _cross_site(headers: Headers) -> bool:
    if headers.get("sec-fetch-site") == "cross-site":
        return True
    origin = headers.get("origin")
    if origin is None:
        return False
    return origin == "null" or urlsplit(origin).netloc != headers.get("host", "")


def wants_json(path: str) -> bool:
    return path.startswith("/api/") or path == "/openapi.json" or path in _PROBES


async def _send(
    send: Send, status: int, body: bytes, content_type: str, extra: list[tuple[str, str]]
) -> None:
    headers = [
        (b"content-type", content_type.encode()),
        (b"content-length", str(len(body)).encode()),
    ]
    headers += [(k.encode(), v.encode()) for k, v in extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _error(send: Send, status: int, error: str, detail: str, **extra: str) -> None:
    body = json.dumps({"error": error, "detail": detail}).encode()
    await _send(send, status, body, "application/json", list(extra.items()))


class AuthMiddleware:
    """ASGI middleware: token check and cross-site refusal (a pure ASGI class, so that the event
    streams pass through unbuffered)."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer 401 to a request without the token; pass the others on."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        method = scope["method"]
        path: str = scope["path"]
        if method not in _SAFE and _cross_site(headers):
            await _error(send, 403, "forbidden", "cross-site request refused")
            return
        token = self.token
        if token is None or path in _PROBES or path.startswith(_OPEN):
            await self.app(scope, receive, send)
            return
        if self._presented(headers, token):
            await self.app(scope, receive, send)
            return
        url = URL(scope=scope)
        given = QueryParams(scope.get("query_string", b"")).get("token")
        if method == "GET" and token_matches(given, token):
            # Trade the token in the URL for a cookie, and drop it from the address bar.
            clean = url.remove_query_params("token")
            target = clean.path + (f"?{clean.query}" if clean.query else "")
            await _send(
                send,
                303,
                b"",
                "text/plain",
                [("location", target), ("set-cookie", cookie_header(token))],
            )
            return
        if wants_json(path) or method not in _SAFE:
            await _error(
                send,
                401,
                "unauthorized",
                "this inspector needs its token: send 'Authorization: Bearer <token>' "
                "(DURABLE_INSPECTOR_TOKEN), or log in at /login",
                **{"www-authenticate": 'Bearer realm="durable-inspector"'},
            )
            return
        nxt = path + (f"?{url.query}" if url.query else "")
        await _send(
            send, 303, b"", "text/plain", [("location", "/login?" + urlencode({"next": nxt}))]
        )

    @staticmethod
    def _presented(headers: Headers, token: str) -> bool:
        auth = headers.get("authorization", "")
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and token_matches(value.strip(), token):
            return True
        return token_matches(_cookies(headers).get(COOKIE), token)


def safe_next(value: Any) -> str:
    """A local path to go back to after logging in (never another site)."""
    text = str(value or "/")
    if not text.startswith("/") or text.startswith("//") or "\\" in text:
        return "/"
    return text
