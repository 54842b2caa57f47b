"""The errors of durable_core, one tree.

```
DurableError                      every error this library raises
├── TerminalError                 a failure never retried (raise it in a step or workflow)
│   ├── StepFailedError           a step failed after its retries; carries step, name, code
│   ├── ChildWorkflowError        a child invocation awaited with ctx.invoke failed
│   ├── AwakeableRejectedError    an awaited awakeable was rejected
│   └── ExecutionTimeoutError     the invocation ran past its execution_timeout
├── RetryableError                a failure worth retrying (raise it in a step to retry)
│   └── StepTimeoutError          a step attempt took longer than its timeout
├── ConfigError                   bad or mismatching configuration (settings, streams, consumers)
│   ├── UnsupportedServerError    the NATS server is too old for the engine (timers would not fire)
│   └── EngineNotFoundError       the engine's streams do not exist (no processor created them)
├── InvalidInputError             bad input: malformed args, oversized payload, bad id or key
│   └── PayloadTooLargeError      a value is larger than the max object size
├── PayloadUnavailableError       a stored large value is missing or corrupt (engine error)
├── NonDeterminismError           the workflow code no longer matches its journal
├── NotFoundError                 no such invocation, workflow or awakeable
│   ├── ExpiredError              it finished longer ago than the retention period
│   └── UnknownWorkflowError      no live processor serves the workflow (refused at intake)
├── ConflictError                 the request contradicts the invocation's state
│   ├── AlreadyResolvedError      the awakeable was resolved or rejected before
│   ├── InvocationFinishedError   the invocation has already finished
│   └── IllegalTransitionError    e.g. resume a running invocation, pause a cancelled one
├── WorkflowFailedError           the awaited invocation ended failed; carries step and message
├── InvocationTimeoutError        waiting for an invocation's result took too long
└── NatsUnavailableError          NATS could not be reached (with the URLs tried)

Control flow (not errors; they derive from BaseException so `except Exception` can't swallow them):
SuspendExecution                  the engine stops this run of the invocation now; never catch it
InvocationCancelledError          raised inside a cancelled workflow; catch it to compensate
```
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "AlreadyResolvedError",
    "AwakeableRejectedError",
    "ChildWorkflowError",
    "ConfigError",
    "ConflictError",
    "ExecutionTimeoutError",
    "ExpiredError",
    "IllegalTransitionError",
    "InvocationCancelledError",
    "InvocationFinishedError",
    "DurableError",
    "EngineNotFoundError",
    "InvalidInputError",
    "InvocationTimeoutError",
    "NatsUnavailableError",
    "NonDeterminismError",
    "NotFoundError",
    "PayloadTooLargeError",
    "PayloadUnavailableError",
    "RetryableError",
    "StepFailedError",
    "StepTimeoutError",
    "SuspendExecution",
    "TerminalError",
    "UnknownWorkflowError",
    "UnsupportedServerError",
    "WorkflowFailedError",
]


class DurableError(Exception):
    """Base of every error raised by durable_core."""


class TerminalError(DurableError):
    """A failure that must not be retried.

    Raise it from a step (``ctx.run``) or from the workflow body to fail at once.
    """


class StepFailedError(TerminalError):
    """A step failed for good (after its retries). The workflow may catch it.

    Attributes:
        step: The step number (1-based).
        name: The step name (``/pkg.Service/Method`` for gRPC calls).
        code: The gRPC status code name, if the step was a call.
        error_type: The class name of the original error.
    """

    def __init__(
        self, message: str, *, step: int, name: str, code: str = "", error_type: str = ""
    ) -> None:
        super().__init__(message)
        self.step = step
        self.name = name
        self.code = code
        self.error_type = error_type


class ChildWorkflowError(TerminalError):
    """A child invocation awaited with ``ctx.invoke`` failed.

    Attributes:
        child_id: The child's invocation id.
        error_type: The class name of the child's error.
    """

    def __init__(self, child_id: str, error_type: str, message: str) -> None:
        super().__init__(f"child invocation {child_id} failed: {error_type}: {message}")
        self.child_id = child_id
        self.error_type = error_type
        self.reason = message


class AwakeableRejectedError(TerminalError):
    """An awaited awakeable was rejected (``client.reject_awakeable``)."""

    def __init__(self, awakeable_id: str, reason: str) -> None:
        super().__init__(f"awakeable {awakeable_id} was rejected: {reason}")
        self.awakeable_id = awakeable_id
        self.reason = reason


class RetryableError(DurableError):
    """A failure worth retrying; raise it from a step to ask for another attempt."""


class StepTimeoutError(RetryableError, TimeoutError):
    """A step attempt took longer than its ``timeout``; retried per the step's policy."""


class ExecutionTimeoutError(TerminalError):
    """The invocation ran past its ``execution_timeout``; it fails with this error."""


