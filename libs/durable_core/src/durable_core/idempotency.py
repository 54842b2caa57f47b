"""Exactly-once answers for the gRPC services that durable workflows call.

Every ``ctx.call`` carries ``idempotency-key: <invocation id>:<step>`` (the same on every attempt)
and ``durable-fence: <n>`` (higher for every run that takes the invocation over). A service that
installs :meth:`IdempotencyStore.interceptor` keeps, per method and key, a record in the
JetStream KV bucket ``<prefix>_calls``, so that across retries, processor crashes and restarts
of the service itself:

- a call whose key has already been answered is answered again from the record; the handler
  does not run (trailing metadata ``durable-answer: stored``);
- a call with a lower fence than one already seen for its key is refused with
  FAILED_PRECONDITION and does not run: it comes from a run that another run has superseded
  (e.g. a processor frozen between deciding the step and sending the call);
- a call whose key is being handled right now (another attempt, in this process or in another
  replica of the service) waits for that attempt's answer and returns it; if the attempt's
  hold lapses first (its service died), it runs the handler itself; if its own deadline comes
  first, it ends with ABORTED, which the engine retries;
- a call that reuses a key with another request is refused with INVALID_ARGUMENT (the same key
  always carries the same request unless the workflow is not deterministic).

Only answers with status OK are kept. A handler that fails (raises, aborts or sets a status)
leaves no answer, and the next attempt runs it again. Calls without an idempotency key pass
through untouched.

What it cannot do: the handler's effect and the record of its answer are two writes. A service
process that dies after the effect and before the record leaves the key held; once the hold
lapses (the call's deadline plus 5 s, or ``running_timeout`` for a call without one), the next
attempt runs the handler again. While a handler runs (and its answer is written), its hold is
renewed (every third of the hold), so a handler still running when its hold lapses is one that
blocks the event loop, a frozen process, or one cut off from NATS for longer than the hold. A
handler whose call is cancelled (its caller gone, its deadline passed) runs on, and its answer
is recorded for the retry, which waits for it. If both attempts answer, each caller gets the
answer recorded first, so the engine sees one answer. Make the effect itself idempotent by key
where that matters (e.g. pass the key on to the payment provider), as every exactly-once
system that calls out must.

Example:
    >>> store = await IdempotencyStore.connect("nats://127.0.0.1:4222")
    >>> server = grpc.aio.server(interceptors=[store.interceptor()])
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import inspect
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from datetime import timedelta
from typing import Any

import grpc
import grpc.aio

from durable_core._transport import Transport
from durable_core._transport.errors import StateConflict
from durable_core.config import EngineConfig, NatsConfig
from durable_core.errors import DurableError, InvalidInputError

__all__ = [
    "ANSWER_METADATA",
    "FENCE_METADATA",
    "IDEMPOTENCY_KEY_METADATA",
    "CallRecord",
    "IdempotencyStore",
    "call_identity",
]

log = logging.getLogger("durable_core.idempotency")

IDEMPOTENCY_KEY_METADATA = "idempotency-key"
"""gRPC metadata key of the caller's idempotency key (``<invocation id>:<step>``)."""

FENCE_METADATA = "durable-fence"
"""gRPC metadata key of the calling run's fence (a decimal number)."""

ANSWER_METADATA = "durable-answer"
"""Trailing metadata key set to ``stored`` on a call answered from its record."""

KEEP = timedelta(hours=24)
"""How long records are kept by default (as long as Stripe keeps its idempotency keys)."""

RUNNING = "running"
DONE = "done"

_RECORD_ROOM = 4 * 1024
"""Room a record's other fields and the message headers take beside the answer."""

_LAPSE_CONFIRM_S = 1.5
"""How long a call that finds another attempt's hold lapsed waits for the record to change
before it takes the key over. A hold also lapses when its live holder could not reach NATS to
renew it; once NATS answers again, the holder's renewal (tried every _RENEW_RETRY_S, each try
cut at _RENEW_TRY_S) or its answer lands within this."""
_CLOSE_WAIT_S = 5.0
"""How long :meth:`IdempotencyStore.close` waits for handlers still running to answer."""
_RENEW_TRY_S = 1.0
_RENEW_RETRY_S = 0.25


