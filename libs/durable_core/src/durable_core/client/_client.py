"""The client: submit invocations, wait for and read their results, steer them."""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from durable_core import _codec, _payloads
from durable_core._naming import check_invocation_id
from durable_core._pb.durable.v1 import durable_pb2 as pb
from durable_core._transport import StateEvents, StateRecord, Transport
from durable_core._types import TypeResolver
from durable_core.client import _lifecycle as lifecycle
from durable_core.client._results import (
    TERMINAL_PB,
    ExecutionSummary,
    Failure,
    InvocationResult,
    Status,
    result_of,
)
from durable_core.client._submit import WorkflowRef, start_at_ms, store_unstored, submit
from durable_core.config import EngineConfig, NatsConfig
from durable_core.errors import (
    InvalidInputError,
    InvocationTimeoutError,
    PayloadTooLargeError,
    WorkflowFailedError,
)
from durable_core.fleet import FleetCache, FleetView
from durable_core.plugins import workflow_signature

if TYPE_CHECKING:
    from durable_core.schedules import Schedule
    from durable_core.views import InvocationView

__all__ = ["Client"]

log = logging.getLogger("durable_core.client")


def _wait_seconds(timeout: timedelta | float) -> float:
    """How long to wait for a result: a timedelta or a finite number of seconds above 0 (a NaN
    never ran out, and polled NATS in a tight loop)."""
    if isinstance(timeout, timedelta):
        seconds = timeout.total_seconds()
    elif isinstance(timeout, int | float) and not isinstance(timeout, bool):
        try:
            seconds = float(timeout)
        except OverflowError as e:  # an int beyond float range (10**400)
            raise InvalidInputError(
                "timeout must be finite and above 0, not an integer beyond float range"
            ) from e
    else:
        raise InvalidInputError(f"timeout must be a timedelta or seconds, not {timeout!r:.80}")
    if not (math.isfinite(seconds) and seconds > 0):
        raise InvalidInputError(f"timeout must be finite and above 0, not {timeout!r}")
    return seconds


