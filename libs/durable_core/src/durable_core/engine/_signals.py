"""The engine's own control flow: signals that stop a run, derived from ``SuspendExecution``
(a ``BaseException``), so a workflow's ``except Exception`` never swallows them."""

from __future__ import annotations

from durable_core._transport import JournalRecord
from durable_core.errors import InvalidInputError, SuspendExecution

__all__ = [
    "BadInputError",
    "Diverged",
    "EngineFailure",
    "Finished",
    "Halted",
    "LostClaim",
    "LostHold",
    "NotIdle",
    "PinnedElsewhere",
    "Rerun",
]


class Rerun(SuspendExecution):
    """New external entries may satisfy a parked wait: run the workflow again from replay."""


class LostClaim(SuspendExecution):
    """Another processor appended to the journal: this run must stop."""

    def __init__(self, records: list[JournalRecord]) -> None:
        super().__init__("lost claim")
        self.records = records

    def holds(self, command_seq: int) -> bool:
        """Whether the new holder runs on this very command (so we must not ack it)."""
        return any(r.entry.command_seq == command_seq for r in self.records)


class EngineFailure(SuspendExecution):
    """A journal write or read of the engine failed for a reason that is not the workflow's."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.cause = cause


class Finished(SuspendExecution):
    """The journal shows the invocation finished (another processor completed it)."""


class NotIdle(SuspendExecution):
    """A wake-up found the invocation taken by someone else."""


class LostHold(SuspendExecution):
    """This processor may no longer hold the command: stop before the next step."""


class Halted(SuspendExecution):
    """The engine is ending this run (to suspend it, run it again, fail it at its timeout or
    release it at shutdown): the workflow may not run another step.

    ``hand_over``: the invocation runs on after this (rerun here, or elsewhere): a step still
    running in a thread is waited for first, so it never runs beside its own rerun. False when
    the run ends the invocation (its execution timeout): a hung thread must not hold it."""

    def __init__(self, why: str, *, hand_over: bool = True) -> None:
        super().__init__(why)
        self.hand_over = hand_over


class Diverged(SuspendExecution):
    """The replay no longer matches the journal: the run stops (the engine blocks the
    invocation), and no step the workflow tries after catching the error may run."""


class PinnedElsewhere(SuspendExecution):
    """The invocation is pinned to another version than this processor's: hand the command
    on to that version's route instead of running it."""

    def __init__(self, route: str) -> None:
        super().__init__(f"pinned to {route}")
        self.route = route


class BadInputError(InvalidInputError):
    """The stored input does not match the workflow's declared input type."""
