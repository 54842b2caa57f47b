"""What a run's context needs of the outside: where it journals, and how a failure reads.

``Journal`` is what ``RunContext`` writes to: the engine's execution (fenced appends on
JetStream) or the test replayer's list in memory. ``attempt_failure`` turns an exception a
step's attempt raised into the failure that is journaled, and says whether the retry policy
allows another attempt for it (gRPC status codes are read here, so the step machine needs no
grpc).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import grpc
import grpc.aio

from durable_core._journal import Submission, Wait
from durable_core._pb.durable.v1 import durable_pb2 as pb
from durable_core.errors import TerminalError
from durable_core.retry import RETRYABLE_GRPC_CODES, RetryPolicy

__all__ = ["Journal", "attempt_failure"]


class Journal(Protocol):
    """Where a context records step outcomes: durably (the engine) or in memory (tests)."""

    async def append_step(self, entry: pb.JournalEntry, *, defer: bool = False) -> None:
        """Durably record a step's outcome before the workflow moves past it; ``defer``: it
        may be recorded later, but before the next step is decided (``settle``)."""

    async def settle(self) -> None:
        """Record a deferred outcome now: the workflow is about to decide its next step."""

    async def submit(self, submission: Submission) -> None:
        """Durably submit another invocation (idempotent by its id)."""

    def request_suspend(self, waits: Sequence[Wait]) -> None:
        """Every step is parked on something that has not happened: stop this run."""

    def cancelling(self) -> bool:
        """True when the engine interrupted the run because the invocation was cancelled."""

    def halted(self) -> bool:
        """True while the engine stops this run (shutdown hands its command back, a rerun, a
        lost claim): a step still running must end before the run lets go of it."""

    def stopping(self) -> bool:
        """True while the engine stops this run for any reason of its own (``halted``, or
        past its execution timeout): not the invocation's cancellation, nor the workflow's
        own cancelling of a task of its."""

    def diverged(self) -> None:
        """The replay no longer matches the journal (a NonDeterminismError is being raised):
        the engine stops the run and blocks the invocation, whatever the workflow does."""

    def check_step(self) -> None:
        """Raise (a ``SuspendExecution``) if this run may not execute another step: it lost the
        invocation or its hold on the command. Called before every step and attempt runs."""

    def fence(self) -> int:
        """A number that only grows as runs of this invocation follow one another: the
        journal's last sequence as this run knows it (a run that takes the invocation over
        first appends a CLAIM, so its fence is above that of every run before it). Sent with
        every gRPC call (``durable-fence``) so a service can refuse a superseded run's call."""


def attempt_failure(e: BaseException, step: int, policy: RetryPolicy) -> tuple[pb.Failure, bool]:
    """The failure an attempt of ``step`` ended with, and whether it is worth retrying."""
    code, retryable = _classify(e, policy)
    return pb.Failure(type=type(e).__name__, message=_message(e), code=code, step=step), retryable


def _message(e: BaseException) -> str:
    """A readable message: gRPC errors as 'CODE: details'."""
    if isinstance(e, grpc.aio.AioRpcError):
        return f"{e.code().name}: {e.details()}"
    return str(e) or type(e).__name__


def _classify(e: BaseException, policy: RetryPolicy) -> tuple[str, bool]:
    """The gRPC code name of an error (or "") and whether it is worth retrying."""
    if isinstance(e, grpc.aio.AioRpcError | grpc.RpcError) and hasattr(e, "code"):
        code = e.code().name
        if code in policy.non_retryable_errors:
            return code, False
        if code == "RESOURCE_EXHAUSTED" and "message larger than max" in str(e.details() or ""):
            # A message over a size limit (a request over the service's, say) is as large on
            # every try; quotas and rate limits stay worth another attempt.
            return code, False
        return code, code in RETRYABLE_GRPC_CODES
    if isinstance(e, TerminalError) or type(e).__name__ in policy.non_retryable_errors:
        return "", False
    return "", True  # RetryableError and any other exception: worth another attempt
