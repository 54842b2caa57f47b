"""Building the view from an invocation's state and journal: pure, no NATS, no asyncio."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from durable_core import _codec
from durable_core._journal import (
    STEP_KINDS,
    awakeable_asked,
    code_of,
    copied_by_fork,
    copied_step_of,
    kind_name,
)
from durable_core._pb.durable.v1 import durable_pb2 as pb
from durable_core.errors import DurableError
from durable_core.views._format import from_ms, iso
from durable_core.views._model import (
    Attempt,
    BodyRetry,
    CodeDict,
    FailureDict,
    InvocationView,
    StepState,
    StepView,
    Transition,
)

__all__ = ["Resolve", "describe", "payload_json"]

Resolve = Callable[[str], Any]  # full message name -> its class, or None


def payload_json(payload: pb.Payload, types: Resolve | None = None) -> Any:
    """A stored payload as JSON; ``{"$error": ...}`` when it does not decode (shown, not fatal).

    ``types`` finds the class of a protobuf message not imported here (``Client.describe``
    loads them from the type registry); without it such a message shows as hex."""
    try:
        return _codec.to_json_compatible(payload, types)
    except (DurableError, ValueError, OverflowError, RecursionError) as e:
        return {"$error": str(e)[:500]}


def _failure(f: pb.Failure) -> FailureDict:
    return {"type": f.type, "message": f.message, "step": f.step, "code": f.code}


_FINAL_STATUS = {
    pb.ENTRY_KIND_COMPLETED: "completed",
    pb.ENTRY_KIND_FAILED: "failed",
    pb.ENTRY_KIND_CANCELLED: "cancelled",
}
_IDLE_AFTER = frozenset({0, pb.ENTRY_KIND_SUSPENDED, *_FINAL_STATUS})


def _resumed(journal: Sequence[pb.JournalEntry]) -> bool:
    """Whether the journal's last pause or resume request is a resume."""
    asked = (pb.ENTRY_KIND_PAUSE_REQUEST, pb.ENTRY_KIND_RESUME_REQUEST)
    last = next((e.kind for e in reversed(journal) if e.kind in asked), None)
    return last == pb.ENTRY_KIND_RESUME_REQUEST


def describe(
    state: pb.ExecutionState,
    entries: Iterable[pb.JournalEntry],
    *,
    now: datetime | None = None,
    types: Resolve | None = None,
) -> InvocationView:
    """The view of an invocation from its state and its journal (entries in journal order).

    ``now`` decides whether a sleep still waits (default: the wall clock). The status is the
    journal's where the state lags behind it: a final entry the state does not show yet, or
    a resume of a paused invocation no processor has taken up yet (``pending``).
    ``types`` finds protobuf classes not imported here (see :func:`payload_json`).
    """
    now_ms = int((now or datetime.now(UTC)).timestamp() * 1000)
    journal = list(entries)
    history = _history(state, journal)
    final = next((e for e in reversed(journal) if e.kind in _FINAL_STATUS), None)
    retried = final is not None and any(
        e.kind == pb.ENTRY_KIND_RETRY_REQUEST for e in journal[journal.index(final) :]
    )
    try:
        status = pb.Status.Name(state.status).removeprefix("STATUS_").lower()
    except ValueError:  # a value this version does not know (a state written by a newer one)
        status = "unknown"
    output: Any = payload_json(state.output, types) if state.HasField("output") else None
    failure = _failure(state.failure) if state.HasField("failure") else None
    if final is not None and not retried and status not in _FINAL_STATUS.values():
        status = _FINAL_STATUS[final.kind]
        output = payload_json(final.output, types) if final.HasField("output") else None
        failure = _failure(final.failure) if final.HasField("failure") else None
    if status == "paused" and _resumed(journal):
        status = "pending"  # resumed: waits for a processor to take it up (it writes the state)
    terminal = status in _FINAL_STATUS.values()
    return InvocationView(
        invocation_id=state.invocation_id,
        workflow=state.workflow,
        status="unknown" if status == "unspecified" else status,
        args=payload_json(state.args, types) if state.HasField("args") else None,
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
        fork_from_step=_fork_from_step(state, journal),
        rerun_of=state.rerun_of,
        steps=_steps(state.invocation_id, journal, terminal=terminal, now_ms=now_ms, types=types),
        retries=_retries(journal),
        history=tuple(history),
        blocked_reason=state.blocked_reason if status == "blocked" else "",
        pinned_version=state.pinned_version,
        ran_on=_ran_on(journal),
    )


def _ran_on(journal: Sequence[pb.JournalEntry]) -> tuple[CodeDict, ...]:
    """Each code that ran the invocation (named by CLAIMs and a fresh start's first entry),
    in order, once per change."""
    out: list[CodeDict] = []
    for e in journal:
        code = code_of(e)
        if code is None:
            continue
        named: CodeDict = {
            "plugin": code.package,
            "version": code.version,
            "fingerprint": code.fingerprint,
        }
        if not out or out[-1] != named:
            out.append(named)
    return tuple(out)


def _fork_from_step(state: pb.ExecutionState, journal: Sequence[pb.JournalEntry]) -> int:
    """A fork's ``from_step`` (0: no fork): as recorded, or after its highest copied step
    (forks made before they recorded it)."""
    if not state.forked_from:
        return 0
    if state.fork_from_step:
        return int(state.fork_from_step)
    return max((e.step for e in journal if copied_step_of(e)), default=0) + 1


def _steps(
    invocation_id: str,
    journal: Sequence[pb.JournalEntry],
    *,
    terminal: bool,
    now_ms: int,
    types: Resolve | None,
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
            "copied_from": copied_step_of(e),
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
                # A copied awakeable's id names the fork's source; the fork waits for its own.
                asked = awakeable_asked(invocation_id, e)
                got, detail = awakeables.get(asked), {"awakeable_id": asked}
            elif e.kind == pb.ENTRY_KIND_SIGNAL_WAIT:
                index = signal_index.get(e.name, 0)
                signal_index[e.name] = index + 1
                arrived = signals.get(e.name, [])
                got = arrived[index] if index < len(arrived) else None
                detail = {"signal": e.name}
            else:
                child_id = str(payload_json(e.output))
                got, detail = children.get(child_id), {"child_id": child_id, "detached": False}
            views[step] = _wait_view(common, e, got, detail, idle, types)
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
                output=payload_json(e.output, types) if e.HasField("output") else None,
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
    types: Resolve | None,
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
        output=payload_json(got.output, types) if got.HasField("output") else None,
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
            blocked = e.failure.type == "NonDeterminismError"  # the run diverged: see _block
            add("blocked" if blocked else "paused" if paused else "suspended", e.timestamp_ms)
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
            if copied_by_fork(e):
                continue  # copied from the original: no run of this invocation
            if last_processor in _IDLE_AFTER:
                began = e.timestamp_ms - e.duration_us // 1000 if e.duration_us else e.timestamp_ms
                add("running", began)
            last_processor = kind
    return out
