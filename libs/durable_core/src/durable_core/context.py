"""The durable context handed to every workflow: steps, and deterministic helpers."""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import random as _random
import time
import uuid as _uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, TypeVar, cast

import grpc
import grpc.aio

from durable_core import _codec
from durable_core._grpc import ChannelPool, MethodRef
from durable_core._journal import Execute, ReplayMachine
from durable_core._pb.durable.v1 import durable_pb2 as pb
from durable_core.errors import (
    InvalidInputError,
    NonDeterminismError,
    StepFailedError,
    TerminalError,
)
from durable_core.interceptors import Interceptor, StepInput, chain_steps
from durable_core.retry import DEFAULT_RETRY, RETRYABLE_GRPC_CODES, RetryPolicy

__all__ = ["Context"]

Req = TypeVar("Req")
Resp = TypeVar("Resp")
T = TypeVar("T")

IDEMPOTENCY_KEY_HEADER = "idempotency-key"


class Journal(Protocol):
    """Where a context records step outcomes: durably (the engine) or in memory (tests)."""

    async def append_step(self, entry: pb.JournalEntry) -> None:
        """Durably record a step's outcome before the workflow moves past it."""


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
        seed = hashlib.sha256(invocation_id.encode()).digest()
        self._rng = _random.Random(int.from_bytes(seed[:8], "big"))
        self._uuid_counter = 0
        self._retry_rng = _random.Random()
        self.nondeterminism: NonDeterminismError | None = None

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
        decision = self._decide(pb.ENTRY_KIND_CALL, method.path, _codec.input_hash(req_bytes))
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
            retry or DEFAULT_RETRY,
        )

    async def run(
        self,
        name: str,
        fn: Callable[..., T] | Callable[..., Awaitable[T]],
        *args: Any,
        retry: RetryPolicy | None = None,
        **kwargs: Any,
    ) -> T:
        """Run a local side effect durably and journal its result.

        ``fn`` may be sync (it runs in a thread) or async. Its result must be JSON-compatible,
        bytes, a protobuf message or None. Raise TerminalError to fail without retrying.

        Raises:
            StepFailedError: the function failed for good.
        """
        try:
            arg_bytes = _codec.encode([list(args), kwargs]).data if (args or kwargs) else b""
        except Exception:  # noqa: BLE001 - non-JSON args are allowed, just not hashed
            arg_bytes = b""
        decision = self._decide(pb.ENTRY_KIND_RUN, name, _codec.input_hash(arg_bytes))
        if not isinstance(decision, Execute):
            return self._replayed(decision.entry, _codec.decode)  # type: ignore[no-any-return]

        async def attempt(inp: StepInput) -> Any:
            if inspect.iscoroutinefunction(fn):
                return await fn(*args, **kwargs)
            result = await asyncio.to_thread(fn, *args, **kwargs)
            if inspect.isawaitable(result):
                return await result
            return result

        return await self._execute(  # type: ignore[no-any-return]
            pb.ENTRY_KIND_RUN,
            "run",
            decision.step,
            name,
            arg_bytes,
            attempt,
            retry or DEFAULT_RETRY,
        )

    # -- internals -------------------------------------------------------------------------

    def _decide(self, kind: pb.EntryKind, name: str, digest: bytes) -> Any:
        try:
            return self._machine.next_step(kind, name, digest)
        except NonDeterminismError as e:
            self.nondeterminism = e  # the engine fails the invocation even if this is caught
            raise

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
        chained = chain_steps(self._interceptors, attempt_fn)
        started = time.monotonic()
        attempt = 0
        result: Any = None
        failure: pb.Failure | None = None
        while True:
            attempt += 1
            inp = StepInput(self._invocation_id, self._workflow, step, kind_name, name, attempt)
            try:
                result = await chained(inp)
                failure = None
                break
            except (asyncio.CancelledError, KeyboardInterrupt, SystemExit):
                raise
            except Exception as e:  # noqa: BLE001 - every step failure is journaled
                code, retryable = _classify(e, policy)
                if retryable and policy.allows_another(attempt):
                    await asyncio.sleep(policy.delay(attempt, self._retry_rng))
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
        if failure is not None:
            raise StepFailedError(
                failure.message, step=step, name=name, code=failure.code, error_type=failure.type
            )
        return result


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


def workflow_arity(fn: Callable[..., Any]) -> int:
    """How many positional parameters a workflow takes (1 = ctx only, 2 = ctx and input)."""
    params = [
        p
        for p in inspect.signature(fn).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    return len(params)
