"""Submitting invocations: checks at intake, the trace they start, and idempotent ids.

Every invocation the client submits comes through ``submit`` (a workflow name or function
and its arguments) or ``submit_payload`` (arguments already encoded: rerun, fork); both end
in the engine's intake rule (``durable_core.engine._intake.submit``).
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    TraceFlags,
    format_trace_id,
)

from durable_core import _codec, _payloads
from durable_core._journal import MAX_SLEEP
from durable_core._naming import check_invocation_id, check_partition_key, check_workflow_name
from durable_core._pb.durable.v1 import durable_pb2 as pb
from durable_core._transport import StateEvents, StateRecord, Transport
from durable_core.engine import _intake as intake
from durable_core.errors import ConflictError, InvalidInputError
from durable_core.plugins import workflow_signature

__all__ = [
    "WorkflowRef",
    "start_at_ms",
    "submit",
    "submit_payload",
    "trace_context_of",
    "workflow_name",
]

WorkflowRef = str | Callable[..., Any]
Check = Callable[[str], Awaitable[None]]

# A proxy until an SDK provider is set (the API's no-op before that): set-up order is free.
_TRACER = trace.get_tracer("durable_core.client")


def trace_context_of(span: trace.Span) -> tuple[dict[str, str], str]:
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


def workflow_name(workflow: WorkflowRef) -> str:
    """The name of a workflow given by name or as its function."""
    if callable(workflow):
        return str(getattr(workflow, "__durable_workflow__", None) or workflow.__name__)
    return workflow


def start_at_ms(delay: timedelta | None, start_at: datetime | None) -> int:
    """When a delayed invocation is due (ms), from ``delay`` or ``start_at``; 0: now."""
    if delay is not None and start_at is not None:
        raise InvalidInputError("give delay or start_at, not both")
    if delay is not None:
        if not isinstance(delay, timedelta) or delay < timedelta(0) or delay > MAX_SLEEP:
            raise InvalidInputError(f"delay must be a timedelta from 0 to {MAX_SLEEP.days} days")
        return int((time.time() + delay.total_seconds()) * 1000)
    if start_at is not None:
        if not isinstance(start_at, datetime) or start_at.tzinfo is None:
            raise InvalidInputError("start_at must be a timezone-aware datetime")
        at = start_at.timestamp()
        if at > time.time() + MAX_SLEEP.total_seconds():
            raise InvalidInputError(f"start_at must be at most {MAX_SLEEP.days} days from now")
        # One in the past is due now: its execution timeout counts from now, not from then.
        return int(max(at, time.time()) * 1000)
    return 0


async def submit(
    t: Transport,
    workflow: WorkflowRef,
    args: Any,
    invocation_id: str | None,
    partition_key: str | None,
    *,
    watch: bool = False,
    start_at: int = 0,
    execution_timeout: timedelta | None = None,
    check: Check | None = None,
) -> tuple[str, StateEvents | None]:
    """Submit ``workflow`` (a name, or the function: its input is checked against its type
    hints) with ``args``; its id, and its state events when ``watch`` (opened before it
    existed, so no change is missed). ``check`` is awaited with the workflow's name once the
    submission is valid, before anything is written (intake's registry check)."""
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
    name = workflow_name(workflow)
    if callable(workflow) and not _payloads.is_file_like(args):
        takes_input, input_type, _ = workflow_signature(workflow)
        if input_type is not None and input_type is not _payloads.Blob:
            try:
                args = _codec.convert(_codec.to_jsonable(args), input_type)
            except InvalidInputError as e:
                raise InvalidInputError(
                    f"input of {name} does not match its declared type: {e}"
                ) from e
    check_workflow_name(name)
    invocation_id = check_invocation_id(
        uuid.uuid4().hex if invocation_id is None else invocation_id
    )
    if partition_key is not None:
        check_partition_key(partition_key)
    # Encoded (and refused when it cannot be stored) before the registry check, stored after
    # it: a refusal leaves no object behind. A stream is only read as it is stored.
    encoded: pb.Payload | None = None
    size = 0
    if isinstance(args, bytes | bytearray):
        size = len(args)
    elif not _payloads.is_file_like(args):
        encoded = _payloads.encoded(args)
        size = len(encoded.data)
    if t.payloads is not None:  # (None: a stand-in transport of the unit tests)
        t.payloads.check_size(size)
    if check is not None:
        await check(name)
    # A large value goes to the object store, a file-like one in chunks (claim check).
    if encoded is None:
        # Another invocation's Blob is held for this one (its owner confirmed) before use.
        payload = await _payloads.store_value(t.payloads, args, invocation_id, t)
    else:
        payload = await _payloads.offload(t.payloads, encoded, invocation_id)
    return await submit_payload(
        t,
        name,
        payload,
        invocation_id,
        partition_key,
        watch=watch,
        start_at=start_at,
        deadline_ms=deadline,
    )


async def submit_payload(
    t: Transport,
    name: str,
    payload: pb.Payload,
    invocation_id: str | None,
    partition_key: str | None,
    *,
    watch: bool = False,
    start_at: int = 0,
    journal_length: int = 0,
    forked_from: str = "",
    fork_from_step: int = 0,
    rerun_of: str = "",
    deadline_ms: int = 0,
    check: Check | None = None,
) -> tuple[str, StateEvents | None]:
    """Submit an invocation of ``name`` with encoded arguments (see :func:`submit`)."""
    check_workflow_name(name)
    invocation_id = check_invocation_id(
        uuid.uuid4().hex if invocation_id is None else invocation_id
    )
    key = invocation_id if partition_key is None else check_partition_key(partition_key)
    payload = await _payloads.offload(t.payloads, payload, invocation_id)
    if len(payload.data) > t.payload_limit:
        raise InvalidInputError(
            f"arguments of {name} are {len(payload.data)} bytes; {t.payload_limit_text()}"
        )
    if check is not None:
        await check(name)
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
        trace_context, trace_id = trace_context_of(span)
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
            fork_from_step=fork_from_step,
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
        events = None
        if watch:
            # The processor sends the result to this client's own subject, which the state
            # and the start name: one subscription per client, none per invocation.
            state.notify, events = await t.watch_result()
            cmd.notify = state.notify
        try:
            if events is not None and await intake.submit_start_only(t, state, cmd):
                # The processor creates the state RUNNING as it starts the run; the waiter
                # creates it PENDING if nothing has started the invocation by its first poll.
                events.unstored = state
                return invocation_id, events
            created = await intake.submit(t, state, cmd)
            if created is None:
                await _check_same_arguments(t, invocation_id, name, payload)
        except BaseException:
            if events is not None:
                await events.close()
            raise
        if events is not None:
            if created is not None:
                events.created = created.state  # subscribed before it existed: the present
            else:
                # Submitted before (by anyone): its notice goes where that submission said.
                # Its state changes come here from now on, and the present is read after.
                await events.close()
                events = await t.state_events(invocation_id)
    return invocation_id, events


async def _check_same_arguments(
    t: Transport, invocation_id: str, name: str, payload: pb.Payload
) -> None:
    """A resubmission of an existing id is that invocation only with the same arguments;
    other arguments are a conflict, not a silent return of the first one's result."""
    rec = await t.get_state(invocation_id)
    if rec is not None:
        _check_same(rec.state, name, payload)


def _check_same(existing: pb.ExecutionState, name: str, payload: pb.Payload) -> None:
    if intake.same_args(existing.args, payload):
        return
    raise ConflictError(
        f"invocation id {existing.invocation_id} is taken by an invocation of {name} with "
        "other arguments: choose another id, or pass the same arguments to get that invocation"
    )


async def store_unstored(
    t: Transport, state: pb.ExecutionState, rec: StateRecord | None
) -> StateRecord | None:
    """The state of an invocation whose start was left to create it (``Command.state_at_start``),
    seen by its waiter for the first time: ``rec``, what the store holds now, or else ``state``
    created PENDING here (nothing has started it yet; a create, so if the processor's
    lands first this one fails and the processor's is read). Whatever was there must be this
    invocation: an id taken by another workflow (InvalidInputError) or by other arguments
    (ConflictError) is refused as a submission would have refused it."""
    if rec is None:
        rec = await t.create_state(state) or await t.get_state(state.invocation_id)
    if rec is not None:
        intake.check_same_workflow(rec.state, state)
        _check_same(rec.state, state.workflow, state.args)
    return rec
