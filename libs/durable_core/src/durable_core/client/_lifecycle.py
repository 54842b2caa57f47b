"""What the client does to an invocation from outside: pause, resume, cancel, retry, rerun,
fork, signals and awakeables.

Each verb decides from the journal (the truth) whether it may act, then hands its entry to the
engine's one way in from outside, ``durable_core.engine._intake.deliver_external`` (the same
one a finished child takes to report to its parent).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import time
import uuid
from collections import Counter

from durable_core import _codec, _payloads
from durable_core._journal import (
    STEP_KINDS,
    ReplayMachine,
    awakeable_asked,
    outcome_writer,
    step_writer,
)
from durable_core._naming import check_invocation_id, payload_owner
from durable_core._pb.durable.v1 import durable_pb2 as pb
from durable_core._transport import (
    JournalConflict,
    JournalRecord,
    StateConflict,
    StateRecord,
    Transport,
)
from durable_core.client._results import IDLE_PB, TERMINAL_PB, Status, as_journaled
from durable_core.client._submit import store_unstored, submit_payload
from durable_core.engine._intake import (
    Addressee,
    Check,
    deliver_external,
    follow_delivery,
    report_to_parent,
    same_args,
    state_of_start,
)
from durable_core.engine._keys import release_key
from durable_core.errors import (
    AlreadyResolvedError,
    ConflictError,
    DurableError,
    IllegalTransitionError,
    InvalidInputError,
    InvocationFinishedError,
    NotFoundError,
)
from durable_core.fleet import read_fleet

__all__ = [
    "cancel_blocked",
    "change",
    "complete_awakeable",
    "fork",
    "rerun",
    "retry",
    "signal",
    "state_of",
]

_VERBS = {
    pb.ENTRY_KIND_PAUSE_REQUEST: "pause",
    pb.ENTRY_KIND_RESUME_REQUEST: "resume",
    pb.ENTRY_KIND_CANCEL_REQUEST: "cancel",
}
_FINAL_NAMES = {
    pb.ENTRY_KIND_COMPLETED: "completed",
    pb.ENTRY_KIND_FAILED: "failed",
    pb.ENTRY_KIND_CANCELLED: "cancelled",
}


_SIGNAL_ID = re.compile(r"[A-Za-z0-9_.:-]{1,256}")
_AWAKEABLE_N = re.compile(r"[0-9]+(_[0-9]+)*", re.ASCII)


class _AlreadyThere(Exception):  # noqa: N818 - internal control flow
    """The requested lifecycle change is already in the journal."""


class _NotBlocked(Exception):  # noqa: N818 - internal control flow
    """A processor took the blocked invocation up meanwhile (the journal shows its run)."""


async def state_of(t: Transport, invocation_id: str) -> StateRecord:
    """The invocation's state record.

    An invocation whose start was left to create its state (a plain ``invoke``, see
    ``Command.state_at_start``) has none until a processor takes the start up, or its waiting
    client gives up waiting for that (2 s). Found queued meanwhile, its state is created
    PENDING here, as that client would (a create: if the processor's lands first, it is read),
    so that status, pause and cancel see the invocation as soon as it is accepted.

    Raises:
        NotFoundError: it has none (ExpiredError once it expired).
    """
    check_invocation_id(invocation_id)
    rec = await t.get_state(invocation_id)
    if rec is None:
        rec = await _state_of_queued_start(t, invocation_id)
    if rec is None:
        # The start may have left the queue between the two reads: a processor took it up,
        # created the state and ran it to its end. It creates the state before it acks the
        # start, so a start gone from the queue left its state behind: read it again.
        rec = await t.get_state(invocation_id)
    if rec is None:
        raise await t.missing(invocation_id)
    return rec


async def _state_of_queued_start(t: Transport, invocation_id: str) -> StateRecord | None:
    cmd = await t.queued_start(invocation_id)
    if cmd is None:
        return None
    state = state_of_start(cmd)
    state.status = pb.STATUS_PENDING
    state.updated_at_ms = int(time.time() * 1000)
    return await store_unstored(t, state, None)


def _addressee(st: pb.ExecutionState) -> Addressee:
    return Addressee(st.invocation_id, st.workflow, st.partition_key, st.pinned_version)


# How long a pause or cancel of a run in flight waits for the processor running it to answer
# (none does when the run has just ended, or its processor is away: the request then acts
# when a write of the run meets it, or its wake-up).
ANSWER_S = 0.5


def _client_entry(
    kind: pb.EntryKind, name: str = "", output: pb.Payload | None = None
) -> pb.JournalEntry:
    entry = pb.JournalEntry(
        kind=kind, name=name, timestamp_ms=int(time.time() * 1000), writer="client"
    )
    if output is not None:
        entry.output.CopyFrom(output)
    return entry


async def change(t: Transport, invocation_id: str, kind: pb.EntryKind) -> Status:
    """Request a pause, resume or cancellation (``kind``); the status after the request."""
    verb = _VERBS[kind]
    rec = await state_of(t, invocation_id)
    status = Status.from_pb(rec.state.status)
    running = False  # a processor runs it now (the journal says so before the state)
    seen = 0  # the journal's last sequence, as the check read it

    def check(records: list[JournalRecord], machine: ReplayMachine) -> None:
        nonlocal running, seen
        running = not machine.idle
        seen = records[-1].seq if records else 0
        if machine.final is not None:
            real = _FINAL_NAMES[machine.final.kind]
            raise IllegalTransitionError(
                f"cannot {verb} invocation {invocation_id}: it is already {real}", real
            )
        if kind == pb.ENTRY_KIND_RESUME_REQUEST and not machine.paused:
            if status == Status.PAUSED:
                raise _AlreadyThere  # resumed in the journal; the state has not moved on yet
            raise IllegalTransitionError(
                f"cannot resume invocation {invocation_id}: it is {status.value}, not paused",
                status.value,
            )
        if kind == pb.ENTRY_KIND_PAUSE_REQUEST and machine.paused:
            raise _AlreadyThere
        if kind == pb.ENTRY_KIND_PAUSE_REQUEST and status == Status.BLOCKED and not running:
            raise IllegalTransitionError(
                f"cannot pause invocation {invocation_id}: it is blocked (its replay diverged "
                "from its journal) and no processor runs it; cancel or fork it",
                status.value,
            )
        if kind == pb.ENTRY_KIND_CANCEL_REQUEST and machine.cancel_requested:
            raise _AlreadyThere

    if status.is_terminal:
        raise IllegalTransitionError(
            f"cannot {verb} invocation {invocation_id}: it is already {status.value}",
            status.value,
        )
    # A blocked one is refused a pause by ``check``, on the journal: a processor of its pinned
    # version may have claimed it since the state was read (then it pauses as any run does).
    if status == Status.BLOCKED and kind == pb.ENTRY_KIND_CANCEL_REQUEST:
        ended = await cancel_blocked(t, rec, "cancelled while blocked")
        if ended is not None:
            return ended
        # A processor of its pinned version took it meanwhile: cancel the run as any other.
    if (
        kind == pb.ENTRY_KIND_CANCEL_REQUEST
        and status in (Status.SUSPENDED, Status.PAUSED)
        and rec.state.pinned_version
        and not (await read_fleet(t)).serves(rec.state.workflow, rec.state.pinned_version)
    ):
        # Pinned to a version no live processor runs: its cancel's wake-up would wait for
        # one, for good if none comes. Ended as a blocked one is (a processor of that version
        # that claims it first wins: then cancel its run as any other).
        ended = await cancel_blocked(t, rec, "cancelled while no processor ran its version")
        if ended is not None:
            return ended
    wake = kind != pb.ENTRY_KIND_PAUSE_REQUEST  # a pause acts at the next step boundary
    try:
        await deliver_external(
            t,
            _addressee(rec.state),
            _client_entry(kind),
            f"{verb}:{invocation_id}:{uuid.uuid4().hex}",
            check,
            wake=wake,
        )
    except _AlreadyThere:
        # Requested before, perhaps by a caller that stopped before the request's follow-ups
        # (it died, or NATS failed its wake-up): a resumed invocation stayed paused and a
        # cancelled sleeper slept on, and asking again changed nothing. Each follow-up is
        # idempotent (a wake-up is deduplicated per entry; the state writes are
        # revision-checked), so asking again does them again.
        await follow_delivery(t, _addressee(rec.state), seen, wake=wake)
    shown = await _show_transition(t, invocation_id, kind, running=running)
    # A run in flight (the journal shows one, or the state: its RUNNING write landed before
    # it journaled anything, or a start won the race with this request's state write) is
    # told at once (core NATS), and its processor's answer awaited (up to ANSWER_S): from
    # then on no step of it starts before it has read the request (one begun goes on, or a
    # cancel interrupts it). A pause wakes nothing, and a run learnt of it only when one of
    # its writes met it: with no write between two steps, that step started after the pause
    # had answered. A cancel is sent whatever the state says (a run may have claimed it
    # since), unwaited for when none is in flight.
    in_flight = running or shown == Status.RUNNING
    if kind in _TOLD and (in_flight or kind == pb.ENTRY_KIND_CANCEL_REQUEST):
        with contextlib.suppress(DurableError):
            await t.send_control(invocation_id, _TOLD[kind], wait=ANSWER_S if in_flight else 0.0)
    return shown


# What a run in flight is told of a request, at once (see ``Worker._on_control``).
_TOLD = {pb.ENTRY_KIND_PAUSE_REQUEST: "pause", pb.ENTRY_KIND_CANCEL_REQUEST: "cancel"}


async def cancel_blocked(t: Transport, rec: StateRecord, message: str) -> Status | None:
    """End a blocked invocation CANCELLED without running it (no processor can replay it).

    The final entry is appended to the journal only while no run has started since the block
    (a conditional append: a processor of the pinned version that claims it first wins, and
    then None is returned: cancel its run like any other). A waiting parent and the partition
    key are then settled as a processor settles a finished invocation, and the state last: a
    call cut short before its end (its caller killed, NATS gone) leaves the state blocked, and
    the next cancel finds the journal cancelled and settles what is left (each is idempotent).
    """
    invocation_id, st = rec.state.invocation_id, rec.state
    entry = _client_entry(pb.ENTRY_KIND_CANCELLED)
    entry.failure.CopyFrom(pb.Failure(type="InvocationCancelledError", message=message))
    earlier: pb.JournalEntry | None = None  # a cancellation journaled by a call cut short

    def check(records: list[JournalRecord], machine: ReplayMachine) -> None:
        nonlocal earlier
        final = machine.final
        if final is not None and final.kind == pb.ENTRY_KIND_CANCELLED:
            earlier = final
            raise _AlreadyThere
        if final is not None:
            real = _FINAL_NAMES[final.kind]
            raise IllegalTransitionError(
                f"cannot cancel invocation {invocation_id}: it is already {real}", real
            )
        if not machine.idle:
            raise _NotBlocked

    try:
        await deliver_external(
            t,
            _addressee(st),
            entry,
            f"cancel-blocked:{invocation_id}:{uuid.uuid4().hex}",
            check,
            wake=False,
        )
    except _NotBlocked:
        return None
    except _AlreadyThere:
        assert earlier is not None
        entry = earlier
    if st.notify_parent:
        await report_to_parent(t, st, entry)
    if st.partition_key and st.partition_key != invocation_id:

        async def finished(other: str) -> bool:
            if other == invocation_id:
                return True  # its journal says so; its state is written below
            found = await t.get_state(other)
            return found is None or found.state.status in TERMINAL_PB

        await release_key(t, st.partition_key, invocation_id, finished=finished)
    for _ in range(10):
        now = await t.get_state(invocation_id)
        if now is None or now.state.status in TERMINAL_PB:
            break
        ended = pb.ExecutionState()
        ended.CopyFrom(now.state)
        ended.status = pb.STATUS_CANCELLED
        ended.failure.CopyFrom(entry.failure)
        ended.blocked_reason = ""
        ended.updated_at_ms = int(time.time() * 1000)
        try:
            await t.update_state(ended, now.revision)
            break
        except StateConflict:
            continue
    return Status.CANCELLED


async def _show_transition(
    t: Transport, invocation_id: str, kind: pb.EntryKind, *, running: bool = False
) -> Status:
    """Record a pause of an idle invocation in its state; return the real status (a resumed
    one the state still shows paused is pending: no processor has taken it up yet).

    A cancel of a pending invocation no run has started is recorded too: its state's journal
    length goes from 0 to 1, so that a start racing the cancel reads the journal (and sees
    the request) before its first step instead of starting fresh without reading it (see
    ``Execution._start_fresh``). If the start's write comes first, the answer is "running",
    and ``change`` tells the run and waits for its processor's answer before it returns.

    ``running``: the journal shows a run in progress (its state may not say so yet).
    """
    for _ in range(5):
        rec = await state_of(t, invocation_id)
        st = rec.state
        idle = st.status in IDLE_PB and not running
        if (
            kind == pb.ENTRY_KIND_CANCEL_REQUEST
            and idle
            and st.status == pb.STATUS_PENDING
            and not st.journal_length
        ):
            marked = pb.ExecutionState()
            marked.CopyFrom(st)
            marked.journal_length = 1  # the request: no start may run it without reading it
            try:
                await t.update_state(marked, rec.revision)
                return Status.PENDING
            except StateConflict:
                continue  # a start took it meanwhile (or it moved on): look again
        if kind != pb.ENTRY_KIND_PAUSE_REQUEST or not idle:
            if running and st.status in IDLE_PB:
                return Status.RUNNING
            if kind == pb.ENTRY_KIND_RESUME_REQUEST and st.status == pb.STATUS_PAUSED:
                # Resumed in the journal; the state says paused until a processor takes the
                # wake-up (then running, suspended or done), for good while none runs it.
                return Status.PENDING
            return Status.from_pb(st.status)
        paused = pb.ExecutionState()
        paused.CopyFrom(st)
        paused.status = pb.STATUS_PAUSED
        paused.updated_at_ms = int(time.time() * 1000)
        try:
            await t.update_state(paused, rec.revision)
            return Status.PAUSED
        except StateConflict:
            continue  # it moved on (started, finished): look again
    return Status.from_pb(st.status)


async def retry(t: Transport, invocation_id: str) -> Status:
    """Run a failed invocation again from its failed step (see ``Client.retry``)."""
    rec = await state_of(t, invocation_id)
    if rec.state.status == pb.STATUS_RUNNING:
        rec = await _failed_state(t, rec)
    status = rec.state.status
    if status not in (pb.STATUS_FAILED, pb.STATUS_PENDING):
        name = Status.from_pb(status).value
        raise IllegalTransitionError(
            f"cannot retry invocation {invocation_id}: it is {name}, not failed", name
        )
    retried = 0  # the sequence of a retry request that nothing has followed yet

    def check(records: list[JournalRecord], machine: ReplayMachine) -> None:
        nonlocal retried
        if machine.final is not None and machine.final.kind == pb.ENTRY_KIND_FAILED:
            return
        if records and records[-1].entry.kind == pb.ENTRY_KIND_RETRY_REQUEST:
            retried = records[-1].seq
        raise _AlreadyThere  # retried already (or, pending, never failed)

    try:
        # The wake-up waits until the state says pending again (below).
        seq = await deliver_external(
            t,
            _addressee(rec.state),
            _client_entry(pb.ENTRY_KIND_RETRY_REQUEST),
            f"retry:{invocation_id}:{rec.revision}",
            check,
            wake=False,
        )
    except _AlreadyThere:
        if not retried:
            now = (await t.get_state(invocation_id) or rec).state.status
            if status == now == pb.STATUS_PENDING:
                raise IllegalTransitionError(
                    f"cannot retry invocation {invocation_id}: it is pending, not failed",
                    Status.PENDING.value,
                ) from None
            return Status.from_pb(now)
        # Retried, and nothing has run since: that retry's caller may have stopped before
        # its state write or its wake-up (it died, or NATS failed it), which left the
        # invocation failed or pending with no wake-up. Finish that retry.
        seq = retried
    if status == pb.STATUS_FAILED:
        st = pb.ExecutionState()
        st.CopyFrom(rec.state)
        st.status = pb.STATUS_PENDING
        st.ClearField("failure")
        st.updated_at_ms = int(time.time() * 1000)
        try:
            await t.update_state(st, rec.revision)
        except StateConflict:
            # Someone else moved it on meanwhile (the wake-up below is harmless then), or
            # retention removed it since the read (its journal, this request with it): say
            # so, not "pending" for an invocation that is gone.
            if await t.get_state(invocation_id) is None:
                raise await t.missing(invocation_id) from None
    await _wake_retried(t, _addressee(rec.state), seq)
    return Status.PENDING


async def _wake_retried(t: Transport, to: Addressee, seq: int) -> None:
    """Start a retried invocation again. A keyed one by a start, which takes its key as any
    start does: a wake-up ran it beside the key's holder (its key had been handed on when it
    failed). One start per retry request (``seq``)."""
    key = to.partition_key
    if not key or key == to.invocation_id:
        await t.publish_wake(to.invocation_id, to.workflow, key, seq, route=to.route)
        return
    cmd = pb.Command(
        invocation_id=to.invocation_id,
        workflow=to.workflow,
        partition_key=key,
        kind=pb.COMMAND_KIND_START,
        min_journal_seq=seq,
        route=to.route,
    )
    await t.publish_command(cmd, msg_id=f"retry:{to.invocation_id}:{seq}")


async def _failed_state(t: Transport, rec: StateRecord, wait_s: float = 5.0) -> StateRecord:
    """The state of a running invocation whose journal says it failed, once it says so too.

    The final state is written after the final entry (and after ``invoke`` heard of the
    failure): a retry right after it found the invocation "running" and was refused."""
    invocation_id = rec.state.invocation_id
    records = await t.read_journal(invocation_id, current=True)
    final = ReplayMachine(invocation_id, (r.entry for r in records)).final
    if final is None or final.kind != pb.ENTRY_KIND_FAILED:
        return rec
    deadline = time.monotonic() + wait_s
    while rec.state.status == pb.STATUS_RUNNING and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        rec = await state_of(t, invocation_id)
    return rec


async def rerun(t: Transport, invocation_id: str, new_id: str | None = None) -> str:
    """Start a new invocation of the same workflow with the same arguments; its id.

    With ``new_id``, a second call (an answer lost, a retry) is that same rerun: its id is
    returned and nothing new starts."""
    chosen = new_id is not None
    if new_id is not None and await _made_from(
        t, check_invocation_id(new_id), "rerun_of", invocation_id
    ):
        return new_id
    st = (await state_of(t, invocation_id)).state
    key = st.partition_key if st.partition_key != invocation_id else None
    new_id = uuid.uuid4().hex if new_id is None else new_id
    # Shares (never copies) the stored arguments: held before anything refers to them.
    await _hold(t, invocation_id, [st.args], new_id)
    await submit_payload(t, st.workflow, st.args, new_id, key, rerun_of=invocation_id)
    if chosen and not await _made_from(t, new_id, "rerun_of", invocation_id):
        raise _taken(new_id, "rerun", invocation_id)  # gone already: retention
    return new_id


async def fork(t: Transport, invocation_id: str, from_step: int, new_id: str | None = None) -> str:
    """A new invocation replaying this one's steps before ``from_step`` (see ``Client.fork``).

    With ``new_id``, a second call is that same fork: the steps a call cut short copied are
    checked and the rest copied, a fork already submitted is returned as it is, and an id
    taken by anything else is a ConflictError."""
    chosen = new_id is not None
    if new_id is not None:
        new_id = check_invocation_id(new_id)
    if not isinstance(from_step, int) or isinstance(from_step, bool) or from_step < 1:
        raise InvalidInputError(
            f"from_step must be a step number (an int, 1 or more), not {from_step!r:.80}"
        )
    rec = await state_of(t, invocation_id)
    records = await t.read_journal(
        invocation_id, min_entries=rec.state.journal_length, of=rec.state
    )
    below = [r.entry for r in records if r.entry.kind in STEP_KINDS and r.entry.step < from_step]
    steps = _whole_branches(below)
    # The highest step number (numbers may have gaps: a crash's in-flight branch steps).
    n = max((r.entry.step for r in records if r.entry.kind in STEP_KINDS), default=0)
    if from_step > n + 1:
        raise InvalidInputError(
            f"from_step must be a step of {invocation_id} (1 to {n}), or {n + 1} to copy "
            f"all {n} steps and run only what its workflow does after them"
            if n
            else f"from_step must be 1: {invocation_id} has no steps yet"
        )
    st = rec.state
    new_id = uuid.uuid4().hex if new_id is None else new_id  # its awakeable ids name it
    ordered = sorted(steps, key=lambda e: e.step)
    latest = list({e.step: e for e in ordered}.values())  # a retried step: its last entry replays
    # The steps, then what their waits took (a wait finds it by name, wherever it stands).
    taken = _outcomes(invocation_id, latest, [r.entry for r in records])
    await _check_children(t, invocation_id, latest, taken)
    # First the FORKED entry: two calls under one id that would copy other steps (another
    # source, another from_step) meet on it whatever their copies, even when one call's are
    # a prefix of the other's, or it has none. Written as a copy of the source's.
    forked = pb.JournalEntry(
        kind=pb.ENTRY_KIND_FORKED,
        index=1,
        name=invocation_id,
        step=from_step,
        writer=outcome_writer(invocation_id),
    )
    copies = [forked]
    copies += [_fork_copy(invocation_id, i, e) for i, e in enumerate(ordered, start=2)]
    for index, entry in enumerate(taken, start=len(copies) + 1):
        copies.append(_outcome_copy(invocation_id, new_id, index, entry))
    last, done = 0, 0
    if chosen:
        last, done = await _copied(t, new_id, invocation_id, from_step, copies)
    if done < 0:
        return new_id  # submitted by an earlier call
    # The copied entries and arguments share (never copy) the stored objects they reference:
    # held before they are copied, so the source's retention leaves them in place. Before a
    # blocked source is cancelled: a source gone meanwhile is refused with nothing changed.
    shared = [e.output for e in steps + taken if e.HasField("output")] + [st.args]
    await _hold(t, invocation_id, shared, new_id)
    if st.status == pb.STATUS_BLOCKED:
        # The fork replaces it (as Temporal's reset terminates the run it resets): left
        # blocked, a processor of its pinned version could finish it too, and the steps
        # from ``from_step`` on would run twice, once in each.
        why = f"cancelled while blocked: replaced by fork {new_id} (from step {from_step})"
        if await cancel_blocked(t, rec, why) is None:
            raise IllegalTransitionError(
                f"cannot fork blocked invocation {invocation_id} in its place: a processor of "
                "its pinned version has just taken it up; fork it once it ends, or cancel it",
                Status.RUNNING.value,
            )
    for index, copy in enumerate(copies[done:], start=done + 1):
        # The message id names the copy's content: another call's other copy at this index
        # (a fork of another source under the same id, at the same moment) is never dropped
        # as a duplicate of it; it meets the sequence check and is refused.
        digest = hashlib.sha256(copy.SerializeToString(deterministic=True)).hexdigest()[:16]
        try:
            last = await t.append(new_id, copy, last, f"fork:{new_id}:{index}:{digest}")
        except JournalConflict:
            raise ConflictError(
                f"another call is making fork {new_id} at the same time; call again to get "
                "that one (or a ConflictError if it copies other steps)"
            ) from None
    key = st.partition_key if st.partition_key != invocation_id else None
    await submit_payload(
        t,
        st.workflow,
        st.args,
        new_id,
        key,
        journal_length=len(copies),
        forked_from=invocation_id,
        fork_from_step=from_step,
    )
    if chosen and not await _made_from(t, new_id, "forked_from", invocation_id, from_step):
        raise _taken(new_id, "fork", invocation_id)  # gone already: retention
    return new_id


def _whole_branches(steps: list[pb.JournalEntry]) -> list[pb.JournalEntry]:
    """``steps`` but those whose branch has an earlier step not among them. After a crash,
    a branch's in-flight step may take a higher number in the next run than its branch's
    later step did (``ReplayMachine``): a fork copying the later step and not the earlier
    one ran the earlier again and replayed the later, which no run could have done."""
    placed = {(e.branch, e.branch_step) for e in steps if e.branch_step > 0}
    return [
        e
        for e in steps
        if e.branch_step <= 0 or all((e.branch, k) in placed for k in range(1, e.branch_step))
    ]


def _fork_copy(source: str, index: int, entry: pb.JournalEntry) -> pb.JournalEntry:
    copy = pb.JournalEntry()
    copy.CopyFrom(entry)
    copy.index, copy.writer = index, step_writer(source)
    # An awakeable step copied from a fork's copy names that fork's source: named as
    # ``source`` asked for it, it is what the replay matches (``ReplayMachine.next_step``
    # takes ``awk.<source>.`` for ``awk.<fork>.``).
    copy.name = awakeable_asked(source, entry)
    for code_field in ("plugin", "plugin_version", "code_fingerprint"):
        copy.ClearField(code_field)  # the fork starts on the code that first runs it
    return copy


def _outcome_copy(source: str, fork: str, index: int, entry: pb.JournalEntry) -> pb.JournalEntry:
    """A copy in ``fork`` of what a copied wait of ``source`` took; an awakeable's resolution
    under the fork's id for it (``awk.<fork>.<n>``: what the fork's workflow waits for).

    Its writer is no step copy's: ``durable status`` counts those as the copied steps (the
    fork's ``fork_from_step``)."""
    copy = pb.JournalEntry()
    copy.CopyFrom(entry)
    copy.index, copy.writer = index, outcome_writer(source)
    prefix = f"awk.{source}."
    if entry.kind == pb.ENTRY_KIND_AWAKEABLE_RESULT and entry.name.startswith(prefix):
        copy.name = f"awk.{fork}.{entry.name.removeprefix(prefix)}"
    return copy


