"""Unit-test workflows without NATS: replay a hand-written journal, fake the gRPC services.

A workflow runs on the engine's real ``Context`` and a real ``ReplayMachine``; only the two
things that need the outside world are swapped out: the journal is a list in memory, and
``ctx.call`` is answered by plain functions instead of gRPC channels.

Example:
    >>> run = await replay_workflow(
    ...     order_processing,
    ...     {"order_id": "o-1", "amount_cents": 500},
    ...     journal=[
    ...         call_entry(orders.Validate, ValidateResponse(valid=True)),
    ...         call_entry(orders.Charge, ChargeResponse(charge_id="c-1")),
    ...     ],
    ...     calls={"Ship": lambda req: ShipResponse(tracking_number="t-1")},
    ... )
    >>> run.replayed_steps, run.executed_steps
    (2, 1)
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple, cast

from google.protobuf.message import Message

from durable_core import _codec, _payloads
from durable_core._grpc import ChannelPool, MethodRef
from durable_core._journal import (
    STEP_KINDS,
    Decision,
    Ident,
    Replay,
    ReplayMachine,
    Submission,
    Wait,
)
from durable_core._pb.durable.v1 import durable_pb2 as pb
from durable_core.engine._context import RunContext
from durable_core.errors import ConfigError, InvalidInputError, TerminalError
from durable_core.plugins import workflow_arity, workflow_signature
from durable_core.retry import RetryPolicy

__all__ = [
    "RecordedCall",
    "WorkflowRun",
    "call_entry",
    "failed_entry",
    "patch_entry",
    "replay_workflow",
    "run_entry",
]

FakeCall = Callable[[Any], Any]
"""A stand-in for a gRPC method: ``request -> response`` (or an awaitable of it)."""


class _NoInput:
    def __repr__(self) -> str:
        return "<no input>"


_NO_INPUT: Any = _NoInput()


class RecordedCall(NamedTuple):
    """One attempt of a gRPC call that a workflow made for real (not replayed).

    Attributes:
        path: the method path, e.g. ``/durable_examples.hello.v1.HelloService/SayHello``.
        request: the request message as the workflow passed it.
        metadata: the gRPC metadata sent, e.g. ``{"idempotency-key": "test-invocation:1"}``.
    """

    path: str
    request: Any
    metadata: dict[str, str]


@dataclass(frozen=True, slots=True)
class WorkflowRun:
    """What one ``replay_workflow`` run did.

    Attributes:
        output: the workflow's return value (None if it failed).
        error: the exception the workflow ended with, or None. A non-determinism the workflow
            caught still ends up here (the engine would block the invocation for it).
        new_entries: the step entries the run appended to the journal (executed steps, in
            order, with the PATCH markers of ``ctx.patched``). Completion entries are not
            included.
        replayed_steps: steps answered from the given journal.
        executed_steps: steps run for real (each appended one entry, success or failure).
        calls: every gRPC call attempt made for real, in order.
        waiting_for: when the run suspended (every step parked on a timer, awakeable, signal
            or child that the journal does not yet hold), what it waits for; else empty.
        submissions: invocations the run started (children, ``ctx.send``).
    """

    output: Any
    error: BaseException | None
    new_entries: tuple[pb.JournalEntry, ...]
    replayed_steps: int
    executed_steps: int
    calls: tuple[RecordedCall, ...]
    waiting_for: tuple[str, ...] = ()
    submissions: tuple[Submission, ...] = ()

    @property
    def suspended(self) -> bool:
        """True when the run stopped to wait rather than finishing."""
        return bool(self.waiting_for)


# -- journal entries, as the engine writes them ----------------------------------------------


def call_entry(
    method: MethodRef[Any, Any],
    response: Message,
    *,
    request: Message | None = None,
    step: int | None = None,
    timestamp: datetime | None = None,
) -> pb.JournalEntry:
    """A journal entry for a gRPC call step that succeeded.

    Args:
        method: the method, e.g. ``grpc_service(HelloServiceStub).SayHello``.
        response: the recorded response.
        request: the request the step was made with; when given, its hash is recorded and a
            replay with a different request raises NonDeterminismError. When omitted, the
            request is not checked.
        step: the step number (1-based); by default ``replay_workflow`` numbers the entries
            in list order.
        timestamp: when the step was journaled (``ctx.now()`` moves to it on replay).
    """
    _check_method(method)
    expected = _response_type(method)
    if type(response) is not expected:
        raise TypeError(f"{method.path} returns {expected.__name__}, not {type(response).__name__}")
    entry = _step_entry(pb.ENTRY_KIND_CALL, method.path, step, timestamp)
    if request is not None:
        entry.input_hash = _codec.input_hash(method.request_serializer(request))
    entry.output.CopyFrom(_codec.encode(response))
    return entry


def run_entry(
    name: str,
    value: Any,
    *,
    args: Sequence[Any] | None = None,
    kwargs: Mapping[str, Any] | None = None,
    step: int | None = None,
    timestamp: datetime | None = None,
) -> pb.JournalEntry:
    """A journal entry for a ``ctx.run`` step that returned ``value``.

    Args:
        name: the step name given to ``ctx.run``.
        value: the recorded result (JSON-compatible, bytes, a protobuf message or None).
        args, kwargs: the arguments ``ctx.run`` passed to the function; when either is given,
            their hash is recorded (``args=()`` means "called with no arguments") and a replay
            with other arguments raises NonDeterminismError. When both are omitted, the
            arguments are not checked.
        step: the step number (1-based); by default numbered in list order.
        timestamp: when the step was journaled.
    """
    entry = _step_entry(pb.ENTRY_KIND_RUN, _check_name(name), step, timestamp)
    if args is not None or kwargs is not None:
        entry.input_hash = _run_input_hash(args or (), kwargs or {})
    entry.output.CopyFrom(_codec.encode(value))
    return entry


def failed_entry(
    target: MethodRef[Any, Any] | str,
    message: str,
    *,
    error_type: str = "TerminalError",
    code: str = "",
    request: Message | None = None,
    args: Sequence[Any] | None = None,
    kwargs: Mapping[str, Any] | None = None,
    step: int | None = None,
    timestamp: datetime | None = None,
) -> pb.JournalEntry:
    """A journal entry for a step that failed for good (after its retries).

    On replay the step raises StepFailedError with this message, code and error type.

    Args:
        target: a method (a failed ``ctx.call``) or a step name (a failed ``ctx.run``).
        message: the error message.
        error_type: the class name of the original error.
        code: the gRPC status code name, e.g. ``"UNAVAILABLE"`` (calls only).
        request: for calls, the request (hashed as in ``call_entry``).
        args, kwargs: for runs, the arguments (hashed as in ``run_entry``).
        step: the step number (1-based); by default numbered in list order.
        timestamp: when the step was journaled.
    """
    if isinstance(target, MethodRef):
        if args is not None or kwargs is not None:
            raise TypeError("args/kwargs describe a ctx.run step; a call step takes request=")
        entry = _step_entry(pb.ENTRY_KIND_CALL, target.path, step, timestamp)
        if request is not None:
            entry.input_hash = _codec.input_hash(target.request_serializer(request))
    else:
        if request is not None:
            raise TypeError("request= describes a ctx.call step; a run step takes args/kwargs")
        if code:
            raise TypeError("code= is a gRPC status code; a ctx.run step has none")
        entry = _step_entry(pb.ENTRY_KIND_RUN, _check_name(target), step, timestamp)
        if args is not None or kwargs is not None:
            entry.input_hash = _run_input_hash(args or (), kwargs or {})
    entry.failure.CopyFrom(pb.Failure(type=error_type, message=message, code=code, step=entry.step))
    return entry


def patch_entry(change_id: str, *, step: int | None = None) -> pb.JournalEntry:
    """The marker ``ctx.patched(change_id)`` journals when it takes the new branch.

    Put it in the journal just before the entry of the step that follows the ``patched`` call
    (``step``: that step's number; by default the number after the step before it). Without
    it, a journal holding steps past that point replays the old branch.
    """
    if not isinstance(change_id, str) or not change_id:
        raise TypeError(f"a change id is a non-empty string, not {change_id!r}")
    if step is not None and step < 1:
        raise ValueError(f"step numbers start at 1, not {step}")
    return pb.JournalEntry(kind=pb.ENTRY_KIND_PATCH, step=step or 0, name=change_id)


# -- running a workflow ------------------------------------------------------------------------


async def replay_workflow(
    fn: Callable[..., Awaitable[Any]],
    input: Any = _NO_INPUT,  # noqa: A002 - the name the workflow API uses
    *,
    journal: Sequence[pb.JournalEntry] = (),
    calls: Mapping[str, FakeCall] | None = None,
    invocation_id: str = "test-invocation",
    workflow: str | None = None,
    partition_key: str = "",
    start_time: datetime | None = None,
    raise_on_error: bool = True,
    retry: RetryPolicy | None = None,
) -> WorkflowRun:
    """Run a workflow against a recorded journal, with fakes for its gRPC calls.

    Steps found in ``journal`` are replayed (their functions do not run, their calls are not
    made); the steps after them are executed: ``ctx.run`` runs the function, ``ctx.call`` calls
    the fake for the method. Everything else is the real ``Context`` and ``ReplayMachine``:
    non-determinism, retries, failures and the idempotency key behave as in the engine.

    Args:
        fn: ``async def fn(ctx)`` or ``async def fn(ctx, input)``.
        input: the workflow's input. It goes through the engine's codec first (so a tuple
            arrives as a list; a file-like input arrives as a ``Blob``); omitted, a workflow
            that takes an input gets None.
        journal: entries from ``call_entry``, ``run_entry``, ``failed_entry`` (or read from
            a real journal). Entries without a step number are numbered in list order, each
            one after the step before it.
        calls: fakes for gRPC methods, keyed by method path
            (``"/durable_examples.hello.v1.HelloService/SayHello"``) or method name
            (``"SayHello"``); each takes the request and returns the response or an
            awaitable of it. Raise ``grpc.aio.AioRpcError`` or any exception to fail the call.
        invocation_id: the id (seeds ``ctx.uuid()``, ``ctx.random()`` and idempotency keys).
        workflow: the workflow name (default: the function's name).
        partition_key: what ``ctx.partition_key`` returns.
        start_time: when the invocation was submitted (``ctx.now()`` before any step); naive
            datetimes are taken as UTC. Default: now.
        raise_on_error: re-raise the workflow's exception; when False it is returned in
            ``WorkflowRun.error``.

    Raises:
        ValueError: the journal holds the same step number twice.
        TypeError: ``fn`` is not an async workflow function, or its input does not fit it.
        Exception: whatever the workflow raised, when ``raise_on_error`` is true.
    """
    if not inspect.iscoroutinefunction(fn):
        raise TypeError(f"{fn!r} is not an async def workflow function")
    arity = workflow_arity(fn)
    if arity not in (1, 2):
        raise TypeError(f"a workflow takes (ctx) or (ctx, input), {fn.__name__} takes {arity}")
    if arity == 1 and input is not _NO_INPUT:
        raise TypeError(f"{fn.__name__} takes no input, but replay_workflow was given one")

    _, input_type, _ = workflow_signature(fn)
    entries = _numbered(journal)
    machine = _CountingMachine(invocation_id, entries)
    memory = _MemoryJournal(machine, next_index=len(entries) + 1)
    recorded: list[RecordedCall] = []
    ctx = RunContext(
        invocation_id=invocation_id,
        workflow=workflow or fn.__name__,
        partition_key=partition_key,
        machine=machine,
        journal=memory,
        channels=cast(ChannelPool, _FakeChannels(calls or {}, recorded)),
        start_time_ms=_ms(start_time) if start_time is not None else int(time.time() * 1000),
        default_retry=retry,
    )

    output: Any = None
    error: BaseException | None = None

    async def body() -> Any:
        ctx.enter()  # as the engine does: tasks the workflow starts are its branches
        if arity == 2:
            if input is _NO_INPUT:
                arg = None
            else:  # as the engine hands it over: a file-like input becomes a Blob, and a
                # value is converted to the declared type (a dict to its dataclass)
                stored = await _payloads.store_value(None, input, "")
                try:
                    arg = await ctx._load(stored, input_type)
                except InvalidInputError as e:
                    raise TypeError(f"the input does not fit {fn.__name__}: {e}") from e
            return await fn(ctx, arg)
        return await fn(ctx)

    task = asyncio.ensure_future(body())
    while True:
        parked = asyncio.ensure_future(memory.suspended.wait())
        await asyncio.wait({task, parked}, return_when=asyncio.FIRST_COMPLETED)
        parked.cancel()
        # As the engine: suspended only once no branch moves on (one may be about to replay
        # a sleep that is due, beside one that parked first).
        if task.done() or await ctx.still_parked(task):
            break
        memory.suspended.clear()
    if not task.done():  # every step parked: the engine would suspend here
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
    else:
        try:
            output = task.result()
            _check_storable(output, ctx.workflow)
        except Exception as e:  # noqa: BLE001 - the workflow's failure is the result
            error = e
    if ctx.steps.nondeterminism is not None:
        error = ctx.steps.nondeterminism  # the engine blocks the invocation even if it was caught
    if error is not None:
        output = None

    run = WorkflowRun(
        output=output,
        error=error,
        new_entries=tuple(memory.entries),
        replayed_steps=machine.replayed,
        executed_steps=sum(1 for e in memory.entries if e.kind in STEP_KINDS),
        calls=tuple(recorded),
        waiting_for=tuple(w.what for w in memory.waits),
        submissions=tuple(memory.submissions),
    )
    if error is not None and raise_on_error:
        raise error
    return run


# -- internals ---------------------------------------------------------------------------------


class _CountingMachine(ReplayMachine):
    """The real machine, counting how many steps it answered from the journal."""

    __slots__ = ("replayed",)

    def __init__(self, invocation_id: str, entries: Sequence[pb.JournalEntry]) -> None:
        self.replayed = 0
        super().__init__(invocation_id, entries)

    def next_step(
        self, kind: pb.EntryKind, name: str, input_hash: bytes, ident: Ident = ("", 0)
    ) -> Decision:
        decision = super().next_step(kind, name, input_hash, ident)
        if isinstance(decision, Replay):
            self.replayed += 1
        return decision


class _MemoryJournal:
    """A journal in a list; like the engine, it feeds each appended entry to the machine."""

    def __init__(self, machine: ReplayMachine, *, next_index: int) -> None:
        self.entries: list[pb.JournalEntry] = []
        self._machine = machine
        self._next_index = next_index
        self.submissions: list[Submission] = []
        self.waits: tuple[Wait, ...] = ()
        self.suspended = asyncio.Event()

    async def submit(self, submission: Submission) -> None:
        self.submissions.append(submission)

    def request_suspend(self, waits: Sequence[Wait]) -> None:
        self.waits = tuple(waits)
        self.suspended.set()

    def cancelling(self) -> bool:
        return False

    def halted(self) -> bool:
        return False

    def stopping(self) -> bool:
        return False

    def check_step(self) -> None:
        pass

    def fence(self) -> int:
        return self._next_index - 1  # the entries so far

    def diverged(self) -> None:
        pass  # reported after the run (WorkflowRun.error), as the engine would block it

    async def settle(self) -> None:
        pass  # every outcome is recorded at once here

    async def append_step(self, entry: pb.JournalEntry, *, defer: bool = False) -> None:
        stored = pb.JournalEntry()
        stored.CopyFrom(entry)
        stored.index = self._next_index
        stored.writer = "replay_workflow"
        self._next_index += 1
        self.entries.append(stored)
        self._machine.record(stored)


class _FakeChannels:
    """Stands in for ChannelPool: ``callable_for`` returns a fake instead of a gRPC stub."""

    def __init__(self, fakes: Mapping[str, FakeCall], recorded: list[RecordedCall]) -> None:
        self._fakes = dict(fakes)
        self._recorded = recorded

    def callable_for(self, method: MethodRef[Any, Any]) -> Callable[..., Awaitable[Any]]:
        fake = self._fakes.get(method.path)
        if fake is None:
            fake = self._fakes.get(method.method)
        if fake is None:
            given = ", ".join(sorted(self._fakes)) or "none"
            # ConfigError, like ChannelPool for an unconfigured service: it is raised before the
            # step's retry loop, so a missing fake fails at once instead of being retried.
            raise ConfigError(
                f"no fake for gRPC method {method.path} (fakes given: {given}); pass "
                f"calls={{{method.method!r}: lambda request: ...}} to replay_workflow"
            )
        expected = _response_type(method)
        recorded = self._recorded

        async def invoke(request: Any, timeout: float | None = None, metadata: Any = None) -> Any:
            recorded.append(RecordedCall(method.path, request, dict(metadata or ())))
            response = fake(request)
            if inspect.isawaitable(response):
                response = await response
            if type(response) is not expected:
                # Terminal: a wrong fake is a bug in the test, not worth retrying.
                raise TerminalError(
                    f"the fake for {method.path} returned {type(response).__name__}; "
                    f"it must return {expected.__name__}"
                )
            return response

        return invoke


def _numbered(journal: Sequence[pb.JournalEntry]) -> list[pb.JournalEntry]:
    """Copies of the entries, with step numbers filled in and checked for duplicates."""
    out: list[pb.JournalEntry] = []
    seen: set[int] = set()
    previous = 0
    for position, given in enumerate(journal, start=1):
        if not isinstance(given, pb.JournalEntry):
            raise TypeError(
                f"journal entry {position} is a {type(given).__name__}, not a JournalEntry"
            )
        entry = pb.JournalEntry()
        entry.CopyFrom(given)
        if not entry.index:
            entry.index = position
        if entry.kind == pb.ENTRY_KIND_PATCH and entry.step <= 0:
            entry.step = previous + 1  # a marker names the step after it
        if entry.kind in STEP_KINDS:
            if entry.step <= 0:
                entry.step = previous + 1
                if entry.HasField("failure"):
                    entry.failure.step = entry.step
            if entry.step in seen:
                raise ValueError(
                    f"the journal holds step {entry.step} twice (entry {position}: "
                    f"{entry.name!r}); give each step its own number"
                )
            seen.add(entry.step)
            previous = entry.step
        out.append(entry)
    return out


def _step_entry(
    kind: pb.EntryKind, name: str, step: int | None, timestamp: datetime | None
) -> pb.JournalEntry:
    if step is not None and step < 1:
        raise ValueError(f"step numbers start at 1, not {step}")
    return pb.JournalEntry(
        kind=kind,
        step=step or 0,
        name=name,
        timestamp_ms=_ms(timestamp) if timestamp is not None else 0,
        attempts=1,
    )


def _run_input_hash(args: Sequence[Any], kwargs: Mapping[str, Any]) -> bytes:
    # Exactly what Context.run hashes, so recorded and replayed hashes agree.
    try:
        data = _codec.encode([list(args), dict(kwargs)]).data if (args or kwargs) else b""
    except Exception:  # noqa: BLE001 - Context.run does not hash arguments JSON can't hold
        data = b""
    return _codec.input_hash(data)


def _response_type(method: MethodRef[Any, Any]) -> type:
    # Parsing no bytes yields an empty message of the method's response class.
    return type(method.response_deserializer(b""))


def _check_method(method: object) -> None:
    if not isinstance(method, MethodRef):
        raise TypeError(
            f"expected a method of grpc_service(StubClass), e.g. hello.SayHello; got {method!r}"
        )


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not name:
        raise TypeError(f"a ctx.run step name is a non-empty string, not {name!r}")
    return name


def _check_storable(output: Any, workflow: str) -> None:
    try:
        _codec.encode(output)
    except InvalidInputError as e:
        raise InvalidInputError(
            f"workflow {workflow} returned a value the engine cannot store: {e}"
        ) from e


def _ms(when: datetime) -> int:
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)
