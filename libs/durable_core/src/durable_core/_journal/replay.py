"""The replay machine: what the journal says, and for each step the workflow asks for whether to
replay its recorded outcome or execute it. A step whose name or input hash differs from the
record raises NonDeterminismError."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from durable_core._journal.kinds import FINAL_KINDS, PROCESSOR_KINDS, STEP_KINDS, describe
from durable_core._pb.durable.v1 import durable_pb2 as pb
from durable_core.errors import NonDeterminismError

__all__ = ["Decision", "Execute", "Replay", "ReplayMachine"]


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


class ReplayMachine:
    """Matches the steps a workflow takes against its journal.

    Steps are numbered from 1 in the order the workflow starts them; entries may sit in
    the journal in a different order (concurrent steps complete out of order), so they are
    matched by step number.
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
        "_cancel_delivered",
        "_failed_attempts",
        "_patches",
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
        self._cancel_delivered: set[int] = set()
        self._failed_attempts: dict[int, list[pb.JournalEntry]] = {}
        self._patches: set[tuple[int, str]] = set()  # (the step it comes before, change id)
        for entry in entries:
            self.record(entry)

    @property
    def final(self) -> pb.JournalEntry | None:
        """The completion or failure entry, if the invocation has finished."""
        return self._final

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
        return any(step >= self._next_step for step in self._recorded)

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

    def cancel_delivered_at(self, step: int) -> bool:
        """Whether an earlier run raised the cancellation at this (waiting) step."""
        return step in self._cancel_delivered

    def record(self, entry: pb.JournalEntry) -> None:
        """Add an entry read from (or just written to) the journal."""
        kind = entry.kind
        if kind in PROCESSOR_KINDS:
            self._last_processor_kind = kind
        if kind in STEP_KINDS:
            self._recorded[entry.step] = entry
        elif kind in FINAL_KINDS:
            self._final = entry
        elif kind == pb.ENTRY_KIND_AWAKEABLE_RESULT:
            self._awakeables.setdefault(entry.name, entry)  # the first resolution wins
        elif kind == pb.ENTRY_KIND_SIGNAL:
            self._signals.setdefault(entry.name, []).append(entry)
        elif kind == pb.ENTRY_KIND_CHILD_RESULT:
            self._children.setdefault(entry.name, entry)
        elif kind == pb.ENTRY_KIND_PAUSE_REQUEST:
            self._paused = True
        elif kind == pb.ENTRY_KIND_RESUME_REQUEST:
            self._paused = False
        elif kind == pb.ENTRY_KIND_CANCEL_REQUEST:
            self._cancel_requested = True
        elif kind == pb.ENTRY_KIND_CANCEL_DELIVERED:
            self._cancel_delivered.add(entry.step)
        elif kind == pb.ENTRY_KIND_ATTEMPT_FAILED:
            self._failed_attempts.setdefault(entry.step, []).append(entry)
        elif kind == pb.ENTRY_KIND_PATCH:
            self._patches.add((entry.step, entry.name))
        elif kind == pb.ENTRY_KIND_RETRY_REQUEST and self._final is not None:
            # Forget the failure: the failed steps run again (same numbers, same idempotency
            # keys) and everything recorded before them replays.
            self._final = None
            self._recorded = {
                step: e for step, e in self._recorded.items() if not e.HasField("failure")
            }
            # The steps that run again start with a fresh attempt count.
            self._failed_attempts = {
                step: a for step, a in self._failed_attempts.items() if step in self._recorded
            }
            self._last_processor_kind = pb.ENTRY_KIND_SUSPENDED  # idle: a wake-up takes it

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

    def has_patch(self, before_step: int, change_id: str) -> bool:
        """Whether an earlier run took the new branch of ``change_id`` just before the step
        numbered ``before_step`` (a PATCH marker is no step: it names the step after it)."""
        return (before_step, change_id) in self._patches

    def child_result(self, child_id: str) -> pb.JournalEntry | None:
        """The outcome of a child invocation, if it finished."""
        return self._children.get(child_id)

    def next_step(self, kind: pb.EntryKind, name: str, input_hash: bytes) -> Decision:
        """Decide what to do with the next step the workflow asks for.

        Raises:
            NonDeterminismError: the journal holds a different step at this number.
        """
        step = self._next_step
        self._next_step += 1
        entry = self._recorded.get(step)
        if entry is None:
            return Execute(step)
        if entry.kind != kind or entry.name != name:
            raise NonDeterminismError(
                self._invocation_id, step, describe(entry.kind, entry.name), describe(kind, name)
            )
        if entry.input_hash and input_hash and entry.input_hash != input_hash:
            raise NonDeterminismError(
                self._invocation_id,
                step,
                f"{describe(entry.kind, entry.name)} with input hash {entry.input_hash.hex()}",
                f"the same step with input hash {input_hash.hex()}",
            )
        return Replay(step, entry)
