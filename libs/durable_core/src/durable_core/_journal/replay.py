"""The replay machine: what the journal says, and for each step the workflow asks for whether to
replay its recorded outcome or execute it. A step whose name or input hash differs from the
record raises NonDeterminismError."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from durable_core._journal.forks import awakeable_asked, copied_by_fork, copied_step_of
from durable_core._journal.kinds import FINAL_KINDS, PROCESSOR_KINDS, STEP_KINDS, describe
from durable_core._pb.durable.v1 import durable_pb2 as pb
from durable_core.errors import NonDeterminismError

__all__ = ["Decision", "Execute", "Ident", "Replay", "ReplayMachine"]


@dataclass(frozen=True, slots=True)
class Replay:
    """The step is in the journal: return its recorded outcome."""

    step: int
    entry: pb.JournalEntry


@dataclass(frozen=True, slots=True)
class Execute:
    """The step is not in the journal: run it and journal the outcome."""

    step: int


Decision = Replay | Execute


Ident = tuple[str, int]  # (branch, step within the branch): see JournalEntry.branch


class ReplayMachine:
    """Matches the steps a workflow takes against its journal.

    Steps are numbered from 1 in the order the workflow starts them. Each entry also names
    the branch (the workflow's own task, or a task it started) that asked for its step and
    the step's place in that branch; a replay matches by those. Within one branch the code
    runs in order, so the same code asks for the same steps in the same order; across
    branches the order depends on which step finished first, which differs between runs
    (a replayed step takes no time). A journal written before entries named their branch is
    matched by step number, as it was written.
    """

    __slots__ = (
        "_invocation_id",
        "_recorded",
        "_next_step",
        "_final",
        "_last_processor_kind",
        "_awakeables",
        "_signals",
        "_children",
        "_paused",
        "_cancel_requested",
        "_before_cancel",
        "_cancel_requested_ms",
        "_after_cancel",
        "_cancel_delivered",
        "_failed_attempts",
        "_patches",
        "_patch_idents",
        "_legacy",
        "_by_ident",
        "_reserved",
        "_fresh",
        "_used",
        "_asked",
        "_unasked",
        "_last_of",
    )

    def __init__(self, invocation_id: str, entries: Iterable[pb.JournalEntry] = ()) -> None:
        self._invocation_id = invocation_id
        self._recorded: dict[int, pb.JournalEntry] = {}
        self._next_step = 1
        self._final: pb.JournalEntry | None = None
        self._last_processor_kind = 0
        self._awakeables: dict[str, pb.JournalEntry] = {}
        self._signals: dict[str, list[pb.JournalEntry]] = {}
        self._children: dict[str, pb.JournalEntry] = {}
        self._paused = False
        self._cancel_requested = False
        self._before_cancel: frozenset[int] = frozenset()  # steps asked for before it came
        self._cancel_requested_ms = 0  # when the first request was journaled
        self._after_cancel: set[int] = set()  # id() of the wake-up entries journaled after it
        self._cancel_delivered: set[int] = set()
        self._failed_attempts: dict[int, list[pb.JournalEntry]] = {}
        self._patches: set[tuple[int, str]] = set()  # (the step it comes before, change id)
        self._patch_idents: set[tuple[str, int, str]] = set()  # the same, by branch
        # Matching by branch: off for a journal with a step entry that names no branch.
        self._legacy = False
        self._by_ident: dict[Ident, pb.JournalEntry] = {}
        self._reserved: dict[Ident, int] = {}  # numbers of steps begun, not finished
        self._fresh = 1  # no number below this is free
        self._used: set[int] = set()  # numbers of entries, reservations and this run's steps
        self._asked: set[Ident] = set()  # steps this run asked for
        self._unasked: set[Ident] = set()  # recorded steps this run has not asked for yet
        self._last_of: dict[str, int] = {}  # branch -> its last recorded step
        for entry in entries:
            self.record(entry)

    @property
    def final(self) -> pb.JournalEntry | None:
        """The completion or failure entry, if the invocation has finished."""
        return self._final

    @property
    def by_number(self) -> bool:
        """Whether steps are matched by their number: the journal holds a step written
        before entries named their branch."""
        return self._legacy

    @property
    def steps_taken(self) -> int:
        """How many steps the workflow has asked for in this run."""
        return self._next_step - 1

    @property
    def recorded_steps(self) -> int:
        """How many step results the journal holds."""
        return len(self._recorded)

    @property
    def is_replaying(self) -> bool:
        """True while recorded steps remain that the workflow has not yet reached."""
        if self._legacy:
            return any(step >= self._next_step for step in self._recorded)
        return bool(self._unasked)

    @property
    def idle(self) -> bool:
        """True when nobody runs the invocation: it never started, or its last run suspended."""
        return self._last_processor_kind in (0, pb.ENTRY_KIND_SUSPENDED)

    @property
    def suspended(self) -> bool:
        """True when the last run stopped to wait (it started, then suspended)."""
        return self._last_processor_kind == pb.ENTRY_KIND_SUSPENDED

    @property
    def paused(self) -> bool:
        """A pause was requested and not yet followed by a resume."""
        return self._paused

    @property
    def cancel_requested(self) -> bool:
        """Someone asked to cancel the invocation."""
        return self._cancel_requested

    @property
    def asked_before_cancel(self) -> frozenset[int]:
        """The steps asked for (journaled, or begun by this run) before the cancellation was
        requested: in flight when it came, whichever branch they are in."""
        return self._before_cancel

    def _note_order(self, entry: pb.JournalEntry) -> None:
        if self._cancel_requested:
            self._after_cancel.add(id(entry))

    def came_after_cancel(self, entry: pb.JournalEntry) -> bool:
        """Whether a wake-up entry (a signal, a resolution, a child's result) was journaled
        after the cancellation was requested: the wait it would end was cancelled first."""
        return id(entry) in self._after_cancel

    def cancelled_before(self, at_ms: int) -> bool:
        """Whether the cancellation was requested before ``at_ms`` (a timer's due time)."""
        return self._cancel_requested and self._cancel_requested_ms < at_ms

    def cancel_delivered_at(self, step: int) -> bool:
        """Whether an earlier run raised the cancellation at this (waiting) step."""
        return step in self._cancel_delivered

    def record(self, entry: pb.JournalEntry) -> None:
        """Add an entry read from (or just written to) the journal."""
        kind = entry.kind
        if kind in PROCESSOR_KINDS and not copied_by_fork(entry):
            # A fork's copies are no run of its own: a fork not started yet is idle.
            self._last_processor_kind = kind
        if kind in STEP_KINDS:
            self._recorded[entry.step] = entry
            self._used.add(entry.step)
            if entry.branch_step <= 0:
                self._legacy = True
            else:
                ident = (entry.branch, entry.branch_step)
                self._by_ident[ident] = entry
                if ident not in self._asked:  # not one this run took itself
                    self._unasked.add(ident)
                last = self._last_of.get(entry.branch, 0)
                self._last_of[entry.branch] = max(last, entry.branch_step)
        elif kind in FINAL_KINDS:
            self._final = entry
        elif kind == pb.ENTRY_KIND_AWAKEABLE_RESULT:
            self._awakeables.setdefault(entry.name, entry)  # the first resolution wins
            self._note_order(entry)
        elif kind == pb.ENTRY_KIND_SIGNAL:
            self._signals.setdefault(entry.name, []).append(entry)
            self._note_order(entry)
        elif kind == pb.ENTRY_KIND_CHILD_RESULT:
            self._children.setdefault(entry.name, entry)
            self._note_order(entry)
        elif kind == pb.ENTRY_KIND_PAUSE_REQUEST:
            self._paused = True
        elif kind == pb.ENTRY_KIND_RESUME_REQUEST:
            self._paused = False
        elif kind == pb.ENTRY_KIND_CANCEL_REQUEST:
            if not self._cancel_requested:
                self._before_cancel = frozenset(self._used)
                self._cancel_requested_ms = entry.timestamp_ms
            self._cancel_requested = True
        elif kind == pb.ENTRY_KIND_CANCEL_DELIVERED:
            self._cancel_delivered.add(entry.step)
        elif kind == pb.ENTRY_KIND_ATTEMPT_FAILED:
            self._failed_attempts.setdefault(entry.step, []).append(entry)
            if entry.branch_step > 0:  # a step between attempts keeps its number
                self._reserved[(entry.branch, entry.branch_step)] = entry.step
                self._used.add(entry.step)
            else:
                self._legacy = True
        elif kind == pb.ENTRY_KIND_PATCH:
            self._patches.add((entry.step, entry.name))
            if entry.branch_step > 0:
                self._patch_idents.add((entry.branch, entry.branch_step, entry.name))
        elif kind == pb.ENTRY_KIND_RETRY_REQUEST and self._final is not None:
            # Forget the failure: the failed step runs again (same number, same idempotency
            # key) and everything recorded before it replays. Only the step that failed the
            # invocation: a failure the workflow caught and went on from replays as it was
            # (run again, it could succeed, and the workflow take the other branch).
            forget = self._failed_for_good(self._final)
            self._final = None
            for e in forget:
                del self._recorded[e.step]
                if e.branch_step > 0:
                    del self._by_ident[(e.branch, e.branch_step)]
                    self._unasked.discard((e.branch, e.branch_step))
                    self._reserved[(e.branch, e.branch_step)] = e.step
            # The steps that run again start with a fresh attempt count.
            self._failed_attempts = {
                step: a for step, a in self._failed_attempts.items() if step in self._recorded
            }
            self._last_processor_kind = pb.ENTRY_KIND_SUSPENDED  # idle: a wake-up takes it
            # A pause asked for before the failure ended with it: a failed invocation cannot
            # be resumed, and its retry parked paused for good.
            self._paused = False

    def _failed_for_good(self, final: pb.JournalEntry) -> list[pb.JournalEntry]:
        """The failed steps that ended the invocation: those the final entry names (the
        failures the workflow let through); a failure the workflow caught and went on from
        stays. A final entry written before it named them: its failure's step and each
        failed step that no later step of its branch followed."""
        failed = [e for e in self._recorded.values() if e.HasField("failure")]
        step = final.failure.step
        if final.failures_named:
            named = {step, *final.failed_steps}
            return [e for e in failed if e.step in named]
        last = max(self._recorded, default=0)

        def followed(e: pb.JournalEntry) -> bool:
            if e.branch_step <= 0:
                return last > e.step
            return self._last_of.get(e.branch, 0) > e.branch_step

        return [e for e in failed if e.step == step or not followed(e)]

    def awakeable_result(self, awakeable_id: str) -> pb.JournalEntry | None:
        """The resolution (or rejection) of an awakeable, if it arrived."""
        return self._awakeables.get(awakeable_id)

    def signal(self, name: str, index: int) -> pb.JournalEntry | None:
        """The ``index``-th (0-based) signal called ``name``, in journal order, if it arrived."""
        arrived = self._signals.get(name, ())
        return arrived[index] if index < len(arrived) else None

    def failed_attempts(self, step: int) -> list[pb.JournalEntry]:
        """The journaled failed attempts of a step not yet finished, oldest first."""
        return list(self._failed_attempts.get(step, ()))

    def has_patch(self, before_step: int, change_id: str, ident: Ident | None = None) -> bool:
        """Whether an earlier run took the new branch of ``change_id`` just before the step
        numbered ``before_step`` (a PATCH marker is no step: it names the step after it), or
        by branch: before that branch's step ``ident``."""
        if ident is not None and not self._legacy:
            return (ident[0], ident[1], change_id) in self._patch_idents
        return (before_step, change_id) in self._patches

    def replaying_in(self, branch: str, taken: int) -> bool:
        """Whether the journal holds steps of ``branch`` past its ``taken`` first ones (the
        whole journal's, for one written before entries named their branch)."""
        if self._legacy:
            return self.is_replaying
        return self._last_of.get(branch, 0) > taken

    def child_result(self, child_id: str) -> pb.JournalEntry | None:
        """The outcome of a child invocation, if it finished."""
        return self._children.get(child_id)

    def next_step(
        self, kind: pb.EntryKind, name: str, input_hash: bytes, ident: Ident = ("", 0)
    ) -> Decision:
        """Decide what to do with the next step the workflow asks for (``ident``: which
        branch asks, and its how-manieth step there).

        Raises:
            NonDeterminismError: the journal holds a different step at this number.
        """
        self._next_step += 1
        if self._legacy or ident[1] <= 0:
            step = self._next_step - 1
            entry = self._recorded.get(step)
        else:
            self._asked.add(ident)
            self._unasked.discard(ident)
            entry = self._by_ident.get(ident)
            step = (self._reserved.get(ident) or self._free()) if entry is None else entry.step
            self._used.add(step)
        if entry is None:
            self._check_attempts(step, kind, name, input_hash)
            return Execute(step)
        copied = bool(copied_step_of(entry))  # a fork's copy of its source's step
        if entry.kind != kind or awakeable_asked(self._invocation_id, entry) != name:
            raise NonDeterminismError(
                self._invocation_id, step, describe(entry.kind, entry.name), describe(kind, name)
            )
        # A fork takes its copied steps as given, with today's code: their inputs may hold
        # what the source's id seeded (ctx.uuid(), ctx.random(), an awakeable id), another
        # value in the fork.
        if not copied and entry.input_hash and input_hash and entry.input_hash != input_hash:
            raise NonDeterminismError(
                self._invocation_id,
                step,
                f"{describe(entry.kind, entry.name)} with input hash {entry.input_hash.hex()}",
                f"the same step with input hash {input_hash.hex()}",
            )
        return Replay(step, entry)

    def _check_attempts(self, step: int, kind: pb.EntryKind, name: str, input_hash: bytes) -> None:
        """A step not finished yet whose earlier attempts failed must be the step they were
        attempts of: another version's step retried under this one's name would make both
        versions' effects (the same idempotency key), and count neither's attempts right.

        Raises:
            NonDeterminismError: they were attempts of another step (or of other input).
        """
        for attempt in self._failed_attempts.get(step, ()):
            other_input = attempt.input_hash and input_hash and attempt.input_hash != input_hash
            if attempt.name != name or other_input:
                recorded = f"failed attempts of {attempt.name!r}"
                if attempt.name == name:
                    recorded += f" with input hash {attempt.input_hash.hex()}"
                raise NonDeterminismError(self._invocation_id, step, recorded, describe(kind, name))

    def _free(self) -> int:
        """The lowest step number that no entry and no step of this run has: a new step's."""
        while self._fresh in self._used:
            self._fresh += 1
        return self._fresh