class Client:
    """Submits invocations and reads their results.

    Example:
        >>> async with await Client.connect("nats://127.0.0.1:4222") as client:
        ...     result = await client.invoke("hello_workflow", {"name": "Ada"})
        ...     print(result.output["message"])
    """

    def __init__(self, transport: Transport) -> None:
        self._t = transport
        self._fleet = FleetCache(transport)
        self._types = TypeResolver()

    @classmethod
    async def connect(
        cls,
        servers: str | Sequence[str] | NatsConfig = "nats://127.0.0.1:4222",
        *,
        engine: EngineConfig | None = None,
        wait_for_engine: timedelta = timedelta(0),
    ) -> Client:
        """Connect to NATS and to the engine's streams, which a processor creates.

        A client never creates the streams: their stored configuration (replicas, payload
        limit) is what it uses, whatever ``engine`` says of them; ``engine.prefix`` names the
        engine.

        Args:
            wait_for_engine: how long to wait for a processor to create the streams (for an
                application that starts alongside the processors); none by default.

        Raises:
            NatsUnavailableError: NATS cannot be reached (the message names the URLs tried).
            EngineNotFoundError: the engine's streams do not exist (no processor has started
                on this prefix yet, or the prefix or URL is wrong).
        """
        if not isinstance(wait_for_engine, timedelta) or wait_for_engine < timedelta(0):
            raise InvalidInputError(
                "wait_for_engine must be a timedelta of 0 or more (timedelta(seconds=5)), "
                f"not {wait_for_engine!r:.80}"
            )
        cfg = NatsConfig.of(servers, name="durable-client")
        transport = await Transport.connect(
            cfg, engine, wait_for_engine=wait_for_engine.total_seconds()
        )
        return cls(transport)

    @property
    def is_connected(self) -> bool:
        """Whether the connection to NATS is up now (it reconnects by itself)."""
        return self._t.connected

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection."""
        await self._t.close()

    # -- submitting ------------------------------------------------------------------------

    async def invoke_async(
        self,
        workflow: WorkflowRef,
        args: Any = None,
        *,
        id: str | None = None,  # noqa: A002 - the natural name
        partition_key: str | None = None,
        delay: timedelta | None = None,
        start_at: datetime | None = None,
        execution_timeout: timedelta | None = None,
        queue_unserved: bool = False,
    ) -> str:
        """Submit an invocation and return its id without waiting.

        Submitting the same id twice runs the workflow once: the second submission is
        recognised and its id returned; with other arguments it is a ConflictError. ``delay``
        or ``start_at`` make the server start it later (JetStream message scheduling; no
        processor holds it meanwhile).

        Args:
            workflow: a workflow name, or the workflow function itself (its input is then
                checked against the function's type hints before anything is sent).
            queue_unserved: accept a workflow that no live processor serves (it waits for a
                processor that will serve it) instead of refusing it.

        Raises:
            InvalidInputError: bad workflow name, id, partition key, delay, or arguments that
                do not match the declared type or exceed the payload limit.
            UnknownWorkflowError: no live processor serves the workflow (and not
                ``queue_unserved``); nothing was stored.
            ConflictError: the id belongs to an invocation with other arguments.
        """
        invocation_id, _ = await submit(
            self._t,
            workflow,
            args,
            id,
            partition_key,
            start_at=start_at_ms(delay, start_at),
            execution_timeout=execution_timeout,
            check=None if queue_unserved else self._fleet.check,
        )
        return invocation_id

    async def invoke(
        self,
        workflow: WorkflowRef,
        args: Any = None,
        *,
        id: str | None = None,  # noqa: A002
        partition_key: str | None = None,
        timeout: timedelta | float = timedelta(seconds=60),
        execution_timeout: timedelta | None = None,
        queue_unserved: bool = False,
    ) -> InvocationResult:
        """Submit an invocation and wait for its result.

        With a workflow function instead of a name, the input is checked against its type
        hints at intake and ``result.output`` is converted to its return type.

        Raises:
            UnknownWorkflowError: no live processor serves the workflow (see
                :meth:`invoke_async`'s ``queue_unserved``).
            WorkflowFailedError: the invocation failed (step and message attached).
            InvocationTimeoutError: no result within ``timeout`` (it keeps running).
            InvalidInputError: bad input, ``timeout`` included (checked before submitting).
        """
        seconds = _wait_seconds(timeout)
        invocation_id, events = await submit(
            self._t,
            workflow,
            args,
            id,
            partition_key,
            watch=True,
            execution_timeout=execution_timeout,
            check=None if queue_unserved else self._fleet.check,
        )
        assert events is not None
        try:
            state, entries = await self._wait_final(invocation_id, events, seconds)
        finally:
            await events.close()
        result = await self._result(state, entries)
        if result.status == Status.FAILED:
            f = result.failure or Failure("Error", "unknown failure")
            raise WorkflowFailedError(
                invocation_id, step=f.step, error_type=f.type, reason=f.message
            )
        if callable(workflow) and result.output is not None:
            _, _, output_type = workflow_signature(workflow)
            if output_type is not None:
                typed = await _payloads.load_value(self._t.payloads, state.output, output_type)
                result = dataclasses.replace(result, output=typed)
        return result

    async def fleet(self) -> FleetView:
        """The live processors and what each serves, read now (``durable plugins --fleet``)."""
        return await self._fleet.view(fresh=True)

    # -- lifecycle -------------------------------------------------------------------------

    async def pause(self, invocation_id: str) -> Status:
        """Pause at the next step boundary (the step in flight finishes and is journaled).

        Returns the status after the request (``paused``; or ``running`` until the run
        reaches its next step boundary).

        Raises:
            NotFoundError: no such invocation.
            IllegalTransitionError: it has finished (``.status`` tells how).
        """
        return await lifecycle.change(self._t, invocation_id, pb.ENTRY_KIND_PAUSE_REQUEST)

    async def resume(self, invocation_id: str) -> Status:
        """Continue a paused invocation from its journal, at once.

        Returns the status it led to: ``pending`` until a processor has taken the
        invocation up (it was paused before it ran, or paused at a step boundary), then
        ``running``, ``suspended`` or how it ended.

        Raises:
            IllegalTransitionError: it is not paused (running, suspended or finished).
        """
        return await lifecycle.change(self._t, invocation_id, pb.ENTRY_KIND_RESUME_REQUEST)

    async def cancel(self, invocation_id: str) -> Status:
        """Cancel now: the step in flight is interrupted (a gRPC call is cancelled), the
        workflow sees InvocationCancelledError (it may compensate), and it ends ``cancelled``.

        A ``blocked`` invocation (its replay diverged from its journal) ends ``cancelled``
        at once, without running: no processor can replay it to deliver the cancellation.

        Raises:
            IllegalTransitionError: it has already finished.
        """
        return await lifecycle.change(self._t, invocation_id, pb.ENTRY_KIND_CANCEL_REQUEST)

    async def retry(self, invocation_id: str) -> Status:
        """Run a failed invocation again from its failed step (same id, same journal).

        Steps before the failed one replay; the failed step runs again with the same
        idempotency key.

        Raises:
            IllegalTransitionError: it is not failed.
        """
        return await lifecycle.retry(self._t, invocation_id)

    async def rerun(
        self,
        invocation_id: str,
        *,
        id: str | None = None,  # noqa: A002 - as in invoke
    ) -> str:
        """Start a new invocation of the same workflow with the same arguments; its id.

        With ``id``, the rerun is idempotent: calling again with the same ``id`` (after a
        lost answer, say) returns it and starts nothing. Raises ConflictError when ``id``
        is taken by anything but a rerun of ``invocation_id``.
        """
        return await lifecycle.rerun(self._t, invocation_id, id)

    async def fork(
        self,
        invocation_id: str,
        *,
        from_step: int,
        id: str | None = None,  # noqa: A002 - as in invoke
    ) -> str:
        """A new invocation that replays steps before ``from_step`` from this one's journal
        and runs ``from_step`` and after for real; returns its id.

        With ``id``, the fork is idempotent: calling again with the same arguments (after a
        lost answer or a call cut short) finishes or returns that fork, never a second one.

        Forking a ``blocked`` invocation replaces it: it is cancelled first (otherwise a
        processor of the version it is pinned to could finish it too, and the steps from
        ``from_step`` on would run twice).

        Raises:
            InvalidInputError: ``from_step`` is below 1 or past the recorded steps + 1.
            IllegalTransitionError: a blocked invocation was taken up by a processor of its
                pinned version meanwhile (fork it once it ends, or cancel it).
            ConflictError: ``id`` is taken by anything but this fork.
        """
        return await lifecycle.fork(self._t, invocation_id, from_step, id)

    async def list_executions(
        self, *, status: str | None = None, workflow: str | None = None
    ) -> list[ExecutionSummary]:
        """Executions now, optionally by status and workflow (one pass over a KV watch)."""
        out = []
        async for item in self.watch_executions():
            if item is None:
                break
            if item.deleted:
                continue
            if status is not None and item.status.value != status:
                continue
            if workflow is not None and item.workflow != workflow:
                continue
            out.append(item)
        return sorted(out, key=lambda e: e.created_at or datetime.min.replace(tzinfo=UTC))

    # -- schedules (durable_core.schedules; the scheduler service fires them) --------------

    async def create_schedule(
        self,
        name: str,
        workflow: WorkflowRef,
        args: Any = None,
        *,
        cron: str | None = None,
        every: timedelta | None = None,
        timezone: str | None = None,
        overlap: Literal["skip", "allow"] = "skip",
        catch_up: int = 1,
        partition_key: str | None = None,
        paused: bool = False,
        queue_unserved: bool = False,
    ) -> Schedule:
        """Create a cron (``cron="*/5 * * * *"``, seconds field optional) or interval
        (``every=timedelta(seconds=2)``) schedule that starts ``workflow`` on each tick.

        ``overlap="skip"`` skips a tick while the previous run is unfinished; after downtime
        at most ``catch_up`` missed ticks run. Raises InvalidInputError (bad cron, interval,
        zone, name) or ConflictError (the name exists); UnknownWorkflowError when no live
        processor serves ``workflow`` (``queue_unserved=True`` creates it anyway).
        """
        from durable_core import schedules

        return await schedules.create_schedule(
            self._t,
            name,
            workflow,
            args,
            cron=cron,
            every=every,
            timezone=timezone,
            overlap=overlap,
            catch_up=catch_up,
            partition_key=partition_key,
            paused=paused,
            check=None if queue_unserved else self._fleet.check,
        )

    async def list_schedules(self) -> list[Schedule]:
        """Every schedule."""
        from durable_core import schedules

        return await schedules.list_schedules(self._t)

    async def get_schedule(self, name: str) -> Schedule:
        """One schedule (NotFoundError if there is none)."""
        from durable_core import schedules

        return await schedules.get_schedule(self._t, name)

    async def pause_schedule(self, name: str) -> Schedule:
        """Stop firing (the definition stays)."""
        from durable_core import schedules

        return await schedules.pause_schedule(self._t, name)

    async def resume_schedule(self, name: str) -> Schedule:
        """Fire again from the next tick."""
        from durable_core import schedules

        return await schedules.resume_schedule(self._t, name)

    async def delete_schedule(self, name: str) -> None:
        """Remove the schedule."""
        from durable_core import schedules

        await schedules.delete_schedule(self._t, name)

    # -- awakeables and signals ------------------------------------------------------------

    async def resolve_awakeable(self, awakeable_id: str, payload: Any = None) -> None:
        """Complete an awakeable with a payload; the waiting workflow resumes with it.

        Raises:
            NotFoundError: the id is malformed or its invocation does not exist.
            AlreadyResolvedError: it was resolved or rejected before.
            InvocationFinishedError: its invocation has finished.
        """
        await lifecycle.complete_awakeable(self._t, awakeable_id, _codec.encode(payload), None)

    async def reject_awakeable(self, awakeable_id: str, reason: str) -> None:
        """Fail an awakeable; the waiting workflow gets AwakeableRejectedError(reason).

        Raises:
            InvalidInputError: the reason is not valid Unicode text (a lone surrogate).
            PayloadTooLargeError: the reason is larger than the payload limit.
        """
        try:
            failure = pb.Failure(type="AwakeableRejectedError", message=str(reason))
        except UnicodeEncodeError as e:
            raise InvalidInputError(f"the rejection reason is not valid text: {e}") from e
        size = failure.ByteSize()
        if size > self._t.payload_limit:
            raise PayloadTooLargeError(
                f"the rejection reason is {size} bytes; {self._t.payload_limit_text()}"
            )
        await lifecycle.complete_awakeable(self._t, awakeable_id, None, failure)

    async def payload(self, ref: str) -> _payloads.Blob:
        """The bytes of a recorded value, to read in chunks (``durable payload get``).

        Args:
            ref: ``<invocation id>:args``, ``<invocation id>:output``, ``<invocation id>:<step>``
                (a step's result), or a stored object's name (``<invocation id>.<token>``).
                A value kept inline is returned too (as its encoded bytes: JSON, protobuf).

        Raises:
            NotFoundError: no such invocation, step or object (or it holds no value).
            PayloadUnavailableError: reading it found the object missing or corrupt.
        """
        payload = await lifecycle.find_payload(self._t, ref)
        blob = await _payloads.load_value(self._t.payloads, payload, _payloads.Blob)
        assert isinstance(blob, _payloads.Blob)
        return blob

    async def signal(
        self, invocation_id: str, name: str, payload: Any = None, *, signal_id: str | None = None
    ) -> None:
        """Send the signal ``name`` to an invocation; kept until the workflow waits for it.

        ``signal_id`` makes sending it again safe: a signal whose id the invocation has is not
        delivered twice (its wake-up is sent again). Without one, every call is a new signal,
        so a call that raised after reaching NATS may have delivered it already.

        Raises:
            NotFoundError: no such invocation.
            InvocationFinishedError: it has finished.
        """
        await lifecycle.signal(
            self._t, invocation_id, name, _codec.encode(payload), signal_id=signal_id
        )

    # -- reading ---------------------------------------------------------------------------

    async def watch_executions(self) -> AsyncIterator[ExecutionSummary | None]:
        """Every execution now, then ``None`` once caught up, then each change as it happens.

        A deleted or expired execution arrives with ``deleted=True``. This is a KV watch, not a
        scan: use it to keep an index (the inspector does). It delivers each execution's
        latest state: a change replaced before it was delivered (the bucket keeps one revision
        per execution) may be skipped when the watch's consumer is recreated (about 4 s after
        it was lost, e.g. with its node), so an execution
        may go from running to completed, or appear completed, with nothing in between. Read
        the journal (:meth:`describe`) for every step.
        """
        async for item in self._t.watch_states():
            if item is None:
                yield None
                continue
            key, rec = item
            if rec is None:
                yield ExecutionSummary(
                    key, "", Status.UNKNOWN, "", None, None, None, 0, "", "", 0, deleted=True
                )
                continue
            try:
                summary = ExecutionSummary.from_pb(rec.state, rec.revision)
            except Exception as e:  # noqa: BLE001 - one bad record never ends the watch
                log.warning("watch: skipping execution %s: %s: %s", key, type(e).__name__, e)
                continue
            yield summary

    async def get_result(self, invocation_id: str) -> InvocationResult:
        """Status, output or failure, and the journaled steps of an invocation.

        Raises:
            NotFoundError: no invocation has this id (ExpiredError once it expired).
        """
        rec = await lifecycle.state_of(self._t, invocation_id)
        # A state not final yet may trail a journal that has ended (the final state is
        # written right after the result notice): the journal as its leader has it now then
        # says how it ended (one request more, only for an unfinished state).
        return await self._result(rec.state, current=rec.state.status not in TERMINAL_PB)

    async def get_summary(self, invocation_id: str) -> ExecutionSummary:
        """The execution's state without its journal (one read; it may trail the journal by
        its final write).

        Raises:
            NotFoundError: no invocation has this id (ExpiredError once it expired).
        """
        rec = await lifecycle.state_of(self._t, invocation_id)
        return ExecutionSummary.from_pb(rec.state, rec.revision)

    async def describe(self, invocation_id: str) -> InvocationView:
        """What an operator sees of an invocation: arguments, each step with its waits and
        failed attempts, lineage and status history (``durable status``, the inspector).

        Raises:
            NotFoundError: no invocation has this id (ExpiredError once it expired).
        """
        return await self.follow(invocation_id).describe()

    def follow(self, invocation_id: str) -> Follower:
        """``describe`` of one invocation again and again (a page that shows it while it
        runs): each call reads only the journal entries appended since the one before.

        Raises:
            InvalidInputError: a malformed id.
        """
        check_invocation_id(invocation_id)
        return Follower(self, invocation_id)

    async def wait(
        self, invocation_id: str, timeout: timedelta | float = timedelta(seconds=60)
    ) -> InvocationResult:
        """Wait until the invocation finishes (completed, failed or cancelled)."""
        check_invocation_id(invocation_id)
        seconds = _wait_seconds(timeout)
        events = await self._t.state_events(invocation_id)
        try:
            return await self._result(*await self._wait_final(invocation_id, events, seconds))
        finally:
            await events.close()

    async def _wait_final(
        self, invocation_id: str, events: StateEvents, seconds: float
    ) -> tuple[pb.ExecutionState, list[pb.JournalEntry] | None]:
        """The final state, and the journal when the processor's result notice carried it."""
        deadline = time.monotonic() + seconds
        entries: list[pb.JournalEntry] | None = None
        # The subscription is open, so any later change reaches us; the present is the state
        # this client has just created, or else read once.
        if events.created is not None:
            state = events.created
        elif events.unstored is not None:
            state = events.unstored  # left to the processor that starts it: nothing to read
        else:
            state = (await lifecycle.state_of(self._t, invocation_id)).state
        while state.status not in TERMINAL_PB:
            left = deadline - time.monotonic()
            if left <= 0:
                if events.unstored is not None:  # visible to `durable status` from now on
                    await self._stored_state(invocation_id, events)
                raise InvocationTimeoutError(
                    f"invocation {invocation_id} is still {Status.from_pb(state.status)} after "
                    f"{seconds:.1f}s; it keeps running: `durable status {invocation_id}`",
                    invocation_id,
                )
            try:
                state, entries = await events.next_with_journal(timeout=min(left, events.poll))
            except TimeoutError:
                # A republished event or a notice can be missed across a reconnect; a notice
                # alone says nothing until the end.
                rec = await self._stored_state(invocation_id, events)
                if rec is not None:
                    state, entries = rec.state, None
        return state, entries

    async def _stored_state(self, invocation_id: str, events: StateEvents) -> StateRecord | None:
        """The state as stored now; one this client left to the processor is created PENDING
        here if nothing has started the invocation yet (see ``store_unstored``)."""
        rec = await self._t.get_state(invocation_id)
        if events.unstored is not None:
            rec = await store_unstored(self._t, events.unstored, rec)
            events.unstored = None
        return rec

    async def _result(
        self,
        state: pb.ExecutionState,
        entries: list[pb.JournalEntry] | None = None,
        *,
        current: bool = False,
    ) -> InvocationResult:
        """The result from a state and its journal (read here unless given; ``current``: at
        least as far as the journal's leader has it now)."""
        if entries is None:
            records = await self._t.read_journal(
                state.invocation_id, min_entries=state.journal_length, current=current, of=state
            )
            entries = [r.entry for r in records]
        result = result_of(state, entries)
        if state.HasField("output") and state.output.HasField("ref"):
            # The caller asked for the result: a stored output is read now (a Blob: later,
            # when it is read).
            output = await _payloads.load_value(self._t.payloads, state.output)
            result = dataclasses.replace(result, output=output)
        return result


class Follower:
    """What ``Client.follow`` returns: the invocation's view, its journal read on from where
    the last call stopped (a journal is only appended to; read whole again only when the
    invocation was made anew under its id, after it expired)."""

    def __init__(self, client: Client, invocation_id: str) -> None:
        self._client = client
        self.invocation_id = invocation_id
        self._entries: list[pb.JournalEntry] = []
        self._last_seq = 0
        self._created_ms: int | None = None

    async def describe(self) -> InvocationView:
        """The invocation's view now (see ``Client.describe``).

        Raises:
            NotFoundError: no invocation has this id (ExpiredError once it expired).
        """
        t, types = self._client._t, self._client._types
        rec = await lifecycle.state_of(t, self.invocation_id)
        if rec.state.created_at_ms != self._created_ms:
            self._entries, self._last_seq = [], 0
            self._created_ms = rec.state.created_at_ms
        # As the leader has it now: `durable invoke` shows this view right after the result
        # notice, and a lagging follower showed a completed invocation RUNNING (CI, Helm pods).
        records = await t.read_journal(
            self.invocation_id,
            min_entries=rec.state.journal_length - len(self._entries),
            current=True,
            start=self._last_seq + 1,
            of=rec.state,
        )
        if records:  # all of them past the last read (it starts there)
            self._last_seq = records[-1].seq
        self._entries.extend(r.entry for r in records)
        # Protobuf payloads of types not imported here decode with the fleet's descriptors.
        await types.load(t, _protobuf_types(rec.state, self._entries))
        from durable_core.views import describe  # the CLI's --help need not import the views

        return describe(rec.state, self._entries, types=types)


def _protobuf_types(state: pb.ExecutionState, entries: Sequence[pb.JournalEntry]) -> set[str]:
    """The message types of the protobuf payloads of an invocation."""
    payloads = [state.args, state.output, *(e.output for e in entries)]
    return {p.type_name for p in payloads if p.encoding == pb.ENCODING_PROTOBUF}
