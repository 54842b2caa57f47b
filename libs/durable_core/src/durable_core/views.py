"""What an operator sees of one invocation, computed once from its state and journal.

The CLI (``durable status``, ``--json``) and the inspector (its API and pages) both render
:class:`InvocationView`, so they always agree. :func:`describe` is pure (no NATS, no asyncio):
it reads the journal the way the replay machine does and adds what a person needs:

* the arguments, the output or failure, and the lineage (parent, children, fork, rerun);
* each step with its kind; a sleep's duration and wake time; an awakeable's id and its payload
  or rejection; a signal's name and payload; a child's id and result; ``waiting`` while a wait
  has not completed;
* every failed attempt of a step (``ATTEMPT_FAILED``: its error and when the next one is due)
  and every failure of the whole invocation that ``retry`` sent round again;
* the status history with the journal's own timestamps (not when somebody happened to look);
* the lifecycle actions that are legal now.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from durable_core import _codec
from durable_core._journal import STEP_KINDS, kind_name
from durable_core._pb.durable.v1 import durable_pb2 as pb
from durable_core.errors import DurableError

__all__ = [
    "ACTIONS",
    "Attempt",
    "BodyRetry",
    "InvocationView",
    "StepState",
    "StepView",
    "Transition",
    "describe",
    "format_duration",
    "format_time",
    "from_ms",
    "iso",
    "legal_actions",
    "payload_json",
]

# Lifecycle actions and the statuses each is legal in (what the engine accepts).
ACTIONS: dict[str, frozenset[str]] = {
    "pause": frozenset({"pending", "running", "suspended"}),
    "resume": frozenset({"paused"}),
    "cancel": frozenset({"pending", "running", "suspended", "paused"}),
    "retry": frozenset({"failed"}),
    "rerun": frozenset({"completed", "failed", "cancelled"}),
    "fork": frozenset({"completed", "failed", "cancelled"}),
}


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

    def to_dict(self) -> dict[str, Any]:
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
    failure: dict[str, Any] | None = None
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

    def to_dict(self) -> dict[str, Any]:
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

    def to_dict(self) -> dict[str, Any]:
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

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "at": iso(self.at), "note": self.note or None}


@dataclass(frozen=True, slots=True)
class InvocationView:
    """Everything an operator sees of one invocation (:func:`describe` builds it)."""

    invocation_id: str
    workflow: str
    status: str
    args: Any
    output: Any
    failure: dict[str, Any] | None
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

    def to_dict(self) -> dict[str, Any]:
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
            "actions": list(self.actions),
            "steps": [s.to_dict() for s in self.steps],
            "retries": [r.to_dict() for r in self.retries],
            "history": [t.to_dict() for t in self.history],
        }


# -- formatting (shared by the CLI and the inspector's templates) ----------------------------


def format_duration(ms: float | None) -> str:
    """``850 ms``, ``3.20 s``, ``4 min 5 s``, ``2 h 10 min``, ``3 d 4 h``; ``–`` if unknown."""
    if ms is None:
        return "–"
    if ms < 1000:
        return f"{ms:.0f} ms" if ms >= 10 else f"{ms:.1f} ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.2f} s" if seconds < 10 else f"{seconds:.1f} s"
    minutes, sec = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {sec} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


def format_time(value: str | datetime | None) -> str:
    """``2026-11-28 16:03:12.345Z`` from an ISO time or a datetime; ``–`` if unknown."""
    if isinstance(value, datetime):
        value = iso(value)
    if not value:
        return "–"
    return value.replace("T", " ")


# -- building --------------------------------------------------------------------------------


def iso(value: datetime | None) -> str | None:
    """UTC ISO 8601 with milliseconds and a ``Z``."""
    if value is None:
        return None
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def from_ms(ms: int) -> datetime | None:
    """A stored time (ms since the epoch, 0 = unknown) as a UTC datetime."""
    if not ms:
        return None
    try:
        return datetime.fromtimestamp(ms / 1000, tz=UTC)
    except (OverflowError, ValueError, OSError):
        return None  # an absurd stored time: unknown rather than an error


def payload_json(payload: pb.Payload) -> Any:
    """A stored payload as JSON; ``{"$error": ...}`` when it does not decode (shown, not fatal)."""
    try:
        return _codec.to_json_compatible(payload)
    except (DurableError, ValueError, OverflowError, RecursionError) as e:
        return {"$error": str(e)[:500]}


def _failure(f: pb.Failure) -> dict[str, Any]:
    return {"type": f.type, "message": f.message, "step": f.step, "code": f.code}


_FINAL_STATUS = {
    pb.ENTRY_KIND_COMPLETED: "completed",
    pb.ENTRY_KIND_FAILED: "failed",
    pb.ENTRY_KIND_CANCELLED: "cancelled",
}
_IDLE_AFTER = frozenset({0, pb.ENTRY_KIND_SUSPENDED, *_FINAL_STATUS})


def describe(
    state: pb.ExecutionState, entries: Iterable[pb.JournalEntry], *, now: datetime | None = None
) -> InvocationView:
    """The view of an invocation from its state and its journal (entries in journal order).

    ``now`` decides whether a sleep still waits (default: the wall clock). The status is the
    journal's where the state lags behind it (a final entry the state does not show yet).
    """
    now_ms = int((now or datetime.now(UTC)).timestamp() * 1000)
    journal = list(entries)
    history = _history(state, journal)
    final = next((e for e in reversed(journal) if e.kind in _FINAL_STATUS), None)
    retried = final is not None and any(
        e.kind == pb.ENTRY_KIND_RETRY_REQUEST for e in journal[journal.index(final) :]
    )
    status = pb.Status.Name(state.status).removeprefix("STATUS_").lower()
    output: Any = payload_json(state.output) if state.HasField("output") else None
    failure = _failure(state.failure) if state.HasField("failure") else None
    if final is not None and not retried and status not in _FINAL_STATUS.values():
        status = _FINAL_STATUS[final.kind]
        output = payload_json(final.output) if final.HasField("output") else None
        failure = _failure(final.failure) if final.HasField("failure") else None
    terminal = status in _FINAL_STATUS.values()
    return InvocationView(
        invocation_id=state.invocation_id,
        workflow=state.workflow,
        status="unknown" if status == "unspecified" else status,
        args=payload_json(state.args) if state.HasField("args") else None,
        output=output,
        failure=failure,
        partition_key=state.partition_key,
        created_at=from_ms(state.created_at_ms),
        updated_at=from_ms(state.updated_at_ms),
        start_at=from_ms(state.start_at_ms),
        deadline=from_ms(state.deadline_ms),
        waiting_for=state.waiting_for if status in ("suspended", "paused", "pending") else "",
        processor=state.processor,
        journal_length=max(state.journal_length, len(journal)),
        trace_id=state.trace_id,
        parent_id=state.parent_id,
        child_ids=tuple(state.child_ids),
        forked_from=state.forked_from,
        fork_from_step=(
            sum(1 for e in journal if e.writer.startswith("fork:")) + 1 if state.forked_from else 0
        ),
        rerun_of=state.rerun_of,
        steps=_steps(journal, terminal=terminal, now_ms=now_ms),
        retries=_retries(journal),
        history=tuple(history),
    )


def _steps(
    journal: Sequence[pb.JournalEntry], *, terminal: bool, now_ms: int
) -> tuple[StepView, ...]:
    awakeables: dict[str, pb.JournalEntry] = {}
    signals: dict[str, list[pb.JournalEntry]] = {}
    children: dict[str, pb.JournalEntry] = {}
    attempts: dict[int, list[Attempt]] = {}
    cancelled: set[int] = set()
    for e in journal:
        if e.kind == pb.ENTRY_KIND_AWAKEABLE_RESULT:
            awakeables.setdefault(e.name, e)  # the first resolution wins
        elif e.kind == pb.ENTRY_KIND_SIGNAL:
            signals.setdefault(e.name, []).append(e)
        elif e.kind == pb.ENTRY_KIND_CHILD_RESULT:
            children.setdefault(e.name, e)
        elif e.kind == pb.ENTRY_KIND_CANCEL_DELIVERED:
            cancelled.add(e.step)
        elif e.kind == pb.ENTRY_KIND_ATTEMPT_FAILED:
            attempts.setdefault(e.step, []).append(_attempt(e))
    latest: dict[int, pb.JournalEntry] = {}
    for e in journal:
        if e.kind not in STEP_KINDS:
            continue
        earlier = latest.get(e.step)
        if earlier is not None and earlier.HasField("failure"):
            # client.retry ran a step that had failed for good again: its failure is history.
            f = earlier.failure
            attempts.setdefault(e.step, []).append(
                Attempt(
                    earlier.attempts, f.type, f.message, f.code, from_ms(earlier.timestamp_ms), None
                )
            )
        latest[e.step] = e
    signal_index: dict[str, int] = {}
    views: dict[int, StepView] = {}
    for step in sorted(latest):
        e = latest[step]
        waited_out = StepState.CANCELLED if step in cancelled else StepState.ABANDONED
        idle = waited_out if terminal else StepState.WAITING
        kind = kind_name(e.kind)
        failed = tuple(attempts.get(step, ()))
        if e.HasField("failure"):
            failed = tuple(a for a in failed if a.attempt != e.attempts)
        common: dict[str, Any] = {
            "step": step,
            "kind": kind,
            "name": e.name,
            "attempts": e.attempts,
            "failed_attempts": failed,
            "copied_from": e.writer.removeprefix("fork:") if e.writer.startswith("fork:") else "",
        }
        at = from_ms(e.timestamp_ms)
        if e.kind == pb.ENTRY_KIND_SLEEP:
            millis = e.wake_at_ms - e.timestamp_ms
            done = e.wake_at_ms <= now_ms
            views[step] = StepView(
                **common,
                state=StepState.COMPLETED if done else idle,
                started_at=at,
                finished_at=from_ms(e.wake_at_ms) if done else None,
                duration_ms=float(millis) if done else None,
                detail={"duration_ms": millis, "wake_at": iso(from_ms(e.wake_at_ms))},
            )
        elif e.kind in (pb.ENTRY_KIND_AWAKEABLE, pb.ENTRY_KIND_SIGNAL_WAIT) or (
            e.kind == pb.ENTRY_KIND_CHILD and not e.detached
        ):
            detail: dict[str, Any] = {}
            if e.kind == pb.ENTRY_KIND_AWAKEABLE:
                got, detail = awakeables.get(e.name), {"awakeable_id": e.name}
            elif e.kind == pb.ENTRY_KIND_SIGNAL_WAIT:
                index = signal_index.get(e.name, 0)
                signal_index[e.name] = index + 1
                arrived = signals.get(e.name, [])
                got = arrived[index] if index < len(arrived) else None
                detail = {"signal": e.name}
            else:
                child_id = str(payload_json(e.output))
                got, detail = children.get(child_id), {"child_id": child_id, "detached": False}
            views[step] = _wait_view(common, e, got, detail, idle)
        else:
            if e.kind == pb.ENTRY_KIND_CHILD:
                detail = {"child_id": str(payload_json(e.output)), "detached": True}
            elif e.kind == pb.ENTRY_KIND_SEND:
                detail = {"invocation_id": str(payload_json(e.output))}
            else:
                detail = {}
            started = from_ms(e.timestamp_ms - e.duration_us // 1000) if e.duration_us else at
            views[step] = StepView(
                **common,
                state=StepState.FAILED if e.HasField("failure") else StepState.COMPLETED,
                started_at=started,
                finished_at=at,
                duration_ms=e.duration_us / 1000,
                output=payload_json(e.output) if e.HasField("output") else None,
                failure=_failure(e.failure) if e.HasField("failure") else None,
                detail=detail,
            )
    for step, tries in attempts.items():
        if step in views or not tries or terminal:
            continue
        last = tries[-1]  # no result yet: the step is between attempts
        views[step] = StepView(
            step=step,
            kind="step",
            name=next((e.name for e in journal if e.step == step and e.name), ""),
            state=StepState.RETRYING,
            started_at=tries[0].at,
            finished_at=None,
            duration_ms=None,
            attempts=last.attempt,
            failed_attempts=tuple(tries),
            detail={"next_attempt_at": iso(last.next_attempt_at)},
        )
    return tuple(views[s] for s in sorted(views))


def _wait_view(
    common: dict[str, Any],
    e: pb.JournalEntry,
    got: pb.JournalEntry | None,
    detail: dict[str, Any],
    idle: StepState,
) -> StepView:
    started = from_ms(e.timestamp_ms)
    if got is None:
        return StepView(
            **common,
            state=idle,
            started_at=started,
            finished_at=None,
            duration_ms=None,
            detail=detail,
        )
    done = from_ms(got.timestamp_ms)
    detail = {**detail, "completed_at": iso(done)}
    failure = None
    if got.HasField("failure"):
        failure = _failure(got.failure)
        detail["rejection"] = got.failure.message
    return StepView(
        **common,
        state=StepState.FAILED if failure else StepState.COMPLETED,
        started_at=started,
        finished_at=done,
        duration_ms=float(max(got.timestamp_ms - e.timestamp_ms, 0)),
        output=payload_json(got.output) if got.HasField("output") else None,
        failure=failure,
        detail=detail,
    )


def _attempt(e: pb.JournalEntry) -> Attempt:
    f = e.failure
    return Attempt(
        e.attempts, f.type, f.message, f.code, from_ms(e.timestamp_ms), from_ms(e.wake_at_ms)
    )


def _retries(journal: Sequence[pb.JournalEntry]) -> tuple[BodyRetry, ...]:
    out = []
    failed: pb.JournalEntry | None = None
    for e in journal:
        if e.kind == pb.ENTRY_KIND_FAILED:
            failed = e
        elif e.kind == pb.ENTRY_KIND_RETRY_REQUEST and failed is not None:
            f = failed.failure
            out.append(
                BodyRetry(
                    f.type, f.message, f.step, from_ms(failed.timestamp_ms), from_ms(e.timestamp_ms)
                )
            )
            failed = None
    return tuple(out)


def _history(state: pb.ExecutionState, journal: Sequence[pb.JournalEntry]) -> list[Transition]:
    """Transitions from the journal's timestamps: a run starts when its first entry's work began,
    it suspends or finishes at the entry that says so; requests are noted when they came."""
    out = [Transition("pending", from_ms(state.created_at_ms))]
    last_processor = 0  # the kind of the processor's last entry (0: none yet)
    paused = False

    def add(status: str, ms: int, note: str = "") -> None:
        if out and out[-1].status == status and not note and not out[-1].note:
            return
        out.append(Transition(status, from_ms(ms), note))

    for e in journal:
        kind = e.kind
        if kind in _FINAL_STATUS:
            add(_FINAL_STATUS[kind], e.timestamp_ms)
            last_processor = kind
        elif kind == pb.ENTRY_KIND_SUSPENDED:
            add("paused" if paused else "suspended", e.timestamp_ms)
            last_processor = kind
        elif kind == pb.ENTRY_KIND_PAUSE_REQUEST:
            paused = True
            if last_processor in _IDLE_AFTER:
                add("paused", e.timestamp_ms)
            else:
                add(out[-1].status, e.timestamp_ms, "pause requested")
        elif kind == pb.ENTRY_KIND_RESUME_REQUEST:
            paused = False
            add("pending", e.timestamp_ms, "resume requested")
        elif kind == pb.ENTRY_KIND_CANCEL_REQUEST:
            add(out[-1].status, e.timestamp_ms, "cancel requested")
        elif kind == pb.ENTRY_KIND_RETRY_REQUEST:
            add("pending", e.timestamp_ms, "retry requested")
            last_processor = pb.ENTRY_KIND_SUSPENDED
        elif (
            kind == pb.ENTRY_KIND_CLAIM
            or kind in STEP_KINDS
            or kind
            in (
                pb.ENTRY_KIND_ATTEMPT_FAILED,
                pb.ENTRY_KIND_CANCEL_DELIVERED,
            )
        ):
            if e.writer.startswith("fork:"):
                continue  # copied from the original: no run of this invocation
            if last_processor in _IDLE_AFTER:
                began = e.timestamp_ms - e.duration_us // 1000 if e.duration_us else e.timestamp_ms
                add("running", began)
            last_processor = kind
    return out
