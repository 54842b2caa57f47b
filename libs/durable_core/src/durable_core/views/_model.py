"""The view's data: what operators see of an invocation, and its JSON shape (TypedDicts, from
which the inspector's OpenAPI document is generated)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any, TypedDict

from durable_core.views._format import format_duration, format_time, iso

__all__ = [
    "ACTIONS",
    "Attempt",
    "AttemptDict",
    "BodyRetry",
    "CodeDict",
    "FailureDict",
    "InvocationDict",
    "InvocationView",
    "RetryDict",
    "StepDict",
    "StepState",
    "StepView",
    "Transition",
    "TransitionDict",
    "legal_actions",
]

# Lifecycle actions and the statuses each is legal in (what the engine accepts).
ACTIONS: dict[str, frozenset[str]] = {
    "pause": frozenset({"pending", "running", "suspended"}),
    "resume": frozenset({"paused"}),
    "cancel": frozenset({"pending", "running", "suspended", "paused", "blocked"}),
    "retry": frozenset({"failed"}),
    "rerun": frozenset({"completed", "failed", "cancelled"}),
    # A blocked invocation's fork replaces it (the original is cancelled): see client.fork.
    "fork": frozenset({"completed", "failed", "cancelled", "blocked"}),
}

# -- the JSON shape ------------------------------------------------------------------------------
# Annotated strings are descriptions; "format:date-time" marks an ISO 8601 UTC time.

Time = Annotated[str | None, "format:date-time"]


class FailureDict(TypedDict):
    """Why a step, an awakeable or the invocation failed."""

    type: Annotated[str, "the error's type, e.g. StepFailedError"]
    message: str
    step: Annotated[int, "the step it came from; 0 for the workflow body"]
    code: Annotated[str, "the gRPC status code of a call step, if any"]


class AttemptDict(TypedDict):
    """A failed attempt of a step (an ATTEMPT_FAILED journal entry)."""

    attempt: int
    type: str
    message: str
    code: str
    at: Annotated[Time, "when it failed"]
    next_attempt_at: Annotated[Time, "when the next attempt is due (null: none)"]


class StepDict(TypedDict):
    """One step as the journal has it; a wait spans from when it began to when it completed."""

    step: int
    kind: Annotated[
        str, "call, run, sleep, awakeable, signal, set, clear, child, send; step: between attempts"
    ]
    name: Annotated[str, "method, run name, awakeable id, signal name, state key or workflow"]
    state: Annotated[str, "completed, failed, retrying, waiting, cancelled or abandoned"]
    summary: Annotated[str, "one line for people"]
    started_at: Time
    finished_at: Annotated[Time, "null while it waits"]
    duration_ms: Annotated[float | None, "execution time; a wait's length once over"]
    attempts: int
    output: Annotated[Any, "the result as JSON: a wait's payload, a child's output"]
    failure: FailureDict | None
    failed_attempts: list[AttemptDict]
    detail: Annotated[
        dict[str, Any],
        "per kind: sleep duration_ms and wake_at; awakeable_id, completed_at, rejection; "
        "signal; child_id and detached; invocation_id of a send; next_attempt_at",
    ]
    copied_from: Annotated[str | None, "a fork's step copied from this invocation"]
    is_wait: bool


class RetryDict(TypedDict):
    """A failure of the invocation that retry sent round again."""

    type: str
    message: str
    step: int
    failed_at: Time
    retried_at: Time


class CodeDict(TypedDict):
    """The workflow code a processor ran the invocation on (from the journal)."""

    plugin: Annotated[str, "the plugin package"]
    version: Annotated[str, "the package's version"]
    fingerprint: Annotated[str, "SHA-256 of the workflow's source files"]


class TransitionDict(TypedDict):
    """A status change, or a request that came in (note), at the journal's time."""

    status: str
    at: Time
    note: Annotated[str | None, "pause requested, resume requested, cancel requested, ..."]


