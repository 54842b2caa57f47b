"""The client: submit invocations and read their results."""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from google.protobuf.message import DecodeError, Message
from opentelemetry import propagate, trace
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    TraceFlags,
    format_trace_id,
)

from durable_core import _codec
from durable_core._journal import MAX_SLEEP, STEP_KINDS, ReplayMachine, kind_name
from durable_core._naming import check_invocation_id, check_workflow_name, encode_partition_key
from durable_core._pb.durable.v1 import durable_pb2 as pb
from durable_core._time import from_ms as _ms_to_dt
from durable_core._transport import JournalRecord, StateConflict, StateRecord, Transport
from durable_core.config import EngineConfig, NatsConfig
from durable_core.engine import _intake as intake
from durable_core.errors import (
    AlreadyResolvedError,
    ConflictError,
    ExpiredError,
    IllegalTransitionError,
    InvalidInputError,
    InvocationFinishedError,
    InvocationTimeoutError,
    NotFoundError,
    WorkflowFailedError,
)
from durable_core.plugins import workflow_signature

if TYPE_CHECKING:
    from durable_core.schedules import Schedule
    from durable_core.views import InvocationView

__all__ = ["Client", "ExecutionSummary", "Failure", "InvocationResult", "Status", "StepRecord"]

M = TypeVar("M", bound=Message)


class Status(enum.StrEnum):
    """Where an invocation stands."""

    PENDING = "pending"
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SUSPENDED = "suspended"
    UNKNOWN = "unknown"

    @property
    def is_terminal(self) -> bool:
        """True for completed, failed and cancelled."""
        return self in (Status.COMPLETED, Status.FAILED, Status.CANCELLED)

    @classmethod
    def from_pb(cls, value: int) -> Status:
        name = pb.Status.Name(value).removeprefix("STATUS_").lower() if value else "unknown"
        try:
            return cls(name)
        except ValueError:
            return cls.UNKNOWN


_TERMINAL_PB = frozenset({pb.STATUS_COMPLETED, pb.STATUS_FAILED, pb.STATUS_CANCELLED})
_KINDS = {k: kind_name(k) for k in STEP_KINDS}


@dataclass(frozen=True, slots=True)
class Failure:
    """Why an invocation or a step failed."""

    type: str
    message: str
    step: int = 0
    code: str = ""


@dataclass(frozen=True, slots=True)
class StepRecord:
    """One journaled step."""

    step: int
    kind: str
    name: str
    output: pb.Payload
    failure: Failure | None
    attempts: int
    duration_ms: float
    at: datetime | None
    attempt_errors: tuple[Failure, ...] = ()  # why each earlier attempt failed, oldest first

    def value(self) -> Any:
        """The step's result, decoded (protobuf messages of imported modules, JSON, bytes)."""
        return _codec.decode(self.output)


