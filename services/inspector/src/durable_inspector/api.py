"""The JSON API: listings from the index, one execution from NATS, and actions through the client.

Every endpoint is declared on ``router`` with the types it takes and answers (``schema``), from
which ``/openapi.json`` is generated. Lifecycle, awakeable, signal and schedule routes call
Client methods looked up when the request comes (``getattr``): a client without one answers 501
``not_implemented``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from durable_core import DurableError, NotFoundError, Status, check_invocation_id, schedules
from durable_inspector import schema
from durable_inspector.errors import ApiError, not_implemented
from durable_inspector.feed import Event, Subscription
from durable_inspector.inputs import json_body, optional_str, parse_query, required_str
from durable_inspector.runtime import Runtime, runtime
from durable_inspector.typed import Router, unknown_fields
from durable_inspector.views import detail_view, schedule_view, summary_json

__all__ = ["LIFECYCLE_ACTIONS", "client_method", "router", "routes"]

router = Router()

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
MAX_EVERY = int(schedules.MAX_EVERY.total_seconds())  # seconds: as the client's
STEP_POLL_INTERVAL = 1.0  # seconds between journal reads for a running execution's stream
PING_INTERVAL = 15.0  # seconds of silence before a keep-alive comment on an event stream


def client_method(rt: Runtime, name: str, what: str) -> Callable[..., Any]:
    """The client's method ``name``: 503 until the engine's streams are bound, 501 when this
    version of the client has none (``what`` says what it does)."""
    method = getattr(_client(rt), name, None)
    if method is None or not callable(method):
        raise not_implemented(name, what)
    return method  # type: ignore[no-any-return]


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(data, status_code=status, headers=headers)


async def _typed_body(request: Request, tp: Any) -> dict[str, Any]:
    """The request's JSON object, which may have only the fields of the TypedDict ``tp``."""
    body = await json_body(request)
    unknown = unknown_fields(body, tp)
    if unknown:
        raise ApiError(400, "invalid_input", f"unknown field(s): {', '.join(unknown)}")
    return body


# -- reading ---------------------------------------------------------------------------------


def _client(rt: Any) -> Any:
    """The durable_core client; 503 until the engine's streams are bound."""
    if rt.client is None:
        raise ApiError(503, "unavailable", f"the inspector is not ready: {rt.not_ready()}")
    return rt.client


@router.get(
    "/healthz",
    tag="inspector",
    summary="Ready once the index holds its snapshot (no token needed)",
    responses={200: schema.Health, 503: schema.Health},
)
async def healthz(request: Request) -> Response:
    rt = runtime(request)
    if rt.ready:
        return _json({"status": "ok", "executions": len(rt.index)})
    detail = "the execution index is loading its snapshot"
    if rt.feed is not None and rt.feed.error:
        detail += f" (last watch error: {rt.feed.error})"
    return _json({"status": "starting", "error": "unavailable", "detail": detail}, 503)


@router.get(
    "/readyz",
    tag="inspector",
    summary="Readiness: connected to NATS, bound to the engine's streams and the index loaded; "
    "else 503 and why, in one line (no token needed)",
    responses={200: str, 503: str},
)
async def readyz(request: Request) -> Response:
    reason = runtime(request).not_ready()
    if reason is None:
        return PlainTextResponse("ready\n")
    return PlainTextResponse(f"not ready: {reason}\n", status_code=503)


@router.get(
    "/livez",
    tag="inspector",
    summary="Liveness: the process and its event loop answer; never asks NATS (no token needed)",
    responses={200: str},
)
async def livez(request: Request) -> Response:
    """Liveness: the process answers. It never asks NATS, so an outage restarts nothing."""
    return PlainTextResponse("ok\n")


@router.get(
    "/api/executions",
    tag="executions",
    summary="List executions from the index (filters, sorting, cursor pages)",
    query=schema.ListQuery,
    responses={200: schema.ListPage},
    errors=(400,),
)
async def list_executions(request: Request) -> Response:
    rt = runtime(request)
    q = parse_query(request.query_params)
    page = rt.index.query(q)
    # Rows come pre-encoded from the index (summary_json); only the envelope is encoded here.
    tail = json.dumps(
        {"total": page.total, "next_cursor": page.next_cursor, "ready": rt.ready},
        separators=(",", ":"),
    ).encode()
    body = (
        b'{"items":['
        + b",".join(summary_json(e, rt.settings) for e in page.items)
        + b"],"
        + tail[1:]
    )
    return Response(body, media_type="application/json")


@router.get(
    "/api/stats",
    tag="executions",
    summary="Counts by status and by workflow",
    responses={200: schema.Stats},
)
async def stats(request: Request) -> Response:
    rt = runtime(request)
    return _json({**rt.index.stats(), "ready": rt.ready})


