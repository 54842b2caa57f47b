"""What the client tells of an invocation: its status, result, steps and summary.

``Status``, ``Failure``, ``StepRecord``, ``InvocationResult`` and ``ExecutionSummary`` are public
(``durable_core`` exports them); ``result_of`` builds a result from a state and its journal, as
the journal (the truth) has it where the state lags.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from google.protobuf.message import DecodeError, Message

from durable_core import _codec
from durable_core._journal import STEP_KINDS, ReplayMachine, kind_name
from durable_core._pb.durable.v1 import durable_pb2 as pb
from durable_core._time import from_ms as _ms_to_dt
from durable_core.errors import InvalidInputError, NotFoundError

__all__ = [
    "ExecutionSummary",
    "Failure",
    "InvocationResult",
    "Status",
    "StepRecord",
    "as_journaled",
    "failure_of",
    "result_of",
]

M = TypeVar("M", bound=Message)

TERMINAL_PB = frozenset({pb.STATUS_COMPLETED, pb.STATUS_FAILED, pb.STATUS_CANCELLED})
# No processor runs it (the journal may show a run that has started meanwhile).
IDLE_PB = frozenset({pb.STATUS_PENDING, pb.STATUS_SUSPENDED, pb.STATUS_BLOCKED})
_KINDS = {k: kind_name(k) for k in STEP_KINDS}
_FINAL_STATUS = {
    pb.ENTRY_KIND_COMPLETED: pb.STATUS_COMPLETED,
    pb.ENTRY_KIND_FAILED: pb.STATUS_FAILED,
    pb.ENTRY_KIND_CANCELLED: pb.STATUS_CANCELLED,
}


class Status(enum.StrEnum):
    """Where an invocation stands."""

    PENDING = "pending"
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SUSPENDED = "suspended"
    BLOCKED = "blocked"  # the replay diverged: waits for its pinned version, a fork or a cancel
    UNKNOWN = "unknown"

    @property
    def is_terminal(self) -> bool:
        """True for completed, failed and cancelled."""
        return self in (Status.COMPLETED, Status.FAILED, Status.CANCELLED)

    @classmethod
    def from_pb(cls, value: int) -> Status:
        """The status a protobuf ``Status`` value stands for (UNKNOWN if none, or one this
        version does not know: a state written by a newer one)."""
        try:
            return cls(pb.Status.Name(value).removeprefix("STATUS_").lower())
        except ValueError:
            return cls.UNKNOWN


@dataclass(frozen=True, slots=True)
class Failure:
    """Why an invocation or a step failed."""

    type: str
    message: str
    step: int = 0
    code: str = ""


@dataclass(frozen=True, slots=True)
class StepRecord:
    """One journaled step."""

    step: int
    kind: str
    name: str
    output: pb.Payload
    failure: Failure | None
    attempts: int
    duration_ms: float
    at: datetime | None
    attempt_errors: tuple[Failure, ...] = ()  # why each earlier attempt failed, oldest first

    def value(self) -> Any:
        """The step's result, decoded (protobuf messages of imported modules, JSON, bytes)."""
        return _codec.decode(self.output)


