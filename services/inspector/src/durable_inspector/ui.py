"""The web UI: server-rendered HTML pages, kept live by a little JavaScript (static/app.js).

Each page has one live region. On every server-sent event the script fetches the same page with
``?fragment=1`` and swaps the region, so the HTML is rendered in one place (here) only.
"""

from __future__ import annotations

import json
from datetime import datetime
from html import escape
from typing import Any
from urllib.parse import parse_qs, quote, urlencode

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from durable_core import Status
from durable_inspector.api import LIFECYCLE_ACTIONS, load_detail, parse_query
from durable_inspector.auth import COOKIE, cookie_header, safe_next, token_matches
from durable_inspector.runtime import runtime
from durable_inspector.views import summary_view

__all__ = ["error_page", "routes"]

_FILTER_KEYS = ("status", "workflow", "partition_key", "created_after", "created_before")
_LIST_KEYS = (*_FILTER_KEYS, "sort", "order", "limit")


def e(value: Any) -> str:
    return escape("" if value is None else str(value), quote=True)


def fmt_time(value: str | None) -> str:
    """``2026-11-28T16:03:12.345Z`` -> ``2026-11-28 16:03:12.345`` in a <time> element."""
    if not value:
        return '<span class="muted">–</span>'
    return f'<time datetime="{e(value)}">{e(value.replace("T", " ").rstrip("Z"))}</time>'


def fmt_duration(ms: float | None) -> str:
    if ms is None:
        return '<span class="muted">–</span>'
    if ms < 1000:
        return f"{ms:.0f} ms" if ms >= 10 else f"{ms:.1f} ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.2f} s"
    minutes, sec = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {sec} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def badge(status: str) -> str:
    return f'<span class="badge s-{e(status)}" data-status="{e(status)}">{e(status)}</span>'


def pretty(value: Any) -> str:
    return e(json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False))


def layout(request: Request, title: str, main: str, *, page: str, data_id: str = "") -> str:
    rt = runtime(request)
    logout = '<a class="logout" href="/logout">log out</a>' if rt.settings.token else ""
    attrs = f' data-page="{e(page)}"' + (f' data-id="{e(data_id)}"' if data_id else "")
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{e(title)} · durable inspector</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/static/style.css">
</head>
<body{attrs}>
<header class="top">
  <a class="brand" href="/">durable <span>inspector</span></a>
  <span class="prefix" title="engine prefix">{e(rt.settings.engine.prefix)}</span>
  <span class="spacer"></span>
  <span id="live" class="live off" title="live updates">connecting…</span>
  {logout}
</header>
<main>
{main}
</main>
<script src="/static/app.js" defer></script>
</body>
</html>
"""


def error_page(request: Request, status: int, error: str, detail: str) -> HTMLResponse:
    main = f"""<p class="crumbs"><a href="/">← Executions</a></p>
<section class="card error-page"><h1>{status} · {e(error.replace("_", " "))}</h1>
<p>{e(detail)}</p></section>"""
    return HTMLResponse(layout(request, f"{status}", main, page="error"), status_code=status)


# -- the executions list ---------------------------------------------------------------------


def _qs(params: dict[str, str], **changes: str | None) -> str:
    merged = {k: v for k, v in params.items() if v}
    for k, v in changes.items():
        if v:
            merged[k] = v
        else:
            merged.pop(k, None)
    return "?" + urlencode(merged) if merged else "?"


def _select(name: str, options: list[tuple[str, str]], chosen: str) -> str:
    opts = "".join(
        f'<option value="{e(v)}"{" selected" if v == chosen else ""}>{e(label)}</option>'
        for v, label in options
    )
    return f'<select name="{name}" id="f-{name}">{opts}</select>'


def _filters(params: dict[str, str], workflows: list[str]) -> str:
    statuses = [("", "any status"), *[(s.value, s.value) for s in Status if s != Status.UNKNOWN]]
    wf = [("", "any workflow"), *[(w, w) for w in workflows]]
    if params.get("workflow") and params["workflow"] not in workflows:
        wf.append((params["workflow"], params["workflow"]))

    def local(key: str) -> str:  # datetime-local wants 2026-11-28T16:00 (we treat it as UTC)
        return e(params.get(key, "")[:16])

    return f"""<form class="filters card" method="get" action="/" id="filters">
  <label>Status {_select("status", statuses, params.get("status", ""))}</label>
  <label>Workflow {_select("workflow", wf, params.get("workflow", ""))}</label>
  <label>Partition key <input name="partition_key" id="f-partition_key" value="{e(params.get("partition_key"))}" placeholder="any"></label>
  <label>Created after (UTC) <input type="datetime-local" name="created_after" value="{local("created_after")}"></label>
  <label>Created before (UTC) <input type="datetime-local" name="created_before" value="{local("created_before")}"></label>
  <label>Sort {_select("sort", [("created_at", "created"), ("updated_at", "updated")], params.get("sort", "created_at"))}</label>
  <label>Order {_select("order", [("desc", "newest first"), ("asc", "oldest first")], params.get("order", "desc"))}</label>
  <label>Per page {_select("limit", [(n, n) for n in ("25", "50", "100", "200")], params.get("limit", "50"))}</label>
  <div class="buttons"><button type="submit" class="primary" id="apply">Apply</button> <a href="/" class="button">Reset</a></div>
