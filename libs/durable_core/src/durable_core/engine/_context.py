"""The engine's implementation of ``Context``: the I/O the step machine asks for.

Each method asks ``durable_core._journal.steps.StepMachine`` what to do (replay or execute,
deliver a cancellation, park, retry at a time, ...) and does it: runs the attempt through the
interceptors, journals the outcome (``Journal``, the engine's or the test replayer's), sleeps,
or parks until the run is suspended. The worker reads the run's state from ``steps``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any, TypeVar, cast

from durable_core import _codec, _payloads
from durable_core._grpc import ChannelPool, MethodRef
from durable_core._journal import (
    MAX_SLEEP,
    Branch,
    DeliverCancel,
    Due,
    Execute,
    GiveUp,
    Park,
    ReplayMachine,
    SleepFor,
    StepMachine,
    Submission,
    Wait,
)
from durable_core._naming import check_partition_key, check_workflow_name
from durable_core._pb.durable.v1 import durable_pb2 as pb
from durable_core.context import Awakeable, Context
from durable_core.engine import _branches
from durable_core.engine._branches import BRANCH
from durable_core.engine._env import being_cancelled, through_cancels, wait_out
from durable_core.engine._signals import EngineFailure
from durable_core.engine._step_io import Journal, attempt_failure
from durable_core.errors import (
    ExpiredError,
    InvalidInputError,
    InvocationCancelledError,
    NatsUnavailableError,
    NonDeterminismError,
    PayloadTooLargeError,
    PayloadUnavailableError,
    StepFailedError,
    StepTimeoutError,
    TerminalError,
)
from durable_core.idempotency import FENCE_METADATA, IDEMPOTENCY_KEY_METADATA
from durable_core.interceptors import Interceptor, StepInput, chain_steps
from durable_core.retry import DEFAULT_RETRY, RetryPolicy

__all__ = ["Journal", "RunContext"]

# Event loop turns in a row with no branch moving before a run whose steps all parked is
# suspended (a branch's task ending and the code awaiting it going on take a turn each).
_SETTLE_TURNS = 8

Req = TypeVar("Req")
Resp = TypeVar("Resp")
T = TypeVar("T")

IDEMPOTENCY_KEY_HEADER = IDEMPOTENCY_KEY_METADATA
# Grows with every run that takes the invocation over (``Journal.fence``): a service that keeps
# the highest fence seen per idempotency key and refuses a lower one (durable_core.idempotency
# does) never runs a superseded run's call, even one that left a processor frozen between its
# last hold check and the send.
FENCE_HEADER = FENCE_METADATA
_PASSABLE = re.compile(rf"(?!.*-bin$)(?!{IDEMPOTENCY_KEY_HEADER}$)(?!{FENCE_HEADER}$)[a-z0-9._-]+")


class RunContext(Context):
    """The context of one run of one invocation (see ``Context`` for the API)."""

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
        payloads: _payloads.PayloadStore | None = None,
        payload_limit: int = 0,
        threads: Executor | None = None,
    ) -> None:
        self._invocation_id = invocation_id
        self._threads = threads or _spare_threads()  # where sync steps run
        self._payload_limit = payload_limit  # of an inline value (a ctx.set): 0 for none
        self._workflow = workflow
        self._partition_key = partition_key
        self.steps = StepMachine(invocation_id, machine, start_time_ms, self._branch)
        self._branches: dict[asyncio.Future[Any], Branch] = {}  # each task's branch
        # Grows whenever a branch starts, ends, asks for a step or parks (``still_parked``).
        self._moves = 0
        # The run's own trace context: what a step passes on (to a service, a child) unless
        # an interceptor (tracing) puts its own span's there; with tracing off, children and
        # services still join the invocation's trace.
        self.headers: dict[str, str] = {}
        self._journal = journal
        self._channels = channels
        self._interceptors = tuple(interceptors)
        self._attempt = attempt
        self._default_retry = default_retry or DEFAULT_RETRY
        self._markers: list[pb.JournalEntry] = []  # patch markers not yet journaled
        # Large values (None: all inline, the test replayer); Blobs read through the watch.
        self._payloads = _Watched(payloads, self) if payloads is not None else None
        # A stored value that could not be read back (missing, corrupt) or written: the run is
        # released whatever the workflow did (never a silent wrong value).
        self.payload_error: PayloadUnavailableError | NatsUnavailableError | None = None

    # -- branches --------------------------------------------------------------------------

    def enter(self) -> None:
        """The calling task runs the workflow's own code (the root branch): called in it
        before that code starts, so every task it starts is one of its branches."""
        task = asyncio.current_task()
        if task is not None:
            self._branches[task] = self.steps.root
            _branches.install(task.get_loop())
        BRANCH.set((self, self.steps.root, False))

    def pass_on(self, headers: Mapping[str, str]) -> None:
        """The run's trace context (``headers``), kept to pass on as gRPC metadata takes
        it (``passable``): a client's propagator may write ``X-Amzn-Trace-Id``, which as
        it is failed every call of the invocation."""
        self.headers = passable(headers)

    def name_task(self, task: asyncio.Future[Any], branch: Branch) -> None:
        """``task`` was created as ``branch`` (see ``durable_core.engine._branches``)."""
        self._branches[task] = branch
        self._moves += 1
        task.add_done_callback(self._branch_done)

    def open_branches(self, root: asyncio.Future[Any]) -> list[asyncio.Future[Any]]:
        """The run's tasks still going but ``root`` (the workflow's own): the engine ends
        them with the run, and a cancellation reaches each (``asyncio.wait`` and a task the
        workflow left behind do not pass the root's on)."""
        return [t for t in self._branches if t is not root and not t.done()]

    def _branch_done(self, task: asyncio.Future[Any]) -> None:
        self._branches.pop(task, None)  # it asks for nothing more
        self._moves += 1

    async def still_parked(self, task: asyncio.Future[Any]) -> bool:
        """Whether every step still waits once the tasks that were ready have run (``task``
        runs the workflow): the branch that parked first is not the last to move. A
        wake-up's run replays a branch waiting for a signal, which parks, while the branch
        whose timer woke it has yet to replay its sleep, now due; suspended then, the run's
        wake-up was spent and the workflow waited for the signal alone (a timer racing an
        approval never went off)."""
        quiet, seen = 0, self._moves
        while quiet < _SETTLE_TURNS:
            await asyncio.sleep(0)
            if task.done() or self.steps.suspension() is None:
                return False
            if self._moves != seen:
                quiet, seen = 0, self._moves
            else:
                quiet += 1
        return True

    def escaped(self, e: BaseException) -> tuple[int, ...]:
        """The steps whose failure the workflow let through, ending with ``e``: ``e``'s own
        step and those it was raised from (``raise ... from``), never a failure merely
        caught before (``__context__``: the workflow went on from it). A retry runs these
        again; every other step failure replays as it was. A failure of a branch the
        workflow held but did not raise (``gather(..., return_exceptions=True)``) takes a
        retry of its own, once it is the one raised."""
        return tuple(sorted(set(_failed_steps(e))))

    def _branch(self) -> Branch:
        """The branch of the calling task, named when it was created (``_branches``); one
        created where no factory named it becomes the next branch of its creator's when it
        first asks."""
        try:
            task = asyncio.current_task()
        except RuntimeError:  # no event loop: called from plain code (a test)
            return self.steps.root
        if task is None:
            return self.steps.root
        known = self._branches.get(task)
        if known is not None:
            return known
        carried = BRANCH.get()
        if carried is None or carried[0] is not self:
            if self.steps.root not in self._branches.values():
                self.enter()  # nobody entered the run (a test driving the context): the root
                return self.steps.root
            parent = self.steps.root
        elif carried[2]:
            return carried[1]  # started by a step's own code: the step's branch
        else:
            parent = carried[1]
        branch = parent.child()
        self._branches[task] = branch
        BRANCH.set((self, branch, False))
        return branch

    @contextlib.contextmanager
    def _step_code(self) -> Iterator[None]:
        """Around what only an executing step runs (its attempts, the interceptors): tasks
        started in there take no branch of their own."""
        token = BRANCH.set((self, self._branch(), True))
        try:
            yield
        finally:
            BRANCH.reset(token)

    # -- identity and deterministic helpers ------------------------------------------------

    @property
    def invocation_id(self) -> str:
        return self._invocation_id

    @property
    def workflow(self) -> str:
        return self._workflow

    @property
    def partition_key(self) -> str:
        return self._partition_key

    @property
    def is_replaying(self) -> bool:
        return self.steps.is_replaying

    def now(self) -> datetime:
        return self.steps.now()

    def uuid(self) -> uuid.UUID:
        return self.steps.uuid()

    def random(self) -> float:
        return self.steps.random()

    def patched(self, change_id: str) -> bool:
        if not isinstance(change_id, str) or not change_id or len(change_id) > 256:
            raise InvalidInputError("a change id is a non-empty string of at most 256 chars")
        patch = self.steps.patched(change_id, _wall_ms())
        if patch.marker is not None:
            self._markers.append(patch.marker)
        return patch.new_code

    # -- steps -----------------------------------------------------------------------------

    async def call(
        self,
        method: MethodRef[Req, Resp],
        request: Req,
        *,
        timeout: timedelta | float | None = timedelta(seconds=30),
        retry: RetryPolicy | None = None,
    ) -> Resp:
        if not isinstance(method, MethodRef):
            raise TypeError(
                "ctx.call expects a method of grpc_service(StubClass), e.g. "
                f"grpc_service(HelloServiceStub).SayHello; got {method!r}"
            )
        req_bytes = method.request_serializer(request)
        digest = _codec.input_hash(req_bytes)
        decision = await self._decide(pb.ENTRY_KIND_CALL, method.path, digest)
        if not isinstance(decision, Execute):
            recorded = await self._resolved(self.steps.replayed(decision.entry))
            return cast(Resp, method.response_deserializer(recorded.data))
        if self._channels is None:
            raise TerminalError("this context has no gRPC channels (testing without services)")
        fn = self._channels.callable_for(method)
        seconds = timeout.total_seconds() if isinstance(timeout, timedelta) else timeout
        key = self.steps.step_key(decision.step)
        journal = self._journal

        async def attempt(inp: StepInput) -> Any:
            metadata = (
                (IDEMPOTENCY_KEY_HEADER, key),
                (FENCE_HEADER, str(journal.fence())),
                *passable(inp.headers).items(),  # an interceptor's propagator may add any
            )
            return await fn(request, timeout=seconds, metadata=metadata)

        return await self._execute(  # type: ignore[no-any-return]
            pb.ENTRY_KIND_CALL,
            "call",
            decision.step,
            method.path,
            digest,
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
        try:
            arg_bytes = _codec.encode([list(args), kwargs]).data if (args or kwargs) else b""
        except Exception:  # noqa: BLE001 - non-JSON args are allowed, just not hashed
            arg_bytes = b""
        digest = _codec.input_hash(arg_bytes)
        decision = await self._decide(pb.ENTRY_KIND_RUN, name, digest)
        if not isinstance(decision, Execute):
            return await self._load(self.steps.replayed(decision.entry))  # type: ignore[no-any-return]

        async def call_fn() -> Any:
            if inspect.iscoroutinefunction(fn):
                return await fn(*args, **kwargs)
            result = await self._in_thread(fn, *args, **kwargs)
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
            digest,
            attempt,
            retry or self._default_retry,
        )

    # -- internals -------------------------------------------------------------------------

    async def _in_thread(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run a sync step's function in a thread, which nothing can stop once it runs. Halted
        meanwhile by the engine (shutdown, a rerun, a lost claim: ``stopped`` is set), the run
        waits for the thread to end before the halt goes on: its command must not be handed
        back (to a processor that would run the step again) while the step still runs here.
        A cancellation of the invocation interrupts at once, as it does any step, and so does
        the step's own timeout (the attempt fails at its deadline, as documented; its thread
        may still run beside the retry, as a timed-out activity may under Temporal). A step
        still waiting for a thread when interrupted never runs."""
        job = self._threads.submit(contextvars.copy_context().run, fn, *args, **kwargs)
        thread = asyncio.wrap_future(job)
        try:
            return await asyncio.shield(thread)
        except asyncio.CancelledError:
            if job.cancel():
                raise  # it had not started: it never will
            if self._journal.halted() and not self._journal.cancelling():
                await wait_out(thread)
            raise

    async def _load(self, payload: pb.Payload, as_type: Any = None) -> Any:
        """The value of a recorded payload as workflow code gets it: a stored one is read
        from the object store only now, when it is handed to the workflow (a Blob not even
        then: only when the workflow reads it)."""
        with self._engine_errors(), self._executing():
            return await _payloads.load_value(self._payloads, payload, as_type)

    async def _resolved(self, payload: pb.Payload) -> pb.Payload:
        with self._engine_errors(), self._executing():
            return await _payloads.resolved(self._payloads, payload)

    async def _stored(self, value: Any) -> pb.Payload:
        """A step's result or the workflow's output, encoded; stored by reference when large
        (streamed in chunks when file-like). Another invocation's Blob is held for this one;
        one of an expired invocation cannot be stored (InvalidInputError)."""
        # The engine's journal (its Execution) holds the transport; the test replayer's has
        # none, nor a store: nothing to hold there.
        invocations = getattr(self._journal, "t", None)
        with self._engine_errors():
            try:
                return await _payloads.store_value(
                    self._payloads, value, self._invocation_id, invocations
                )
            except ExpiredError as e:
                raise InvalidInputError(f"a Blob of an expired invocation: {e}") from e

    @contextlib.contextmanager
    def _engine_errors(self) -> Iterator[None]:
        """A stored value that cannot be read back (missing, corrupt) or NATS failing the
        object store: the engine's trouble, not the workflow's. The run stops (EngineFailure,
        which workflow code cannot catch) and is released; never a silent wrong value."""
        try:
            yield
        except (PayloadUnavailableError, NatsUnavailableError) as e:
            self.payload_error = e
            raise EngineFailure(e) from e

    async def _append(self, entry: pb.JournalEntry, *, defer: bool = False) -> None:
        """Journal an entry of this run, after the patch markers taken before it: a step
        recorded on a new branch must never be journaled without the marker that chose it. A
        marker popped here reaches the writer's lock before any later append does.
        ``defer``: a step's outcome, journaled with the run's next entry (``settle``)."""
        while self._markers:
            await self._journal.append_step(self._markers.pop(0))
        await self._journal.append_step(self.steps.identify(entry), defer=defer)

    async def _decide(self, kind: pb.EntryKind, name: str, digest: bytes) -> Any:
        """Replay or execute the next step; the step boundary where pause and cancel act."""
        # The branch first, before anything awaits: the settle below waits for a write only
        # in a run that executes, and a sibling asking meanwhile would take this one's place.
        self._branch()
        self._moves += 1
        # The outcome of the step before is journaled before this one is even decided (a
        # write: the branch counts as executing meanwhile, or a sibling that parked would
        # have the run suspended before this step was asked for).
        with self._executing():
            await self._journal.settle()
        if self.payload_error is not None:
            # A stored value could not be read back and the workflow went on: no more steps.
            raise EngineFailure(self.payload_error)
        try:
            decision = self.steps.begin(kind, name, digest)
        except NonDeterminismError:
            self._journal.diverged()  # the engine stops the run and blocks the invocation
            raise
        if not isinstance(decision, Execute):
            return decision
        self._journal.check_step()
        boundary = self.steps.before_executing(kind, decision.step, name, digest, _wall_ms())
        if isinstance(boundary, DeliverCancel):
            with self._executing():
                await self._append(boundary.entry)
            raise InvocationCancelledError(self._invocation_id)
        if isinstance(boundary, Park):
            await self._park(boundary.wait)
        return decision

    async def _execute(
        self,
        kind: pb.EntryKind,
        kind_name: str,
        step: int,
        name: str,
        input_hash: bytes,
        attempt_fn: Callable[[StepInput], Awaitable[Any]],
        policy: RetryPolicy,
    ) -> Any:
        """Run a new step's attempts until one succeeds or the policy gives up, and journal
        its outcome; the step counts as executing meanwhile (the run may not suspend)."""
        journal = self._journal

        async def checked(inp: StepInput) -> Any:
            # After the interceptors (one may have waited) and after any backoff, as close to
            # the step's own code as this process can: see ``durable_core.engine._hold``.
            journal.check_step()
            return await attempt_fn(inp)

        with self._executing(), self._step_code():
            steps = self.steps
            chained = chain_steps(self._interceptors, checked)
            started = time.monotonic()
            earlier = steps.earlier_attempts(step, name)
            attempt = len(earlier)
            if earlier:
                steps.check_cancelled_at(step)  # cancelled while it waited for its next attempt
                await self._wait_for_attempt(step, name, earlier[-1].wake_at_ms, attempt + 1)
            result: Any = None
            failure: pb.Failure | None = None
            while True:
                attempt += 1
                inp = StepInput(
                    self._invocation_id,
                    self._workflow,
                    step,
                    kind_name,
                    name,
                    attempt,
                    dict(self.headers),
                )
                try:
                    result = await chained(inp)
                    failure = None
                    break
                except asyncio.CancelledError as e:
                    if being_cancelled() or self._journal.cancelling():
                        failure = steps.interrupted(step, self._journal.cancelling())
                        if failure is None:
                            raise
                        # The invocation was cancelled: the step ends, the workflow goes on.
                        _uncancel()
                        break
                    # Raised by the step's own code, not by the engine: the attempt failed. Taken
                    # for a shutdown, it handed the command back at once, forever.
                    failed, retryable = attempt_failure(e, step, policy)
                except (KeyboardInterrupt, SystemExit):
                    raise
                except PayloadUnavailableError as e:
                    # A stored value the step read (a Blob) is missing or corrupt: not the
                    # step's failure, and retrying will not mend it. The run is released.
                    self.payload_error = e
                    raise EngineFailure(e) from e
                except Exception as e:  # noqa: BLE001 - every step failure is journaled
                    failed, retryable = attempt_failure(e, step, policy)
                if self.payload_error is not None:
                    # A Blob read failed under the step (NATS failing it, whatever the step
                    # raised of it): the engine's trouble, not a failed attempt to journal.
                    raise EngineFailure(self.payload_error)
                decision = steps.attempt_failed(
                    step,
                    name,
                    input_hash,
                    failed,
                    retryable=retryable,
                    attempt=attempt,
                    policy=policy,
                    now_ms=_wall_ms(),
                )
                if isinstance(decision, GiveUp):
                    failure = decision.failure
                    break
                await self._append(decision.entry)
                await self._wait_for_attempt(step, name, decision.wake_at_ms, attempt + 1)
            if self.payload_error is not None:
                # A Blob the step read was missing or corrupt, and the step went on (it caught
                # the error): never journal what it made of that.
                raise EngineFailure(self.payload_error)
            return await self._journal_outcome(
                kind, step, name, input_hash, attempt, result, failure, started
            )

    async def _journal_outcome(
        self,
        kind: pb.EntryKind,
        step: int,
        name: str,
        input_hash: bytes,
        attempts: int,
        result: Any,
        failure: pb.Failure | None,
        started: float,
    ) -> Any:
        """Store a finished step's result, journal its outcome (deferred) and return what
        the workflow gets: what a replay would. A cancellation meanwhile (the invocation's)
        is raised only once the outcome is deferred (see ``JournalWriter.defer``); cut short
        there, the outcome of a step that ran was dropped, and the step ran again, or
        replayed as cancelled though it had run. A large result's store runs to its end for
        the same reason (``_stored_to_the_end``)."""
        output = None
        cancelled = False
        if failure is None:
            try:
                output, result, cancelled = await self._stored_to_the_end(result, kind)
            except InvalidInputError as e:  # a result we cannot store: running again won't help
                failure = pb.Failure(type=type(e).__name__, message=str(e), step=step)
        entry = self.steps.outcome(
            kind,
            step,
            name,
            input_hash,
            attempts=attempts,
            output=output,
            failure=failure,
            now_ms=_wall_ms(),
            duration_us=int((time.monotonic() - started) * 1e6),
        )
        await self._append(entry, defer=True)
        self.steps.executed(entry)
        if cancelled:
            raise asyncio.CancelledError
        return result

    async def _stored_to_the_end(
        self, value: Any, kind: pb.EntryKind
    ) -> tuple[pb.Payload, Any, bool]:
        """A step's result stored (``_stored``), what the workflow gets of it (``_as_replayed``),
        and whether a cancellation came meanwhile.

        A value that writes to the object store (a large one, a stream, a Blob to share) is
        stored, and read back, in a task of its own, which a cancellation (the invocation's,
        or the workflow's own of the step's task) does not cut short: it dropped the outcome
        of a step that had run, which then replayed as cancelled, or ran again. The engine
        stopping the run (a shutdown, its execution timeout: ``Journal.stopping``) does cut
        it short: the run stops where it is, and the step runs again. A small value writes nothing,
        and gets no task (one per step cost a fifth of the throughput).
        """

        async def store() -> tuple[pb.Payload, Any]:
            output = await self._stored(value)
            return output, await self._as_replayed(output, value, kind)

        inline = _payloads.unstored(self._payloads, value)
        if inline is not None:
            return inline, await self._as_replayed(inline, value, kind), False
        if self._payloads is None:  # no store (the test replayer): nothing is written
            return *await store(), False
        task = _branches.engine_task(store())
        cancelled = await through_cancels(task, abandon=self._journal.stopping)
        if cancelled and task.exception() is not None:
            # The store failed (a value too large, an expired Blob): the cancellation wins,
            # never swallowed (the run that meets it reads the request and delivers it).
            raise asyncio.CancelledError
        output, result = task.result()
        return output, result, cancelled

    async def _as_replayed(self, output: pb.Payload, value: Any, kind: pb.EntryKind) -> Any:
        """What the workflow gets of a step's result, as a replay would: a Blob, or the JSON
        value (a dataclass as a dict, a tuple as a list), never the function's own object,
        which only this first run would have seen."""
        if output.blob or kind == pb.ENTRY_KIND_RUN:
            return await self._load(output)
        return value

    async def _wait_for_attempt(self, step: int, name: str, due_ms: int, attempt: int) -> None:
        """Wait until a step's next attempt is due: in-process when it is soon, otherwise
        suspended on a server-side timer, holding no processor slot (never returns then:
        the run after the wake-up replays to here and finds it due)."""
        decision = self.steps.attempt_timer(step, name, due_ms, attempt, _wall_ms())
        if isinstance(decision, Due):
            return
        if isinstance(decision, DeliverCancel):
            raise await self._deliver(decision)
        if isinstance(decision, SleepFor):
            await self._sleep_in_process(step, decision.seconds)
            # The next attempt is a step boundary too: a pause that came during the backoff
            # holds it (read first if the pause said so: see Execution.look_again).
            await self._journal.settle()
            paused = self.steps.held_by_pause(step)
            if paused is None:
                return
            decision = paused
        self.steps.executing -= 1  # parked, not executing: the invocation may suspend
        try:
            await self._park(decision.wait)
        finally:
            self.steps.executing += 1

    async def _intercepted(
        self, kind_name: str, step: int, name: str, record: Callable[[StepInput], Awaitable[T]]
    ) -> T:
        """Journal an executed step that is not retried (a wait, a submission, a state change)
        through the interceptors, once; replayed steps never come here."""
        inp = StepInput(
            self._invocation_id, self._workflow, step, kind_name, name, 1, dict(self.headers)
        )
        with self._step_code():
            return await chain_steps(self._interceptors, record)(inp)  # type: ignore[no-any-return]

    async def _journal_counted(self, kind_name: str, entry: pb.JournalEntry) -> None:
        """Journal a step that records its outcome at once (counted as executing meanwhile)."""
        with self._executing():
            await self._intercepted(
                kind_name, entry.step, entry.name, lambda _: self._append(entry)
            )

    @contextlib.contextmanager
    def _executing(self) -> Iterator[None]:
        """A step runs or journals, or the engine reads or writes for the branch (a deferred
        outcome's flush, a stored value's read), or an in-process timer runs: the run may
        not suspend meanwhile; after it, it may (asked every time: a request too early is
        harmless, since the engine suspends only once no branch moves, see
        ``still_parked``; one never made left a sibling's parked wait with no timer armed,
        or a signal that arrived meanwhile unseen)."""
        self.steps.executing += 1
        try:
            yield
        finally:
            self.steps.executing -= 1
            self._maybe_suspend()

    # -- waiting ---------------------------------------------------------------------------

    def _maybe_suspend(self) -> None:
        waits = self.steps.suspension()
        if waits is not None:
            self._journal.request_suspend(waits)

    async def _park(self, wait: Wait) -> Any:
        """Wait for something that has not happened; the engine suspends once all steps park.

        Never returns in this run: the engine cancels the run and a later run (after the
        wake-up) replays up to here and finds what it waited for.
        """
        decision = self.steps.park(wait, _wall_ms())
        if isinstance(decision, DeliverCancel):
            raise await self._deliver(decision)
        self._moves += 1
        self._maybe_suspend()
        try:
            await asyncio.Future()  # cancelled by the engine when it suspends or reruns
        except asyncio.CancelledError:
            cancel = self.steps.unpark(wait, self._journal.cancelling(), _wall_ms())
            raise await self._deliver_instead(cancel) from None

    async def _deliver_instead(self, cancel: DeliverCancel | None) -> InvocationCancelledError:
        """In the ``except CancelledError`` of an interrupted wait: the cancellation the
        interruption delivers (``cancel``), or, if none, the interruption raised again."""
        if cancel is None:
            raise  # called from the except clause: its CancelledError
        _uncancel()
        return await self._deliver(cancel)

    async def _sleep_in_process(self, step: int, seconds: float) -> None:
        """Wait out a timer of ``step`` in process (see ``StepMachine.timer``). Counted as
        executing: a sibling branch that parks meanwhile must not suspend the run (this
        timer has no server-side wake-up; it would never go off). The invocation's
        cancellation interrupting it is delivered here (``timer_interrupted``)."""
        with self._executing():
            try:
                await asyncio.sleep(seconds)
            except asyncio.CancelledError:
                cancel = self.steps.timer_interrupted(step, self._journal.cancelling(), _wall_ms())
                raise await self._deliver_instead(cancel) from None

    async def _deliver(self, cancel: DeliverCancel) -> InvocationCancelledError:
        """Record that the cancellation was raised at a waiting step, for replays."""
        with self._executing():
            await self._append(cancel.entry)
        return InvocationCancelledError(self._invocation_id)

    async def _journal_wait(
        self, kind: pb.EntryKind, kind_name: str, name: str, digest: bytes = b""
    ) -> int:
        """Record (or replay) the step that waits; returns its step number."""
        decision = await self._decide(kind, name, digest)
        if isinstance(decision, Execute):
            entry = pb.JournalEntry(
                kind=kind, step=decision.step, name=name, input_hash=digest, timestamp_ms=_wall_ms()
            )
            await self._journal_counted(kind_name, entry)
        return int(decision.step)

    async def _until(self, arrived: Callable[[], pb.Payload | Wait]) -> pb.Payload:
        """Wait until ``arrived`` has its payload (parking meanwhile)."""
        while True:
            outcome = arrived()
            if isinstance(outcome, pb.Payload):
                return outcome
            await self._park(outcome)

    # -- timers ----------------------------------------------------------------------------

    async def sleep(self, duration: timedelta) -> None:
        if not isinstance(duration, timedelta):
            raise InvalidInputError(f"ctx.sleep takes a timedelta, not {type(duration).__name__}")
        if duration < timedelta(0) or duration > MAX_SLEEP:
            raise InvalidInputError(
                f"sleep of {duration} is out of range: use 0 to {MAX_SLEEP.days} days"
            )
        millis = int(duration.total_seconds() * 1000)
        digest = _codec.input_hash(millis.to_bytes(8, "big"))
        decision = await self._decide(pb.ENTRY_KIND_SLEEP, "sleep", digest)
        if isinstance(decision, Execute):
            now = _wall_ms()
            entry = pb.JournalEntry(
                kind=pb.ENTRY_KIND_SLEEP,
                step=decision.step,
                name="sleep",
                input_hash=digest,
                timestamp_ms=now,
                wake_at_ms=now + millis,
            )
            await self._journal_counted("sleep", entry)
        else:
            entry = decision.entry
        while True:
            timer = self.steps.sleep_timer(entry, _wall_ms())
            if isinstance(timer, Due):
                return
            if isinstance(timer, DeliverCancel):
                raise await self._deliver(timer)
            if isinstance(timer, SleepFor):
                await self._sleep_in_process(entry.step, timer.seconds)
                continue
            await self._park(timer.wait)

    # -- awakeables and signals ------------------------------------------------------------

    def awakeable(self) -> Awakeable:
        awakeable_id = self.steps.awakeable_id()
        return Awakeable(
            awakeable_id, lambda as_type: self._awakeable_result(awakeable_id, as_type)
        )

    async def wait_for_signal(self, name: str, as_type: Any = None) -> Any:
        if not isinstance(name, str) or not name or len(name) > 256:
            raise InvalidInputError("a signal name is a non-empty string of at most 256 chars")
        step = await self._journal_wait(pb.ENTRY_KIND_SIGNAL_WAIT, "signal", name)
        index = self.steps.signal_index(name)
        payload = await self._until(lambda: self.steps.signal(step, name, index))
        return await self._load(payload, as_type)

    async def _awakeable_result(self, awakeable_id: str, as_type: Any) -> Any:
        step = await self._journal_wait(pb.ENTRY_KIND_AWAKEABLE, "awakeable", awakeable_id)
        payload = await self._until(lambda: self.steps.awakeable(step, awakeable_id))
        return await self._load(payload, as_type)

    # -- state -----------------------------------------------------------------------------

    def get(self, key: str, default: Any = None, *, as_type: Any = None) -> Any:
        payload = self.steps.get(key)
        return default if payload is None else _codec.decode_as(payload, as_type)

    async def set(self, key: str, value: Any) -> None:
        payload = _codec.encode(value)
        await self._state_step(pb.ENTRY_KIND_STATE_SET, key, payload)
        self.steps.put(key, payload)

    async def clear(self, key: str) -> None:
        await self._state_step(pb.ENTRY_KIND_STATE_CLEAR, key, pb.Payload())
        self.steps.put(key, None)

    async def _state_step(self, kind: pb.EntryKind, key: str, payload: pb.Payload) -> None:
        if not isinstance(key, str) or not key:
            raise InvalidInputError("a state key is a non-empty string")
        digest = _codec.input_hash(payload.SerializeToString(deterministic=True))
        decision = await self._decide(kind, key, digest)
        if isinstance(decision, Execute):
            size = payload.ByteSize()
            if self._payload_limit and size > self._payload_limit:
                # Journaled inline: larger, its entry failed to append, and the run was
                # handed back and started again without end. (A replay never checks: a value
                # journaled under another limit stays as it was.)
                raise PayloadTooLargeError(
                    f"state {key!r} is {size} bytes; the limit of an inline value is "
                    f"{self._payload_limit} (store a large value with a step: its result goes "
                    "to the object store)"
                )
            entry = pb.JournalEntry(
                kind=kind,
                step=decision.step,
                name=key,
                input_hash=digest,
                output=payload,
                timestamp_ms=_wall_ms(),
            )
            await self._journal_counted("state", entry)

    # -- other invocations -----------------------------------------------------------------

    async def invoke(
        self,
        workflow: str,
        args: Any = None,
        *,
        partition_key: str | None = None,
        as_type: Any = None,
    ) -> Any:
        # The wait is the submission's own step: the count of steps taken, read after the
        # submission's awaits, names a later one when steps run at once (``gather``).
        child_id, step = await self._submit(
            pb.ENTRY_KIND_CHILD, workflow, args, partition_key, notify=True
        )
        payload = await self._until(lambda: self.steps.child(step, child_id))
        return await self._load(payload, as_type)

    async def start(
        self, workflow: str, args: Any = None, *, partition_key: str | None = None
    ) -> str:
        child_id, _ = await self._submit(
            pb.ENTRY_KIND_CHILD, workflow, args, partition_key, notify=False
        )
        return child_id

    async def send(
        self,
        workflow: str,
        args: Any = None,
        *,
        delay: timedelta | None = None,
        partition_key: str | None = None,
    ) -> str:
        if delay is not None and (
            not isinstance(delay, timedelta) or delay < timedelta(0) or delay > MAX_SLEEP
        ):
            raise InvalidInputError(f"delay must be a timedelta from 0 to {MAX_SLEEP.days} days")
        child_id, _ = await self._submit(
            pb.ENTRY_KIND_SEND, workflow, args, partition_key, notify=False, delay=delay
        )
        return child_id

    async def _submit(
        self,
        kind: pb.EntryKind,
        workflow: str,
        args: Any,
        partition_key: str | None,
        *,
        notify: bool,
        delay: timedelta | None = None,
    ) -> tuple[str, int]:
        """Submit (or replay the submission of) another invocation; its id and the step."""
        check_workflow_name(workflow)
        if partition_key is not None:
            # Before the step, as the workflow's own error (an empty key ran as none).
            check_partition_key(partition_key)
        payload = _payloads.encoded(args)
        digest = _codec.input_hash(
            workflow.encode() + payload.SerializeToString(deterministic=True)
        )
        decision = await self._decide(kind, workflow, digest)
        if not isinstance(decision, Execute):
            return self.steps.replayed_child(kind, decision.entry), int(decision.step)
        child_id = self.steps.child_id(decision.step)
        now = _wall_ms()
        start_at = now + int(delay.total_seconds() * 1000) if delay else 0

        async def record(inp: StepInput) -> None:
            # Large arguments go to the object store under the child's id (its retention
            # removes them); a Blob is shared as it is.
            args_payload = await _payloads.offload(self._payloads, payload, child_id)
            if self._payloads is not None:  # a Blob passed on: the child may outlive its owner
                for owner in sorted(_payloads.owners([args_payload], but=child_id)):
                    await self._payloads.hold(owner, child_id)
            await self._journal.submit(
                Submission(
                    invocation_id=child_id,
                    workflow=workflow,
                    args=args_payload,
                    partition_key=child_id if partition_key is None else partition_key,
                    parent_id=self._invocation_id,
                    notify_parent=notify,
                    start_at_ms=start_at,
                    headers=dict(inp.headers),
                )
            )
            entry = pb.JournalEntry(
                kind=kind,
                step=decision.step,
                name=workflow,
                input_hash=digest,
                output=_codec.encode(child_id),
                timestamp_ms=now,
                detached=not notify,
            )
            await self._append(entry)
            recorded.append(entry)

        recorded: list[pb.JournalEntry] = []
        kind_name = "child" if kind == pb.ENTRY_KIND_CHILD else "send"
        with self._executing():
            await self._intercepted(kind_name, decision.step, workflow, record)
        for entry in recorded:  # in this branch's task (the interceptors may run record in another)
            self.steps.saw(entry)  # as a replay of it does (``replayed_child``)
        if kind == pb.ENTRY_KIND_CHILD:
            self.steps.children.append(child_id)
        return child_id, int(decision.step)


class _Watched:
    """A run's payload store: a Blob read that finds its object missing or corrupt, or that
    NATS fails, marks the run (``payload_error``), whoever catches the error (the step's own
    code may)."""

    def __init__(self, store: _payloads.PayloadStore, ctx: RunContext) -> None:
        self._store = store
        self._ctx = ctx

    @property
    def threshold(self) -> int:
        return self._store.threshold

    async def put(self, owner: str, source: Any) -> pb.PayloadRef:
        return await self._store.put(owner, source)

    async def hold(self, source: str, holder: str) -> None:
        await self._store.hold(source, holder)

    async def chunks(self, ref: pb.PayloadRef) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._store.chunks(ref):
                yield chunk
        except (PayloadUnavailableError, NatsUnavailableError) as e:
            self._ctx.payload_error = e
            raise


def passable(headers: Mapping[str, str]) -> dict[str, str]:
    """``headers`` as gRPC metadata takes them: keys lower case (HTTP/2 has no other), not
    binary (``-bin``), not the engine's own."""
    out = {}
    for key, value in headers.items():
        low = key.lower()
        if _PASSABLE.fullmatch(low):
            out[low] = value
    return out


def _failed_steps(e: BaseException) -> list[int]:
    """The steps whose StepFailedError ``e`` is or was raised from (``__cause__``)."""
    out, seen = [], set()
    cause: BaseException | None = e
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, StepFailedError) and cause.step > 0:
            out.append(cause.step)
        cause = cause.__cause__
    return out


def _uncancel() -> None:
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()


def _wall_ms() -> int:
    return int(time.time() * 1000)


@functools.cache
def _spare_threads() -> ThreadPoolExecutor:
    """Sync steps' threads for a context no processor made (a test's replay)."""
    return ThreadPoolExecutor(thread_name_prefix="step")