@dataclass(frozen=True, slots=True)
class InvocationResult:
    """What is known about an invocation: status, output or failure, and its steps."""

    invocation_id: str
    workflow: str
    status: Status
    output: Any
    failure: Failure | None
    steps: tuple[StepRecord, ...]
    partition_key: str
    created_at: datetime | None
    updated_at: datetime | None
    args: Any = None  # the arguments it was called with, decoded

    def first_response(self, message_type: type[M]) -> M:
        """The first gRPC call's response, parsed as ``message_type``.

        Raises:
            NotFoundError: the invocation made no successful gRPC call.
        """
        for step in self.steps:
            if step.kind == "call" and step.failure is None:
                msg = message_type()
                try:
                    msg.ParseFromString(step.output.data)
                except DecodeError as e:
                    raise InvalidInputError(
                        f"step {step.step} response is not a {message_type.__name__}: {e}"
                    ) from e
                return msg
        raise NotFoundError(f"invocation {self.invocation_id} has no successful gRPC call step")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view (used by ``durable status --json``)."""
        return {
            "invocation_id": self.invocation_id,
            "workflow": self.workflow,
            "status": self.status.value,
            "args": _jsonable(self.args),
            "output": _jsonable(self.output),
            "failure": None if self.failure is None else vars_of(self.failure),
            "partition_key": self.partition_key,
            "created_at": self.created_at.isoformat() if self.created_at else None,
            "updated_at": self.updated_at.isoformat() if self.updated_at else None,
            "steps": [
                {
                    "step": s.step,
                    "kind": s.kind,
                    "name": s.name,
                    "output": _codec.to_json_compatible(s.output),
                    "failure": None if s.failure is None else vars_of(s.failure),
                    "attempts": s.attempts,
                    "attempt_errors": [vars_of(f) for f in s.attempt_errors],
                    "duration_ms": s.duration_ms,
                    "at": s.at.isoformat() if s.at else None,
                }
                for s in self.steps
            ],
        }


def vars_of(f: Failure) -> dict[str, Any]:
    return {"type": f.type, "message": f.message, "step": f.step, "code": f.code}


def _jsonable(value: Any) -> Any:
    from google.protobuf import json_format

    if isinstance(value, Message):
        return json_format.MessageToDict(value, preserving_proto_field_name=True)
    if isinstance(value, bytes):
        return {"$bytes": value.hex()}
    return value


def _decoded_or_raw(payload: pb.Payload) -> Any:
    """The decoded value, or the raw Payload when it does not decode (shown, not fatal)."""
    try:
        return _codec.decode(payload)
    except InvalidInputError:
        return payload


def _failure(f: pb.Failure | None) -> Failure | None:
    if f is None or not (f.type or f.message):
        return None
    return Failure(f.type, f.message, f.step, f.code)


@dataclass(frozen=True, slots=True)
class ExecutionSummary:
    """An execution's state without its journal (what listings and watches carry)."""

    invocation_id: str
    workflow: str
    status: Status
    partition_key: str
    created_at: datetime | None
    updated_at: datetime | None
    failure: Failure | None
    journal_length: int
    parent_id: str
    trace_id: str
    revision: int
    deleted: bool = False

    @classmethod
    def from_pb(cls, st: pb.ExecutionState, revision: int) -> ExecutionSummary:
        return cls(
            invocation_id=st.invocation_id,
            workflow=st.workflow,
            status=Status.from_pb(st.status),
            partition_key=st.partition_key,
            created_at=_ms_to_dt(st.created_at_ms),
            updated_at=_ms_to_dt(st.updated_at_ms),
            failure=_failure(st.failure) if st.HasField("failure") else None,
            journal_length=st.journal_length,
            parent_id=st.parent_id,
            trace_id=st.trace_id,
            revision=revision,
        )


WorkflowRef = str | Callable[..., Any]


# A proxy until an SDK provider is set (the API's no-op before that): set-up order is free.
_TRACER = trace.get_tracer("durable_core.client")


def _trace_context(span: trace.Span) -> tuple[dict[str, str], str]:
    """The W3C context to send and store with a new invocation, and its trace id.

    Without an OpenTelemetry SDK here (the CLI, a script) the client's span is a no-op with no
    trace id: a fresh, sampled one is made up, so that the processors' spans (and the inspector's
    Jaeger link) still share one trace per invocation; only this side's span is missing."""
    context = span.get_span_context()
    if not context.is_valid:
        made_up = SpanContext(
            trace_id=random.getrandbits(128) or 1,
            span_id=random.getrandbits(64) or 1,
            is_remote=False,
            trace_flags=TraceFlags(TraceFlags.SAMPLED),
        )
        span = NonRecordingSpan(made_up)
        context = made_up
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=trace.set_span_in_context(span))
    return carrier, format_trace_id(context.trace_id)


def _start_at(delay: timedelta | None, start_at: datetime | None) -> int:
    if delay is not None and start_at is not None:
        raise InvalidInputError("give delay or start_at, not both")
    if delay is not None:
        if not isinstance(delay, timedelta) or delay < timedelta(0) or delay > MAX_SLEEP:
            raise InvalidInputError(f"delay must be a timedelta from 0 to {MAX_SLEEP.days} days")
        return int((time.time() + delay.total_seconds()) * 1000)
    if start_at is not None:
        if not isinstance(start_at, datetime) or start_at.tzinfo is None:
            raise InvalidInputError("start_at must be a timezone-aware datetime")
        return int(start_at.timestamp() * 1000)
    return 0


def _awakeable_owner(awakeable_id: str) -> str:
    parts = awakeable_id.split(".") if isinstance(awakeable_id, str) else []
    if len(parts) != 3 or parts[0] != "awk" or not parts[2].isdigit():
        raise NotFoundError(
            f"{awakeable_id!r} is not an awakeable id (they look like awk.<invocation>.<n>)"
        )
    try:
        return check_invocation_id(parts[1])
    except InvalidInputError as e:
        raise NotFoundError(f"{awakeable_id!r} is not an awakeable id: {e}") from e


class _AlreadyThere(Exception):  # noqa: N818 - internal control flow
    """The requested lifecycle change is already in the journal."""


