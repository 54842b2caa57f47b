"""The JSON the API takes and answers, as types: the OpenAPI document is generated from these
(``typed.openapi``) and the handlers build their answers as them."""

# No `from __future__ import annotations` here: on Python 3.11 a TypedDict sees NotRequired
# only in evaluated annotations.
from typing import Annotated, Any, Literal, NotRequired, TypedDict

from durable_core.views import FailureDict, InvocationDict

Time = Annotated[str | None, "format:date-time"]
StatusName = Literal[
    "pending",
    "running",
    "paused",
    "suspended",
    "blocked",
    "completed",
    "failed",
    "cancelled",
    "unknown",
]


class ErrorBody(TypedDict):
    """Every error answer."""

    error: Literal[
        "invalid_input",
        "unauthorized",
        "forbidden",
        "not_found",
        "method_not_allowed",
        "conflict",
        "not_implemented",
        "unavailable",
        "timeout",
        "internal",
    ]
    detail: Annotated[str, "what happened and what to do"]


class Health(TypedDict):
    """Readiness of the inspector: 200 once the index holds its snapshot."""

    status: Literal["ok", "starting"]
    executions: NotRequired[int]
    error: NotRequired[str]
    detail: NotRequired[str]


class Seen(TypedDict):
    """A status the inspector's watch saw (the journal's own history is in the execution)."""

    status: StatusName
    at: Time


class Summary(TypedDict):
    """An execution as listings and events show it (from the index; no journal read)."""

    invocation_id: str
    workflow: str
    status: StatusName
    partition_key: str
    created_at: Time
    updated_at: Time
    duration_ms: float | None
    failure: FailureDict | None
    journal_length: int
    parent_id: str | None
    trace_id: str | None
    trace_url: Annotated[str, "the trace in Jaeger, or a search by durable.invocation_id"]
    revision: int
    history: list[Seen]


class ListQuery(TypedDict, total=False):
    """Filters, order and paging of the listing (empty values mean 'not given')."""

    status: Annotated[str, "one status or several, comma-separated"]
    workflow: str
    partition_key: str
    created_after: Annotated[str, "ISO 8601 (no zone: UTC) or ms since the epoch"]
    created_before: Annotated[str, "ISO 8601 (no zone: UTC) or ms since the epoch"]
    sort: Literal["created_at", "updated_at"]
    order: Literal["desc", "asc"]
    limit: Annotated[int, "1 to 500, 50 by default"]
    cursor: Annotated[str, "next_cursor of the previous page"]


class ListPage(TypedDict):
    """One page of executions."""

    items: list[Summary]
    total: Annotated[int, "executions matching the filters"]
    next_cursor: str | None
    ready: Annotated[bool, "false while the index loads its snapshot"]


class WorkflowCounts(TypedDict):
    """How many executions of one workflow are in each status."""

    total: int
    by_status: dict[str, int]


class Stats(TypedDict):
    """Counts by status and by workflow."""

    total: int
    by_status: dict[str, int]
    by_workflow: dict[str, WorkflowCounts]
    ready: bool


class Execution(InvocationDict):
    """An execution with its journal (durable_core.views), and where its trace is."""

    trace_url: Annotated[str, "the trace in Jaeger, or a search by durable.invocation_id"]


class InvokeBody(TypedDict):
    """Start an execution."""

    workflow: str
    args: NotRequired[Annotated[Any, "any JSON value"]]
    id: NotRequired[Annotated[str, "the invocation id (default: random)"]]
    partition_key: NotRequired[str]
    queue_unserved: NotRequired[
        Annotated[bool, "accept a workflow no live processor serves (default: 404)"]
    ]


class InvokeAccepted(TypedDict):
    """The answer to an accepted invocation: its id."""

    invocation_id: str
    workflow: str
    url: Annotated[str, "where to read it"]


class ActionBody(TypedDict):
    """Empty, except for fork and rerun."""

    from_step: NotRequired[Annotated[int, "fork: the first step to run anew"]]
    new_invocation_id: NotRequired[
        Annotated[str, "rerun, fork: the new execution's id; the same request again answers it"]
    ]


