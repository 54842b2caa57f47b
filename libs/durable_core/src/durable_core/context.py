"""The durable context handed to every workflow: steps, and deterministic helpers."""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import random as _random
import time
import uuid as _uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, TypeVar, cast

import grpc
import grpc.aio

from durable_core import _codec
from durable_core._grpc import ChannelPool, MethodRef
from durable_core._journal import Execute, ReplayMachine
from durable_core._naming import check_workflow_name
from durable_core._pb.durable.v1 import durable_pb2 as pb
from durable_core.errors import (
    AwakeableRejectedError,
    ChildWorkflowError,
    InvalidInputError,
    InvocationCancelledError,
    NonDeterminismError,
    StepFailedError,
    StepTimeoutError,
    TerminalError,
)
from durable_core.interceptors import Interceptor, StepInput, chain_steps
from durable_core.retry import DEFAULT_RETRY, RETRYABLE_GRPC_CODES, RetryPolicy

__all__ = ["Awakeable", "Context", "Submission", "Wait"]

Req = TypeVar("Req")
Resp = TypeVar("Resp")
T = TypeVar("T")

IDEMPOTENCY_KEY_HEADER = "idempotency-key"


LOCAL_TIMER = timedelta(seconds=2)  # sleeps due sooner than this wait in-process
MAX_SLEEP = timedelta(days=3650)


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


class Journal(Protocol):
    """Where a context records step outcomes: durably (the engine) or in memory (tests)."""

    async def append_step(self, entry: pb.JournalEntry) -> None:
        """Durably record a step's outcome before the workflow moves past it."""

    async def submit(self, submission: Submission) -> None:
        """Durably submit another invocation (idempotent by its id)."""

    def request_suspend(self, waits: Sequence[Wait]) -> None:
        """Every step is parked on something that has not happened: stop this run."""

    def cancelling(self) -> bool:
        """True when the engine interrupted the run because the invocation was cancelled."""

    def check_step(self) -> None:
        """Raise (a ``SuspendExecution``) if this run may not execute another step: it lost the
        invocation or its hold on the command. Called before every step and attempt runs."""