def _outcomes(
    source: str, latest: list[pb.JournalEntry], journal: list[pb.JournalEntry]
) -> list[pb.JournalEntry]:
    """What the copied steps of ``source`` (``latest``: each step's last entry) waited for
    and took, in ``journal`` order: the
    first resolution of each awakeable, each child's result, the first k signals of each
    name that k copied steps waited for, and the ``patched()`` markers before copied steps.
    Without them a fork waited forever at a step its source had passed. The same from the
    same journal (a fork with an id checks the copies an earlier call made)."""
    awakeables = {awakeable_asked(source, e) for e in latest if e.kind == pb.ENTRY_KIND_AWAKEABLE}
    children = {
        str(_codec.decode(e.output))  # the child's id (``RunContext._submit``)
        for e in latest
        if e.kind == pb.ENTRY_KIND_CHILD and e.HasField("output")
    }
    signals = Counter(e.name for e in latest if e.kind == pb.ENTRY_KIND_SIGNAL_WAIT)
    # The patched() markers before copied steps: without them the fork's replay took the
    # old code where its source had taken the new, and was blocked at once.
    placed = {(e.branch, e.branch_step) for e in latest if e.branch_step > 0}
    numbered = {e.step for e in latest}
    out: list[pb.JournalEntry] = []
    for e in journal:
        if e.kind == pb.ENTRY_KIND_PATCH:
            if (e.branch, e.branch_step) in placed if e.branch_step > 0 else e.step in numbered:
                out.append(e)
        elif e.kind == pb.ENTRY_KIND_AWAKEABLE_RESULT and e.name in awakeables:
            awakeables.discard(e.name)  # the first resolution wins (ReplayMachine.record)
            out.append(e)
        elif e.kind == pb.ENTRY_KIND_CHILD_RESULT and e.name in children:
            children.discard(e.name)
            out.append(e)
        elif e.kind == pb.ENTRY_KIND_SIGNAL and signals[e.name] > 0:
            signals[e.name] -= 1
            out.append(e)
    return out


