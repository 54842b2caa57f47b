"""JSON views of executions, steps and anything a client method returns.

Shared by the JSON API and the HTML pages, so both always show the same thing.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote

from google.protobuf import json_format
from google.protobuf.message import Message

from durable_core import DurableError, ExecutionSummary, InvocationResult, StepRecord
from durable_core._codec import to_json_compatible  # the engine's own payload rendering
from durable_inspector.index import Entry

__all__ = ["detail_view", "iso", "jsonable", "summary_json", "summary_view", "trace_url"]


def iso(value: datetime | None) -> str | None:
    """UTC ISO 8601 with milliseconds and a ``Z``."""
    if value is None:
        return None
    return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def jsonable(value: Any) -> Any:
    """Turn a value returned by a client method into JSON (protobuf, dataclasses, times ...)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, enum.Enum):
        return jsonable(value.value)
    if isinstance(value, Message):
        return json_format.MessageToDict(value, preserving_proto_field_name=True)
    if isinstance(value, bytes | bytearray | memoryview):
        return {"$bytes": bytes(value).hex()}
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    to_dict = getattr(value, "to_dict", None)
    if callable(to_dict):
        return jsonable(to_dict())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return str(value)


def trace_url(jaeger: str, invocation_id: str, trace_id: str) -> str:
    """The trace in Jaeger, or a search by the ``invocation.id`` tag when no trace id is known."""
    if trace_id:
        return f"{jaeger}/trace/{quote(trace_id, safe='')}"
    tags = json.dumps({"invocation.id": invocation_id}, separators=(",", ":"))
    return f"{jaeger}/search?tags={quote(tags, safe='')}"


def _failure(f: Any) -> dict[str, Any] | None:
    if f is None:
        return None
    return {"type": f.type, "message": f.message, "step": f.step, "code": f.code}


def _duration_ms(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return round((end - start).total_seconds() * 1000, 3)


def summary_view(entry: Entry, jaeger: str) -> dict[str, Any]:
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
        "trace_url": trace_url(jaeger, s.invocation_id, s.trace_id),
        "revision": s.revision,
        "history": [{"status": t.status.value, "at": iso(t.at)} for t in entry.history],
    }


def summary_json(entry: Entry, jaeger: str) -> bytes:
    """:func:`summary_view` as compact JSON, cached on the entry until it changes: a listing
    then costs a join of cached bytes, not a rendering per row."""
    if entry.rendered is None:
        view = summary_view(entry, jaeger)
        entry.rendered = json.dumps(view, separators=(",", ":"), ensure_ascii=False).encode()
    return entry.rendered


def _payload(payload: Any) -> Any:
    try:
        return to_json_compatible(payload)
    # A stored payload that does not parse (InvalidInputError from the codec; the others only
    # from a codec older than this inspector): show why, not a 500.
    except (DurableError, ValueError, OverflowError, RecursionError) as e:
        return {"$error": str(e)[:500]}


def step_view(step: StepRecord) -> dict[str, Any]:
    """One journaled step.

    A step in the journal was executed exactly once (``attempts`` tries) by some run; later runs
    of the invocation replayed it. ``replayed`` is filled in when the client's StepRecord says so
    (it does not yet: the journal's claim entries are not exposed), else it is None (unknown).
    """
    try:
        started: datetime | None = step.at - timedelta(milliseconds=step.duration_ms)
    except (OverflowError, TypeError):  # an absurd stored duration or time: unknown
        started = None
    return {
        "step": step.step,
        "kind": step.kind,
        "name": step.name,
        "output": _payload(step.output),
        "failure": _failure(step.failure),
        "attempts": step.attempts,
        "duration_ms": step.duration_ms,
        "started_at": iso(started),
        "at": iso(step.at),
        "executed": True,
        "replayed": getattr(step, "replayed", None),
        "writer": getattr(step, "writer", None) or None,
    }


def detail_view(result: InvocationResult, entry: Entry | None, jaeger: str) -> dict[str, Any]:
    """An execution with its journal: the state from NATS, the status history from the index."""
    summary = entry.summary if entry is not None else None
    trace_id = summary.trace_id if summary is not None else ""
    trace_id = getattr(result, "trace_id", "") or trace_id
    terminal = result.status.is_terminal
    args = getattr(result, "args", None)
    return {
        "invocation_id": result.invocation_id,
        "workflow": result.workflow,
        "status": result.status.value,
        "partition_key": result.partition_key,
        "created_at": iso(result.created_at),
        "updated_at": iso(result.updated_at),
        "duration_ms": _duration_ms(result.created_at, result.updated_at) if terminal else None,
        "args": jsonable(args),
        "output": jsonable(result.output),
        "failure": _failure(result.failure),
        "journal_length": summary.journal_length if summary is not None else None,
        "parent_id": (summary.parent_id or None) if summary is not None else None,
        "trace_id": trace_id or None,
        "trace_url": trace_url(jaeger, result.invocation_id, trace_id),
        "history": (
            [{"status": t.status.value, "at": iso(t.at)} for t in entry.history]
            if entry is not None
            else [{"status": result.status.value, "at": iso(result.updated_at)}]
        ),
        "steps": [step_view(s) for s in result.steps],
    }
