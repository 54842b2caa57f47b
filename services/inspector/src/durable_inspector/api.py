"""The JSON API: listings from the index, one execution from NATS, and actions through the client.

Lifecycle, awakeable, signal and schedule routes call Client methods that durable_core may not
have yet; each is looked up when the request comes (``getattr``), so a newer durable-core lights
them up without a change here, and until then they answer 501 ``not_implemented``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from durable_core import DurableError, NotFoundError, Status
from durable_inspector.errors import ApiError, not_implemented
from durable_inspector.feed import Event, Subscription
from durable_inspector.index import MAX_LIMIT, SORT_KEYS, Query, SortKey
from durable_inspector.openapi import document
from durable_inspector.runtime import Runtime, runtime
from durable_inspector.views import detail_view, jsonable, step_view, summary_json

__all__ = ["LIFECYCLE_ACTIONS", "parse_query", "routes"]

log = logging.getLogger("durable_inspector")

# action -> the Client method it calls
LIFECYCLE_ACTIONS = {
    "pause": "pause",
    "resume": "resume",
    "cancel": "cancel",
    "retry": "retry",
    "rerun": "rerun",
    "fork": "fork",
}
STEP_POLL_INTERVAL = 1.0  # seconds between journal reads for a running execution's stream
PING_INTERVAL = 15.0  # seconds of silence before a keep-alive comment on an event stream
_STATUSES = ", ".join(s.value for s in Status)


# -- input -----------------------------------------------------------------------------------


_SPACED_OFFSET = re.compile(r"(T[0-9:.]+) ([0-9]{2}:?[0-9]{2})$")


def parse_time(name: str, text: str) -> datetime:
    """An ISO 8601 time (no zone = UTC) or milliseconds since the epoch."""
    # An unencoded "+01:00" in a URL arrives as " 01:00": read it as the offset it was.
    text = _SPACED_OFFSET.sub(r"\1+\2", text.strip())
    try:
        if text.lstrip("-").isdigit():
            return datetime.fromtimestamp(int(text) / 1000, tz=UTC)
        value = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except (ValueError, OverflowError, OSError) as e:
        raise ApiError(
            400,
            "invalid_input",
            f"{name}={text!r} is not a time: use ISO 8601 (2026-11-28T16:00:00Z) "
            "or milliseconds since the epoch",
        ) from e
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def parse_query(params: Any) -> Query:
    """A listing query from URL parameters; empty values mean "not given" (as HTML forms send).

    Raises:
        ApiError: 400 with the offending parameter named.
    """

    def get(name: str) -> str | None:
        value = params.get(name)
        return value.strip() if value is not None and value.strip() else None

    statuses = None
    if (raw := get("status")) is not None:
        chosen = set()
        for part in raw.split(","):
            try:
                chosen.add(Status(part.strip().lower()))
            except ValueError as e:
                raise ApiError(
                    400, "invalid_input", f"unknown status {part.strip()!r}; one of {_STATUSES}"
                ) from e
        statuses = frozenset(chosen)
    sort = get("sort") or "created_at"
    if sort not in SORT_KEYS:
        raise ApiError(400, "invalid_input", f"sort={sort!r}: sort by {' or '.join(SORT_KEYS)}")
    order = (get("order") or "desc").lower()
    if order not in ("asc", "desc"):
        raise ApiError(400, "invalid_input", f"order={order!r}: use asc or desc")
    limit_text = get("limit") or "50"
    try:
        limit = int(limit_text)
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_LIMIT:
        raise ApiError(
            400, "invalid_input", f"limit={limit_text!r}: a whole number from 1 to {MAX_LIMIT}"
        )
    after = get("created_after")
    before = get("created_before")
    created_after = parse_time("created_after", after) if after else None
    created_before = parse_time("created_before", before) if before else None
    if created_after and created_before and created_after >= created_before:
        raise ApiError(400, "invalid_input", "created_after must be earlier than created_before")
    sort_key: SortKey = "created_at" if sort == "created_at" else "updated_at"
    return Query(
        statuses=statuses,
        workflow=get("workflow"),
        partition_key=params.get("partition_key") or None,
        created_after=created_after,
        created_before=created_before,
        sort=sort_key,
        order="asc" if order == "asc" else "desc",
        limit=limit,
        cursor=get("cursor"),
    )


async def json_body(request: Request, *, required: bool = True) -> dict[str, Any]:
    """The request's JSON object; ``{}`` for an empty body when not ``required``."""
    raw = await request.body()
    if not raw.strip():
        if required:
            raise ApiError(400, "invalid_input", "the request needs a JSON object body")
        return {}
    try:
        value = json.loads(raw)
    except RecursionError as e:
        raise ApiError(400, "invalid_input", "the request body is nested too deeply") from e
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, integers of too many digits
        detail = str(e) if len(str(e)) <= 200 else str(e)[:200] + "..."
        raise ApiError(400, "invalid_input", f"the request body is not valid JSON: {detail}") from e
    if not isinstance(value, dict):
        raise ApiError(
            400,
            "invalid_input",
            f"the request body must be a JSON object, not {type(value).__name__}",
        )
    return value