async def load_detail(rt: Runtime, invocation_id: str) -> schema.Execution:
    """An execution's state and journal (raises NotFoundError for an unknown id)."""
    view = await _client(rt).describe(invocation_id)
    return detail_view(view, rt.settings)


@router.get(
    "/api/executions/{invocation_id}",
    tag="executions",
    summary="An execution: arguments, steps with their waits and retries, lineage, history",
    responses={200: schema.Execution},
    errors=(400, 404),
)
async def get_execution(request: Request) -> Response:
    rt = runtime(request)
    return _json(await load_detail(rt, request.path_params["invocation_id"]))


@router.get(
    "/api/executions/{invocation_id}/payloads/{which}",
    tag="executions",
    summary="Download a recorded value's bytes (which: args, output or a step number), "
    "streamed from the object store in chunks (issue 18); JSON and protobuf values come as "
    "their encoded bytes. A stored object found corrupt part way cuts the download short "
    "(fewer bytes than Content-Length)",
    responses={200: bytes},
    media_type="application/octet-stream",
    errors=(400, 404, 501),
)
async def download_payload(request: Request) -> Response:
    rt = runtime(request)
    invocation_id = request.path_params["invocation_id"]
    which = request.path_params["which"]
    read = client_method(rt, "payload", "reading stored values")
    blob = await read(f"{invocation_id}:{which}")
    name = f"{invocation_id}-{which}.bin"
    return StreamingResponse(
        blob.chunks(),
        media_type="application/octet-stream",
        headers={
            "Content-Length": str(blob.size),
            "Content-Disposition": f'attachment; filename="{name}"',
            "X-Content-SHA256": blob.sha256,
        },
    )


@router.get(
    "/api/fleet",
    tag="fleet",
    summary="The live processors and what each serves: processors with their workflows, "
    "workflows with the processors and versions serving them",
    responses={200: schema.Fleet},
    errors=(501,),
)
async def fleet(request: Request) -> Response:
    rt = runtime(request)
    view = await client_method(rt, "fleet", "reading the fleet registry")()
    return _json(view.to_dict())


def _flag(body: dict[str, Any], key: str) -> bool:
    value = body.get(key, False)
    if not isinstance(value, bool):
        raise ApiError(400, "invalid_input", f"{key!r} must be true or false")
    return value


# -- acting ----------------------------------------------------------------------------------


@router.post(
    "/api/executions",
    tag="executions",
    summary="Start an execution (404 when no live processor serves the workflow, unless "
    "queue_unserved)",
    body=schema.InvokeBody,
    responses={202: schema.InvokeAccepted},
    errors=(400, 404, 409),
)
async def invoke(request: Request) -> Response:
    rt = runtime(request)
    body = await _typed_body(request, schema.InvokeBody)
    workflow = required_str(body, "workflow")
    invocation_id = await _client(rt).invoke_async(
        workflow,
        body.get("args"),
        id=optional_str(body, "id"),
        partition_key=optional_str(body, "partition_key"),
        queue_unserved=_flag(body, "queue_unserved"),
    )
    location = f"/api/executions/{invocation_id}"
    return _json(
        {"invocation_id": invocation_id, "workflow": workflow, "url": location},
        202,
        {"Location": location},
    )


@router.post(
    "/api/executions/{invocation_id}/signals",
    tag="waits",
    summary="Send a signal named in the body (any name: '/', '.', '..' included)",
    body=schema.SignalBody,
    responses={202: schema.SignalAccepted},
    errors=(400, 404, 409, 501),
)
async def signal_named_in_body(request: Request) -> Response:
    # Declared before /{action}, which would take "signals" for an action.
    body = await _typed_body(request, schema.SignalBody)
    return await _signal(request, required_str(body, "name"), body)