_IDLE_PB = frozenset({pb.STATUS_PENDING, pb.STATUS_SUSPENDED})
_FINAL_STATUS = {
    pb.ENTRY_KIND_COMPLETED: pb.STATUS_COMPLETED,
    pb.ENTRY_KIND_FAILED: pb.STATUS_FAILED,
    pb.ENTRY_KIND_CANCELLED: pb.STATUS_CANCELLED,
}


def _as_journaled(state: pb.ExecutionState, records: list[JournalRecord]) -> pb.ExecutionState:
    """The state as the journal (the truth) has it, where the state (a summary written after
    the journal) lags: a journal that has ended while the state does not say so yet (the
    processor writes it right after the final entry), or a run in progress while the state
    still says pending or suspended (a woken run claims in the journal before it writes
    RUNNING)."""
    if state.status in _TERMINAL_PB or not records:
        return state
    machine = ReplayMachine(state.invocation_id, (r.entry for r in records))
    final = machine.final
    running = state.status in _IDLE_PB and not machine.idle
    if final is None and not running:
        return state
    st = pb.ExecutionState()
    st.CopyFrom(state)
    if final is None:
        st.status = pb.STATUS_RUNNING
        return st
    st.status = _FINAL_STATUS[final.kind]
    st.ClearField("output")
    st.ClearField("failure")
    if final.HasField("output"):
        st.output.CopyFrom(final.output)
    if final.HasField("failure"):
        st.failure.CopyFrom(final.failure)
    return st


def _same_payload(a: pb.Payload, b: pb.Payload) -> bool:
    """Equal values: JSON compared decoded (key order and spacing do not matter)."""
    if a.encoding != b.encoding or a.type_name != b.type_name:
        return False
    if a.encoding == pb.ENCODING_JSON and a.data != b.data:
        try:
            return bool(_codec.decode(a) == _codec.decode(b))
        except InvalidInputError:
            return False
    return a.data == b.data


def _check_open(invocation_id: str, records: list[JournalRecord]) -> None:
    if any(r.entry.kind in (pb.ENTRY_KIND_COMPLETED, pb.ENTRY_KIND_FAILED) for r in records):
        raise InvocationFinishedError(f"invocation {invocation_id} has already finished")