class ConfigError(DurableError):
    """Configuration is invalid, or an existing stream/bucket/consumer does not match it."""


class UnsupportedServerError(ConfigError):
    """The NATS server lacks a feature the engine needs, so durable refuses to use it.

    Sleeps, delayed starts, retry backoffs and schedules are JetStream message schedules
    (``@at``, ``@every`` and cron); an older server accepts such messages and silently never fires
    them, so a connection to one is refused at once instead.

    Attributes:
        version: The version the server reported.
        minimum: The oldest version the engine works with.
    """

    def __init__(self, server: str, version: str, minimum: str) -> None:
        super().__init__(
            f"the NATS server at {server} is version {version}; durable needs nats-server "
            f"{minimum} or later (message schedules with @at, @every and cron). "
            "Upgrade the server (or the NATS Helm chart / image) and start again."
        )
        self.version = version
        self.minimum = minimum


class EngineNotFoundError(ConfigError):
    """The engine's streams do not exist on this NATS under this prefix.

    Only processors create them (with the replicas and limits of their settings); clients,
    the CLI, the scheduler and the inspector use what exists. Start a processor first, or
    check the NATS URL and the prefix.

    Attributes:
        prefix: the engine prefix looked for.
        missing: the streams that are not there.
    """

    def __init__(self, servers: Sequence[str], prefix: str, missing: Sequence[str]) -> None:
        super().__init__(
            f"no durable engine with prefix {prefix!r} on {', '.join(servers)}: "
            f"{', '.join(missing)} do not exist. A processor creates them when it starts "
            "(with its `replicas` setting): start one, or check the NATS URL and the prefix"
        )
        self.prefix = prefix
        self.missing = tuple(missing)


class InvalidInputError(DurableError, ValueError):
    """Input was rejected: malformed arguments, a payload over the limit, a bad id or key."""


class PayloadTooLargeError(InvalidInputError):
    """A value (argument, step result, output, signal) is larger than the max object size
    (``EngineConfig.max_object_size``, setting ``DURABLE_MAX_OBJECT_SIZE``, default 1 GB)."""


class PayloadUnavailableError(DurableError):
    """A large value stored by reference (claim check) cannot be read back: its object is
    missing from the ``<prefix>_payloads`` bucket, or its bytes do not match the recorded
    size and SHA-256 digest. Never a silent wrong value: in a processor this releases the run
    (it is an engine error, never journaled as the workflow's failure).

    Attributes:
        object: the object's name (``<invocation id>.<token>``).
    """

    def __init__(self, object_name: str, why: str) -> None:
        super().__init__(f"stored payload {object_name}: {why}")
        self.object = object_name


class NonDeterminismError(DurableError):
    """The workflow code took a different path than the one recorded in its journal.

    Attributes:
        invocation_id: The invocation whose journal disagrees.
        step: The step number where the paths diverge.
        recorded: What the journal holds at that step.
        new: What the code asked for this time.
    """

    def __init__(self, invocation_id: str, step: int, recorded: str, new: str) -> None:
        super().__init__(
            f"non-determinism in invocation {invocation_id} at step {step}: "
            f"the journal recorded {recorded} but the workflow now asks for {new}. "
            "Workflow code must take the same steps in the same order on replay: put a "
            'change behind ctx.patched("change-id") so recorded runs keep the old branch.'
        )
        self.invocation_id = invocation_id
        self.step = step
        self.recorded = recorded
        self.new = new


class NotFoundError(DurableError, LookupError):
    """No such invocation, or no such workflow."""


class ExpiredError(NotFoundError):
    """The invocation finished longer ago than the retention period: its state and journal
    were removed. The id may be used again for a new invocation (once the command stream's
    duplicate window, 10 minutes, has passed since the first start: always, with the default
    retention of 7 days).

    Attributes:
        invocation_id: the expired invocation.
        status: how it had ended (``completed``, ``failed`` or ``cancelled``).
        finished_at_ms: when it finished (wall clock, ms), 0 if unknown.
        expired_at_ms: when it was removed.
    """

    def __init__(
        self, invocation_id: str, status: str, finished_at_ms: int, expired_at_ms: int
    ) -> None:
        def iso(ms: int) -> str:
            return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000)) if ms else "?"

        super().__init__(
            f"invocation {invocation_id} has expired: it {status} at {iso(finished_at_ms)} "
            f"and its state and journal were removed at {iso(expired_at_ms)} (finished "
            "executions are kept for the retention period, 7 days by default)"
        )
        self.invocation_id = invocation_id
        self.status = status
        self.finished_at_ms = finished_at_ms
        self.expired_at_ms = expired_at_ms

    @classmethod
    def from_note(cls, invocation_id: str, note: Mapping[str, Any]) -> ExpiredError:
        """The error for an invocation whose expiry left ``note`` (how and when it ended)."""
        return cls(
            invocation_id,
            str(note.get("status", "finished")),
            int(note.get("finished_at_ms", 0) or 0),
            int(note.get("expired_at_ms", 0) or 0),
        )