def _optional_str(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ApiError(400, "invalid_input", f"{key!r} must be a non-empty string")
    return value


def _required_str(body: dict[str, Any], key: str) -> str:
    value = _optional_str(body, key)
    if value is None:
        raise ApiError(400, "invalid_input", f"{key!r} is required")
    return value


def _method(rt: Runtime, name: str, what: str) -> Callable[..., Any]:
    method = getattr(_client(rt), name, None)
    if method is None or not callable(method):
        raise not_implemented(name, what)
    return method  # type: ignore[no-any-return]


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(data, status_code=status, headers=headers)


# -- reading ---------------------------------------------------------------------------------


async def livez(request: Request) -> Response:
    """The process and its event loop are alive (it never looks at NATS)."""
    return PlainTextResponse("ok\n")


async def readyz(request: Request) -> Response:
    """Connected to NATS, bound to the engine's streams, the index loaded; else 503 and why."""
    reason = runtime(request).not_ready()
    if reason is None:
        return PlainTextResponse("ready\n")
    return PlainTextResponse(f"not ready: {reason}\n", status_code=503)


def _client(rt: Any) -> Any:
    """The durable_core client; 503 until the engine's streams are bound."""
    if rt.client is None:
        raise ApiError(503, "unavailable", f"the inspector is not ready: {rt.not_ready()}")
    return rt.client


async def healthz(request: Request) -> Response:
    rt = runtime(request)
    if rt.ready:
        return _json({"status": "ok", "executions": len(rt.index)})
    detail = "the execution index is loading its snapshot"
    if rt.feed is not None and rt.feed.error:
        detail += f" (last watch error: {rt.feed.error})"
    return _json({"status": "starting", "error": "unavailable", "detail": detail}, 503)


async def list_executions(request: Request) -> Response:
    rt = runtime(request)
    q = parse_query(request.query_params)
    page = rt.index.query(q)
    jaeger = rt.settings.jaeger_url
    # Rows come pre-encoded from the index (summary_json); only the envelope is encoded here.
    tail = json.dumps(
        {"total": page.total, "next_cursor": page.next_cursor, "ready": rt.ready},
        separators=(",", ":"),
    ).encode()
    body = b'{"items":[' + b",".join(summary_json(e, jaeger) for e in page.items) + b"]," + tail[1:]
    return Response(body, media_type="application/json")


async def stats(request: Request) -> Response:
    rt = runtime(request)
    return _json({**rt.index.stats(), "ready": rt.ready})


async def load_detail(rt: Runtime, invocation_id: str) -> dict[str, Any]:
    """An execution's state and journal (raises NotFoundError for an unknown id)."""
    result = await _client(rt).get_result(invocation_id)
    return detail_view(result, rt.index.get(invocation_id), rt.settings.jaeger_url)


async def get_execution(request: Request) -> Response:
    rt = runtime(request)
    return _json(await load_detail(rt, request.path_params["invocation_id"]))


# -- acting ----------------------------------------------------------------------------------


async def invoke(request: Request) -> Response:
    rt = runtime(request)
    body = await json_body(request)
    unknown = set(body) - {"workflow", "args", "id", "partition_key"}
    if unknown:
        raise ApiError(400, "invalid_input", f"unknown field(s): {', '.join(sorted(unknown))}")
    workflow = _required_str(body, "workflow")
    invocation_id = await _client(rt).invoke_async(
        workflow,
        body.get("args"),
        id=_optional_str(body, "id"),
        partition_key=_optional_str(body, "partition_key"),
    )
    location = f"/api/executions/{invocation_id}"
    return _json(
        {"invocation_id": invocation_id, "workflow": workflow, "url": location},
        202,
        {"Location": location},
    )


async def lifecycle(request: Request) -> Response:
    rt = runtime(request)
    invocation_id = request.path_params["invocation_id"]
    action = request.path_params["action"]
    if action not in LIFECYCLE_ACTIONS:
        raise ApiError(
            404,
            "not_found",
            f"no action {action!r}; actions are {', '.join(LIFECYCLE_ACTIONS)}",
        )
    body = await json_body(request, required=False)
    kwargs: dict[str, Any] = {}
    if action == "fork":
        step = body.get("from_step")
        if not isinstance(step, int) or isinstance(step, bool) or step < 0:
            raise ApiError(400, "invalid_input", 'fork needs {"from_step": N}: a whole number >= 0')
        kwargs["from_step"] = step
    elif body:
        raise ApiError(400, "invalid_input", f"{action} takes no body fields")
    method = _method(rt, LIFECYCLE_ACTIONS[action], f"{action} of an execution")
    result = await method(invocation_id, **kwargs)
    out: dict[str, Any] = {"invocation_id": invocation_id, "action": action}
    if action in ("rerun", "fork") and isinstance(result, str) and result != invocation_id:
        out["new_invocation_id"] = result  # rerun and fork start a new execution
    elif result is not None:
        out["status"] = str(result)  # pause, resume, cancel: the status after the request
    return _json(out, 202)


async def awakeable(request: Request) -> Response:
    rt = runtime(request)
    awakeable_id = request.path_params["awakeable_id"]
    action = request.path_params["action"]
    body = await json_body(request, required=False)
    if action == "resolve":
        method = _method(rt, "resolve_awakeable", "resolving an awakeable")
        await method(awakeable_id, body.get("payload"))
    elif action == "reject":
        reason = _required_str(body, "reason")
        method = _method(rt, "reject_awakeable", "rejecting an awakeable")
        await method(awakeable_id, reason)
    else:
        raise ApiError(404, "not_found", f"no awakeable action {action!r}; use resolve or reject")
    return _json({"awakeable_id": awakeable_id, "action": action}, 202)


async def signal(request: Request) -> Response:
    rt = runtime(request)
    invocation_id = request.path_params["invocation_id"]
    name = request.path_params["name"]
    body = await json_body(request, required=False)
    method = _method(rt, "signal", "signalling an execution")
    await method(invocation_id, name, body.get("payload"))
    return _json({"invocation_id": invocation_id, "signal": name}, 202)


async def list_schedules(request: Request) -> Response:
    rt = runtime(request)
    method = _method(rt, "list_schedules", "listing schedules")
    return _json({"schedules": jsonable(list(await method()))})


async def create_schedule(request: Request) -> Response:
    rt = runtime(request)
    body = await json_body(request)
    unknown = set(body) - {"name", "workflow", "args", "cron", "every", "partition_key"}
    if unknown:
        raise ApiError(400, "invalid_input", f"unknown field(s): {', '.join(sorted(unknown))}")
    name = _required_str(body, "name")
    workflow = _required_str(body, "workflow")
    options: dict[str, Any] = {}
    cron = _optional_str(body, "cron")
    every = body.get("every")
    if (cron is None) == (every is None):
        raise ApiError(
            400,
            "invalid_input",
            "give exactly one of 'cron' (a cron expression) or 'every' (seconds)",
        )
    if cron is not None:
        options["cron"] = cron
    else:
        if not isinstance(every, int | float) or isinstance(every, bool) or every <= 0:
            raise ApiError(400, "invalid_input", "'every' must be a number of seconds > 0")
        options["every"] = timedelta(seconds=every)
    if (key := _optional_str(body, "partition_key")) is not None:
        options["partition_key"] = key
    method = _method(rt, "create_schedule", "creating a schedule")
    result = await method(name, workflow, body.get("args"), **options)
    return _json({"name": name, "schedule": jsonable(result)}, 201)


async def delete_schedule(request: Request) -> Response:
    rt = runtime(request)
    name = request.path_params["name"]
    method = _method(rt, "delete_schedule", "deleting a schedule")
    await method(name)
    return _json({"name": name, "deleted": True})


async def schedule_action(request: Request) -> Response:
    rt = runtime(request)
    name = request.path_params["name"]
    action = request.path_params["action"]
    if action not in ("pause", "resume"):
        raise ApiError(404, "not_found", f"no schedule action {action!r}; use pause or resume")
    method = _method(rt, f"{action}_schedule", f"{action} of a schedule")
    await method(name)
    return _json({"name": name, "action": action}, 202)


async def openapi(request: Request) -> Response:
    return _json(document())


# -- live updates ----------------------------------------------------------------------------


def sse(event: str, data: Any) -> str:
    """One server-sent event (``data`` as one line of JSON)."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def _frame(rt: Runtime, event: Event) -> str:
    if event.kind == "execution" and event.change is not None and event.change.entry is not None:
        data = summary_json(event.change.entry, rt.settings.jaeger_url).decode()
        return f"event: execution\ndata: {data}\n\n"
    if event.kind == "deleted":
        return sse("deleted", {"invocation_id": event.invocation_id})
    if event.kind == "ready":
        return sse("ready", {"executions": len(rt.index)})
    return sse("reset", {})


def _in_flight(rt: Runtime, invocation_id: str) -> bool:
    entry = rt.index.get(invocation_id)
    return entry is not None and entry.summary.status in (Status.PENDING, Status.RUNNING)


class _StepWatch:
    """New journal steps of one execution. The state changes only when an execution starts
    and ends, so while it runs the stream reads its journal (one execution, once a second)."""

    def __init__(self, rt: Runtime, invocation_id: str) -> None:
        self.rt = rt
        self.id = invocation_id
        self.seen: int | None = None
        self.last = 0.0

    def due(self) -> bool:
        return time.monotonic() - self.last >= STEP_POLL_INTERVAL

    async def poll(self) -> str | None:
        self.last = time.monotonic()
        try:
            result = await self.rt.client.get_result(self.id)
        except NotFoundError:
            return None
        except DurableError as e:
            log.debug("reading the journal of %s for its stream failed: %s", self.id, e)
            return None
        steps = result.steps
        if self.seen is None or len(steps) <= self.seen:
            self.seen = len(steps) if self.seen is None else self.seen
            return None
        new = steps[self.seen :]
        self.seen = len(steps)
        return sse(
            "steps",
            {
                "invocation_id": self.id,
                "count": len(steps),
                "steps": [step_view(s) for s in new],
            },
        )


async def _stream(rt: Runtime, sub: Subscription) -> AsyncIterator[str]:
    assert rt.feed is not None
    one = sub.invocation_id
    steps = _StepWatch(rt, one) if one else None
    try:
        yield "retry: 3000\n\n"
        yield sse("hello", {"ready": rt.ready, "executions": len(rt.index), "id": one})
        if steps is not None:
            await steps.poll()  # the baseline: steps the page already shows
        last_sent = time.monotonic()
        while True:
            polling = steps is not None and one is not None and _in_flight(rt, one)
            wait = STEP_POLL_INTERVAL if polling else PING_INTERVAL
            try:
                event: Event | None = await asyncio.wait_for(sub.queue.get(), wait)
            except TimeoutError:
                event = None
            frames = []
            if event is not None:
                frames.append(_frame(rt, event))
            if steps is not None and (
                (event is not None and event.kind == "execution") or (polling and steps.due())
            ):
                frame = await steps.poll()  # a state change (e.g. completed) may add the last steps
                if frame is not None:
                    frames.append(frame)
            if not frames and time.monotonic() - last_sent >= PING_INTERVAL:
                frames.append(": ping\n\n")
            for frame in frames:
                yield frame
            if frames:
                last_sent = time.monotonic()
    finally:
        rt.feed.unsubscribe(sub)


async def events(request: Request) -> Response:
    """Server-sent events: ``execution``, ``deleted``, ``ready``, ``reset`` (reload), and with
    ``?id=`` only that execution's events plus ``steps`` (newly journaled steps)."""
    rt = runtime(request)
    if rt.feed is None:
        raise ApiError(503, "unavailable", "the inspector is not connected to NATS yet")
    invocation_id = request.query_params.get("id") or None
    sub = rt.feed.subscribe(invocation_id)
    return StreamingResponse(
        _stream(rt, sub),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


routes = [
    Route("/livez", livez, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
    Route("/healthz", healthz, methods=["GET"]),
    Route("/openapi.json", openapi, methods=["GET"]),
    Route("/api/executions", list_executions, methods=["GET"]),
    Route("/api/executions", invoke, methods=["POST"]),
    Route("/api/stats", stats, methods=["GET"]),
    Route("/api/events", events, methods=["GET"]),
    Route("/api/executions/{invocation_id}", get_execution, methods=["GET"]),
    Route("/api/executions/{invocation_id}/signals/{name}", signal, methods=["POST"]),
    Route("/api/executions/{invocation_id}/{action}", lifecycle, methods=["POST"]),
    Route("/api/awakeables/{awakeable_id}/{action}", awakeable, methods=["POST"]),
    Route("/api/schedules", list_schedules, methods=["GET"]),
    Route("/api/schedules", create_schedule, methods=["POST"]),
    Route("/api/schedules/{name}", delete_schedule, methods=["DELETE"]),
    Route("/api/schedules/{name}/{action}", schedule_action, methods=["POST"]),
]