class Client:
    """Submits invocations and reads their results.

    Example:
        >>> async with await Client.connect("nats://127.0.0.1:4222") as client:
        ...     result = await client.invoke("hello_workflow", {"name": "Ada"})
        ...     print(result.output["message"])
    """

    def __init__(self, transport: Transport) -> None:
        self._t = transport

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
        if isinstance(servers, NatsConfig):
            cfg = servers
        elif isinstance(servers, str):
            cfg = NatsConfig.from_url(servers, name="durable-client")
        else:
            cfg = NatsConfig(servers=tuple(servers), name="durable-client")
        transport = await Transport.connect(
            cfg, engine, wait_for_engine=wait_for_engine.total_seconds()
        )
        return cls(transport)

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
    ) -> str:
        """Submit an invocation and return its id without waiting.

        Submitting the same id twice runs the workflow once: the second submission is
        recognised and its id returned; with other arguments it is a ConflictError. ``delay``
        or ``start_at`` make the server start it later (JetStream message scheduling; no
        processor holds it meanwhile).

        Args:
            workflow: a workflow name, or the workflow function itself (its input is then
                checked against the function's type hints before anything is sent).

        Raises:
            InvalidInputError: bad workflow name, id, partition key, delay, or arguments that
                do not match the declared type or exceed the payload limit.
            ConflictError: the id belongs to an invocation with other arguments.
        """
        invocation_id, _ = await self._submit(
            workflow,
            args,
            id,
            partition_key,
            start_at=_start_at(delay, start_at),
            execution_timeout=execution_timeout,
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
    ) -> InvocationResult:
        """Submit an invocation and wait for its result.

        With a workflow function instead of a name, the input is checked against its type
        hints at intake and ``result.output`` is converted to its return type.

        Raises:
            WorkflowFailedError: the invocation failed (step and message attached).
            InvocationTimeoutError: no result within ``timeout`` (it keeps running).
        """
        invocation_id, events = await self._submit(
            workflow, args, id, partition_key, watch=True, execution_timeout=execution_timeout
        )
        assert events is not None
        try:
            state, entries = await self._wait_final(invocation_id, events, timeout)
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
                typed = _codec.decode_as(state.output, output_type)
                result = dataclasses.replace(result, output=typed)
        return result

    async def _submit(
        self,
        workflow: WorkflowRef,
        args: Any,
        invocation_id: str | None,
        partition_key: str | None,
        *,
        watch: bool = False,
        start_at: int = 0,
        execution_timeout: timedelta | None = None,
    ) -> tuple[str, Any]:
        deadline = 0
        if execution_timeout is not None:
            if not isinstance(execution_timeout, timedelta) or not (
                timedelta(0) < execution_timeout <= MAX_SLEEP
            ):
                raise InvalidInputError(
                    f"execution_timeout must be a timedelta from 0 to {MAX_SLEEP.days} days"
                )
            begins = start_at or int(time.time() * 1000)
            deadline = begins + int(execution_timeout.total_seconds() * 1000)
        if callable(workflow):
            name = getattr(workflow, "__durable_workflow__", None) or workflow.__name__
            takes_input, input_type, _ = workflow_signature(workflow)
            if input_type is not None:
                try:
                    args = _codec.convert(_codec.to_jsonable(args), input_type)
                except InvalidInputError as e:
                    raise InvalidInputError(
                        f"input of {name} does not match its declared type: {e}"
                    ) from e
        else:
            name = workflow
        return await self._submit_payload(
            name,
            _codec.encode(args),
            invocation_id,
            partition_key,
            watch=watch,
            start_at=start_at,
            deadline_ms=deadline,
        )

    async def _submit_payload(
        self,
        name: str,
        payload: pb.Payload,
        invocation_id: str | None,
        partition_key: str | None,
        *,
        watch: bool = False,
        start_at: int = 0,
        journal_length: int = 0,
        forked_from: str = "",
        rerun_of: str = "",
        deadline_ms: int = 0,
    ) -> tuple[str, Any]:
        check_workflow_name(name)
        invocation_id = check_invocation_id(
            uuid.uuid4().hex if invocation_id is None else invocation_id
        )
        key = invocation_id if partition_key is None else partition_key
        encode_partition_key(key)
        if len(payload.data) > self._t.payload_limit:
            raise InvalidInputError(
                f"arguments of {name} are {len(payload.data)} bytes; {self._t.payload_limit_text()}"
            )
        # The invocation's trace starts here (or joins the caller's current one); its context
        # travels with the command and is stored with the invocation for later runs.
        with _TRACER.start_as_current_span(
            f"durable.invoke {name}",
            kind=SpanKind.PRODUCER,
            attributes={
                "durable.invocation_id": invocation_id,
                "durable.workflow": name,
                "durable.partition_key": key,
            },
        ) as span:
            trace_context, trace_id = _trace_context(span)
            now = int(time.time() * 1000)
            state = pb.ExecutionState(
                invocation_id=invocation_id,
                workflow=name,
                status=pb.STATUS_PENDING,
                args=payload,
                partition_key=key,
                created_at_ms=now,
                updated_at_ms=now,
                start_at_ms=start_at,
                journal_length=journal_length,
                forked_from=forked_from,
                rerun_of=rerun_of,
                deadline_ms=deadline_ms,
                trace_context=trace_context,
                trace_id=trace_id,
            )
            cmd = pb.Command(
                invocation_id=invocation_id,
                workflow=name,
                args=payload,
                partition_key=key,
                kind=pb.COMMAND_KIND_START,
                created_at_ms=now,
                metadata=trace_context,
            )
            events = await self._t.state_events(invocation_id) if watch else None
            try:
                created = await intake.submit(self._t, state, cmd)
                if created is None:
                    await self._check_same_arguments(invocation_id, name, payload)
            except BaseException:
                if events is not None:
                    await events.close()
                raise
            if events is not None and created is not None:
                events.created = created.state  # subscribed before it existed: the present
        return invocation_id, events

    async def _check_same_arguments(
        self, invocation_id: str, name: str, payload: pb.Payload
    ) -> None:
        """A resubmission of an existing id is that invocation only with the same arguments;
        other arguments are a conflict, not a silent return of the first one's result."""
        rec = await self._t.get_state(invocation_id)
        if rec is None or _same_payload(rec.state.args, payload):
            return
        raise ConflictError(
            f"invocation id {invocation_id} is taken by an invocation of {name} with other "
            "arguments: choose another id, or pass the same arguments to get that invocation"
        )

    # -- lifecycle -------------------------------------------------------------------------

    async def pause(self, invocation_id: str) -> Status:
        """Pause at the next step boundary (the step in flight finishes and is journaled).

        Returns the status after the request (``paused``; or ``running`` until the run
        reaches its next step boundary).

        Raises:
            NotFoundError: no such invocation.
            IllegalTransitionError: it has finished (``.status`` tells how).
        """
        return await self._lifecycle(invocation_id, pb.ENTRY_KIND_PAUSE_REQUEST)

    async def resume(self, invocation_id: str) -> Status:
        """Continue a paused invocation from its journal, at once.

        Raises:
            IllegalTransitionError: it is not paused (running, suspended or finished).
        """
        return await self._lifecycle(invocation_id, pb.ENTRY_KIND_RESUME_REQUEST)

    async def cancel(self, invocation_id: str) -> Status:
        """Cancel now: the step in flight is interrupted (a gRPC call is cancelled), the
        workflow sees InvocationCancelledError (it may compensate), and it ends ``cancelled``.

        Raises:
            IllegalTransitionError: it has already finished.
        """
        return await self._lifecycle(invocation_id, pb.ENTRY_KIND_CANCEL_REQUEST)

    async def _lifecycle(self, invocation_id: str, kind: pb.EntryKind) -> Status:
        check_invocation_id(invocation_id)
        verb = {
            pb.ENTRY_KIND_PAUSE_REQUEST: "pause",
            pb.ENTRY_KIND_RESUME_REQUEST: "resume",
            pb.ENTRY_KIND_CANCEL_REQUEST: "cancel",
        }[kind]
        rec = await self._t.get_state(invocation_id)
        if rec is None:
            raise await self._missing(invocation_id)
        status = Status.from_pb(rec.state.status)
        running = False  # a processor runs it now (the journal says so before the state)

        def check(records: list[JournalRecord]) -> None:
            nonlocal running
            machine = ReplayMachine(invocation_id, (r.entry for r in records))
            running = not machine.idle
            if machine.final is not None:
                real = {
                    pb.ENTRY_KIND_COMPLETED: "completed",
                    pb.ENTRY_KIND_FAILED: "failed",
                    pb.ENTRY_KIND_CANCELLED: "cancelled",
                }[machine.final.kind]
                raise IllegalTransitionError(
                    f"cannot {verb} invocation {invocation_id}: it is already {real}", real
                )
            if kind == pb.ENTRY_KIND_RESUME_REQUEST and not machine.paused:
                raise IllegalTransitionError(
                    f"cannot resume invocation {invocation_id}: it is {status.value}, not paused",
                    status.value,
                )
            if kind == pb.ENTRY_KIND_PAUSE_REQUEST and machine.paused:
                raise _AlreadyThere
            if kind == pb.ENTRY_KIND_CANCEL_REQUEST and machine.cancel_requested:
                raise _AlreadyThere

        if status.is_terminal:
            raise IllegalTransitionError(
                f"cannot {verb} invocation {invocation_id}: it is already {status.value}",
                status.value,
            )
        entry = pb.JournalEntry(kind=kind, timestamp_ms=int(time.time() * 1000), writer="client")
        try:
            seq = await intake.append_external(
                self._t, invocation_id, entry, f"{verb}:{invocation_id}:{uuid.uuid4().hex}", check
            )
        except _AlreadyThere:
            return Status.from_pb((await self._t.get_state(invocation_id) or rec).state.status)
        st = rec.state
        if kind == pb.ENTRY_KIND_CANCEL_REQUEST:
            await self._t.send_control(invocation_id, "cancel")  # interrupt a run in flight
        if kind != pb.ENTRY_KIND_PAUSE_REQUEST:
            await self._t.publish_wake(invocation_id, st.workflow, st.partition_key, seq)
        return await self._show_transition(invocation_id, kind, running=running)

    async def retry(self, invocation_id: str) -> Status:
        """Run a failed invocation again from its failed step (same id, same journal).

        Steps before the failed one replay; the failed step runs again with the same
        idempotency key.

        Raises:
            IllegalTransitionError: it is not failed.
        """
        check_invocation_id(invocation_id)
        rec = await self._t.get_state(invocation_id)
        if rec is None:
            raise await self._missing(invocation_id)
        if rec.state.status != pb.STATUS_FAILED:
            status = Status.from_pb(rec.state.status).value
            raise IllegalTransitionError(
                f"cannot retry invocation {invocation_id}: it is {status}, not failed", status
            )

        def check(records: list[JournalRecord]) -> None:
            machine = ReplayMachine(invocation_id, (r.entry for r in records))
            if machine.final is None or machine.final.kind != pb.ENTRY_KIND_FAILED:
                raise _AlreadyThere  # retried already

        entry = pb.JournalEntry(
            kind=pb.ENTRY_KIND_RETRY_REQUEST, timestamp_ms=int(time.time() * 1000), writer="client"
        )
        try:
            seq = await intake.append_external(
                self._t, invocation_id, entry, f"retry:{invocation_id}:{rec.revision}", check
            )
        except _AlreadyThere:
            return Status.from_pb((await self._t.get_state(invocation_id) or rec).state.status)
        st = pb.ExecutionState()
        st.CopyFrom(rec.state)
        st.status = pb.STATUS_PENDING
        st.ClearField("failure")
        st.updated_at_ms = int(time.time() * 1000)
        # If someone else moved it on meanwhile, the wake-up below is harmless either way.
        with contextlib.suppress(StateConflict):
            await self._t.update_state(st, rec.revision)
        await self._t.publish_wake(invocation_id, st.workflow, st.partition_key, seq)
        return Status.PENDING

    async def rerun(self, invocation_id: str) -> str:
        """Start a new invocation of the same workflow with the same arguments; its id."""
        rec = await self._t.get_state(check_invocation_id(invocation_id))
        if rec is None:
            raise await self._missing(invocation_id)
        st = rec.state
        key = st.partition_key if st.partition_key != invocation_id else None
        new_id, _ = await self._submit_payload(
            st.workflow, st.args, None, key, rerun_of=invocation_id
        )
        return new_id

    async def fork(self, invocation_id: str, *, from_step: int) -> str:
        """A new invocation that replays steps before ``from_step`` from this one's journal
        and runs ``from_step`` and after for real; returns its id.

        Raises:
            InvalidInputError: ``from_step`` is below 1 or past the recorded steps + 1.
        """
        rec = await self._t.get_state(check_invocation_id(invocation_id))
        if rec is None:
            raise await self._missing(invocation_id)
        records = await self._t.read_journal(invocation_id, min_entries=rec.state.journal_length)
        steps = [
            r.entry for r in records if r.entry.kind in STEP_KINDS and r.entry.step < from_step
        ]
        recorded = {r.entry.step for r in records if r.entry.kind in STEP_KINDS}
        n = len(recorded)
        if not isinstance(from_step, int) or from_step < 1 or from_step > n + 1:
            raise InvalidInputError(
                f"from_step must be a step of {invocation_id} (1 to {n}), or {n + 1} to copy "
                f"all {n} steps and run only what its workflow does after them"
                if n
                else f"from_step must be 1: {invocation_id} has no steps yet"
            )
        st = rec.state
        new_id = uuid.uuid4().hex
        last = 0
        for index, entry in enumerate(sorted(steps, key=lambda e: e.step), start=1):
            copy = pb.JournalEntry()
            copy.CopyFrom(entry)
            copy.index, copy.writer = index, f"fork:{invocation_id}"
            last = await self._t.append(new_id, copy, last, f"fork:{new_id}:{index}")
        key = st.partition_key if st.partition_key != invocation_id else None
        await self._submit_payload(
            st.workflow, st.args, new_id, key, journal_length=len(steps), forked_from=invocation_id
        )
        return new_id

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

    async def _show_transition(
        self, invocation_id: str, kind: pb.EntryKind, *, running: bool = False
    ) -> Status:
        """Record a pause of an idle invocation in its state; return the real status.

        ``running``: the journal shows a run in progress (its state may not say so yet).
        """
        for _ in range(5):
            rec = await self._t.get_state(invocation_id)
            if rec is None:
                raise await self._missing(invocation_id)
            st = rec.state
            idle = st.status in _IDLE_PB and not running
            if kind != pb.ENTRY_KIND_PAUSE_REQUEST or not idle:
                if running and st.status in _IDLE_PB:
                    return Status.RUNNING
                return Status.from_pb(st.status)
            paused = pb.ExecutionState()
            paused.CopyFrom(st)
            paused.status = pb.STATUS_PAUSED
            paused.updated_at_ms = int(time.time() * 1000)
            try:
                await self._t.update_state(paused, rec.revision)
                return Status.PAUSED
            except StateConflict:
                continue  # it moved on (started, finished): look again
        return Status.from_pb(st.status)

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
    ) -> Schedule:
        """Create a cron (``cron="*/5 * * * *"``, seconds field optional) or interval
        (``every=timedelta(seconds=2)``) schedule that starts ``workflow`` on each tick.

        ``overlap="skip"`` skips a tick while the previous run is unfinished; after downtime
        at most ``catch_up`` missed ticks run. Raises InvalidInputError (bad cron, interval,
        zone, name) or ConflictError (the name exists).
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
        await self._complete_awakeable(awakeable_id, _codec.encode(payload), None)

    async def reject_awakeable(self, awakeable_id: str, reason: str) -> None:
        """Fail an awakeable; the waiting workflow gets AwakeableRejectedError(reason)."""
        await self._complete_awakeable(
            awakeable_id, None, pb.Failure(type="AwakeableRejectedError", message=str(reason))
        )

    async def _complete_awakeable(
        self, awakeable_id: str, payload: pb.Payload | None, failure: pb.Failure | None
    ) -> None:
        invocation_id = _awakeable_owner(awakeable_id)
        entry = pb.JournalEntry(
            kind=pb.ENTRY_KIND_AWAKEABLE_RESULT,
            name=awakeable_id,
            timestamp_ms=int(time.time() * 1000),
            writer="client",
        )
        if payload is not None:
            entry.output.CopyFrom(payload)
        if failure is not None:
            entry.failure.CopyFrom(failure)

        def check(records: list[JournalRecord]) -> None:
            _check_open(invocation_id, records)
            for r in records:
                if r.entry.kind == pb.ENTRY_KIND_AWAKEABLE_RESULT and r.entry.name == awakeable_id:
                    raise AlreadyResolvedError(
                        f"awakeable {awakeable_id} was already "
                        f"{'rejected' if r.entry.HasField('failure') else 'resolved'}"
                    )

        await self._deliver(invocation_id, entry, f"awk:{awakeable_id}", check)

    async def signal(self, invocation_id: str, name: str, payload: Any = None) -> None:
        """Send the signal ``name`` to an invocation; kept until the workflow waits for it.

        Raises:
            NotFoundError: no such invocation.
            InvocationFinishedError: it has finished.
        """
        check_invocation_id(invocation_id)
        if not isinstance(name, str) or not name or len(name) > 256:
            raise InvalidInputError("a signal name is a non-empty string of at most 256 chars")
        entry = pb.JournalEntry(
            kind=pb.ENTRY_KIND_SIGNAL,
            name=name,
            output=_codec.encode(payload),
            timestamp_ms=int(time.time() * 1000),
            writer="client",
        )
        msg_id = f"sig:{invocation_id}:{uuid.uuid4().hex}"
        await self._deliver(invocation_id, entry, msg_id, lambda r: _check_open(invocation_id, r))

    async def _deliver(
        self,
        invocation_id: str,
        entry: pb.JournalEntry,
        msg_id: str,
        check: Callable[[list[JournalRecord]], None],
    ) -> None:
        rec = await self._t.get_state(invocation_id)
        if rec is None:
            raise await self._missing(invocation_id)
        if rec.state.status in _TERMINAL_PB:
            raise InvocationFinishedError(
                f"invocation {invocation_id} is already {Status.from_pb(rec.state.status)}"
            )
        seq = await intake.append_external(self._t, invocation_id, entry, msg_id, check)
        st = rec.state
        await self._t.publish_wake(invocation_id, st.workflow, st.partition_key, seq)

    # -- reading ---------------------------------------------------------------------------

    async def watch_executions(self) -> AsyncIterator[ExecutionSummary | None]:
        """Every execution now, then ``None`` once caught up, then each change as it happens.

        A deleted or expired execution arrives with ``deleted=True``. This is a KV watch, not a
        scan: use it to keep an index (the inspector does).
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
            else:
                yield ExecutionSummary.from_pb(rec.state, rec.revision)

    async def _missing(self, invocation_id: str) -> NotFoundError:
        """The error for an id without a state: ExpiredError if it finished and expired."""
        note = await self._t.expiry_note(invocation_id)
        if note is None:
            return NotFoundError(f"no invocation with id {invocation_id}")
        return ExpiredError(
            invocation_id,
            str(note.get("status", "finished")),
            int(note.get("finished_at_ms", 0) or 0),
            int(note.get("expired_at_ms", 0) or 0),
        )

    async def get_result(self, invocation_id: str) -> InvocationResult:
        """Status, output or failure, and the journaled steps of an invocation.

        Raises:
            NotFoundError: no invocation has this id.
        """
        check_invocation_id(invocation_id)
        rec = await self._t.get_state(invocation_id)
        if rec is None:
            raise await self._missing(invocation_id)
        return await self._result(rec.state)

    async def _state_of(self, invocation_id: str) -> StateRecord:
        check_invocation_id(invocation_id)
        rec = await self._t.get_state(invocation_id)
        if rec is None:
            raise await self._missing(invocation_id)
        return rec

    async def get_summary(self, invocation_id: str) -> ExecutionSummary:
        """The execution's state without its journal (one read; it may trail the journal by
        its final write).

        Raises:
            NotFoundError: no invocation has this id (ExpiredError once it expired).
        """
        rec = await self._state_of(invocation_id)
        return ExecutionSummary.from_pb(rec.state, rec.revision)

    async def describe(self, invocation_id: str) -> InvocationView:
        """What an operator sees of an invocation: arguments, each step with its waits and
        failed attempts, lineage and status history (``durable status``, the inspector).

        Raises:
            NotFoundError: no invocation has this id (ExpiredError once it expired).
        """
        rec = await self._state_of(invocation_id)
        records = await self._t.read_journal(invocation_id, min_entries=rec.state.journal_length)
        from durable_core.views import describe  # the CLI's --help need not import the views

        return describe(rec.state, [r.entry for r in records])

    async def wait(
        self, invocation_id: str, timeout: timedelta | float = timedelta(seconds=60)
    ) -> InvocationResult:
        """Wait until the invocation finishes (completed, failed or cancelled)."""
        check_invocation_id(invocation_id)
        events = await self._t.state_events(invocation_id)
        try:
            return await self._wait(invocation_id, events, timeout)
        finally:
            await events.close()

    async def _wait(
        self, invocation_id: str, events: Any, timeout: timedelta | float
    ) -> InvocationResult:
        return await self._result(*await self._wait_final(invocation_id, events, timeout))

    async def _wait_final(
        self, invocation_id: str, events: Any, timeout: timedelta | float
    ) -> tuple[pb.ExecutionState, list[pb.JournalEntry] | None]:
        """The final state, and the journal when the processor's result notice carried it."""
        seconds = timeout.total_seconds() if isinstance(timeout, timedelta) else float(timeout)
        deadline = time.monotonic() + seconds
        entries: list[pb.JournalEntry] | None = None
        # The subscription is open, so any later change reaches us; the present is the state
        # this client has just created, or else read once.
        if events.created is not None:
            state = events.created
        else:
            rec = await self._t.get_state(invocation_id)
            if rec is None:
                raise await self._missing(invocation_id)
            state = rec.state
        while state.status not in _TERMINAL_PB:
            left = deadline - time.monotonic()
            if left <= 0:
                raise InvocationTimeoutError(
                    f"invocation {invocation_id} is still {Status.from_pb(state.status)} after "
                    f"{seconds:.1f}s; it keeps running: `durable status {invocation_id}`"
                )
            try:
                state, entries = await events.next_with_journal(timeout=min(left, 5.0))
            except TimeoutError:
                # Belt and braces: a republished event can be missed across a reconnect.
                rec = await self._t.get_state(invocation_id)
                if rec is not None:
                    state, entries = rec.state, None
        return state, entries

    async def _result(
        self, state: pb.ExecutionState, entries: list[pb.JournalEntry] | None = None
    ) -> InvocationResult:
        """The result from a state and its journal (read here unless given)."""
        if entries is None:
            records = await self._t.read_journal(
                state.invocation_id, min_entries=state.journal_length
            )
        else:
            records = [JournalRecord(e, 0, "") for e in entries]
        state = _as_journaled(state, records)
        errors: dict[int, list[Failure]] = {}
        for r in records:
            failed = _failure(r.entry.failure) if r.entry.HasField("failure") else None
            if r.entry.kind == pb.ENTRY_KIND_ATTEMPT_FAILED and failed is not None:
                errors.setdefault(r.entry.step, []).append(failed)
            elif r.entry.kind == pb.ENTRY_KIND_RETRY_REQUEST:
                errors.clear()  # client.retry: the failed steps start counting again
        steps = tuple(
            StepRecord(
                step=r.entry.step,
                kind=_KINDS[r.entry.kind],
                name=r.entry.name,
                output=r.entry.output,
                failure=_failure(r.entry.failure) if r.entry.HasField("failure") else None,
                attempts=r.entry.attempts,
                duration_ms=r.entry.duration_us / 1000,
                at=_ms_to_dt(r.entry.timestamp_ms),
                attempt_errors=tuple(errors.get(r.entry.step, ()))
                if r.entry.kind in (pb.ENTRY_KIND_CALL, pb.ENTRY_KIND_RUN)
                else (),
            )
            for r in records
            if r.entry.kind in _KINDS
        )
        return InvocationResult(
            invocation_id=state.invocation_id,
            workflow=state.workflow,
            status=Status.from_pb(state.status),
            output=_decoded_or_raw(state.output) if state.HasField("output") else None,
            failure=_failure(state.failure) if state.HasField("failure") else None,
            steps=tuple(sorted(steps, key=lambda s: s.step)),
            partition_key=state.partition_key,
            created_at=_ms_to_dt(state.created_at_ms),
            updated_at=_ms_to_dt(state.updated_at_ms),
            args=_decoded_or_raw(state.args) if state.HasField("args") else None,
        )