class UnknownWorkflowError(NotFoundError):
    """No live processor serves the workflow: the submission was refused, nothing was stored.

    Intake (the client, ``durable invoke``, the inspector's API, schedule creation) reads the
    fleet registry; a workflow that no processor registered is refused rather than queued for
    nobody. Pass ``queue_unserved=True`` (``--queue``) to queue it for a processor that will
    come.

    Attributes:
        workflow: the refused workflow.
        served: the workflows the live processors serve, sorted.
    """

    def __init__(self, workflow: str, served: Sequence[str]) -> None:
        listed = ", ".join(served) if served else "none (no processor is running)"
        super().__init__(
            f"no live processor serves workflow {workflow!r}; served workflows: {listed}. "
            "Start a processor with the plugin that provides it, or queue it anyway for one "
            "that will come (queue_unserved=True; --queue on the command line)"
        )
        self.workflow = workflow
        self.served = tuple(served)


class ConflictError(DurableError):
    """The request contradicts the invocation's current state."""


class AlreadyResolvedError(ConflictError):
    """The awakeable was already resolved or rejected; the first answer stands."""


class InvocationFinishedError(ConflictError):
    """The invocation has already finished; it takes no more signals or resolutions."""


class IllegalTransitionError(ConflictError):
    """The lifecycle change is not allowed from the invocation's current status.

    Attributes:
        status: the invocation's real status.
    """

    def __init__(self, message: str, status: str) -> None:
        super().__init__(message)
        self.status = status


class InvocationCancelledError(BaseException):  # named like asyncio.CancelledError
    """Raised inside a workflow whose invocation was cancelled (``client.cancel``).

    It interrupts the step in flight (a gRPC call is cancelled, the service sees it) or the
    wait the workflow is parked on. A workflow may catch it to compensate; its further steps
    still run durably, and the invocation ends ``cancelled`` whatever it returns.
    """


class WorkflowFailedError(DurableError):
    """The invocation finished in the failed state.

    Attributes:
        invocation_id: The failed invocation.
        step: The step that failed (0 when the workflow body itself raised).
        error_type: The class name of the error.
        reason: The error message.
    """

    def __init__(self, invocation_id: str, *, step: int, error_type: str, reason: str) -> None:
        where = f"at step {step}" if step else "in the workflow body"
        super().__init__(f"invocation {invocation_id} failed {where}: {error_type}: {reason}")
        self.invocation_id = invocation_id
        self.step = step
        self.error_type = error_type
        self.reason = reason


class InvocationTimeoutError(DurableError, TimeoutError):
    """Waiting for an invocation's result took longer than allowed. It keeps running.

    Attributes:
        invocation_id: The invocation waited for ("" when not known): ``client.wait`` it
            again, or follow it with ``durable status``.
    """

    def __init__(self, message: str, invocation_id: str = "") -> None:
        super().__init__(message)
        self.invocation_id = invocation_id


class NatsUnavailableError(DurableError, ConnectionError):
    """NATS could not be reached.

    Attributes:
        servers: The URLs that were tried.
    """

    def __init__(self, servers: Sequence[str], reason: str = "") -> None:
        tried = ", ".join(servers)
        detail = f": {reason}" if reason else ""
        lowered = reason.lower()
        if "authorization" in lowered:
            hint = "Check the user, password, token or credentials file."
        elif "certificate" in lowered or "ssl" in lowered or "tls" in lowered:
            hint = "Check the TLS settings (CA, certificate, key)."
        else:
            hint = "Is nats-server running (try `durable dev`), and is NATS_URL right?"
        super().__init__(f"cannot reach NATS at {tried}{detail}. {hint}")
        self.servers = tuple(servers)


class SuspendExecution(BaseException):  # control flow, not an error
    """The engine stops this run of the invocation here; a workflow must never catch it.

    It is the one base of the engine's own control-flow signals that travel through workflow
    code (a ``ctx`` call raises them): another processor took the invocation over, the
    invocation finished elsewhere, this processor lost its hold on the command or its lease,
    or NATS refused a write of the engine's own. The run is abandoned; the invocation goes
    on from its journal wherever it is taken up next.

    It derives from BaseException so that a workflow's ``except Exception`` cannot swallow it.
    A workflow that catches ``BaseException`` must re-raise it (as it must re-raise
    ``asyncio.CancelledError``); even then the engine refuses every further step of that run.
    Interceptors recognise it with ``interceptors.outcome_of`` (``"abandoned"``).
    """

    def __init__(self, reason: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
