"""Access control: the optional token, and refusing cross-site actions.

With ``DURABLE_INSPECTOR_TOKEN`` set, every page and API call must present it, as
``Authorization: Bearer <token>`` or as the cookie that ``/login`` (or ``?token=`` once, on any
page) sets. Only the probes ``/healthz``, ``/livez`` and ``/readyz`` (they tell nothing but a
count), ``/metrics`` (for Prometheus; counts only), ``/login`` and ``/static/`` are open.

With or without a token, a state-changing request (POST, PUT, PATCH, DELETE) that a browser marks
as cross-site is refused: otherwise any web page could make the browser of someone running the
inspector on 127.0.0.1 cancel their executions. Clients that are not browsers send no ``Origin``
and are not affected.

Without a token, a request must also name the inspector by a host it is known by (``Host``):
localhost, 127.0.0.1, [::1], the host it listens on, or one of ``DURABLE_INSPECTOR_ALLOWED_HOSTS``
(any port). Otherwise a page on a name the attacker re-points at 127.0.0.1 (DNS rebinding) would
be same-origin with the inspector, and the cross-site check would not see it. The probes are
exempt: they are open anyway, and Kubernetes and Prometheus reach them by the pod's address.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlencode, urlsplit

from starlette.datastructures import URL, Headers, QueryParams
from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["COOKIE", "LOOPBACK_HOSTS", "AuthMiddleware", "host_name", "token_matches"]

COOKIE = "durable_inspector_token"
_PROBES = ("/livez", "/readyz", "/healthz", "/metrics")  # no token: they tell nothing but a state
_OPEN = (*_PROBES, "/login", "/static/")
_SAFE = frozenset({"GET", "HEAD", "OPTIONS"})
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")


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


def host_name(value: str) -> str:
    """The name in a ``Host`` value, without its port, lower-case (``[::1]`` keeps its
    brackets; a bare IPv6 address gets them). A value it cannot read comes back whole."""
    value = value.strip().lower()
    if value.startswith("["):  # [v6] or [v6]:port
        end = value.find("]")
        if end > 0 and _port(value[end + 1 :].removeprefix(":")):
            return value[: end + 1]
        return value
    if value.count(":") > 1:  # a bare IPv6 address (as the settings may give it)
        return f"[{value}]"
    name, _, port = value.partition(":")
    return name.rstrip(".") if _port(port) else value


def _port(text: str) -> bool:
    return text == "" or (text.isascii() and text.isdigit())


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

    def __init__(
        self, app: ASGIApp, token: str | None, hosts: Iterable[str] = LOOPBACK_HOSTS
    ) -> None:
        self.app = app
        self.token = token
        self.hosts = frozenset(host_name(h) for h in hosts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer 401 to a request without the token; pass the others on."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        method = scope["method"]
        path: str = scope["path"]
        token = self.token
        if token is None and path not in _PROBES and not self._known_host(headers):
            await _error(
                send,
                403,
                "forbidden",
                f"this inspector is not reached as {headers.get('host', '')!r}: without a "
                "token it answers only to localhost, 127.0.0.1, [::1] and the hosts in "
                "DURABLE_INSPECTOR_ALLOWED_HOSTS",
            )
            return
        if method not in _SAFE and _cross_site(headers):
            await _error(send, 403, "forbidden", "cross-site request refused")
            return
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

    def _known_host(self, headers: Headers) -> bool:
        return "*" in self.hosts or host_name(headers.get("host", "")) in self.hosts

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