class InvocationDict(TypedDict):
    """An invocation: arguments, status, steps with their waits and failed attempts, lineage,
    the status history from its journal and the lifecycle actions legal now."""

    invocation_id: str
    workflow: str
    status: Annotated[
        str, "pending, running, paused, suspended, blocked, completed, failed, cancelled"
    ]
    args: Annotated[Any, "the arguments it was called with, as JSON"]
    output: Any
    failure: FailureDict | None
    partition_key: str
    created_at: Time
    updated_at: Time
    duration_ms: Annotated[float | None, "created to finished, once finished"]
    start_at: Annotated[Time, "a delayed invocation's start"]
    deadline: Annotated[Time, "execution_timeout"]
    waiting_for: str | None
    processor: str | None
    journal_length: int
    trace_id: str | None
    parent_id: str | None
    child_ids: list[str]
    forked_from: str | None
    fork_from_step: int | None
    rerun_of: str | None
    blocked_reason: Annotated[
        str | None, "blocked: where the replay diverged from the journal, and what it waits for"
    ]
    pinned_version: Annotated[
        str | None, "the version token (v-...) of the code its commands are routed to"
    ]
    started_on: Annotated[CodeDict | None, "the code the invocation started on"]
    ran_on: Annotated[list[CodeDict], "every code that ran it, in order (one per change)"]
    actions: Annotated[list[str], "pause, resume, cancel, retry, rerun, fork: those legal now"]
    steps: list[StepDict]
    retries: list[RetryDict]
    history: list[TransitionDict]


def legal_actions(status: str) -> tuple[str, ...]:
    """The lifecycle actions the engine accepts for an invocation in ``status``."""
    return tuple(a for a, allowed in ACTIONS.items() if status in allowed)


class StepState(enum.StrEnum):
    """Where one step stands."""

    COMPLETED = "completed"  # journaled with a result (a wait: it completed)
    FAILED = "failed"  # failed for good
    RETRYING = "retrying"  # an attempt failed; the next one is due at ``next_attempt_at``
    WAITING = "waiting"  # a sleep, awakeable, signal or child not yet completed
    CANCELLED = "cancelled"  # the cancellation was delivered while it waited
    ABANDONED = "abandoned"  # a wait that never completed: the invocation ended first


@dataclass(frozen=True, slots=True)
class Attempt:
    """A failed attempt of a step."""

    attempt: int
    error_type: str
    message: str
    code: str
    at: datetime | None
    next_attempt_at: datetime | None  # None when no further attempt was scheduled

    def to_dict(self) -> AttemptDict:
        return {
            "attempt": self.attempt,
            "type": self.error_type,
            "message": self.message,
            "code": self.code,
            "at": iso(self.at),
            "next_attempt_at": iso(self.next_attempt_at),
        }


@dataclass(frozen=True, slots=True)
class StepView:
    """One step of the workflow, as the journal has it.

    ``started_at``/``finished_at`` are the execution of a call or run; for a wait they are when
    the workflow began waiting and when the wait completed (``finished_at`` is None while it
    waits), so a timeline draws the wait as a wait. ``detail`` holds what is particular to the
    kind (``duration_ms`` and ``wake_at`` of a sleep, ``awakeable_id`` and ``rejection``,
    ``signal``, ``child_id``, ``invocation_id`` of a send).
    """

    step: int
    kind: str
    name: str
    state: StepState
    started_at: datetime | None
    finished_at: datetime | None
    duration_ms: float | None
    attempts: int
    output: Any = None
    failure: FailureDict | None = None
    failed_attempts: tuple[Attempt, ...] = ()
    detail: dict[str, Any] = field(default_factory=dict)
    copied_from: str = ""  # a fork's step copied from this invocation's journal (not run here)

    @property
    def is_wait(self) -> bool:
        return self.kind in ("sleep", "awakeable", "signal") or (
            self.kind == "child" and not self.detail.get("detached", False)
        )

    def what(self) -> str:
        """What the step is, for people: a sleep's length and wake time, an awakeable's id, a
        signal's name, a child's id; the name of a call or run."""
        d = self.detail
        if self.kind == "sleep":
            wake = format_time(d.get("wake_at"))
            return f"{format_duration(d.get('duration_ms'))}, wakes {wake}"
        if self.kind == "child":
            how = " (started, not awaited)" if d.get("detached") else ""
            return f"{self.name} -> {d.get('child_id', '?')}{how}"
        if self.kind == "send":
            return f"{self.name} -> {d.get('invocation_id', '?')}"
        if self.kind == "awakeable" and "rejection" in d:
            return f"{self.name} rejected: {d['rejection']}"
        return self.name

    def summary(self) -> str:
        """One line for people: the kind, what the step is and where it stands."""
        extra = [self.state.value]
        if self.kind in ("call", "run", "step"):
            extra.insert(0, format_duration(self.duration_ms))
            if self.attempts > 1:
                extra.insert(1, f"{self.attempts} attempts")
        return f"{self.kind} {self.what()} ({', '.join(extra)})"

    def to_dict(self) -> StepDict:
        return {
            "step": self.step,
            "kind": self.kind,
            "name": self.name,
            "state": self.state.value,
            "summary": self.summary(),
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
            "duration_ms": self.duration_ms,
            "attempts": self.attempts,
            "output": self.output,
            "failure": self.failure,
            "failed_attempts": [a.to_dict() for a in self.failed_attempts],
            "detail": self.detail,
            "copied_from": self.copied_from or None,
            "is_wait": self.is_wait,
        }