async def _check_children(
    t: Transport, source: str, latest: list[pb.JournalEntry], taken: list[pb.JournalEntry]
) -> None:
    """A ConflictError when a copied step of ``source`` (``latest``: each step's last entry,
    by step) waits for a child (``ctx.invoke``) whose result ``taken`` lacks: the child
    reports to ``source`` alone, and the fork would wait for it for good."""
    reported = {e.name for e in taken if e.kind == pb.ENTRY_KIND_CHILD_RESULT}
    for e in latest:
        if e.kind != pb.ENTRY_KIND_CHILD or e.detached or not e.HasField("output"):
            continue
        child = str(_codec.decode(e.output))  # the child's id (``RunContext._submit``)
        if child in reported:
            continue
        rec = await t.get_state(child)
        if rec is not None and rec.state.status in TERMINAL_PB:
            raise ConflictError(
                f"step {e.step} of {source} waits for child {child}, which has finished, but "
                f"its result has not reached {source} yet: try again in a moment"
            )
        raise ConflictError(
            f"step {e.step} of {source} waits for child {child}, which has not finished: fork "
            f"from step {e.step} or earlier (the fork then starts a child of its own), or once "
            "the child has finished"
        )


async def _copied(
    t: Transport, new_id: str, source: str, from_step: int, copies: list[pb.JournalEntry]
) -> tuple[int, int]:
    """What an earlier fork of ``source`` from ``from_step`` under ``new_id`` left: (the
    journal's last sequence, how many of ``copies`` it holds), or (_, -1) when that fork was
    submitted. Anything else under the id (another invocation, a fork from another step,
    other copies) is a ConflictError."""
    if (rec := await t.get_state(new_id)) is not None and not _made_as(
        rec.state, "forked_from", source, from_step
    ):
        made = rec.state.fork_from_step if rec.state.forked_from == source else 0
        raise _taken(new_id, "fork", source, f"a fork from step {made}" if made else "")
    if rec is not None:
        # Submitted, as asked (its state names its source and from_step; its FORKED entry
        # kept any other call's copies out): that fork. A fork made before forks recorded
        # their from_step is taken as it is too (its copies have no FORKED entry to match).
        return 0, -1
    have = await t.read_journal(new_id, current=True)
    mine = (step_writer(source), outcome_writer(source))  # copied steps and outcomes
    held = [r for r in have if r.entry.writer in mine]
    if have[: len(held)] != held or [r.entry for r in held] != copies[: len(held)]:
        raise _taken(new_id, "fork", source, "copies other steps")
    if len(have) != len(held):
        raise _taken(new_id, "fork", source)
    return (have[-1].seq if have else 0), len(held)