class Context:
    """What a workflow uses to act durably.

    Every step (``call``, ``run``) is journaled before the workflow moves past it; on replay
    its recorded result is returned without running it again. The helpers ``now``, ``uuid``
    and ``random`` give the same answers on every replay.
    """

    def __init__(
        self,
        *,
        invocation_id: str,
        workflow: str,
        partition_key: str,
        machine: ReplayMachine,
        journal: Journal,
        channels: ChannelPool | None,
        start_time_ms: int,
        interceptors: Sequence[Interceptor] = (),
        attempt: int = 1,
        default_retry: RetryPolicy | None = None,
    ) -> None:
        self._invocation_id = invocation_id
        self._workflow = workflow
        self._partition_key = partition_key
        self._machine = machine
        self._journal = journal
        self._channels = channels
        self._interceptors = tuple(interceptors)
        self._now_ms = start_time_ms
        self._attempt = attempt
        self._default_retry = default_retry or DEFAULT_RETRY
        self._rng: _random.Random | None = None  # made on first use: most runs never need it
        self._uuid_counter = 0
        self.nondeterminism: NonDeterminismError | None = None
        self.cancel_delivered = False
        self._executing = 0
        self._parked: list[Wait] = []
        self._awakeables = 0
        self._signal_waits: dict[str, int] = {}
        self._state: dict[str, pb.Payload] = {}
        self.children: list[str] = []

    # -- identity --------------------------------------------------------------------------

    @property
    def invocation_id(self) -> str:
        """This invocation's id."""
        return self._invocation_id

    @property
    def workflow(self) -> str:
        """The workflow's registered name."""
        return self._workflow

    @property
    def partition_key(self) -> str:
        """The partition key the invocation was submitted with."""
        return self._partition_key

    @property
    def is_replaying(self) -> bool:
        """True while the workflow is re-reading steps that are already journaled."""
        return self._machine.is_replaying

    # -- deterministic helpers -------------------------------------------------------------

    def now(self) -> datetime:
        """The current time as the journal knows it (UTC).

        It is the time of the last journaled step the workflow has passed (or the time the
        invocation was submitted), so a replay sees the same value as the first run.
        """
        return datetime.fromtimestamp(self._now_ms / 1000, tz=UTC)

    def uuid(self) -> _uuid.UUID:
        """A UUID (version 4 layout) that is the same on every replay."""
        self._uuid_counter += 1
        digest = hashlib.sha256(
            f"{self._invocation_id}:uuid:{self._uuid_counter}".encode()
        ).digest()
        return _uuid.UUID(bytes=digest[:16], version=4)

    def random(self) -> float:
        """A float in [0, 1) from a generator seeded by the invocation id."""
        if self._rng is None:
            seed = hashlib.sha256(self._invocation_id.encode()).digest()
            self._rng = _random.Random(int.from_bytes(seed[:8], "big"))
        return self._rng.random()

    # -- steps -----------------------------------------------------------------------------

    async def call(
        self,
        method: MethodRef[Req, Resp],
        request: Req,
        *,
        timeout: timedelta | float | None = timedelta(seconds=30),
        retry: RetryPolicy | None = None,
    ) -> Resp:
        """Call a unary gRPC method durably.

        The call carries the metadata ``idempotency-key: <invocation_id>:<step>``, the same on
        every attempt, so the service can apply its effect once.

        Args:
            method: a method of a ``grpc_service(StubClass)``, e.g. ``hello.SayHello``.
            request: the request message.
            timeout: deadline of each attempt.
            retry: how to retry transient failures (UNAVAILABLE, DEADLINE_EXCEEDED, ...).

        Raises:
            StepFailedError: the call failed for good; ``code`` holds the gRPC status name.
        """
        if not isinstance(method, MethodRef):
            raise TypeError(
                "ctx.call expects a method of grpc_service(StubClass), e.g. "
                f"grpc_service(HelloServiceStub).SayHello; got {method!r}"
            )
        req_bytes = method.request_serializer(request)
        decision = await self._decide(pb.ENTRY_KIND_CALL, method.path, _codec.input_hash(req_bytes))
        if not isinstance(decision, Execute):
            return cast(
                Resp, self._replayed(decision.entry, lambda p: method.response_deserializer(p.data))
            )
        if self._channels is None:
            raise TerminalError("this context has no gRPC channels (testing without services)")
        fn = self._channels.callable_for(method)
        seconds = timeout.total_seconds() if isinstance(timeout, timedelta) else timeout
        key = f"{self._invocation_id}:{decision.step}"

        async def attempt(inp: StepInput) -> Any:
            metadata = ((IDEMPOTENCY_KEY_HEADER, key), *inp.headers.items())
            return await fn(request, timeout=seconds, metadata=metadata)

        return await self._execute(  # type: ignore[no-any-return]
            pb.ENTRY_KIND_CALL,
            "call",
            decision.step,
            method.path,
            req_bytes,
            attempt,
            retry or self._default_retry,
        )

    async def run(
        self,
        name: str,
        fn: Callable[..., T] | Callable[..., Awaitable[T]],
        *args: Any,
        retry: RetryPolicy | None = None,
        timeout: timedelta | None = None,
        **kwargs: Any,
    ) -> T:
        """Run a local side effect durably and journal its result.

        ``fn`` may be sync (it runs in a thread) or async. Its result must be JSON-compatible,
        bytes, a protobuf message or None. Raise TerminalError to fail without retrying.
        ``timeout`` bounds each attempt: an attempt over it raises StepTimeoutError, which the
        retry policy sees like any other failure.

        Raises:
            StepFailedError: the function failed for good.
        """
        try:
            arg_bytes = _codec.encode([list(args), kwargs]).data if (args or kwargs) else b""
        except Exception:  # noqa: BLE001 - non-JSON args are allowed, just not hashed
            arg_bytes = b""
        decision = await self._decide(pb.ENTRY_KIND_RUN, name, _codec.input_hash(arg_bytes))
        if not isinstance(decision, Execute):
            return self._replayed(decision.entry, _codec.decode)  # type: ignore[no-any-return]

        async def call_fn() -> Any:
            if inspect.iscoroutinefunction(fn):
                return await fn(*args, **kwargs)
            result = await asyncio.to_thread(fn, *args, **kwargs)
            if inspect.isawaitable(result):
                return await result
            return result

        async def attempt(inp: StepInput) -> Any:
            if timeout is None:
                return await call_fn()
            try:
                return await asyncio.wait_for(call_fn(), timeout.total_seconds())
            except TimeoutError:
                raise StepTimeoutError(
                    f"step {inp.step} ({name}) took longer than {timeout.total_seconds():g}s"
                ) from None

        return await self._execute(  # type: ignore[no-any-return]
            pb.ENTRY_KIND_RUN,
            "run",
            decision.step,
            name,
            arg_bytes,
            attempt,
            retry or self._default_retry,
        )

    # -- internals -------------------------------------------------------------------------

    async def _decide(self, kind: pb.EntryKind, name: str, digest: bytes) -> Any:
        """Replay or execute the next step; the step boundary where pause and cancel act."""
        try:
            decision = self._machine.next_step(kind, name, digest)
        except NonDeterminismError as e:
            self.nondeterminism = e  # the engine fails the invocation even if this is caught
            raise
        if not isinstance(decision, Execute):
            if decision.entry.failure.type == _CANCELLED:
                self.cancel_delivered = True  # an earlier run was cancelled here: so is this one
                raise InvocationCancelledError(self._invocation_id)
            return decision
        self._journal.check_step()
        if self._machine.cancel_requested and not self.cancel_delivered:
            self.cancel_delivered = True
            await self._journal.append_step(
                pb.JournalEntry(
                    kind=kind,
                    step=decision.step,
                    name=name,
                    input_hash=digest,
                    timestamp_ms=_wall_ms(),
                    failure=pb.Failure(type=_CANCELLED, message="cancelled", step=decision.step),
                )
            )
            raise InvocationCancelledError(self._invocation_id)
        if self._machine.paused:
            await self._park(Wait("paused (resume to continue)", decision.step))
        return decision

    def _raise_if_cancelled_at(self, step: int) -> None:
        """A wait that an earlier run was cancelled at is cancelled again on replay."""
        if self._machine.cancel_delivered_at(step):
            self.cancel_delivered = True
            raise InvocationCancelledError(self._invocation_id)

    async def _cancellation(self, step: int) -> InvocationCancelledError:
        """Record that the cancellation was raised at a waiting step, for replays."""
        self.cancel_delivered = True
        await self._journal.append_step(
            pb.JournalEntry(kind=pb.ENTRY_KIND_CANCEL_DELIVERED, step=step, timestamp_ms=_wall_ms())
        )
        return InvocationCancelledError(self._invocation_id)

    def _replayed(self, entry: pb.JournalEntry, parse: Callable[[pb.Payload], Any]) -> Any:
        self._now_ms = max(self._now_ms, entry.timestamp_ms)
        if entry.HasField("failure"):
            f = entry.failure
            raise StepFailedError(
                f.message, step=entry.step, name=entry.name, code=f.code, error_type=f.type
            )
        return parse(entry.output)

    async def _execute(
        self,
        kind: pb.EntryKind,
        kind_name: str,
        step: int,
        name: str,
        input_bytes: bytes,
        attempt_fn: Callable[[StepInput], Awaitable[Any]],
        policy: RetryPolicy,
    ) -> Any:
        self._executing += 1
        try:
            return await self._execute_counted(
                kind, kind_name, step, name, input_bytes, attempt_fn, policy
            )
        finally:
            self._executing -= 1
            self._maybe_suspend()

    async def _execute_counted(
        self,
        kind: pb.EntryKind,
        kind_name: str,
        step: int,
        name: str,
        input_bytes: bytes,
        attempt_fn: Callable[[StepInput], Awaitable[Any]],
        policy: RetryPolicy,
    ) -> Any:
        chained = chain_steps(self._interceptors, attempt_fn)
        started = time.monotonic()
        # Attempts that failed in earlier runs count: a crash or a suspension between two
        # attempts neither resets the count nor skips the backoff.
        earlier = [e for e in self._machine.failed_attempts(step) if e.name == name]
        attempt = len(earlier)
        if earlier:
            self._raise_if_cancelled_at(step)  # cancelled while it waited for its next attempt
            await self._wait_for_attempt(step, name, earlier[-1].wake_at_ms, attempt + 1)
        result: Any = None
        failure: pb.Failure | None = None
        while True:
            attempt += 1
            self._journal.check_step()  # time passed since the step was decided (backoff)
            inp = StepInput(self._invocation_id, self._workflow, step, kind_name, name, attempt)
            try:
                result = await chained(inp)
                failure = None
                break
            except asyncio.CancelledError:
                if not self._journal.cancelling() or self.cancel_delivered:
                    raise
                _uncancel()  # the invocation was cancelled: the step ends, the workflow goes on
                self.cancel_delivered = True
                failure = pb.Failure(type=_CANCELLED, message="cancelled", step=step)
                break
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as e:  # noqa: BLE001 - every step failure is journaled
                code, retryable = _classify(e, policy)
                if retryable and policy.allows_another(attempt):
                    now = _wall_ms()
                    wake_at = now + int(policy.delay(attempt) * 1000)
                    await self._journal.append_step(
                        pb.JournalEntry(
                            kind=pb.ENTRY_KIND_ATTEMPT_FAILED,
                            step=step,
                            name=name,
                            input_hash=_codec.input_hash(input_bytes),
                            failure=pb.Failure(
                                type=type(e).__name__, message=_message(e), code=code, step=step
                            ),
                            timestamp_ms=now,
                            attempts=attempt,
                            wake_at_ms=wake_at,
                        )
                    )
                    await self._wait_for_attempt(step, name, wake_at, attempt + 1)
                    continue
                failure = pb.Failure(
                    type=type(e).__name__, message=_message(e), code=code, step=step
                )
                break
        output = None
        if failure is None:
            try:
                output = _codec.encode(result)
            except InvalidInputError as e:  # a result we cannot store: running again won't help
                failure = pb.Failure(type=type(e).__name__, message=str(e), step=step)
        entry = pb.JournalEntry(
            kind=kind,
            step=step,
            name=name,
            input_hash=_codec.input_hash(input_bytes),
            timestamp_ms=int(time.time() * 1000),
            attempts=attempt,
            duration_us=int((time.monotonic() - started) * 1e6),
        )
        if output is not None:
            entry.output.CopyFrom(output)
        if failure is not None:
            entry.failure.CopyFrom(failure)
        await self._journal.append_step(entry)
        self._now_ms = max(self._now_ms, entry.timestamp_ms)
        if failure is not None and failure.type == _CANCELLED:
            raise InvocationCancelledError(self._invocation_id)
        if failure is not None:
            raise StepFailedError(
                failure.message, step=step, name=name, code=failure.code, error_type=failure.type
            )
        return result

    async def _wait_for_attempt(self, step: int, name: str, due_ms: int, attempt: int) -> None:
        """Wait until a step's next attempt is due: in-process when it is soon, otherwise
        suspended on a server-side timer, holding no processor slot (never returns then:
        the run after the wake-up replays to here and finds it due)."""
        left = due_ms - _wall_ms()
        if left <= 0:
            return
        if left <= LOCAL_TIMER.total_seconds() * 1000:
            await asyncio.sleep(left / 1000)
            return
        what = f"attempt {attempt} of step {step} ({name}) at {_iso(due_ms)}"
        self._executing -= 1  # parked, not executing: the invocation may suspend
        try:
            await self._park(Wait(what, step, due_ms, tag=f"a{attempt}"))
        finally:
            self._executing += 1

    async def _intercepted(
        self, kind_name: str, step: int, name: str, record: Callable[[StepInput], Awaitable[T]]
    ) -> T:
        """Journal an executed step that is not retried (a wait, a submission, a state change)
        through the interceptors, once; replayed steps never come here."""
        inp = StepInput(self._invocation_id, self._workflow, step, kind_name, name, 1)
        return await chain_steps(self._interceptors, record)(inp)  # type: ignore[no-any-return]

    # -- waiting -----------------------------------------------------------------------------

    def _maybe_suspend(self) -> None:
        if self._parked and self._executing == 0:
            self._journal.request_suspend(tuple(self._parked))

    async def _park(self, wait: Wait) -> Any:
        """Wait for something that has not happened; the engine suspends once all steps park.

        Never returns in this run: the engine cancels the run and a later run (after the
        wake-up) replays up to here and finds what it waited for.
        """
        if self._machine.cancel_delivered_at(wait.step):
            self.cancel_delivered = True
            raise InvocationCancelledError(self._invocation_id)
        if self._machine.cancel_requested and not self.cancel_delivered:
            raise await self._cancellation(wait.step)
        self._parked.append(wait)
        self._maybe_suspend()
        try:
            await asyncio.Future()  # cancelled by the engine when it suspends or reruns
        except asyncio.CancelledError:
            if not self._journal.cancelling() or self.cancel_delivered:
                raise
            _uncancel()
            self._parked.remove(wait)
            raise await self._cancellation(wait.step) from None

    async def _journal_wait(
        self, kind: pb.EntryKind, kind_name: str, name: str, digest: bytes = b""
    ) -> int:
        """Record (or replay) the step that waits; returns its step number."""
        decision = await self._decide(kind, name, digest)
        if isinstance(decision, Execute):
            entry = pb.JournalEntry(
                kind=kind, step=decision.step, name=name, input_hash=digest, timestamp_ms=_wall_ms()
            )
            self._executing += 1
            try:
                await self._intercepted(
                    kind_name, decision.step, name, lambda _: self._journal.append_step(entry)
                )
            finally:
                self._executing -= 1
        return int(decision.step)

    def _saw(self, entry: pb.JournalEntry) -> None:
        self._now_ms = max(self._now_ms, entry.timestamp_ms)

    # -- timers --------------------------------------------------------------------------------

    async def sleep(self, duration: timedelta) -> None:
        """Sleep durably, from a second to years.

        While asleep the workflow holds no processor slot and no unacknowledged message; the
        server (JetStream message scheduling) wakes it on time, even if every processor
        restarted meanwhile. ``now()`` afterwards is at least the recorded wake time.

        Raises:
            InvalidInputError: a negative duration, or one over ten years.
        """
        if not isinstance(duration, timedelta):
            raise InvalidInputError(f"ctx.sleep takes a timedelta, not {type(duration).__name__}")
        if duration < timedelta(0) or duration > MAX_SLEEP:
            raise InvalidInputError(
                f"sleep of {duration} is out of range: use 0 to {MAX_SLEEP.days} days"
            )
        millis = int(duration.total_seconds() * 1000)
        digest = millis.to_bytes(8, "big")
        decision = await self._decide(pb.ENTRY_KIND_SLEEP, "sleep", _codec.input_hash(digest))
        if isinstance(decision, Execute):
            now = _wall_ms()
            entry = pb.JournalEntry(
                kind=pb.ENTRY_KIND_SLEEP,
                step=decision.step,
                name="sleep",
                input_hash=_codec.input_hash(digest),
                timestamp_ms=now,
                wake_at_ms=now + millis,
            )
            self._executing += 1
            try:
                await self._intercepted(
                    "sleep", decision.step, "sleep", lambda _: self._journal.append_step(entry)
                )
            finally:
                self._executing -= 1
        else:
            entry = decision.entry
        while True:
            self._raise_if_cancelled_at(entry.step)
            left = entry.wake_at_ms - _wall_ms()
            if left <= 0:
                self._now_ms = max(self._now_ms, entry.wake_at_ms)
                return
            if left <= LOCAL_TIMER.total_seconds() * 1000:
                await asyncio.sleep(left / 1000)
                continue
            await self._park(
                Wait(f"timer until {_iso(entry.wake_at_ms)}", entry.step, entry.wake_at_ms)
            )

    # -- awakeables and signals ----------------------------------------------------------------

    def awakeable(self) -> Awakeable:
        """A handle something outside can complete, with an id that is the same on replay.

        Hand ``aw.id`` to the outside world (for instance from a ``ctx.run`` step), then
        ``await aw.result()``; ``client.resolve_awakeable(id, payload)`` or
        ``reject_awakeable(id, reason)`` completes it, before or after the wait.
        """
        self._awakeables += 1
        return Awakeable(self, f"awk.{self._invocation_id}.{self._awakeables}")

    async def wait_for_signal(self, name: str, as_type: Any = None) -> Any:
        """Wait for the next signal called ``name`` (``client.signal(id, name, payload)``).

        Signals sent before the wait are kept and delivered in the order they arrived.
        """
        if not isinstance(name, str) or not name or len(name) > 256:
            raise InvalidInputError("a signal name is a non-empty string of at most 256 chars")
        step = await self._journal_wait(pb.ENTRY_KIND_SIGNAL_WAIT, "signal", name)
        index = self._signal_waits.get(name, 0)
        self._signal_waits[name] = index + 1
        while True:
            self._raise_if_cancelled_at(step)
            entry = self._machine.signal(name, index)
            if entry is not None:
                self._saw(entry)
                return _codec.decode_as(entry.output, as_type)
            await self._park(Wait(f"signal {name!r}", step))

    async def _awakeable_result(self, awakeable_id: str, as_type: Any) -> Any:
        step = await self._journal_wait(pb.ENTRY_KIND_AWAKEABLE, "awakeable", awakeable_id)
        while True:
            self._raise_if_cancelled_at(step)
            entry = self._machine.awakeable_result(awakeable_id)
            if entry is not None:
                self._saw(entry)
                if entry.HasField("failure"):
                    raise AwakeableRejectedError(awakeable_id, entry.failure.message)
                return _codec.decode_as(entry.output, as_type)
            await self._park(Wait(f"awakeable {awakeable_id}", step))

    # -- state ---------------------------------------------------------------------------------

    def get(self, key: str, default: Any = None) -> Any:
        """The value last set for ``key`` in this invocation (journaled, so replay agrees)."""
        payload = self._state.get(key)
        return default if payload is None else _codec.decode(payload)

    async def set(self, key: str, value: Any) -> None:
        """Set ``key`` to a JSON value, bytes or protobuf message, durably."""
        payload = _codec.encode(value)
        await self._state_step(pb.ENTRY_KIND_STATE_SET, key, payload)
        self._state[key] = payload

    async def clear(self, key: str) -> None:
        """Remove ``key``, durably."""
        await self._state_step(pb.ENTRY_KIND_STATE_CLEAR, key, pb.Payload())
        self._state.pop(key, None)

    async def _state_step(self, kind: pb.EntryKind, key: str, payload: pb.Payload) -> None:
        if not isinstance(key, str) or not key:
            raise InvalidInputError("a state key is a non-empty string")
        digest = _codec.input_hash(payload.SerializeToString(deterministic=True))
        decision = await self._decide(kind, key, digest)
        if isinstance(decision, Execute):
            entry = pb.JournalEntry(
                kind=kind,
                step=decision.step,
                name=key,
                input_hash=digest,
                output=payload,
                timestamp_ms=_wall_ms(),
            )
            self._executing += 1
            try:
                await self._intercepted(
                    "state", decision.step, key, lambda _: self._journal.append_step(entry)
                )
            finally:
                self._executing -= 1
                self._maybe_suspend()

    # -- other invocations ---------------------------------------------------------------------

    async def invoke(
        self,
        workflow: str,
        args: Any = None,
        *,
        partition_key: str | None = None,
        as_type: Any = None,
    ) -> Any:
        """Run a child workflow and wait for its result (suspending meanwhile).

        Raises:
            ChildWorkflowError: the child failed; the message carries its error.
        """
        child_id = await self._submit(
            pb.ENTRY_KIND_CHILD, workflow, args, partition_key, notify=True
        )
        step = self._machine.steps_taken
        while True:
            self._raise_if_cancelled_at(step)
            entry = self._machine.child_result(child_id)
            if entry is not None:
                self._saw(entry)
                if entry.HasField("failure"):
                    raise ChildWorkflowError(child_id, entry.failure.type, entry.failure.message)
                return _codec.decode_as(entry.output, as_type)
            await self._park(Wait(f"child {child_id}", step))

    async def start(
        self, workflow: str, args: Any = None, *, partition_key: str | None = None
    ) -> str:
        """Start a child workflow without waiting; returns its invocation id."""
        return await self._submit(pb.ENTRY_KIND_CHILD, workflow, args, partition_key, notify=False)

    async def send(
        self,
        workflow: str,
        args: Any = None,
        *,
        delay: timedelta | None = None,
        partition_key: str | None = None,
    ) -> str:
        """Submit another invocation, optionally delayed; a replay never sends it twice."""
        if delay is not None and (
            not isinstance(delay, timedelta) or delay < timedelta(0) or delay > MAX_SLEEP
        ):
            raise InvalidInputError(f"delay must be a timedelta from 0 to {MAX_SLEEP.days} days")
        return await self._submit(
            pb.ENTRY_KIND_SEND, workflow, args, partition_key, notify=False, delay=delay
        )

    async def _submit(
        self,
        kind: pb.EntryKind,
        workflow: str,
        args: Any,
        partition_key: str | None,
        *,
        notify: bool,
        delay: timedelta | None = None,
    ) -> str:
        check_workflow_name(workflow)
        payload = _codec.encode(args)
        digest = _codec.input_hash(
            workflow.encode() + payload.SerializeToString(deterministic=True)
        )
        decision = await self._decide(kind, workflow, digest)
        if not isinstance(decision, Execute):
            self._saw(decision.entry)
            child_id = str(_codec.decode(decision.entry.output))
            if kind == pb.ENTRY_KIND_CHILD:
                self.children.append(child_id)
            return child_id
        child_id = _derived_id(self._invocation_id, decision.step)
        now = _wall_ms()
        start_at = now + int(delay.total_seconds() * 1000) if delay else 0

        async def record(inp: StepInput) -> None:
            await self._journal.submit(
                Submission(
                    invocation_id=child_id,
                    workflow=workflow,
                    args=payload,
                    partition_key=child_id if partition_key is None else partition_key,
                    parent_id=self._invocation_id,
                    notify_parent=notify,
                    start_at_ms=start_at,
                    headers=dict(inp.headers),
                )
            )
            await self._journal.append_step(
                pb.JournalEntry(
                    kind=kind,
                    step=decision.step,
                    name=workflow,
                    input_hash=digest,
                    output=_codec.encode(child_id),
                    timestamp_ms=now,
                    detached=not notify,
                )
            )

        kind_name = "child" if kind == pb.ENTRY_KIND_CHILD else "send"
        self._executing += 1
        try:
            await self._intercepted(kind_name, decision.step, workflow, record)
        finally:
            self._executing -= 1
            self._maybe_suspend()
        if kind == pb.ENTRY_KIND_CHILD:
            self.children.append(child_id)
        return child_id