@dataclasses.dataclass(frozen=True, slots=True)
class CallRecord:
    """What the store knows of one (method, idempotency key).

    Attributes:
        method: the gRPC method path, e.g. ``/pkg.Service/Method``.
        key: the idempotency key.
        fence: the highest fence seen for the key (None: its calls carried none).
        digest: SHA-256 of the first request's bytes, hex.
        status: ``running`` (an attempt holds it until ``expires_ms``) or ``done``.
        owner: the attempt that holds it or answered it: ``<instance>#<process>#<attempt>``
            (``instance`` empty when the store was given none).
        expires_ms: when a running attempt's hold lapses (epoch ms; 0 once released).
        answer: the serialized response, once done (None if it was too large to keep).
        answered_ms: when it was answered (epoch ms; 0 while running).
    """

    method: str
    key: str
    fence: int | None
    digest: str
    status: str
    owner: str
    expires_ms: int
    answer: bytes | None = None
    answered_ms: int = 0

    def encode(self) -> bytes:
        """The record as stored (JSON; the answer in base64)."""
        d = dataclasses.asdict(self)
        d["answer"] = None if self.answer is None else base64.b64encode(self.answer).decode()
        return json.dumps(d, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes) -> CallRecord:
        """A record as stored."""
        d = json.loads(data)
        answer = d.get("answer")
        d["answer"] = None if answer is None else base64.b64decode(answer)
        return cls(**d)


@dataclasses.dataclass(frozen=True, slots=True)
class _Admitted:
    name: str
    record: CallRecord
    revision: int
    hold_ms: int


@dataclasses.dataclass(frozen=True, slots=True)
class _Refused:
    code: grpc.StatusCode
    details: str


@dataclasses.dataclass(frozen=True, slots=True)
class _Busy:
    """Another attempt holds the key until ``expires_ms`` (unless it answers first)."""

    expires_ms: int


@dataclasses.dataclass(frozen=True, slots=True)
class _Answer:
    """A response already serialized: the interceptor's serializer passes it on as is."""

    data: bytes


_Outcome = _Admitted | _Answer | _Refused | _Busy


def record_name(method: str, key: str) -> str:
    """The KV key of a (method, idempotency key): a hash, since either may hold any character."""
    return hashlib.sha256(f"{method}\0{key}".encode()).hexdigest()[:48]


def _now_ms() -> int:
    return int(time.time() * 1000)


MAX_FENCE = 2**64 - 1
"""The highest fence: the engine's fences are journal sequences (unsigned 64-bit)."""


def call_identity(metadata: Sequence[tuple[str, str | bytes]] | None) -> tuple[str, int | None]:
    """The idempotency key ("" if none) and the fence (None if none) of a call's metadata.

    Raises:
        InvalidInputError: the fence is not a decimal number from 0 to ``MAX_FENCE``. A call
            that means a fence and sends a malformed one is refused, not run unfenced.
    """
    key, fence = "", None
    for name, value in metadata or ():
        if name in (IDEMPOTENCY_KEY_METADATA, FENCE_METADATA):
            text = value.decode(errors="replace") if isinstance(value, bytes) else value
            if name == IDEMPOTENCY_KEY_METADATA:
                key = text
            elif len(text) <= 20 and text.isascii() and text.isdigit() and int(text) <= MAX_FENCE:
                fence = int(text)
            else:
                raise InvalidInputError(
                    f"{FENCE_METADATA} {text[:40]!r} is not a decimal number from 0 to 2**64-1"
                )
    return key, fence