class ActionAccepted(TypedDict):
    """The answer to an accepted lifecycle action."""

    invocation_id: str
    action: Literal["pause", "resume", "cancel", "retry", "rerun", "fork"]
    status: NotRequired[Annotated[str, "pause, resume, cancel, retry: the status after it"]]
    new_invocation_id: NotRequired[Annotated[str, "rerun, fork: the new execution"]]


class PayloadBody(TypedDict):
    """A signal's or an awakeable's payload."""

    payload: NotRequired[Annotated[Any, "any JSON value (default null)"]]


class SignalBody(TypedDict):
    """A signal to send: its name (1-256 characters, any) and payload."""

    name: Annotated[str, "the signal's name, as the workflow waits for it"]
    payload: NotRequired[Annotated[Any, "any JSON value (default null)"]]


class SignalAccepted(TypedDict):
    """The answer to a delivered signal."""

    invocation_id: str
    signal: str


class AwakeableBody(TypedDict):
    """resolve: {"payload": ...}; reject: {"reason": "..."}."""

    payload: NotRequired[Annotated[Any, "resolve: any JSON value"]]
    reason: NotRequired[Annotated[str, "reject: why"]]


class AwakeableAccepted(TypedDict):
    """The answer to a resolved or rejected awakeable."""

    awakeable_id: str
    action: Literal["resolve", "reject"]


class ScheduleDict(TypedDict):
    """A schedule and when it fires next."""

    name: str
    workflow: str
    args: Any
    cron: str | None
    every_seconds: int | None
    timezone: str | None
    overlap: Literal["skip", "allow"]
    catch_up: int
    partition_key: str | None
    paused: bool
    last_invocation_id: str
    last_fired_at: Time
    created_at: Time
    catch_up_runs: int
    when: Annotated[str, "for people: 'every 2s', 'cron 0 8 * * * (Europe/Amsterdam)'"]
    next_fire_at: Annotated[Time, "null while paused; for every: reckoned from the last run"]


class ScheduleList(TypedDict):
    """Every schedule."""

    schedules: list[ScheduleDict]


class ScheduleBody(TypedDict):
    """Create a schedule: exactly one of cron and every."""

    name: Annotated[str, "1-64 characters from A-Z a-z 0-9 _ -"]
    workflow: str
    args: NotRequired[Annotated[Any, "the workflow's input, any JSON value"]]
    cron: NotRequired[Annotated[str, "5 fields, 6 with seconds first, or @daily etc."]]
    every: NotRequired[Annotated[float, "seconds between runs (at least 1)"]]
    timezone: NotRequired[Annotated[str, "IANA zone of the cron fields (default UTC)"]]
    overlap: NotRequired[Literal["skip", "allow"]]
    catch_up: NotRequired[Annotated[int, "late ticks that may still run (default 1)"]]
    partition_key: NotRequired[str]
    paused: NotRequired[bool]
    queue_unserved: NotRequired[
        Annotated[bool, "create it although no live processor serves the workflow"]
    ]


class ScheduleCreated(TypedDict):
    """The answer to a created schedule."""

    name: str
    schedule: ScheduleDict


class ScheduleChanged(TypedDict):
    """The answer to a paused or resumed schedule."""

    name: str
    action: Literal["pause", "resume"]
    schedule: NotRequired[ScheduleDict]


class ScheduleDeleted(TypedDict):
    """The answer to a deleted schedule."""

    name: str
    deleted: bool


class ServedWorkflow(TypedDict):
    """A workflow as one processor serves it."""

    name: str
    plugin: str
    package: str
    version: str
    fingerprint: Annotated[str, "SHA-256 of the plugin package's source files"]
    token: Annotated[str, "the version's routing token"]


class FleetProcessor(TypedDict):
    """One live processor's record in the fleet registry."""

    key: str
    processor: str
    host: str
    pid: int
    core_version: str
    ttl_s: float
    started_at: Time
    renewed_at: Time
    workflows: list[ServedWorkflow]


class FleetServer(TypedDict):
    """A processor serving a workflow, and with which code."""

    processor: str
    key: str
    host: str
    pid: int
    plugin: str
    package: str
    version: str
    fingerprint: str
    token: str


class Fleet(TypedDict):
    """The fleet registry both ways."""

    processors: list[FleetProcessor]
    workflows: Annotated[dict[str, list[FleetServer]], "workflow -> its processors"]