class Awakeable:
    """A promise that something outside the workflow completes (see ``Context.awakeable``)."""

    def __init__(self, ctx: Context, awakeable_id: str) -> None:
        self._ctx = ctx
        self.id = awakeable_id

    async def result(self, as_type: Any = None) -> Any:
        """Wait for the resolution's payload (suspending meanwhile).

        Raises:
            AwakeableRejectedError: it was rejected; the message carries the reason.
        """
        return await self._ctx._awakeable_result(self.id, as_type)

    def __repr__(self) -> str:
        return f"Awakeable({self.id})"


_CANCELLED = "InvocationCancelledError"


def _uncancel() -> None:
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()


def _wall_ms() -> int:
    return int(time.time() * 1000)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="seconds")


def _derived_id(parent: str, step: int) -> str:
    """A child's id, the same on every replay: ``<parent>-<step>`` (hashed if too long)."""
    candidate = f"{parent}-{step}"
    if len(candidate) <= 128:
        return candidate
    return f"{hashlib.sha256(parent.encode()).hexdigest()[:40]}-{step}"


def _message(e: Exception) -> str:
    """A readable message: gRPC errors as 'CODE: details'."""
    if isinstance(e, grpc.aio.AioRpcError):
        return f"{e.code().name}: {e.details()}"
    return str(e) or type(e).__name__


def _classify(e: Exception, policy: RetryPolicy) -> tuple[str, bool]:
    """The gRPC code name of an error (or "") and whether it is worth retrying."""
    if isinstance(e, grpc.aio.AioRpcError | grpc.RpcError) and hasattr(e, "code"):
        code = e.code().name
        if code in policy.non_retryable_errors:
            return code, False
        return code, code in RETRYABLE_GRPC_CODES
    if isinstance(e, TerminalError) or type(e).__name__ in policy.non_retryable_errors:
        return "", False
    return "", True  # RetryableError and any other exception: worth another attempt