async def _made_from(
    t: Transport, new_id: str, field: str, source: str, from_step: int = 0
) -> bool:
    """Whether ``new_id`` is an invocation made from ``source`` (``field`` names it; a fork
    from ``from_step``; False: there is none yet); an id taken otherwise is a ConflictError."""
    if (rec := await t.get_state(new_id)) is None:
        return False
    if not _made_as(rec.state, field, source, from_step):
        raise _taken(new_id, "rerun" if field == "rerun_of" else "fork", source)
    return True


def _made_as(st: pb.ExecutionState, field: str, source: str, from_step: int) -> bool:
    """Whether ``st`` is of an invocation made from ``source`` as asked (a fork: from
    ``from_step``, unless it was made before forks recorded theirs)."""
    if getattr(st, field) != source:
        return False
    return not (from_step and st.fork_from_step and st.fork_from_step != from_step)


def _taken(new_id: str, what: str, source: str, how: str = "") -> ConflictError:
    return ConflictError(
        f"invocation id {new_id} is taken by another invocation than a {what} of {source}"
        + (f" ({how})" if how else "")
        + ": choose another id, or pass the same request again to get that one"
    )


async def _hold(t: Transport, source: str, shared: list[pb.Payload], holder: str) -> None:
    """Hold the owners of the stored objects ``shared`` references for ``holder`` (a fork or
    rerun of ``source``), then check ``source`` is still there: its retention deletes its
    state before it looks for holds, so if the state outlived the holds, retention will see
    them and leave the objects (and ``source``'s own holds on older owners lasted until then);
    if it is gone, the objects may be too, and the fork or rerun is refused (ExpiredError)."""
    owners = _payloads.owners(shared, but=holder)
    for owner in sorted(owners):
        await t.payloads.hold(owner, holder)
    if owners:
        await state_of(t, source)


