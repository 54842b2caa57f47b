"""How work enters the engine: accepting an invocation, and appending an entry to a running
one from outside (a resolution, a signal, a lifecycle request, a child's result).

These are the engine's rules, not NATS's: the transport below only writes what it is told, each
write conditional. Both the client and the processors (child invocations, reports to a parent)
come through here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from durable_core import _codec, _payloads
from durable_core._journal import ReplayMachine, Submission
from durable_core._pb.durable.v1 import durable_pb2 as pb
from durable_core._transport import JournalConflict, JournalRecord, StateRecord, Transport
from durable_core.errors import (
    ConflictError,
    DurableError,
    InvalidInputError,
    InvocationFinishedError,
)

log = logging.getLogger("durable_core.worker")

__all__ = [
    "Check",
    "Addressee",
    "check_same_workflow",
    "deliver_external",
    "report_to_parent",
    "submit",
    "submit_child",
    "submit_start_only",
    "trace_id",
]

# Rounds of read, check, fenced append before an external entry gives up.
_APPEND_ROUNDS = 50

# Refuses an entry from outside by raising, given the journal's records and its machine.
Check = Callable[[list[JournalRecord], ReplayMachine], None]


async def submit(t: Transport, state: pb.ExecutionState, cmd: pb.Command) -> StateRecord | None:
    """Accept an invocation: create its state, then publish (or schedule) its start; both
    at once when a processor can rebuild the state from the command (``_rebuildable``).

    Idempotent by invocation id: returns None when the state already existed; the start
    is then published again only if the invocation is still pending (dedup makes that
    safe). Raises InvalidInputError when the id is taken by another workflow.
    """
    delayed = state.start_at_ms > int(time.time() * 1000) + 1000
    if not delayed and _rebuildable(state, cmd):
        # The state holds nothing the processor cannot rebuild from the command: create
        # it and publish the start at once (one round trip, not two). A processor that
        # reads no state yet runs from the command; one that finds another workflow's
        # state drops the start (see below: that id is refused here).
        results = await asyncio.gather(
            t.create_state(state),
            t.publish_command(cmd, msg_id=f"start:{state.invocation_id}"),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result
        created, published = results
        assert not isinstance(created, BaseException) and not isinstance(published, BaseException)
        if created is None:
            await _existing_of_same_workflow(t, state)
        elif not published:
            await _own_start(t, created, cmd, delayed=False)
        return created
    created = await t.create_state(state)
    due = state.start_at_ms if delayed else 0
    if created is None:
        existing = await _existing_of_same_workflow(t, state)
        if existing is not None and existing.state.status != pb.STATUS_PENDING:
            return None
        if existing is not None:
            # The stored invocation's due time, not this submission's: a second submission
            # after the duplicate window moved a delayed start later (or, undelayed, ran it
            # at once: the processor starts it at its due time then).
            at = existing.state.start_at_ms
            due = at if at > int(time.time() * 1000) + 1000 else 0
    if await _publish_start(t, cmd, due, ""):
        return created
    if created is not None:
        await _own_start(t, created, cmd, delayed=delayed)
    return created


async def _publish_start(t: Transport, cmd: pb.Command, at_ms: int, suffix: str) -> bool:
    """Publish (or, ``at_ms``, schedule) a start; False if its message id was stored before."""
    msg_id = f"start:{cmd.invocation_id}{suffix}"
    if at_ms:
        key = f"{cmd.invocation_id}.start"
        return await t.schedule_command(cmd, at_ms=at_ms, key=key, msg_id=msg_id)
    return await t.publish_command(cmd, msg_id=msg_id)


async def _own_start(t: Transport, created: StateRecord, cmd: pb.Command, *, delayed: bool) -> None:
    """This submission created the state, but a start of the id was stored already: a plain
    invoke's, which left the state to its processor and had not had it created yet (or this
    submission's own first try, whose create failed). That start runs this state only if it
    is the same submission (``started_by``), so store this one's own start too, under a
    message id of its own: a second start of one invocation is harmless (``_hold``, case 3)."""
    st = created.state
    await _publish_start(t, cmd, st.start_at_ms if delayed else 0, f":{created.revision}")


async def _existing_of_same_workflow(t: Transport, state: pb.ExecutionState) -> StateRecord | None:
    """The state already under this id; ConflictError if another workflow has it."""
    existing = await t.get_state(state.invocation_id)
    if existing is not None:
        check_same_workflow(existing.state, state)
    return existing


def check_same_workflow(existing: pb.ExecutionState, state: pb.ExecutionState) -> None:
    """ConflictError if the id of ``state`` is taken by another workflow's invocation (an id
    reused, as with other arguments: not malformed input)."""
    if existing.workflow != state.workflow:
        raise ConflictError(
            f"invocation id {state.invocation_id} is already used by workflow {existing.workflow!r}"
        )


async def submit_start_only(t: Transport, state: pb.ExecutionState, cmd: pb.Command) -> bool:
    """Accept an invocation whose caller waits for its result by storing only its start, and
    leave the state to the processor that starts it (``Command.state_at_start``); True if so.
    False, with nothing stored, for a start not due now or whose state the processor could not
    build from the command alone (``_rebuildable``: a partition key, parent, deadline or
    history); also False, with ``cmd`` published before, when the start was there already
    (dedup): :func:`submit` then accepts it as any resubmission."""
    if state.start_at_ms > int(time.time() * 1000) + 1000 or not _rebuildable(state, cmd):
        return False
    cmd.state_at_start = True
    if await t.publish_command(cmd, msg_id=f"start:{state.invocation_id}"):
        return True
    cmd.state_at_start = False
    return False


def state_of_start(cmd: pb.Command) -> pb.ExecutionState:
    """The state a start command builds, status unset: what a processor that finds no state
    stores (RUNNING), or a client that finds the start queued and no state yet (PENDING,
    ``durable_core.client._lifecycle.state_of``); over a state built from the same command
    both would have stored the same."""
    st = pb.ExecutionState(
        invocation_id=cmd.invocation_id,
        workflow=cmd.workflow,
        args=cmd.args,
        partition_key=cmd.partition_key,
        created_at_ms=cmd.created_at_ms or int(time.time() * 1000),
        parent_id=cmd.parent_id,
        trace_id=trace_id(cmd.metadata),
        notify=cmd.notify,
    )
    st.trace_context.update(cmd.metadata)  # as the client would have stored it
    return st


def same_args(a: pb.Payload, b: pb.Payload) -> bool:
    """Equal values: JSON compared decoded (key order and spacing do not matter), stored
    ones by digest."""
    by_ref = _payloads.same_payload(a, b)
    if by_ref is not None or a.HasField("ref") or b.HasField("ref"):
        return bool(by_ref)
    if a.encoding != b.encoding or a.type_name != b.type_name:
        return False
    if a.encoding == pb.ENCODING_JSON and a.data != b.data:
        try:
            return bool(_codec.decode(a) == _codec.decode(b))
        except InvalidInputError:
            return False
    return a.data == b.data


def started_by(state: pb.ExecutionState, cmd: pb.Command) -> bool:
    """Whether ``state`` is what the start ``cmd``, one that left the state to its processor
    (``Command.state_at_start``), builds: this submission's, stored by its waiter, a status
    or the processor, or an identical one's. Else another submission of the id won its create
    while that start was queued; that one stored a start of its own, which runs it."""
    return (
        state.workflow == cmd.workflow
        and state.partition_key == cmd.partition_key
        and not (state.parent_id or state.start_at_ms or state.deadline_ms)
        and not (state.forked_from or state.rerun_of)
        and same_args(state.args, cmd.args)
    )


def _rebuildable(state: pb.ExecutionState, cmd: pb.Command) -> bool:
    """Whether a processor that reads no state builds this one from the command alone.

    Then the state may be created while the start is published. Keyed invocations are left
    out: their ordering reads the states of the key's invocations.
    """
    return (
        cmd.kind == pb.COMMAND_KIND_START
        and state.partition_key == state.invocation_id == cmd.invocation_id
        and not (state.parent_id or state.notify_parent or state.parent_workflow)
        and not (state.journal_length or state.forked_from or state.rerun_of)
        and not state.deadline_ms
        and not state.child_ids
    )


async def _append_external(
    t: Transport,
    invocation_id: str,
    entry: pb.JournalEntry,
    msg_id: str,
    check: Check | None = None,
) -> int:
    """Append an entry from outside the running processor (a resolution, a signal).

    Reads the journal, lets ``check`` refuse (by raising; it is given the records and the
    journal's machine), and appends fenced by the last sequence it saw; when something else
    was appended meanwhile it reads what is newer and decides again. Returns the entry's
    sequence.

    Each round reads and takes in only what is newer than the last (a run journaling ~1,800
    steps a second moved the journal on during every whole read and rebuilt machine: a pause
    or cancel never got in, and was answered "already completed" once the run ended).

    A refusal stands only on the journal as its stream's leader has it now: the first read
    may be answered by a follower a few entries behind, and a resume was refused "not
    paused" right after its pause (chaos, seed 31002: the invocation stayed paused).
    """
    seen = 0
    current = False  # read up to what the leader has (after a refusal)
    records: list[JournalRecord] = []
    machine = ReplayMachine(invocation_id)
    by_msg_id: dict[str, int] = {}  # every entry read so far (a round that refused included)
    for _ in range(_APPEND_ROUNDS):
        after = records[-1].seq if records else 0
        fresh = await t.read_journal(invocation_id, min_seq=seen, current=current, start=after + 1)
        records.extend(fresh)
        for r in fresh:
            machine.record(r.entry)
            by_msg_id.setdefault(r.msg_id, r.seq)
        ours = [r.seq for r in fresh if r.msg_id == msg_id and _same(r.entry, entry)]
        if ours:
            # This very entry landed (its answer lost, or "wrong last sequence" for a write
            # the server stored): done, before ``check`` takes it for someone else's.
            return ours[0]
        if check is not None:
            try:
                check(records, machine)
            except Exception:
                if current:
                    raise
                current = True  # decide again on the leader's journal
                continue
        seen = max(seen, records[-1].seq + 1 if records else 1)  # after a conflict: newer
        if msg_id in by_msg_id:
            return by_msg_id[msg_id]
        entry.index = len(records) + 1
        try:
            return await t.append(invocation_id, entry, records[-1].seq if records else 0, msg_id)
        except JournalConflict:
            continue
    raise DurableError(f"journal of {invocation_id} kept changing; try again")


def _same(stored: pb.JournalEntry, entry: pb.JournalEntry) -> bool:
    """Whether ``stored`` is ``entry`` as appended (its index aside: a retry renumbers it)."""
    a, b = pb.JournalEntry(), pb.JournalEntry()
    a.CopyFrom(stored)
    b.CopyFrom(entry)
    a.index = b.index = 0
    return a == b


@dataclass(frozen=True, slots=True)
class Addressee:
    """The invocation an entry from outside is for, and where its wake-up goes."""

    invocation_id: str
    workflow: str
    partition_key: str
    route: str = ""  # its pinned version token, if it has one


async def deliver_external(
    t: Transport,
    to: Addressee,
    entry: pb.JournalEntry,
    msg_id: str,
    check: Check | None = None,
    *,
    wake: bool = True,
) -> int:
    """Hand an entry from outside to an invocation: every resolution, signal, lifecycle
    request and child's result comes this way (the client's verbs, a child's report).

    Appends it (``_append_external``: ``check`` may refuse), then wakes the invocation so a
    suspended one sees it (``wake``). Returns the entry's sequence. The client's pause and
    cancel also tell a run in flight (``client._lifecycle.change``).
    """
    seq = await _append_external(t, to.invocation_id, entry, msg_id, check)
    await follow_delivery(t, to, seq, wake=wake)
    return seq


async def follow_delivery(t: Transport, to: Addressee, seq: int, *, wake: bool) -> None:
    """What follows an entry from outside journaled at ``seq``: wake the invocation.
    Idempotent (a wake-up is deduplicated per entry), so a caller cut short before it may
    do it again."""
    if wake:
        await t.publish_wake(to.invocation_id, to.workflow, to.partition_key, seq, route=to.route)


async def submit_child(t: Transport, submission: Submission, parent: pb.Command) -> None:
    """Accept an invocation a workflow starts (a child, or ``ctx.send``) from the run of
    ``parent``'s command."""
    now = int(time.time() * 1000)
    state = pb.ExecutionState(
        invocation_id=submission.invocation_id,
        workflow=submission.workflow,
        status=pb.STATUS_PENDING,
        args=submission.args,
        partition_key=submission.partition_key,
        created_at_ms=now,
        updated_at_ms=now,
        parent_id=submission.parent_id,
        parent_workflow=parent.workflow,
        parent_partition_key=parent.partition_key,
        notify_parent=submission.notify_parent,
        start_at_ms=submission.start_at_ms,
        trace_context=submission.headers,  # the child's runs join this trace
        trace_id=trace_id(submission.headers),
    )
    cmd = pb.Command(
        invocation_id=submission.invocation_id,
        workflow=submission.workflow,
        args=submission.args,
        partition_key=submission.partition_key,
        kind=pb.COMMAND_KIND_START,
        created_at_ms=now,
        parent_id=submission.parent_id,
        metadata=submission.headers,
    )
    await submit(t, state, cmd)


async def report_to_parent(t: Transport, st: pb.ExecutionState, final: pb.JournalEntry) -> None:
    """Hand a finished child's outcome (its final entry) to the parent that waits for it; a
    parent that has finished meanwhile is left alone."""
    parent, child = st.parent_id, st.invocation_id
    result = pb.JournalEntry(
        kind=pb.ENTRY_KIND_CHILD_RESULT,
        name=child,
        timestamp_ms=int(time.time() * 1000),
        writer=f"child:{child}",
    )
    if final.HasField("output"):
        result.output.CopyFrom(final.output)
        # The parent's journal shares the child's stored output (never a copy): held for the
        # parent, so the child's retention (it ends first) leaves it while the parent needs it.
        for owner in sorted(_payloads.owners([final.output], but=parent)):
            await t.payloads.hold(owner, parent)
    if final.HasField("failure"):
        result.failure.CopyFrom(final.failure)

    def unfinished(records: list[JournalRecord], machine: ReplayMachine) -> None:
        # A failed parent takes it still: a retry replays the step that waits for it (the
        # child was started before the failure, and reports only once).
        final = machine.final
        if final is not None and final.kind != pb.ENTRY_KIND_FAILED:
            raise InvocationFinishedError(f"invocation {parent} has already finished")

    # The parent's wake-up follows its pin, if it has one (it may have got it after the child
    # started): the state says.
    parent_state = await t.get_state(parent)
    if parent_state is None:
        # Gone by retention (a parent exists before its children): a late re-report must not
        # start an orphan journal under its id.
        log.info("parent %s of %s is gone; its result is not delivered", parent, child)
        return
    route = parent_state.state.pinned_version
    to = Addressee(parent, st.parent_workflow, st.parent_partition_key, route)
    with contextlib.suppress(InvocationFinishedError):
        await deliver_external(t, to, result, f"child-result:{child}", unfinished)


def trace_id(headers: Mapping[str, str]) -> str:
    """The trace id (32 hex digits) of a W3C ``traceparent`` header, or ""."""
    parts = headers.get("traceparent", "").split("-")
    return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else ""