@router.post(
    "/api/executions/{invocation_id}/{action}",
    tag="executions",
    summary="Lifecycle action: pause, resume, cancel, retry, rerun or fork",
    body=schema.ActionBody,
    body_required=False,
    responses={202: schema.ActionAccepted},
    errors=(400, 404, 409, 501),
    path_help={"action": "pause, resume, cancel, retry, rerun or fork"},
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
    if action in ("rerun", "fork") and "new_invocation_id" in body:
        # Its own id makes the request idempotent: sent again, it answers the same execution.
        new_id = body.pop("new_invocation_id")
        if not isinstance(new_id, str):
            raise ApiError(400, "invalid_input", "new_invocation_id must be a string")
        kwargs["id"] = new_id
    if action == "fork":
        step = body.pop("from_step", None)
        if not isinstance(step, int) or isinstance(step, bool) or step < 1:
            raise ApiError(400, "invalid_input", 'fork needs {"from_step": N}: a whole number >= 1')
        kwargs["from_step"] = step
    if body:
        raise ApiError(400, "invalid_input", f"{action} takes no body fields {sorted(body)}")
    method = client_method(rt, LIFECYCLE_ACTIONS[action], f"{action} of an execution")
    result = await method(invocation_id, **kwargs)
    out: dict[str, Any] = {"invocation_id": invocation_id, "action": action}
    if action in ("rerun", "fork") and isinstance(result, str) and result != invocation_id:
        out["new_invocation_id"] = result  # rerun and fork start a new execution
    elif result is not None:
        out["status"] = str(result)  # pause, resume, cancel: the status after the request
    return _json(out, 202)


@router.post(
    "/api/awakeables/{awakeable_id}/{action}",
    tag="waits",
    summary='Resolve ({"payload": ...}) or reject ({"reason": ...}) an awakeable',
    body=schema.AwakeableBody,
    body_required=False,
    responses={202: schema.AwakeableAccepted},
    errors=(400, 404, 409, 501),
    path_help={"action": "resolve or reject", "awakeable_id": "awk.<invocation>.<n>"},
)
async def awakeable(request: Request) -> Response:
    rt = runtime(request)
    awakeable_id = request.path_params["awakeable_id"]
    action = request.path_params["action"]
    body = await json_body(request, required=False)
    if action == "resolve":
        method = client_method(rt, "resolve_awakeable", "resolving an awakeable")
        await method(awakeable_id, body.get("payload"))
    elif action == "reject":
        reason = required_str(body, "reason")
        method = client_method(rt, "reject_awakeable", "rejecting an awakeable")
        await method(awakeable_id, reason)
    else:
        raise ApiError(404, "not_found", f"no awakeable action {action!r}; use resolve or reject")
    return _json({"awakeable_id": awakeable_id, "action": action}, 202)


@router.post(
    "/api/executions/{invocation_id}/signals/{name:path}",
    tag="waits",
    summary="Send a signal to an execution (kept until it waits for it)\n\n"
    "The name is the rest of the path, '/' included; a name that is '.' or '..' (which "
    "clients collapse) is sent with POST /api/executions/{invocation_id}/signals.",
    body=schema.PayloadBody,
    body_required=False,
    responses={202: schema.SignalAccepted},
    errors=(400, 404, 409, 501),
)
async def signal(request: Request) -> Response:
    body = await json_body(request, required=False)
    return await _signal(request, request.path_params["name"], body)


async def _signal(request: Request, name: str, body: dict[str, Any]) -> Response:
    rt = runtime(request)
    invocation_id = request.path_params["invocation_id"]
    method = client_method(rt, "signal", "signalling an execution")
    await method(invocation_id, name, body.get("payload"))
    return _json({"invocation_id": invocation_id, "signal": name}, 202)


@router.get(
    "/api/schedules",
    tag="schedules",
    summary="List schedules with their next fire time",
    responses={200: schema.ScheduleList},
    errors=(501,),
)
async def list_schedules(request: Request) -> Response:
    rt = runtime(request)
    method = client_method(rt, "list_schedules", "listing schedules")
    return _json({"schedules": [schedule_view(s) for s in await method()]})


@router.post(
    "/api/schedules",
    tag="schedules",
    summary="Create a schedule (exactly one of cron or every)",
    body=schema.ScheduleBody,
    responses={201: schema.ScheduleCreated},
    errors=(400, 404, 409, 501),
)
async def create_schedule(request: Request) -> Response:
    rt = runtime(request)
    body = await _typed_body(request, schema.ScheduleBody)
    name = required_str(body, "name")
    workflow = required_str(body, "workflow")
    options: dict[str, Any] = {}
    cron = optional_str(body, "cron")
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
        # not (0 < every <= MAX_EVERY) also refuses NaN; Infinity and huge values overflow
        # timedelta.
        if (
            not isinstance(every, int | float)
            or isinstance(every, bool)
            or not 0 < every <= MAX_EVERY
        ):
            raise ApiError(
                400,
                "invalid_input",
                f"'every' must be a number of seconds > 0 and at most {MAX_EVERY} (10 years)",
            )
        options["every"] = timedelta(seconds=every)
    for key in ("partition_key", "timezone"):
        if (text := optional_str(body, key)) is not None:
            options[key] = text
    if "overlap" in body:
        if body["overlap"] not in ("skip", "allow"):
            raise ApiError(400, "invalid_input", "'overlap' must be skip or allow")
        options["overlap"] = body["overlap"]
    if "catch_up" in body:
        n = body["catch_up"]
        if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= 1000:
            raise ApiError(400, "invalid_input", "'catch_up' must be a whole number 0..1000")
        options["catch_up"] = n
    if "paused" in body:
        if not isinstance(body["paused"], bool):
            raise ApiError(400, "invalid_input", "'paused' must be true or false")
        options["paused"] = body["paused"]
    if _flag(body, "queue_unserved"):
        options["queue_unserved"] = True
    method = client_method(rt, "create_schedule", "creating a schedule")
    result = await method(name, workflow, body.get("args"), **options)
    return _json({"name": name, "schedule": schedule_view(result)}, 201)


@router.delete(
    "/api/schedules/{name}",
    tag="schedules",
    summary="Delete a schedule (its invocations are kept)",
    responses={200: schema.ScheduleDeleted},
    errors=(400, 404, 501),
)
async def delete_schedule(request: Request) -> Response:
    rt = runtime(request)
    name = request.path_params["name"]
    method = client_method(rt, "delete_schedule", "deleting a schedule")
    await method(name)
    return _json({"name": name, "deleted": True})


@router.post(
    "/api/schedules/{name}/{action}",
    tag="schedules",
    summary="Pause or resume a schedule",
    responses={202: schema.ScheduleChanged},
    errors=(400, 404, 501),
    path_help={"action": "pause or resume"},
)
async def schedule_action(request: Request) -> Response:
    rt = runtime(request)
    name = request.path_params["name"]
    action = request.path_params["action"]
    if action not in ("pause", "resume"):
        raise ApiError(404, "not_found", f"no schedule action {action!r}; use pause or resume")
    method = client_method(rt, f"{action}_schedule", f"{action} of a schedule")
    changed = await method(name)
    out: dict[str, Any] = {"name": name, "action": action}
    if changed is not None:
        out["schedule"] = schedule_view(changed)
    return _json(out, 202)


# -- live updates ----------------------------------------------------------------------------


def sse(event: str, data: Any) -> str:
    """One server-sent event (``data`` as one line of JSON)."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def _frame(rt: Runtime, event: Event) -> str:
    if event.kind == "execution" and event.change is not None and event.change.entry is not None:
        data = summary_json(event.change.entry, rt.settings).decode()
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
    """Steps of one execution that changed. The state changes only when an execution starts,
    suspends or ends, so while it runs the stream reads its journal (one execution, once a
    second: only the entries appended since, see ``Client.follow``); a step is sent again
    when its state changes (a wait completing, an attempt)."""

    def __init__(self, rt: Runtime, invocation_id: str) -> None:
        self.rt = rt
        self.id = invocation_id
        self.seen: dict[int, tuple[str, int, int]] | None = None
        self.last = 0.0
        self.follower: Any = None

    def due(self) -> bool:
        return time.monotonic() - self.last >= STEP_POLL_INTERVAL

    async def poll(self) -> str | None:
        self.last = time.monotonic()
        try:
            if self.follower is None:
                self.follower = _client(self.rt).follow(self.id)
            view = await self.follower.describe()
        except NotFoundError:
            return None
        except DurableError as e:
            log.debug("reading the journal of %s for its stream failed: %s", self.id, e)
            return None
        marks = {s.step: (s.state.value, s.attempts, len(s.failed_attempts)) for s in view.steps}
        previous, self.seen = self.seen, marks
        if previous is None:
            return None  # the baseline: what the page already shows
        changed = [s for s in view.steps if previous.get(s.step) != marks[s.step]]
        if not changed:
            return None
        return sse(
            "steps",
            {
                "invocation_id": self.id,
                "count": len(view.steps),
                "steps": [s.to_dict() for s in changed],
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


@router.get(
    "/api/events",
    tag="executions",
    summary="Server-sent events: execution, deleted, ready, reset; with ?id= also steps",
    responses={200: str},
    media_type="text/event-stream",
)
async def events(request: Request) -> Response:
    """Server-sent events: ``execution``, ``deleted``, ``ready``, ``reset`` (reload), and with
    ``?id=`` only that execution's events plus ``steps`` (newly journaled steps)."""
    rt = runtime(request)
    invocation_id = request.query_params.get("id") or None
    if invocation_id is not None:
        check_invocation_id(invocation_id)  # 400, as every other endpoint answers a bad id
    if rt.feed is None:
        raise ApiError(503, "unavailable", "the inspector is not connected to NATS yet")
    sub = rt.feed.subscribe(invocation_id)
    return StreamingResponse(
        _stream(rt, sub),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.get(
    "/openapi.json",
    tag="inspector",
    summary="This document (browse it at /docs)",
    responses={200: dict[str, Any]},
)
async def openapi(request: Request) -> Response:
    from durable_inspector.openapi import document

    return _json(document())


routes = router.routes()