def _awakeable_owner(awakeable_id: str) -> str:
    parts = awakeable_id.split(".") if isinstance(awakeable_id, str) else []
    # <n>, or <path>_<n> for one a branch of the workflow made (its path's dots as _).
    if len(parts) != 3 or parts[0] != "awk" or not _AWAKEABLE_N.fullmatch(parts[2]):
        raise NotFoundError(
            f"{awakeable_id!r} is not an awakeable id (they look like awk.<invocation>.<n>)"
        )
    try:
        return check_invocation_id(parts[1])
    except InvalidInputError as e:
        raise NotFoundError(f"{awakeable_id!r} is not an awakeable id: {e}") from e


def _check_open(invocation_id: str, machine: ReplayMachine) -> None:
    # As the replay has it: a retried failure is not the end (its FAILED entry stays in the
    # journal), and a cancellation is.
    if machine.final is not None:
        raise InvocationFinishedError(f"invocation {invocation_id} has already finished")


def _same_outcome(stored: pb.JournalEntry, entry: pb.JournalEntry) -> bool:
    """Whether two resolutions of an awakeable say the same (their timestamps aside)."""
    if stored.HasField("output") != entry.HasField("output") or stored.failure != entry.failure:
        return False
    return not entry.HasField("output") or same_args(stored.output, entry.output)


