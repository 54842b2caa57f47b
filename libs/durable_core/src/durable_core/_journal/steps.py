"""The step machine of one run: every decision a workflow's context makes, as pure code.

Restate keeps its state machine (``vm.py``) apart from the context that drives it; so does this
engine. Given the journal (a ``ReplayMachine``) the machine decides, for each thing a workflow
does: replay the recorded outcome or execute the step; deliver a cancellation here; park on a
pause; after a failed attempt, retry at a time or give up; whether a timer is due, near (wait in
process) or far (park on a server-side timer); whether what a wait waits for has arrived; when
every step is parked (suspend); and the deterministic values (``now``, UUIDs, random numbers,
awakeable and child ids) that are the same on every replay. The context
(``durable_core.engine._context``) runs the I/O it asks for: no asyncio, nats or grpc here.
"""

from __future__ import annotations

import hashlib
import random as _random
import sys
import uuid as _uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from durable_core import _codec
from durable_core._journal.replay import Execute, Replay, ReplayMachine
from durable_core._pb.durable.v1 import durable_pb2 as pb
from durable_core.errors import (
    AwakeableRejectedError,
    ChildWorkflowError,
    InvocationCancelledError,
    NonDeterminismError,
    StepFailedError,
)
from durable_core.retry import RetryPolicy

__all__ = [
    "CANCELLED",
    "Branch",
    "LOCAL_TIMER",
    "MAX_SLEEP",
    "DeliverCancel",
    "Due",
    "GiveUp",
    "Park",
    "Patch",
    "RetryAt",
    "SleepFor",
    "StepMachine",
    "Submission",
    "Wait",
]

LOCAL_TIMER = timedelta(seconds=2)  # sleeps due sooner than this wait in-process
MAX_SLEEP = timedelta(days=3650)
CANCELLED = "InvocationCancelledError"  # the failure type of a step the cancellation ended


@dataclass(frozen=True, slots=True)
class Submission:
    """An invocation a workflow starts (child, or ``ctx.send``)."""

    invocation_id: str
    workflow: str
    args: pb.Payload
    partition_key: str
    parent_id: str
    notify_parent: bool
    start_at_ms: int = 0
    headers: Mapping[str, str] = field(default_factory=dict)  # trace context for the new one


@dataclass(frozen=True, slots=True)
class Wait:
    """Something a parked workflow waits for; ``wake_at_ms`` for timers."""

    what: str
    step: int
    wake_at_ms: int = 0
    tag: str = ""  # tells apart the timers of one step (its retry attempts)


@dataclass(frozen=True, slots=True)
class DeliverCancel:
    """Journal ``entry``, then raise InvocationCancelledError: the cancellation is delivered
    here (and a replay raises it here again)."""

    entry: pb.JournalEntry


@dataclass(frozen=True, slots=True)
class Park:
    """Wait for ``wait``: the run stops once every step is parked, a later run replays to here."""

    wait: Wait


@dataclass(frozen=True, slots=True)
class Due:
    """The timer is due: go on."""


@dataclass(frozen=True, slots=True)
class SleepFor:
    """The timer is due soon: wait ``seconds`` in process, then ask again."""

    seconds: float


@dataclass(frozen=True, slots=True)
class RetryAt:
    """Journal the failed attempt (``entry``), then run the step again at ``wake_at_ms``."""

    entry: pb.JournalEntry
    wake_at_ms: int


@dataclass(frozen=True, slots=True)
class Patch:
    """What ``ctx.patched`` answers; ``marker``: journal it before the run's next entry."""

    new_code: bool
    marker: pb.JournalEntry | None = None


@dataclass(frozen=True, slots=True)
class GiveUp:
    """The step failed for good: journal it with ``failure``."""

    failure: pb.Failure


@dataclass(slots=True)
class Branch:
    """One task of the workflow's code: its own (``path`` "") or one it started, by the order
    in which the tasks of its parent first asked the context for something ("2.1": the first
    of those the second one started). Its steps, UUIDs, random numbers, awakeable ids and
    clock are its own, so they are the same on every replay whichever branch gets ahead.

    ``seen``: the cancellation was raised in it, or it asked for a step while handling the
    cancellation (in an ``except`` or ``finally`` clause it passes through), or it was
    started by a branch that had seen it or while handling it: its new steps are
    compensation, which the cancellation never ends (see ``StepMachine._reaches``)."""

    path: str = ""
    now_ms: int = 0
    steps: int = 0
    branches: int = 0
    uuids: int = 0
    awakeables: int = 0
    rng: _random.Random | None = None
    seen: bool = False

    def child(self) -> Branch:
        """The branch of a task this one starts (now: ``seen`` is decided here)."""
        self.branches += 1
        path = f"{self.path}.{self.branches}" if self.path else str(self.branches)
        return Branch(path, self.now_ms, seen=self.seen or handling_cancel())

    def next_step(self) -> tuple[str, int]:
        self.steps += 1
        return self.path, self.steps


