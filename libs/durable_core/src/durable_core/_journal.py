"""The replay state machine: pure, with no asyncio, nats or grpc.

Given the entries recorded so far for an invocation, it answers for each step the workflow
asks for: replay the recorded result, or execute it now. A step whose name or input hash
differs from the record raises NonDeterminismError.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from durable_core._pb.durable.v1 import durable_pb2 as pb
from durable_core.errors import NonDeterminismError

STEP_KINDS = frozenset({pb.ENTRY_KIND_CALL, pb.ENTRY_KIND_RUN})
FINAL_KINDS = frozenset({pb.ENTRY_KIND_COMPLETED, pb.ENTRY_KIND_FAILED})

_KIND_NAMES: dict[int, str] = {pb.ENTRY_KIND_CALL: "call", pb.ENTRY_KIND_RUN: "run"}


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


def describe(kind: int, name: str) -> str:
    """A human label for a step, e.g. ``call /hello.HelloService/SayHello``."""
    return f"{_KIND_NAMES.get(kind, 'step')} {name!r}"


class ReplayMachine:
    """Matches the steps a workflow takes against its journal.

    Steps are numbered from 1 in the order the workflow starts them; entries may sit in
    the journal in a different order (concurrent steps complete out of order), so they are
    matched by step number.
    """

    __slots__ = ("_invocation_id", "_recorded", "_next_step", "_final")

    def __init__(self, invocation_id: str, entries: Iterable[pb.JournalEntry] = ()) -> None:
        self._invocation_id = invocation_id
        self._recorded: dict[int, pb.JournalEntry] = {}
        self._next_step = 1
        self._final: pb.JournalEntry | None = None
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

    def record(self, entry: pb.JournalEntry) -> None:
        """Add an entry read from (or just written to) the journal."""
        if entry.kind in STEP_KINDS:
            self._recorded[entry.step] = entry
        elif entry.kind in FINAL_KINDS:
            self._final = entry

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