@dataclass(frozen=True, slots=True)
class InvocationResult:
    """What is known about an invocation: status, output or failure, and its steps."""

    invocation_id: str
    workflow: str
    status: Status
    output: Any
    failure: Failure | None
    steps: tuple[StepRecord, ...]
    partition_key: str
    created_at: datetime | None
    updated_at: datetime | None
    args: Any = None  # the arguments it was called with, decoded

    def first_response(self, message_type: type[M]) -> M:
        """The first gRPC call's response, parsed as ``message_type``.

        Raises:
            NotFoundError: the invocation made no successful gRPC call.
        """
        for step in self.steps:
            if step.kind == "call" and step.failure is None:
                msg = message_type()
                try:
                    msg.ParseFromString(step.output.data)
                except DecodeError as e:
                    raise InvalidInputError(
                        f"step {step.step} response is not a {message_type.__name__}: {e}"
                    ) from e
                return msg
        raise NotFoundError(f"invocation {self.invocation_id} has no successful gRPC call step")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view (used by ``durable status --json``)."""
        return {
            "invocation_id": self.invocation_id,
            "workflow": self.workflow,
            "status": self.status.value,
            "args": _jsonable(self.args),
            "output": _jsonable(self.output),
            "failure": None if self.failure is None else vars_of(self.failure),
            "partition_key": self.partition_key,
            "created_at": self.created_at.isoformat() if self.created_at else None,
            "updated_at": self.updated_at.isoformat() if self.updated_at else None,
            "steps": [
                {
                    "step": s.step,
                    "kind": s.kind,
                    "name": s.name,
                    "output": _codec.to_json_compatible(s.output),
                    "failure": None if s.failure is None else vars_of(s.failure),
                    "attempts": s.attempts,
                    "attempt_errors": [vars_of(f) for f in s.attempt_errors],
                    "duration_ms": s.duration_ms,
                    "at": s.at.isoformat() if s.at else None,
                }
                for s in self.steps
            ],
        }


def vars_of(f: Failure) -> dict[str, Any]:
    """A failure as a JSON-ready dict."""
    return {"type": f.type, "message": f.message, "step": f.step, "code": f.code}


def _jsonable(value: Any) -> Any:
    from google.protobuf import json_format

    if isinstance(value, Message):
        return json_format.MessageToDict(value, preserving_proto_field_name=True)
    if isinstance(value, bytes):
        return {"$bytes": value.hex()}
    return value


def _decoded_or_raw(payload: pb.Payload) -> Any:
    """The decoded value, or the raw Payload when it does not decode (shown, not fatal) or
    is stored by reference (read by ``Client.result`` or ``durable payload get``)."""
    if payload.HasField("ref"):
        return payload
    try:
        return _codec.decode(payload)
    except InvalidInputError:
        return payload


def failure_of(f: pb.Failure | None) -> Failure | None:
    """The public form of a journaled failure (None for an empty one)."""
    if f is None or not (f.type or f.message):
        return None
    return Failure(f.type, f.message, f.step, f.code)


@dataclass(frozen=True, slots=True)
class ExecutionSummary:
    """An execution's state without its journal (what listings and watches carry)."""

    invocation_id: str
    workflow: str
    status: Status
    partition_key: str
    created_at: datetime | None
    updated_at: datetime | None
    failure: Failure | None
    journal_length: int
    parent_id: str
    trace_id: str
    revision: int
    deleted: bool = False

    @classmethod
    def from_pb(cls, st: pb.ExecutionState, revision: int) -> ExecutionSummary:
        """The summary of a state record (``revision``: its revision in the bucket)."""
        return cls(
            invocation_id=st.invocation_id,
            workflow=st.workflow,
            status=Status.from_pb(st.status),
            partition_key=st.partition_key,
            created_at=_ms_to_dt(st.created_at_ms),
            updated_at=_ms_to_dt(st.updated_at_ms),
            failure=failure_of(st.failure) if st.HasField("failure") else None,
            journal_length=st.journal_length,
            parent_id=st.parent_id,
            trace_id=st.trace_id,
            revision=revision,
        )


def as_journaled(state: pb.ExecutionState, entries: Sequence[pb.JournalEntry]) -> pb.ExecutionState:
    """The state as the journal (the truth) has it, where the state (a summary written after
    the journal) lags: a journal that has ended while the state does not say so yet (the
    processor writes it right after the final entry), or a run in progress while the state
    still says pending or suspended (a woken run claims in the journal before it writes
    RUNNING)."""
    if state.status in TERMINAL_PB or not entries:
        return state
    machine = ReplayMachine(state.invocation_id, entries)
    final = machine.final
    running = state.status in IDLE_PB and not machine.idle
    if final is None and not running:
        return state
    st = pb.ExecutionState()
    st.CopyFrom(state)
    if final is None:
        st.status = pb.STATUS_RUNNING
        return st
    st.status = _FINAL_STATUS[final.kind]
    st.ClearField("output")
    st.ClearField("failure")
    if final.HasField("output"):
        st.output.CopyFrom(final.output)
    if final.HasField("failure"):
        st.failure.CopyFrom(final.failure)
    return st


def result_of(state: pb.ExecutionState, entries: Sequence[pb.JournalEntry]) -> InvocationResult:
    """The result of an invocation from its state and its journal."""
    state = as_journaled(state, entries)
    errors: dict[int, list[Failure]] = {}
    for e in entries:
        failed = failure_of(e.failure) if e.HasField("failure") else None
        if e.kind == pb.ENTRY_KIND_ATTEMPT_FAILED and failed is not None:
            errors.setdefault(e.step, []).append(failed)
        elif e.kind == pb.ENTRY_KIND_RETRY_REQUEST:
            errors.clear()  # client.retry: the failed steps start counting again
    steps = tuple(
        StepRecord(
            step=e.step,
            kind=_KINDS[e.kind],
            name=e.name,
            output=e.output,
            failure=failure_of(e.failure) if e.HasField("failure") else None,
            attempts=e.attempts,
            duration_ms=e.duration_us / 1000,
            at=_ms_to_dt(e.timestamp_ms),
            attempt_errors=tuple(errors.get(e.step, ()))
            if e.kind in (pb.ENTRY_KIND_CALL, pb.ENTRY_KIND_RUN)
            else (),
        )
        for e in entries
        if e.kind in _KINDS
    )
    return InvocationResult(
        invocation_id=state.invocation_id,
        workflow=state.workflow,
        status=Status.from_pb(state.status),
        output=_decoded_or_raw(state.output) if state.HasField("output") else None,
        failure=failure_of(state.failure) if state.HasField("failure") else None,
        steps=tuple(sorted(steps, key=lambda s: s.step)),
        partition_key=state.partition_key,
        created_at=_ms_to_dt(state.created_at_ms),
        updated_at=_ms_to_dt(state.updated_at_ms),
        args=_decoded_or_raw(state.args) if state.HasField("args") else None,
    )