def handling_cancel() -> bool:
    """Whether the calling code handles a cancellation of the invocation: it runs in an
    ``except`` (or ``except*``) clause for one, in a ``finally`` clause one passes through,
    or in the handler of an error raised while handling one."""
    error, seen = sys.exception(), set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, InvocationCancelledError):
            return True
        if isinstance(error, BaseExceptionGroup):
            cancels, _ = error.split(InvocationCancelledError)
            if cancels is not None:
                return True
        error = error.__context__
    return False


class StepMachine:
    """The decisions of one run of one invocation over its journal.

    Args:
        journal: what the journal holds (entries appended during the run are recorded in it).
        start_time_ms: ``now()`` before the first step (when the invocation was submitted).
    """

    def __init__(
        self,
        invocation_id: str,
        journal: ReplayMachine,
        start_time_ms: int,
        branch: Callable[[], Branch] | None = None,
    ) -> None:
        self.invocation_id = invocation_id
        self.journal = journal
        self.root = Branch("", start_time_ms)
        # The branch asking (the context knows its tasks); one branch without it.
        self.branch: Callable[[], Branch] = branch or (lambda: self.root)
        self.idents: dict[int, tuple[str, int]] = {}  # step number -> (branch, its step)
        self._branch_of: dict[int, Branch] = {}  # step number -> the branch that asked
        self.nondeterminism: NonDeterminismError | None = None  # even if the workflow caught it
        self.cancel_delivered = False  # the workflow has seen the cancellation
        self.children: list[str] = []  # child invocations started (or replayed) so far
        self.parked: list[Wait] = []
        self.executing = 0  # steps running (or journaling) now: the run may not suspend
        self._signal_waits: dict[str, int] = {}
        self._state: dict[str, pb.Payload] = {}
        # (branch, change id) -> the code it takes: each branch decides where it stands
        self._patched: dict[tuple[str, str], bool] = {}

    # -- deterministic values ------------------------------------------------------------------

    @property
    def now_ms(self) -> int:
        """The time as the journal knows it, in the asking branch."""
        return self.branch().now_ms

    @now_ms.setter
    def now_ms(self, value: int) -> None:
        self.branch().now_ms = value

    def now(self) -> datetime:
        """The time of the last journaled step this branch passed (or of the submission, or
        of when its parent started it), UTC."""
        return datetime.fromtimestamp(self.now_ms / 1000, tz=UTC)

    def saw(self, entry: pb.JournalEntry) -> None:
        """The workflow moved past ``entry``: the clock is at least its time."""
        self.now_ms = max(self.now_ms, entry.timestamp_ms)

    def uuid(self) -> _uuid.UUID:
        """The next UUID (version 4 layout) of this branch: the same on every replay."""
        b = self.branch()
        b.uuids += 1
        where = f"{b.path}:" if b.path else ""
        digest = hashlib.sha256(f"{self.invocation_id}:uuid:{where}{b.uuids}".encode()).digest()
        return _uuid.UUID(bytes=digest[:16], version=4)

    def random(self) -> float:
        """The next float in [0, 1) from a generator seeded by the invocation id (and the
        branch)."""
        b = self.branch()
        if b.rng is None:
            seed_of = f"{self.invocation_id}:{b.path}" if b.path else self.invocation_id
            seed = hashlib.sha256(seed_of.encode()).digest()
            b.rng = _random.Random(int.from_bytes(seed[:8], "big"))
        return b.rng.random()

    def awakeable_id(self) -> str:
        """The id of the next awakeable: ``awk.<invocation>.<n>``, in a branch
        ``awk.<invocation>.<path>_<n>`` (the path's dots as underscores)."""
        b = self.branch()
        b.awakeables += 1
        where = b.path.replace(".", "_") + "_" if b.path else ""
        return f"awk.{self.invocation_id}.{where}{b.awakeables}"

    def _place(self, step: int) -> tuple[str, int] | None:
        """Where step ``step`` of this run stands by its branch, (path, its step there), or
        None in a journal matched by number (written before steps named their branch)."""
        ident = self.idents.get(step)
        if ident is None or self.journal.by_number:
            return None
        return ident

    def step_key(self, step: int) -> str:
        """The idempotency key of step ``step``: ``<invocation>:<n>``, the step's place in
        the workflow's own task (its number, in a workflow without branches), or
        ``<invocation>:<branch>/<n>`` for a branch's n-th step. The same on every run, also
        for a step in flight when its processor died, whose number the next run may give
        otherwise when branches take steps at once."""
        place = self._place(step)
        if place is None:
            return f"{self.invocation_id}:{step}"
        path, n = place
        return f"{self.invocation_id}:{path}/{n}" if path else f"{self.invocation_id}:{n}"

    def child_id(self, step: int) -> str:
        """A child's id, the same on every run: ``<parent>-<n>`` (its step's place in the
        workflow's own task), ``<parent>-<branch>_<n>`` in a branch (the path's dots as
        underscores); hashed if too long."""
        place = self._place(step)
        if place is None:
            suffix = str(step)
        else:
            path, n = place
            suffix = f"{path.replace('.', '_')}_{n}" if path else str(n)
        candidate = f"{self.invocation_id}-{suffix}"
        if len(candidate) <= 128:
            return candidate
        return f"{hashlib.sha256(self.invocation_id.encode()).hexdigest()[:40]}-{suffix}"

    # -- patches (changing code under running invocations) -------------------------------------

    def patched(self, change_id: str, now_ms: int) -> Patch:
        """Whether this run takes the new code of ``change_id`` (Temporal's ``patched``).

        Where an earlier run journaled the marker (just before the step that comes next), yes;
        where the journal holds steps past this point but no marker, no: they were recorded by
        code from before the change; otherwise the run executes fresh here, so yes, and the
        marker is to be journaled (before anything after it). A change id answers the same
        throughout one run of one branch (branches decide each where they stand, and journal
        a marker each). A marker is no step: it takes no step number.
        """
        b = self.branch()  # in a branch, the marker names the branch's next step
        known = self._patched.get((b.path, change_id))
        if known is not None:
            return Patch(known)
        before = self.journal.steps_taken + 1
        if self.journal.has_patch(before, change_id, (b.path, b.steps + 1)):
            answer = Patch(True)
        elif self.journal.replaying_in(b.path, b.steps):
            answer = Patch(False)
        else:
            marker = pb.JournalEntry(
                kind=pb.ENTRY_KIND_PATCH,
                step=before,
                name=change_id,
                timestamp_ms=now_ms,
                branch=b.path,
                branch_step=b.steps + 1,
            )
            answer = Patch(True, marker)
        self._patched[(b.path, change_id)] = answer.new_code
        return answer

    # -- steps ---------------------------------------------------------------------------------

    @property
    def is_replaying(self) -> bool:
        """True while recorded steps remain that the workflow has not reached yet."""
        return self.journal.is_replaying

    def begin(self, kind: pb.EntryKind, name: str, digest: bytes) -> Replay | Execute:
        """The next step the workflow takes: replay it, or execute it.

        Raises:
            NonDeterminismError: the journal holds another step here (kept on the machine).
            InvocationCancelledError: an earlier run delivered the cancellation at this step.
        """
        branch = self.branch()
        if handling_cancel():
            branch.seen = True  # compensation: asked for while handling the cancellation
        ident = branch.next_step()
        try:
            decision = self.journal.next_step(kind, name, digest, ident)
        except NonDeterminismError as e:
            self.nondeterminism = e  # the engine blocks the invocation even if this is caught
            raise
        self.idents[decision.step] = ident
        self._branch_of[decision.step] = branch
        if isinstance(decision, Replay) and decision.entry.failure.type == CANCELLED:
            self.saw(decision.entry)  # as the run that was cancelled here did (``executed``)
            self._seen_at(decision.step)  # an earlier run was cancelled here: so is this one
            raise InvocationCancelledError(self.invocation_id)
        return decision

    def identify(self, entry: pb.JournalEntry) -> pb.JournalEntry:
        """Name on an entry of a step of this run the branch that took the step."""
        ident = self.idents.get(entry.step) if entry.kind != pb.ENTRY_KIND_PATCH else None
        if ident is not None and entry.step > 0:
            entry.branch, entry.branch_step = ident
        return entry

    def before_executing(
        self, kind: pb.EntryKind, step: int, name: str, digest: bytes, now_ms: int
    ) -> DeliverCancel | Park | None:
        """A step about to run for the first time (the step boundary where pause and cancel
        act): deliver a requested cancellation, park while paused, or None: run it."""
        if self.journal.cancel_requested and self._reaches(step):
            self._seen_at(step)
            failure = pb.Failure(type=CANCELLED, message="cancelled", step=step)
            entry = pb.JournalEntry(
                kind=kind,
                step=step,
                name=name,
                input_hash=digest,
                timestamp_ms=now_ms,
                failure=failure,
            )
            return DeliverCancel(entry)
        return self.held_by_pause(step)

    def held_by_pause(self, step: int) -> Park | None:
        """Park at ``step`` (a new step, or a step's next attempt) while a pause holds the
        invocation; never a cancelled one's compensation (the cancel ends it paused or not:
        its compensation parked, and the invocation stayed paused until resumed)."""
        if self.journal.paused and not self.cancel_delivered:
            return Park(Wait("paused (resume to continue)", step))
        return None

    def replayed(self, entry: pb.JournalEntry) -> pb.Payload:
        """The recorded outcome of a replayed step.

        Raises:
            StepFailedError: the step failed for good when it ran.
        """
        self.saw(entry)
        if entry.HasField("failure"):
            f = entry.failure
            raise StepFailedError(
                f.message, step=entry.step, name=entry.name, code=f.code, error_type=f.type
            )
        return entry.output

    def earlier_attempts(self, step: int, name: str) -> list[pb.JournalEntry]:
        """Attempts of the step that failed in earlier runs (they count: a crash or a
        suspension between two attempts neither resets the count nor skips the backoff)."""
        return [e for e in self.journal.failed_attempts(step) if e.name == name]

    def attempt_failed(
        self,
        step: int,
        name: str,
        input_hash: bytes,
        failure: pb.Failure,
        *,
        retryable: bool,
        attempt: int,
        policy: RetryPolicy,
        now_ms: int,
    ) -> RetryAt | GiveUp:
        """Attempt ``attempt`` of a step failed with ``failure``: retry at a time the policy
        sets (journaling the failed attempt first), or give up."""
        if not (retryable and policy.allows_another(attempt)):
            return GiveUp(failure)
        wake_at = now_ms + int(policy.delay(attempt) * 1000)
        entry = pb.JournalEntry(
            kind=pb.ENTRY_KIND_ATTEMPT_FAILED,
            step=step,
            name=name,
            input_hash=input_hash,
            failure=failure,
            timestamp_ms=now_ms,
            attempts=attempt,
            wake_at_ms=wake_at,
        )
        return RetryAt(entry, wake_at)

    def outcome(
        self,
        kind: pb.EntryKind,
        step: int,
        name: str,
        input_hash: bytes,
        *,
        attempts: int,
        output: pb.Payload | None,
        failure: pb.Failure | None,
        now_ms: int,
        duration_us: int,
    ) -> pb.JournalEntry:
        """The entry that records how an executed step ended (its output or its failure)."""
        entry = pb.JournalEntry(
            kind=kind,
            step=step,
            name=name,
            input_hash=input_hash,
            timestamp_ms=now_ms,
            attempts=attempts,
            duration_us=duration_us,
        )
        if failure is not None:
            entry.failure.CopyFrom(failure)
        elif output is not None:
            entry.output.CopyFrom(output)
        return entry

    def interrupted(self, step: int, cancelling: bool) -> pb.Failure | None:
        """A running step was interrupted: if by a cancellation not yet delivered, or by the
        one just delivered to a step beside it, the step ends with this failure (and the
        workflow goes on); else None (stop the run)."""
        if not cancelling or not self._reaches(step):
            return None
        self._seen_at(step)
        return pb.Failure(type=CANCELLED, message="cancelled", step=step)

    def timer_interrupted(self, step: int, cancelling: bool, now_ms: int) -> DeliverCancel | None:
        """A timer waited in process (a sleep, a retry's backoff) was interrupted: by a
        cancellation that reaches it, deliver it here, as at a parked wait; else None (the
        run ends). Left undelivered, the branch met a bare CancelledError, ran its
        ``finally`` with it, and its compensation was taken for a step in flight."""
        if not cancelling or not self._reaches(step):
            return None
        return self._cancel_at(step, now_ms)

    def _reaches(self, step: int) -> bool:
        """Whether the cancellation is delivered at ``step`` (a step or a wait): one asked
        for before it was requested (in flight when it came, whichever branch), or one
        asked for by a branch that has not seen it (``Branch.seen``), whenever asked.

        A branch in its own code when the cancellation was delivered beside it asked for its
        next step after that, and the step ran (after the cancel, or only on the run after a
        crash). Only a branch the cancellation was raised in, one that handles it (in an
        ``except`` or ``finally`` clause), and the tasks they start take new steps:
        compensation, which the cancellation never ends. Decided by the workflow's own
        structure, so every replay decides it alike (counting the cancellation raised in a
        started task as seen by the task that started it let that one's next step, a
        charge, run). Every step that comes here was begun in this run, so its branch is
        known; without one (a step machine driven by hand) the run's first delivery
        decides.
        """
        if step in self.journal.asked_before_cancel:
            return True
        branch = self._branch_of.get(step)
        return not (branch.seen if branch is not None else self.cancel_delivered)

    def _seen_at(self, step: int) -> None:
        """The cancellation is raised at ``step``: its branch has seen it."""
        self.cancel_delivered = True
        branch = self._branch_of.get(step)
        if branch is not None:
            branch.seen = True

    def executed(self, entry: pb.JournalEntry) -> None:
        """A step ran and ``entry`` is journaled: move the clock on, raise its failure.

        Raises:
            InvocationCancelledError: the cancellation ended it.
            StepFailedError: it failed for good.
        """
        self.saw(entry)
        if not entry.HasField("failure"):
            return
        f = entry.failure
        if f.type == CANCELLED:
            raise InvocationCancelledError(self.invocation_id)
        raise StepFailedError(
            f.message, step=entry.step, name=entry.name, code=f.code, error_type=f.type
        )

    # -- timers --------------------------------------------------------------------------------

    def timer(self, wait: Wait, now_ms: int) -> Due | SleepFor | Park | DeliverCancel:
        """Whether a timer (``wait.wake_at_ms``) is due, due soon (wait in process) or far
        (park on a server-side timer, holding no processor slot); a requested cancellation
        not yet delivered is delivered at a timer still to wait for, as at any wait. An
        in-process wait took none: the run that replayed a sleep after a cancel slept it
        out and completed."""
        left = wait.wake_at_ms - now_ms
        if left <= 0:
            if self.journal.cancelled_before(wait.wake_at_ms) and self._reaches(wait.step):
                # Cancelled while it waited, replayed only after its time: the cancellation
                # came first (as a run waiting for it then would have seen).
                return self._cancel_at(wait.step, now_ms)
            return Due()
        if left <= LOCAL_TIMER.total_seconds() * 1000:
            if self.journal.cancel_requested and self._reaches(wait.step):
                return self._cancel_at(wait.step, now_ms)
            return SleepFor(left / 1000)
        return Park(wait)

    def attempt_timer(
        self, step: int, name: str, due_ms: int, attempt: int, now_ms: int
    ) -> Due | SleepFor | Park | DeliverCancel:
        """When the next attempt of a step may run (see :meth:`timer`)."""
        what = f"attempt {attempt} of step {step} ({name}) at {_iso(due_ms)}"
        return self.timer(Wait(what, step, due_ms, tag=f"a{attempt}"), now_ms)

    def sleep_timer(
        self, entry: pb.JournalEntry, now_ms: int
    ) -> Due | SleepFor | Park | DeliverCancel:
        """Whether a durable sleep (its journaled step) has ended; once it has, ``now()`` is at
        least its wake time.

        Raises:
            InvocationCancelledError: an earlier run delivered the cancellation at this sleep.
        """
        self.check_cancelled_at(entry.step)
        decision = self.timer(
            Wait(f"timer until {_iso(entry.wake_at_ms)}", entry.step, entry.wake_at_ms), now_ms
        )
        if isinstance(decision, Due):
            self.now_ms = max(self.now_ms, entry.wake_at_ms)
        return decision

    # -- waiting -------------------------------------------------------------------------------

    def check_cancelled_at(self, step: int) -> None:
        """A wait that an earlier run was cancelled at is cancelled again on replay.

        Raises:
            InvocationCancelledError: it was.
        """
        if self.journal.cancel_delivered_at(step):
            self._seen_at(step)
            raise InvocationCancelledError(self.invocation_id)

    def park(self, wait: Wait, now_ms: int) -> DeliverCancel | Park:
        """The workflow waits for ``wait``: deliver a requested cancellation instead, or park.

        Raises:
            InvocationCancelledError: an earlier run delivered the cancellation here.
        """
        self.check_cancelled_at(wait.step)
        if self.journal.cancel_requested and self._reaches(wait.step):
            return self._cancel_at(wait.step, now_ms)
        self.parked.append(wait)
        return Park(wait)

    def unpark(self, wait: Wait, cancelling: bool, now_ms: int) -> DeliverCancel | None:
        """A parked wait was interrupted: by a cancellation not yet delivered, or by the one
        just delivered beside it (deliver it here too, see ``_reaches``), or by the end of
        the run (None)."""
        if not cancelling or not self._reaches(wait.step):
            return None
        self.parked.remove(wait)
        return self._cancel_at(wait.step, now_ms)

    def _cancel_at(self, step: int, now_ms: int) -> DeliverCancel:
        self._seen_at(step)
        entry = pb.JournalEntry(kind=pb.ENTRY_KIND_CANCEL_DELIVERED, step=step, timestamp_ms=now_ms)
        return DeliverCancel(entry)

    def suspension(self) -> tuple[Wait, ...] | None:
        """What the run waits for once every step is parked (None while any runs)."""
        if self.parked and self.executing == 0:
            return tuple(self.parked)
        return None

    def signal_index(self, name: str) -> int:
        """Which signal called ``name`` this wait takes (they arrive in order)."""
        index = self._signal_waits.get(name, 0)
        self._signal_waits[name] = index + 1
        return index

    def _arrived(
        self, step: int, entry: pb.JournalEntry | None, what: str
    ) -> pb.JournalEntry | Wait:
        """What the wait at ``step`` found: the entry (the clock moves to it), or what to wait
        for.

        Raises:
            InvocationCancelledError: an earlier run delivered the cancellation at this wait.
        """
        self.check_cancelled_at(step)
        if entry is None:
            return Wait(what, step)
        if self.journal.came_after_cancel(entry) and self._reaches(step):
            # The cancellation was journaled first: it ended the wait (parking delivers it),
            # as it would have for a run parked on it then.
            return Wait(what, step)
        self.saw(entry)
        return entry

    def signal(self, step: int, name: str, index: int) -> pb.Payload | Wait:
        """The payload of the ``index``-th signal ``name``, or what to wait for."""
        found = self._arrived(step, self.journal.signal(name, index), f"signal {name!r}")
        return found if isinstance(found, Wait) else found.output

    def awakeable(self, step: int, awakeable_id: str) -> pb.Payload | Wait:
        """The payload an awakeable was resolved with, or what to wait for.

        Raises:
            AwakeableRejectedError: it was rejected.
        """
        found = self._arrived(
            step, self.journal.awakeable_result(awakeable_id), f"awakeable {awakeable_id}"
        )
        if isinstance(found, Wait) or not found.HasField("failure"):
            return found if isinstance(found, Wait) else found.output
        raise AwakeableRejectedError(awakeable_id, found.failure.message)

    def child(self, step: int, child_id: str) -> pb.Payload | Wait:
        """A child's output, or what to wait for.

        Raises:
            ChildWorkflowError: the child failed.
        """
        found = self._arrived(step, self.journal.child_result(child_id), f"child {child_id}")
        if isinstance(found, Wait) or not found.HasField("failure"):
            return found if isinstance(found, Wait) else found.output
        raise ChildWorkflowError(child_id, found.failure.type, found.failure.message)

    def replayed_child(self, kind: pb.EntryKind, entry: pb.JournalEntry) -> str:
        """The id a replayed submission gave its invocation (a child is remembered)."""
        self.saw(entry)
        child_id = str(_codec.decode(entry.output))
        if kind == pb.ENTRY_KIND_CHILD:
            self.children.append(child_id)
        return child_id

    # -- invocation state ----------------------------------------------------------------------

    def get(self, key: str) -> pb.Payload | None:
        """The value last set for ``key`` in this run (steps replay in order, so replay agrees)."""
        return self._state.get(key)

    def put(self, key: str, payload: pb.Payload | None) -> None:
        """``key`` was set (or cleared: None), durably."""
        if payload is None:
            self._state.pop(key, None)
        else:
            self._state[key] = payload


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="seconds")