@dataclass(frozen=True, slots=True)
class BodyRetry:
    """A failure of the whole invocation that ``retry`` sent round again."""

    error_type: str
    message: str
    step: int
    failed_at: datetime | None
    retried_at: datetime | None

    def to_dict(self) -> RetryDict:
        return {
            "type": self.error_type,
            "message": self.message,
            "step": self.step,
            "failed_at": iso(self.failed_at),
            "retried_at": iso(self.retried_at),
        }


@dataclass(frozen=True, slots=True)
class Transition:
    """A change of status, or a request that came in (``note``), at the journal's time."""

    status: str
    at: datetime | None
    note: str = ""

    def to_dict(self) -> TransitionDict:
        return {"status": self.status, "at": iso(self.at), "note": self.note or None}


@dataclass(frozen=True, slots=True)
class InvocationView:
    """Everything an operator sees of one invocation (:func:`describe` builds it)."""

    invocation_id: str
    workflow: str
    status: str
    args: Any
    output: Any
    failure: FailureDict | None
    partition_key: str
    created_at: datetime | None
    updated_at: datetime | None
    start_at: datetime | None
    deadline: datetime | None
    waiting_for: str
    processor: str
    journal_length: int
    trace_id: str
    parent_id: str
    child_ids: tuple[str, ...]
    forked_from: str
    fork_from_step: int
    rerun_of: str
    steps: tuple[StepView, ...]
    retries: tuple[BodyRetry, ...]
    history: tuple[Transition, ...]
    blocked_reason: str = ""
    pinned_version: str = ""
    ran_on: tuple[CodeDict, ...] = ()

    @property
    def started_on(self) -> CodeDict | None:
        """The code the invocation started on (None: the journal does not say)."""
        return self.ran_on[0] if self.ran_on else None

    @property
    def actions(self) -> tuple[str, ...]:
        """The lifecycle actions legal now."""
        return legal_actions(self.status)

    @property
    def is_terminal(self) -> bool:
        return self.status in ("completed", "failed", "cancelled")

    @property
    def duration_ms(self) -> float | None:
        if not self.is_terminal or self.created_at is None or self.updated_at is None:
            return None
        return round((self.updated_at - self.created_at).total_seconds() * 1000, 3)

    @property
    def waits(self) -> tuple[StepView, ...]:
        """The steps waiting now."""
        return tuple(s for s in self.steps if s.state == StepState.WAITING)

    def to_dict(self) -> InvocationDict:
        """JSON-ready: what ``durable status --json`` prints and the inspector's API returns."""
        return {
            "invocation_id": self.invocation_id,
            "workflow": self.workflow,
            "status": self.status,
            "args": self.args,
            "output": self.output,
            "failure": self.failure,
            "partition_key": self.partition_key,
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
            "duration_ms": self.duration_ms,
            "start_at": iso(self.start_at),
            "deadline": iso(self.deadline),
            "waiting_for": self.waiting_for or None,
            "processor": self.processor or None,
            "journal_length": self.journal_length,
            "trace_id": self.trace_id or None,
            "parent_id": self.parent_id or None,
            "child_ids": list(self.child_ids),
            "forked_from": self.forked_from or None,
            "fork_from_step": self.fork_from_step or None,
            "rerun_of": self.rerun_of or None,
            "blocked_reason": self.blocked_reason or None,
            "pinned_version": self.pinned_version or None,
            "started_on": self.started_on,
            "ran_on": list(self.ran_on),
            "actions": list(self.actions),
            "steps": [s.to_dict() for s in self.steps],
            "retries": [r.to_dict() for r in self.retries],
            "history": [t.to_dict() for t in self.history],
        }