</form>"""  # noqa: E501 - HTML reads better unwrapped


def _list_region(request: Request, params: dict[str, str]) -> str:
    rt = runtime(request)
    query = parse_query(request.query_params)
    page = rt.index.query(query)
    stats = rt.index.stats()
    chosen = params.get("status", "")
    every = e(_qs(params, status=None, cursor=None))
    chips = [
        f'<a class="chip{"" if chosen else " on"}" href="{every}">all <b>{stats["total"]}</b></a>'
    ]
    for status, n in stats["by_status"].items():
        if status == Status.UNKNOWN.value and not n:
            continue
        on = " on" if chosen == status else ""
        chips.append(
            f'<a class="chip s-{e(status)}{on}" data-count-status="{e(status)}" '
            f'href="{e(_qs(params, status=status, cursor=None))}">{e(status)} <b>{n}</b></a>'
        )
    rows = []
    jaeger = rt.settings.jaeger_url
    for entry in page.items:
        v = summary_view(entry, jaeger)
        rows.append(
            f"""<tr data-id="{e(v["invocation_id"])}">
  <td class="mono"><a href="/executions/{e(v["invocation_id"])}">{e(v["invocation_id"])}</a></td>
  <td>{e(v["workflow"])}</td>
  <td>{badge(v["status"])}</td>
  <td>{fmt_time(v["created_at"])}</td>
  <td>{fmt_time(v["updated_at"])}</td>
  <td class="num">{fmt_duration(v["duration_ms"])}</td>
  <td class="num">{v["journal_length"]}</td>
  <td class="mono small">{e(v["partition_key"])}</td>
</tr>"""
        )
    if rows:
        table = f"""<table class="executions">
<thead><tr><th>Invocation</th><th>Workflow</th><th>Status</th><th>Created (UTC)</th>
<th>Updated (UTC)</th><th class="num">Duration</th><th class="num">Journal</th>
<th>Partition key</th></tr></thead>
<tbody>{"".join(rows)}</tbody></table>"""
    elif not rt.ready:
        table = '<p class="empty">Loading executions…</p>'
    else:
        table = '<p class="empty">No executions match these filters.</p>'
    nav = [f'<span class="muted">{len(page.items)} shown of {page.total} matching</span>']
    if params.get("cursor"):
        nav.append(f'<a class="button" href="{e(_qs(params, cursor=None))}">« First page</a>')
    if page.next_cursor:
        nav.append(
            f'<a class="button" id="next-page" href="{e(_qs(params, cursor=page.next_cursor))}">'
            "Next page »</a>"
        )
    # Workflows seen so far: the script adds new ones to the filter (which is outside the region).
    known = e(json.dumps(rt.index.workflows()))
    return f"""<span hidden id="workflow-names" data-workflows="{known}"></span>
<nav class="chips">{"".join(chips)}</nav>
<div class="card table-card">{table}</div>
<div class="pager">{" ".join(nav)}</div>"""


async def list_page(request: Request) -> Response:
    rt = runtime(request)
    params = {k: v for k, v in request.query_params.items() if k in (*_LIST_KEYS, "cursor")}
    region = _list_region(request, params)
    if request.query_params.get("fragment"):
        return HTMLResponse(region)
    fragment_url = "/" + _qs(params, fragment="1")
    main = f"""<div class="title-row"><h1>Executions</h1>
