"""JSON views of executions (listings, one execution with its journal) and schedules.

Shared by the JSON API and the HTML pages, so both always show the same thing.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, cast
from urllib.parse import quote

from durable_core import ExecutionSummary
from durable_core.schedules import Schedule
from durable_core.tracing import INVOCATION_ID
from durable_core.views import InvocationView, iso
from durable_inspector.index import Entry
from durable_inspector.schema import Execution, ScheduleDict
from durable_inspector.settings import InspectorSettings

__all__ = [
    "detail_view",
    "iso",
    "schedule_view",
    "summary_json",
    "summary_view",
    "trace_url",
]


def trace_url(
    jaeger: str, invocation_id: str, trace_id: str, service: str = "durable-processor"
) -> str:
    """The trace in Jaeger, or a search by the ``durable.invocation_id`` tag every span of an
    invocation carries (durable_core.tracing) in ``service`` when no trace id is known."""
    if trace_id:
        return f"{jaeger}/trace/{quote(trace_id, safe='')}"
    tags = json.dumps({INVOCATION_ID: invocation_id}, separators=(",", ":"))
    return f"{jaeger}/search?service={quote(service, safe='')}&tags={quote(tags, safe='')}"


def trace(settings: InspectorSettings, invocation_id: str, trace_id: str) -> str:
    return trace_url(settings.jaeger_url, invocation_id, trace_id, settings.jaeger_service)


def _failure(f: Any) -> dict[str, Any] | None:
    if f is None:
        return None
    return {"type": f.type, "message": f.message, "step": f.step, "code": f.code}


def _duration_ms(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return round((end - start).total_seconds() * 1000, 3)


def summary_view(entry: Entry, settings: InspectorSettings) -> dict[str, Any]:
    """One execution as listings and events show it (from the index; no NATS read)."""
    s: ExecutionSummary = entry.summary
    return {
        "invocation_id": s.invocation_id,
        "workflow": s.workflow,
        "status": s.status.value,
        "partition_key": s.partition_key,
        "created_at": iso(s.created_at),
        "updated_at": iso(s.updated_at),
        "duration_ms": _duration_ms(s.created_at, s.updated_at) if s.status.is_terminal else None,
        "failure": _failure(s.failure),
        "journal_length": s.journal_length,
        "parent_id": s.parent_id or None,
        "trace_id": s.trace_id or None,
        "trace_url": trace(settings, s.invocation_id, s.trace_id),
        "revision": s.revision,
        "history": [{"status": t.status.value, "at": iso(t.at)} for t in entry.history],
    }


def summary_json(entry: Entry, settings: InspectorSettings) -> bytes:
    """:func:`summary_view` as compact JSON, cached on the entry until it changes: a listing
    then costs a join of cached bytes, not a rendering per row."""
    if entry.rendered is None:
        view = summary_view(entry, settings)
        entry.rendered = json.dumps(view, separators=(",", ":"), ensure_ascii=False).encode()
    return entry.rendered


def detail_view(view: InvocationView, settings: InspectorSettings) -> Execution:
    """An execution with its journal (durable_core.views) and the link to its trace."""
    out = cast(Execution, dict(view.to_dict()))
    out["trace_url"] = trace(settings, view.invocation_id, view.trace_id)
    return out


def schedule_view(schedule: Schedule, now: datetime | None = None) -> ScheduleDict:
    """A schedule with its next fire time."""
    out = cast(ScheduleDict, schedule.to_dict())
    out["when"] = schedule.when
    out["next_fire_at"] = iso(schedule.next_fire(now or datetime.now(UTC)))
    return out