async def complete_awakeable(
    t: Transport, awakeable_id: str, payload: pb.Payload | None, failure: pb.Failure | None
) -> None:
    """Resolve (``payload``) or reject (``failure``) an awakeable, once."""
    invocation_id = _awakeable_owner(awakeable_id)
    entry = _client_entry(pb.ENTRY_KIND_AWAKEABLE_RESULT, name=awakeable_id)
    if payload is not None:
        entry.output.CopyFrom(await _payloads.offload(t.payloads, payload, invocation_id))
    if failure is not None:
        entry.failure.CopyFrom(failure)
    msg_id = f"awk:{awakeable_id}"

    def check(records: list[JournalRecord], machine: ReplayMachine) -> None:
        _check_open(invocation_id, machine)
        for r in records:
            if r.entry.kind == pb.ENTRY_KIND_AWAKEABLE_RESULT and r.entry.name == awakeable_id:
                if r.msg_id == msg_id and _same_outcome(r.entry, entry):
                    # Resolved so before, perhaps by a call whose wake-up failed: taken as
                    # this call's entry, and the invocation is woken again (deduplicated).
                    return
                raise AlreadyResolvedError(
                    f"awakeable {awakeable_id} was already "
                    f"{'rejected' if r.entry.HasField('failure') else 'resolved'}"
                )

    await _deliver(t, invocation_id, entry, msg_id, check)