class IdempotencyStore:
    """Call records of gRPC services in JetStream KV; install :meth:`interceptor` on a server.

    Use :meth:`connect`. One store serves any number of servers and methods; several
    replicas of a service share the records (the writes are compare-and-set).

    ``instance`` names this service process in a way that no two live processes (nor two
    stores in one process) share, and that a restarted process takes over: e.g.
    ``<host>:<address>:<port>`` with the port bound exclusively (grpc's ``grpc.so_reuseport``
    off) and kept until the handlers are done (:meth:`drain` before the server stops), or a
    StatefulSet pod's name. A call that
    finds its key held by an earlier process of the same instance (one that died with the
    call in flight) then runs at once instead of waiting for the hold to lapse. Without it
    such a key waits out the hold (the call's deadline plus 5 s).
    """

    def __init__(
        self,
        transport: Transport,
        *,
        keep: timedelta = KEEP,
        running_timeout: timedelta = timedelta(seconds=60),
        margin: timedelta = timedelta(seconds=5),
        wait_for_engine: timedelta = timedelta(seconds=30),
        instance: str | None = None,
        own_transport: bool = False,
    ) -> None:
        transport.open_call_records(keep.total_seconds(), wait=wait_for_engine.total_seconds())
        self._t = transport
        self._instance = instance or ""
        self._process = os.urandom(6).hex()
        self._running_ms = int(running_timeout.total_seconds() * 1000)
        self._margin_ms = int(margin.total_seconds() * 1000)
        self._own = own_transport
        self._answer_limit = max(0, (transport.nc.max_payload or 0) * 3 // 4 - _RECORD_ROOM)
        self._holdings: set[_Holding] = set()  # admitted calls whose answer is not recorded
        self._detached: set[asyncio.Task[None]] = set()
        self._emptied = asyncio.Event()
        self._draining = False

    @classmethod
    async def connect(
        cls,
        servers: str | Sequence[str] | NatsConfig = "nats://127.0.0.1:4222",
        *,
        engine: EngineConfig | None = None,
        keep: timedelta = KEEP,
        running_timeout: timedelta = timedelta(seconds=60),
        wait_for_engine: timedelta = timedelta(seconds=30),
        instance: str | None = None,
    ) -> IdempotencyStore:
        """Connect to NATS. The bucket is bound (or created, with the engine's replicas) at
        the first keyed call, so a service may start before any processor has made the
        engine; until the bucket can be reached keyed calls end UNAVAILABLE, which the engine
        retries.

        Args:
            engine: the engine's prefix (``durable``); the bucket is ``<prefix>_calls``.
            keep: how long records are kept, if this creates the bucket (a day: far past any
                retry of a step; a call after its record is gone runs). The bucket holds
                about ``calls/s * keep`` records of ~0.5 KB plus the answer, per replica.
            running_timeout: how long an attempt holds its key when its call has no deadline;
                with one, the deadline plus a 5 s margin. The hold is renewed every third of
                that while the handler runs, so it lapses only for a dead or frozen process
                (or one cut off from NATS for longer than the hold).
            wait_for_engine: how long the first keyed call waits for a processor to have
                made the engine.
            instance: this process's name among the service's processes (see the class).

        Raises:
            NatsUnavailableError: NATS cannot be reached.
        """
        cfg = NatsConfig.of(servers, name="durable-idempotency")
        t = await Transport.connect(cfg, engine, bind=False)
        return cls(
            t,
            keep=keep,
            running_timeout=running_timeout,
            wait_for_engine=wait_for_engine,
            instance=instance,
            own_transport=True,
        )

    async def drain(self, timeout: float) -> bool:
        """Stop admitting keyed calls (they end UNAVAILABLE, which the engine retries
        elsewhere) and wait up to ``timeout`` seconds for the running ones to record their
        answers. Call it before the server stops listening: a process that still runs a
        handler must keep its port (the proof, for an ``instance`` named after it, that it
        lives). True if none is left running."""
        self._draining = True
        with contextlib.suppress(TimeoutError):
            while self._holdings:
                self._emptied.clear()
                await asyncio.wait_for(self._emptied.wait(), timeout)
        return not self._holdings

    async def close(self) -> None:
        """Close the connection (if :meth:`connect` made it), once the handlers still running
        have recorded their answers (those of calls cancelled meanwhile too, e.g. by the
        server's stop): up to ``_CLOSE_WAIT_S``; then those left are cancelled, their keys
        released. New keyed calls are refused meanwhile, as by :meth:`drain`."""
        await self.drain(_CLOSE_WAIT_S)
        if self._detached:
            _, pending = await asyncio.wait(set(self._detached), timeout=1)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1)
        if self._own:
            await self._t.close()

    def _detach(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._detached.add(task)
        task.add_done_callback(self._detached.discard)

    def _held(self, holding: _Holding, held: bool) -> None:
        if held:
            self._holdings.add(holding)
        else:
            self._holdings.discard(holding)
            if not self._holdings:
                self._emptied.set()

    async def __aenter__(self) -> IdempotencyStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def interceptor(self, methods: Collection[str] | None = None) -> grpc.aio.ServerInterceptor:
        """A server interceptor that answers each keyed unary call once.

        Args:
            methods: the method paths (``/pkg.Service/Method``) it covers; every unary-unary
                method when None. Calls without an ``idempotency-key`` always pass through.
        """
        return _Interceptor(self, frozenset(methods) if methods is not None else None)

    async def record(self, method: str, key: str) -> CallRecord | None:
        """The record of ``method`` and ``key``, or None."""
        data, _ = await self._t.call_record(record_name(method, key))
        return CallRecord.decode(data) if data is not None else None

    # -- the protocol ----------------------------------------------------------------------

    async def begin(
        self, method: str, key: str, fence: int | None, digest: str, deadline_s: float | None
    ) -> _Outcome:
        """Decide a call: run it (the key is now held by it), answer it, refuse it, or wait
        for the attempt that holds its key."""
        name = record_name(method, key)
        hold = int(deadline_s * 1000) + self._margin_ms if deadline_s else self._running_ms
        owner = f"{self._instance}#{self._process}#{os.urandom(6).hex()}"
        data, revision = None, 0
        lapsed_at = -1  # the revision last seen lapsed, left alone for _LAPSE_CONFIRM_S
        for _ in range(10):
            now = _now_ms()
            mine = CallRecord(method, key, fence, digest, RUNNING, owner, now + hold)
            if data is None:  # no record (as far as we know): take it
                try:
                    rev = await self._t.put_call_record(name, mine.encode(), revision)
                    return _Admitted(name, mine, rev, hold)
                except StateConflict:
                    data, revision = await self._t.call_record(name)
                    continue
            rec = CallRecord.decode(data)
            if fence is not None and rec.fence is not None and fence < rec.fence:
                return _Refused(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"stale call for {key}: fence {fence}, but a later run of this step "
                    f"called with {rec.fence}",
                )
            if rec.digest and digest and rec.digest != digest:
                return _Refused(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"idempotency key {key} was first used with another request",
                )
            higher = _raises(fence, rec.fence)
            if rec.status == DONE:
                if rec.answer is None:
                    return _Refused(
                        grpc.StatusCode.FAILED_PRECONDITION,
                        f"{key} ran once; its answer was too large to keep, so it cannot be "
                        "answered again",
                    )
                return _Answer(rec.answer)
            dead = self._from_a_dead_process(rec.owner)
            if rec.expires_ms > now and not dead:
                if higher is None:
                    return _Busy(rec.expires_ms)
                # Raise the fence, so the superseded run's later calls are refused.
                bumped = dataclasses.replace(rec, fence=higher)
            elif rec.expires_ms and not dead and revision != lapsed_at:
                # Lapsed: its holder died, froze, or could not reach NATS to renew it (then
                # its renewal or its answer lands as soon as NATS answers it again). Take it
                # over only if nothing changes it meanwhile.
                lapsed_at = revision
                await asyncio.sleep(_LAPSE_CONFIRM_S)
                data, revision = await self._t.call_record(name)
                continue
            else:  # its holder died or gave up (or lapsed): this attempt takes the key over
                bumped = dataclasses.replace(
                    mine, fence=higher if higher is not None else rec.fence
                )
            try:
                rev = await self._t.put_call_record(name, bumped.encode(), revision)
            except StateConflict:
                data, revision = await self._t.call_record(name)
                continue
            if bumped.owner == owner:
                return _Admitted(name, bumped, rev, hold)
            return _Busy(bumped.expires_ms)
        return _Busy(_now_ms())

    async def renew(self, held: _Admitted) -> _Admitted | None:
        """Extend a running attempt's hold to its full length from now (compare-and-set,
        keeping a fence raised meanwhile). Returns the key as now held, or None if the
        attempt no longer holds it (taken over after a lapse, or gone)."""
        rec, revision = held.record, held.revision
        for _ in range(10):
            mine = dataclasses.replace(rec, expires_ms=_now_ms() + held.hold_ms)
            try:
                rev = await self._t.put_call_record(held.name, mine.encode(), revision)
                return dataclasses.replace(held, record=mine, revision=rev)
            except StateConflict:
                data, revision = await self._t.call_record(held.name)
                if data is None:
                    return None
                rec = CallRecord.decode(data)
                if rec.owner != held.record.owner or rec.status != RUNNING:
                    return None
        return None

    def _from_a_dead_process(self, owner: str) -> bool:
        """Whether ``owner`` is an earlier process of this store's instance: it died (no two
        live processes share an instance)."""
        if not self._instance:
            return False
        instance, process, _ = (owner.rsplit("#", 2) + ["", ""])[:3]
        return instance == self._instance and process != self._process

    async def finish(self, held: _Admitted, answer: bytes | None) -> bytes | None:
        """Record the answer of a call that ran (``answer`` None: it failed; release the key
        so the next attempt runs it, keeping the fence). Returns the answer that stands:
        ``answer``, or the one another attempt recorded first (None when there is none to
        give: a release, or an answer too large to keep)."""
        rec, revision = held.record, held.revision
        if answer is None:
            done = dataclasses.replace(rec, expires_ms=0)
        elif len(answer) > self._answer_limit:
            log.warning(
                "answer of %s for %s is %d bytes, over the %d a record keeps: a repeat of this "
                "call will be refused",
                rec.method,
                rec.key,
                len(answer),
                self._answer_limit,
            )
            done = dataclasses.replace(rec, status=DONE, expires_ms=0, answered_ms=_now_ms())
        else:
            done = dataclasses.replace(
                rec, status=DONE, expires_ms=0, answer=answer, answered_ms=_now_ms()
            )
        for _ in range(10):
            try:
                await self._t.put_call_record(held.name, done.encode(), revision)
                return done.answer
            except StateConflict:
                data, revision = await self._t.call_record(held.name)
                if data is None:
                    continue  # gone (kept past its time): write it again
                current = CallRecord.decode(data)
                if current.status == DONE:
                    return current.answer  # answered by another attempt: that answer stands
                if answer is None and current.owner != rec.owner:
                    return None  # taken over: nothing of ours to release
                done = dataclasses.replace(done, fence=_higher(done.fence, current.fence))
        log.warning("could not record the answer of %s for %s", rec.method, rec.key)
        return None


def _raises(fence: int | None, seen: int | None) -> int | None:
    """``fence`` if it is above the fence ``seen`` so far, else None."""
    return fence if fence is not None and (seen is None or fence > seen) else None


def _higher(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else max(a, b)


class _Interceptor(grpc.aio.ServerInterceptor):
    def __init__(self, store: IdempotencyStore, methods: frozenset[str] | None) -> None:
        self._store = store
        self._methods = methods

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        details: grpc.HandlerCallDetails,
    ) -> Any:
        """Wrap a keyed unary call's handler so the store decides it first."""
        handler = await continuation(details)
        method: str = details.method
        if handler is None or handler.unary_unary is None:
            return handler
        if self._methods is not None and method not in self._methods:
            return handler
        try:
            key, fence = call_identity(details.invocation_metadata)
        except InvalidInputError as e:
            return _refusal(handler, grpc.StatusCode.INVALID_ARGUMENT, str(e))
        if not key:
            return handler
        return _keyed(self._store, handler, method, key, fence)


def _refusal(handler: Any, code: grpc.StatusCode, details: str) -> Any:
    """``handler`` replaced by one that ends every call with ``code``; the handler never runs."""

    async def refuse(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(code, details)

    return grpc.unary_unary_rpc_method_handler(
        refuse,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


async def _release(store: IdempotencyStore, held: _Admitted) -> None:
    """Release a failed call's key (shielded: a cancelled call releases it too)."""
    with contextlib.suppress(Exception):
        await asyncio.shield(store.finish(held, None))


class _Holding:
    """Renews an admitted call's hold until its answer is recorded: a call may legitimately
    run longer than its hold (one without a deadline, past ``running_timeout``), and the
    answer's write may wait for NATS; a lapsed hold lets another attempt run the effect
    again. So a hold lapses only when its holder died or froze (its event loop blocked), or
    could not reach NATS for longer than the hold."""

    def __init__(self, store: IdempotencyStore, held: _Admitted) -> None:
        self.held = held
        self._settling = False
        self._store = store
        self._task = asyncio.ensure_future(self._renew())
        store._held(self, True)

    async def _renew(self) -> None:
        failing = False
        while True:
            # A third into the hold as written: a write that landed late (NATS was slow to
            # answer it) is renewed at once.
            due = self.held.record.expires_ms - 2 * self.held.hold_ms // 3
            await asyncio.sleep(max(0, due - _now_ms()) / 1000)
            try:
                renewed = await asyncio.wait_for(self._store.renew(self.held), _RENEW_TRY_S)
            except Exception as e:  # noqa: BLE001 - NATS unreachable: try again shortly
                if not failing:
                    log.warning("could not renew the hold of %s: %r", self.held.record.key, e)
                failing = True
                await asyncio.sleep(_RENEW_RETRY_S)
                continue
            failing = False
            if renewed is None:
                if not self._settling:
                    log.warning(
                        "%s %s: the key was taken over while its handler still runs",
                        self.held.record.method,
                        self.held.record.key,
                    )
                return
            self.held = renewed

    def stop(self) -> _Admitted:
        """Stop renewing; the key as last held (``finish`` copes with a renewal in flight:
        its compare-and-set fails and it reads the record again)."""
        self._task.cancel()
        self._store._held(self, False)
        return self.held

    async def settle(self, answer: bytes) -> bytes | None:
        """Record the answer, renewing the hold until it is written (see ``finish``)."""
        self._settling = True
        try:
            return await self._store.finish(self.held, answer)
        finally:
            self.stop()


async def _handle(behavior: Callable[[Any, Any], Any], request: Any, context: Any) -> Any:
    response = behavior(request, context)
    if inspect.isawaitable(response):
        response = await response
    return response


async def _conclude(
    store: IdempotencyStore,
    holding: _Holding,
    response: Any,
    context: grpc.aio.ServicerContext[Any, Any],
    serialize: Callable[[Any], bytes],
) -> bytes:
    """The answer of a handler that returned: recorded (a status other than OK set on the
    call releases the key instead). The answer that stands, which every caller gets: this
    one, or the one another attempt recorded first (one that took over after this one's
    hold lapsed)."""
    code = context.code()
    if code is not None and code != grpc.StatusCode.OK:
        await _release(store, holding.stop())
        return serialize(response)
    answer = serialize(response)
    try:
        # Shielded: the answer is recorded even if the call is cancelled meanwhile.
        kept = await asyncio.shield(holding.settle(answer))
    except Exception:
        key = holding.held.record.key
        log.warning("could not record the answer of %s", key, exc_info=True)
        kept = None
    return kept if kept is not None else answer


async def _conclude_later(
    store: IdempotencyStore,
    holding: _Holding,
    run: asyncio.Future[Any],
    context: grpc.aio.ServicerContext[Any, Any],
    serialize: Callable[[Any], bytes],
) -> None:
    """Record the answer of a handler whose call was cancelled (its caller gone, or its
    deadline passed) once it returns, or release the key if it fails. It may run on for
    ``running_timeout`` at most: one that hangs is cancelled then (its key released), as
    grpc.aio would have done at once, so a retry is not kept waiting for good."""
    try:
        response = await asyncio.wait_for(run, store._running_ms / 1000)
    except TimeoutError:
        log.warning(
            "%s %s: its call ended and its handler ran on for %.0f s more; cancelled",
            holding.held.record.method,
            holding.held.record.key,
            store._running_ms / 1000,
        )
        await _release(store, holding.stop())
        return
    except asyncio.CancelledError:
        await _release(store, holding.stop())
        raise
    except BaseException:  # noqa: BLE001 - a failure: the next attempt runs it again
        await _release(store, holding.stop())
        return
    await _conclude(store, holding, response, context, serialize)


def _keyed(
    store: IdempotencyStore,
    handler: Any,
    method: str,
    key: str,
    fence: int | None,
) -> Any:
    """``handler`` for one keyed call: decided by the store before it runs."""
    digest = ""
    deserialize = handler.request_deserializer
    serialize = handler.response_serializer

    def request_deserializer(raw: bytes) -> Any:
        nonlocal digest
        digest = hashlib.sha256(raw).hexdigest()
        return deserialize(raw) if deserialize is not None else raw

    def response_serializer(response: Any) -> bytes:
        if isinstance(response, _Answer):
            return response.data
        return serialize(response) if serialize is not None else bytes(response)

    behavior: Callable[[Any, Any], Any] = handler.unary_unary

    async def decide(context: grpc.aio.ServicerContext[Any, Any]) -> _Outcome:
        if store._draining:
            return _Refused(grpc.StatusCode.UNAVAILABLE, "the service is shutting down")
        try:
            return await store.begin(method, key, fence, digest, context.time_remaining())
        except DurableError as e:  # NATS unreachable, no engine yet: the caller retries
            log.warning("idempotency store unavailable for %s %s: %s", method, key, e)
            return _Refused(grpc.StatusCode.UNAVAILABLE, f"idempotency store unavailable: {e}")

    async def behaviour(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        outcome = await decide(context)
        pause = 0.02
        while isinstance(outcome, _Busy):
            # Another attempt runs it: wait for its answer, or for its hold to lapse (its
            # service died), within this call's own deadline.
            left = context.time_remaining()
            wait = min(pause, max(0.0, (outcome.expires_ms - _now_ms()) / 1000) + 0.01)
            if left is not None and left < wait + 0.05:
                await context.abort(
                    grpc.StatusCode.ABORTED, f"a call with key {key} is still in progress"
                )
            await asyncio.sleep(wait)
            pause = min(pause * 2, 1.0)
            outcome = await decide(context)
        if isinstance(outcome, _Refused):
            await context.abort(outcome.code, outcome.details)
        if isinstance(outcome, _Answer):
            context.set_trailing_metadata(((ANSWER_METADATA, "stored"),))
            return outcome
        assert isinstance(outcome, _Admitted)
        holding = _Holding(store, outcome)
        run = asyncio.ensure_future(_handle(behavior, request, context))
        try:
            # Shielded: grpc.aio cancels a call whose caller went away (its processor died)
            # or whose deadline passed. Cancelled there, a handler may have made its effect
            # already; released, the next attempt would make it again. It runs on, and its
            # answer is recorded for that attempt, which waits for it (its hold is renewed).
            response = await asyncio.shield(run)
        except asyncio.CancelledError:
            # The call was cancelled (the handler runs on, or had just returned: its result
            # is recorded all the same), or the handler raised its own CancelledError (a
            # failure: released). Either way the handler's outcome decides, not this task's.
            store._detach(_conclude_later(store, holding, run, context, response_serializer))
            raise
        except BaseException:
            await _release(store, holding.stop())
            raise
        return _Answer(await _conclude(store, holding, response, context, response_serializer))

    return grpc.unary_unary_rpc_method_handler(
        behaviour,
        request_deserializer=request_deserializer,
        response_serializer=response_serializer,
    )