<details class="start card"><summary>Start an execution</summary>
<form id="invoke-form">
  <label>Workflow <input name="workflow" required list="known-workflows" placeholder="hello_workflow"></label>
  <datalist id="known-workflows">{"".join(f'<option value="{e(w)}">' for w in rt.index.workflows())}</datalist>
  <label>Arguments (JSON) <textarea name="args" rows="3" placeholder='{{"name": "Ada"}}'></textarea></label>
  <label>Id (optional) <input name="id"></label>
  <button type="submit" class="primary">Start</button>
  <p class="message" id="invoke-message" role="status"></p>
</form></details></div>
{_filters(params, rt.index.workflows())}
<div id="live-region" data-fragment-url="{e(fragment_url)}">{region}</div>"""  # noqa: E501
    return HTMLResponse(layout(request, "Executions", main, page="list"))


# -- one execution ---------------------------------------------------------------------------


def _timeline(d: dict[str, Any]) -> str:
    steps = d["steps"]
    if not steps:
        note = "No steps journaled yet." if d["status"] in ("pending", "running") else "No steps."
        return f'<p class="empty">{note}</p>'
    starts = [_parse(s["started_at"]) for s in steps]
    ends = [_parse(s["at"]) for s in steps]
    # The bars share one time axis: from the execution's creation to its last known moment.
    known = [t for t in (*starts, *ends, _parse(d["created_at"]), _parse(d["updated_at"])) if t]
    t0, t1 = min(known), max(known)
    span = max((t1 - t0).total_seconds(), 0.001)
    items = []
    for s, start, end in zip(steps, starts, ends, strict=True):
        left = ((start - t0).total_seconds() / span * 100) if start else 0
        width = ((end - start).total_seconds() / span * 100) if start and end else 0
        failed = s["failure"] is not None
        how = (
            '<span class="tag replayed">replayed</span>'
            if s["replayed"]
            else '<span class="tag executed">executed</span>'
        )
        attempts = (
            f'<span class="tag warn">{s["attempts"]} attempts</span>' if s["attempts"] > 1 else ""
        )
        failure = (
            f'<p class="failure">{e(s["failure"]["type"])}'
            f"{' (' + e(s['failure']['code']) + ')' if s['failure']['code'] else ''}: "
            f"{e(s['failure']['message'])}</p>"
            if failed
            else ""
        )
        bar = f"left:{left:.2f}%;width:max({width:.2f}%,3px)"
        items.append(
            f"""<li class="step{" failed" if failed else ""}" data-step="{s["step"]}">
  <div class="step-head">
    <span class="step-no">{s["step"]}</span>
    <span class="step-name mono">{e(s["name"])}</span>
    <span class="tag kind">{e(s["kind"])}</span>{how}{attempts}
    <span class="spacer"></span>
    <span class="step-duration">{fmt_duration(s["duration_ms"])}</span>
  </div>
  <div class="bar-track"><div class="bar" style="{bar}"></div></div>
  {failure}
  <details data-key="step-{s["step"]}"><summary>Result · finished {fmt_time(s["at"])}</summary>
  <pre>{pretty(s["output"])}</pre></details>
</li>"""
        )
    return f'<ol class="timeline">{"".join(items)}</ol>'


def _parse(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def _detail_region(d: dict[str, Any]) -> str:
    facts = [
        ("Status", badge(d["status"])),
        ("Workflow", e(d["workflow"])),
        ("Partition key", f'<span class="mono">{e(d["partition_key"])}</span>'),
        ("Created", fmt_time(d["created_at"])),
        ("Updated", fmt_time(d["updated_at"])),
        ("Duration", fmt_duration(d["duration_ms"])),
        ("Steps", str(len(d["steps"]))),
    ]
    if d["parent_id"]:
        facts.append(
            (
                "Parent",
                f'<a class="mono" href="/executions/{e(d["parent_id"])}">{e(d["parent_id"])}</a>',
            )
        )
    facts.append(
        (
            "Trace",
            f'<span class="mono">{e(d["trace_id"])}</span>'
            if d["trace_id"]
            else "search by invocation.id",
        )
    )
    dl = "".join(f"<div><dt>{k}</dt><dd>{v}</dd></div>" for k, v in facts)
    blocks = [f'<section class="card"><dl class="facts" id="facts">{dl}</dl></section>']
    if d["failure"]:
        f = d["failure"]
        where = f"at step {f['step']}" if f["step"] else "in the workflow body"
        blocks.append(
            f"""<section class="card failure-box"><h2>Failed {where}</h2>