async def signal(
    t: Transport, invocation_id: str, name: str, payload: pb.Payload, signal_id: str | None = None
) -> None:
    """Send the signal ``name`` to an invocation (kept until the workflow waits for it).
    ``signal_id``: the same id again is the same signal (delivered once, woken again)."""
    check_invocation_id(invocation_id)
    if not isinstance(name, str) or not name or len(name) > 256:
        raise InvalidInputError("a signal name is a non-empty string of at most 256 chars")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InvalidInputError(
            f"a signal name must be valid Unicode: {name!r:.80} holds a lone surrogate at "
            f"position {e.start}"
        ) from e
    # The id goes into the message id header (``sig:<invocation>:<id>``), which NATS strips of
    # surrounding blanks and line breaks: an id it changed never matched the engine's own
    # duplicate check, and the signal was delivered twice. A safe set of characters only.
    if signal_id is not None and (
        not isinstance(signal_id, str) or not _SIGNAL_ID.fullmatch(signal_id)
    ):
        raise InvalidInputError(
            f"invalid signal id {signal_id!r:.80}: use 1-256 characters from A-Z a-z 0-9 _ . : -"
        )
    payload = await _payloads.offload(t.payloads, payload, invocation_id)
    entry = _client_entry(pb.ENTRY_KIND_SIGNAL, name=name, output=payload)
    msg_id = f"sig:{invocation_id}:{signal_id or uuid.uuid4().hex}"
    await _deliver(t, invocation_id, entry, msg_id, lambda _, m: _check_open(invocation_id, m))


