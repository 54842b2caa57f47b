"""The web UI: pages rendered from Jinja2 templates (``templates/``, autoescaped), kept live by
htmx: each page has one live region that htmx fetches again (``?fragment=1``) when the event
stream says something changed, so the HTML has one renderer. Actions post JSON to the API
(``static/app.js``)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from durable_core import Status
from durable_core.views import format_duration, format_time, iso
from durable_inspector.api import client_method, load_detail
from durable_inspector.auth import COOKIE, cookie_header, safe_next, token_matches
from durable_inspector.inputs import parse_query
from durable_inspector.runtime import runtime
from durable_inspector.views import schedule_view, summary_view

__all__ = ["error_page", "routes", "timeline"]

_FILTER_KEYS = ("status", "workflow", "partition_key", "created_after", "created_before")
_LIST_KEYS = (*_FILTER_KEYS, "sort", "order", "limit", "cursor")
_STATUSES = [s.value for s in Status if s != Status.UNKNOWN]


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).with_name("templates")),
        autoescape=True,  # every value is escaped unless a template says otherwise (none does)
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["duration"] = format_duration
    env.filters["clock"] = lambda value: format_time(value).rstrip("Z")
    env.filters["pretty"] = lambda value: json.dumps(value, indent=2, ensure_ascii=False)
    return env


templates = Jinja2Templates(env=_environment())


def _render(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    rt = runtime(request)
    base = {
        "title": context.pop("title", "durable inspector"),
        "page": context.pop("page", ""),
        "data_id": context.pop("data_id", ""),
        "live": context.pop("live", False),
        "prefix": rt.settings.engine.prefix,
        "token": rt.settings.token is not None,
    }
    return templates.TemplateResponse(request, name, {**base, **context}, status_code=status_code)


def error_page(request: Request, status: int, error: str, detail: str) -> HTMLResponse:
    """An HTML error page (what a browser gets instead of the API's JSON error)."""
    return _render(
        request,
        "error.html",
        status,
        title=str(status),
        page="error",
        status=status,
        error=error,
        detail=detail,
    )


# -- the executions list ---------------------------------------------------------------------


def _qs(params: dict[str, str], **changes: str | None) -> str:
    merged = {k: v for k, v in params.items() if v}
    for k, v in changes.items():
        if v:
            merged[k] = v
        else:
            merged.pop(k, None)
    return "?" + urlencode(merged) if merged else "?"


async def list_page(request: Request) -> Response:
    rt = runtime(request)
    params = {k: v for k, v in request.query_params.items() if k in _LIST_KEYS}
    page = rt.index.query(parse_query(request.query_params))
    workflows = rt.index.workflows()
    context: dict[str, Any] = {
        "params": params,
        "qs": lambda **changes: _qs(params, **changes),
        "rows": [summary_view(e, rt.settings) for e in page.items],
        "total": page.total,
        "next_cursor": page.next_cursor,
        "stats": rt.index.stats(),
        "ready": rt.ready,
        "workflows": workflows,
    }
    if request.query_params.get("fragment"):
        return _render(request, "_list.html", **context)
    choices = [*workflows]
    if params.get("workflow") and params["workflow"] not in choices:
        choices.append(params["workflow"])
    return _render(
        request,
        "list.html",
        title="Executions",
        page="list",
        live=True,
        statuses=_STATUSES,
        workflow_choices=choices,
        fragment_url="/" + _qs(params, fragment="1"),
        **context,
    )


# -- one execution ---------------------------------------------------------------------------


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


Bar = dict[str, Any]


def timeline(d: dict[str, Any], now: datetime) -> tuple[dict[str, Any], list[Bar | None]]:
    """The time axis and each step's bar on it (left and width in %): a call or run spans its
    execution, a wait spans from when it began to when it completed, or to now while it waits
    (drawn open-ended). A fork's copied steps ran in the original: no bar here."""
    live = d["status"] not in ("completed", "failed", "cancelled")
    moments = [_time(d["created_at"]), _time(d["updated_at"]), now if live else None]
    for s in d["steps"]:
        if not s["copied_from"]:
            moments += [_time(s["started_at"]), _time(s["finished_at"])]
    known = [t for t in moments if t is not None]
    if not known:
        return {"start": None, "end": None, "live": live}, [None for _ in d["steps"]]
    t0, t1 = min(known), max(known)
    span = max((t1 - t0).total_seconds(), 0.001)
    bars: list[Bar | None] = []
    for s in d["steps"]:
        start = _time(s["started_at"])
        if s["copied_from"] or start is None:
            bars.append(None)
            continue
        end = _time(s["finished_at"]) or (now if s["state"] in ("waiting", "retrying") else start)
        kind = "wait" if s["is_wait"] else "exec"
        if s["finished_at"] is None and s["state"] in ("waiting", "retrying"):
            kind += " pending"
        if s["state"] == "failed":
            kind += " failed"
        left = (start - t0).total_seconds() / span * 100
        width = max((end - start).total_seconds(), 0) / span * 100
        bars.append({"left": left, "width": min(width, 100 - left), "kind": kind})
    axis = {"start": d["created_at"], "end": iso(now) if live else d["updated_at"]}
    return {**axis, "live": live}, bars


async def detail_page(request: Request) -> Response:
    rt = runtime(request)
    invocation_id = request.path_params["invocation_id"]
    d = await load_detail(rt, invocation_id)
    axis, bars = timeline(dict(d), datetime.now(UTC))
    context: dict[str, Any] = {"d": d, "axis": axis, "bars": bars}
    if request.query_params.get("fragment"):
        return _render(request, "_detail.html", **context)
    fragment_url = f"/executions/{invocation_id}?fragment=1"
    return _render(
        request,
        "detail.html",
        title=d["workflow"],
        page="detail",
        data_id=invocation_id,
        live=True,
        fragment_url=fragment_url,
        **context,
    )


# -- schedules -------------------------------------------------------------------------------


async def schedules_page(request: Request) -> Response:
    rt = runtime(request)
    method = client_method(rt, "list_schedules", "listing schedules")
    now = datetime.now(UTC)
    found = [schedule_view(s, now) for s in await method()]
    if request.query_params.get("fragment"):
        return _render(request, "_schedules.html", schedules=found)
    return _render(
        request,
        "schedules.html",
        title="Schedules",
        page="schedules",
        schedules=found,
        workflows=rt.index.workflows(),
    )


async def fleet_page(request: Request) -> Response:
    rt = runtime(request)
    method = client_method(rt, "fleet", "reading the fleet registry")
    fleet = (await method()).to_dict()
    if request.query_params.get("fragment"):
        return _render(request, "_fleet.html", fleet=fleet)
    return _render(request, "fleet.html", title="Fleet", page="fleet", fleet=fleet)


async def docs_page(request: Request) -> Response:
    return _render(request, "docs.html", title="API", page="docs")


# -- logging in ------------------------------------------------------------------------------


def _login_form(request: Request, nxt: str, wrong: bool) -> HTMLResponse:
    return _render(
        request,
        "login.html",
        401 if wrong else 200,
        title="Log in",
        page="login",
        next=nxt,
        wrong=wrong,
    )


async def login(request: Request) -> Response:
    rt = runtime(request)
    token = rt.settings.token
    if request.method == "GET":
        if token is None:
            return RedirectResponse("/", status_code=303)
        return _login_form(request, safe_next(request.query_params.get("next")), wrong=False)
    # A plain urlencoded form: parsed here rather than pulling in python-multipart for one field.
    form = parse_qs((await request.body()).decode("utf-8", "replace"))
    nxt = safe_next((form.get("next") or ["/"])[0])
    if token is None:
        return RedirectResponse(nxt, status_code=303)
    if not token_matches((form.get("token") or [""])[0], token):
        return _login_form(request, nxt, wrong=True)
    resp = RedirectResponse(nxt, status_code=303)
    resp.headers["set-cookie"] = cookie_header(token)
    return resp


async def logout(request: Request) -> Response:
    resp = RedirectResponse("/login", status_code=303)
    resp.headers["set-cookie"] = f"{COOKIE}=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0"
    return resp


routes = [
    Route("/", list_page, methods=["GET"]),
    Route("/executions/{invocation_id}", detail_page, methods=["GET"]),
    Route("/schedules", schedules_page, methods=["GET"]),
    Route("/fleet", fleet_page, methods=["GET"]),
    Route("/docs", docs_page, methods=["GET"]),
    Route("/login", login, methods=["GET", "POST"]),
    Route("/logout", logout, methods=["GET"]),
]