<p><b>{e(f["type"])}</b>{" (" + e(f["code"]) + ")" if f["code"] else ""}:
{e(f["message"])}</p></section>"""
        )
    io = []
    if d["args"] is not None:
        io.append(
            '<details data-key="args" open><summary>Arguments</summary>'
            f"<pre>{pretty(d['args'])}</pre></details>"
        )
    if d["output"] is not None:
        io.append(
            '<details data-key="output" open><summary>Output</summary>'
            f'<pre id="output">{pretty(d["output"])}</pre></details>'
        )
    if io:
        blocks.append(f'<section class="card">{"".join(io)}</section>')
    history = "".join(f"<li>{badge(h['status'])} {fmt_time(h['at'])}</li>" for h in d["history"])
    blocks.append(
        f"""<div class="columns">
<section class="card grow">
<h2>Steps <span class="muted" id="step-count">{len(d["steps"])}</span></h2>{_timeline(d)}</section>
<section class="card side"><h2>Status history</h2><ol class="history" id="history">{history}</ol>
<p class="muted small">Transitions seen by this inspector since it started.</p></section>
</div>"""
    )
    return "\n".join(blocks)


def _actions(d: dict[str, Any]) -> str:
    labels = {
        "pause": "Pause",
        "resume": "Resume",
        "cancel": "Cancel",
        "retry": "Retry",
        "rerun": "Rerun",
    }
    buttons = "".join(
        f'<button type="button" data-action="{a}" id="action-{a}"'
        f"{' class=danger' if a == 'cancel' else ''}>{labels[a]}</button>"
        for a in LIFECYCLE_ACTIONS
        if a != "fork"
    )
    return f"""<section class="actions card">
  {buttons}
  <span class="fork"><label>from step <input type="number" id="fork-step" min="0" value="{len(d["steps"])}"></label>
  <button type="button" data-action="fork" id="action-fork">Fork</button></span>
  <span class="spacer"></span>
  <a class="button" id="trace-link" href="{e(d["trace_url"])}" target="_blank" rel="noopener">Trace in Jaeger ↗</a>
  <p class="message" id="action-message" role="status" aria-live="polite"></p>
</section>"""  # noqa: E501


async def detail_page(request: Request) -> Response:
    rt = runtime(request)
    invocation_id = request.path_params["invocation_id"]
    d = await load_detail(rt, invocation_id)
    region = _detail_region(d)
    if request.query_params.get("fragment"):
        return HTMLResponse(region)
    main = f"""<p class="crumbs"><a href="/">← Executions</a></p>
<div class="title-row">
<h1>{e(d["workflow"])} <span id="status-badge">{badge(d["status"])}</span></h1>
<p class="mono id">{e(invocation_id)}</p></div>
{_actions(d)}
<div id="live-region" data-fragment-url="/executions/{e(quote(invocation_id))}?fragment=1">
{region}</div>"""
    return HTMLResponse(layout(request, d["workflow"], main, page="detail", data_id=invocation_id))


# -- logging in ------------------------------------------------------------------------------


def _login_form(request: Request, nxt: str, wrong: bool) -> HTMLResponse:
    msg = '<p class="message error">That token is not right.</p>' if wrong else ""
    main = f"""<section class="card login"><h1>Log in</h1>
<p>This inspector is protected by a token (<code>DURABLE_INSPECTOR_TOKEN</code>).</p>
<form method="post" action="/login">
<input type="hidden" name="next" value="{e(nxt)}">
<label>Token <input type="password" name="token" autofocus required></label>
<button type="submit" class="primary">Log in</button>{msg}</form></section>"""
    return HTMLResponse(
        layout(request, "Log in", main, page="login"), status_code=401 if wrong else 200
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
    Route("/login", login, methods=["GET", "POST"]),
    Route("/logout", logout, methods=["GET"]),
]