async def _deliver(
    t: Transport,
    invocation_id: str,
    entry: pb.JournalEntry,
    msg_id: str,
    check: Check,
) -> None:
    rec = await state_of(t, invocation_id)  # a queued plain invoke's too
    if rec.state.status in TERMINAL_PB:
        raise InvocationFinishedError(
            f"invocation {invocation_id} is already {Status.from_pb(rec.state.status)}"
        )
    await deliver_external(t, _addressee(rec.state), entry, msg_id, check)


async def find_payload(t: Transport, ref: str) -> pb.Payload:
    """The recorded payload ``ref`` names (see ``Client.payload``), as bytes: its encoding
    becomes ENCODING_BYTES (the raw encoded value is what is read)."""
    owner, sep, which = ref.partition(":") if isinstance(ref, str) else ("", "", "")
    if not sep:
        owner = payload_owner(ref) if isinstance(ref, str) and "." in ref else ""
        if not owner:
            raise InvalidInputError(
                f"{ref!r:.80}: say <invocation>:args, <invocation>:output, <invocation>:<step> "
                "or a stored object's name (<invocation>.<token>)"
            )
    check_invocation_id(owner)
    rec = await state_of(t, owner)
    # As far as the journal's leader has it now, and the output as the journal has it: the
    # state is written after the final entry and the result notice, so it may not hold the
    # output yet right after ``invoke``/``wait`` returned (as ``Client.result`` reads it).
    records = await t.read_journal(
        owner, min_entries=rec.state.journal_length, current=True, of=rec.state
    )
    st = as_journaled(rec.state, [r.entry for r in records])
    found: pb.Payload | None = None
    if which == "args":
        found = st.args if st.HasField("args") else None
    elif which == "output":
        found = st.output if st.HasField("output") else None
    elif sep:
        if not (which.isascii() and which.isdigit()):
            raise InvalidInputError(
                f"{ref!r}: say <invocation>:args, <invocation>:output or <invocation>:<step>"
            )
        steps = [r.entry for r in records if r.entry.kind in STEP_KINDS]
        hits = [e.output for e in steps if e.step == int(which) and e.HasField("output")]
        found = hits[-1] if hits else None
    else:
        everything = [st.args, st.output, *(r.entry.output for r in records)]
        hits = [p for p in everything if p.HasField("ref") and p.ref.object == ref]
        found = hits[0] if hits else None
    if found is None:
        raise NotFoundError(f"{ref}: no such value recorded")
    out = pb.Payload()
    out.CopyFrom(found)
    out.encoding, out.type_name = pb.ENCODING_BYTES, ""
    return out
