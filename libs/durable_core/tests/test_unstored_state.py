"""The state an ``invoke`` leaves to the processor (``Command.state_at_start``), as its waiter
stores or checks it at its first poll: created PENDING when nothing started the invocation,
else whatever is there, refused as a submission would refuse it when the id is taken."""

from __future__ import annotations

import pytest

from durable_core import _codec
from durable_core._pb.durable.v1 import durable_pb2 as pb
from durable_core._transport import Transport
from durable_core.client._submit import store_unstored
from durable_core.errors import ConflictError


def pending(invocation_id: str, workflow: str = "wf", args: object = None) -> pb.ExecutionState:
    return pb.ExecutionState(
        invocation_id=invocation_id,
        workflow=workflow,
        status=pb.STATUS_PENDING,
        args=_codec.encode(args if args is not None else {"x": 1}),
        partition_key=invocation_id,
    )


async def test_nothing_there_is_created_pending(transport: Transport) -> None:
    rec = await store_unstored(transport, pending("fresh"), None)
    assert rec is not None and rec.state.status == pb.STATUS_PENDING
    stored = await transport.get_state("fresh")
    assert stored is not None and stored.revision == rec.revision


async def test_a_state_the_processor_created_first_is_taken_as_it_is(
    transport: Transport,
) -> None:
    running = pending("raced")
    running.status = pb.STATUS_RUNNING
    created = await transport.create_state(running)
    assert created is not None
    # The waiter read nothing (its read came first), then its create loses to the processor's.
    rec = await store_unstored(transport, pending("raced"), None)
    assert rec is not None and rec.state.status == pb.STATUS_RUNNING
    assert rec.revision == created.revision


async def test_an_id_taken_by_another_workflow_or_other_arguments_is_refused(
    transport: Transport,
) -> None:
    await transport.create_state(pending("taken", "other"))
    with pytest.raises(ConflictError, match="already used by workflow 'other'"):
        await store_unstored(transport, pending("taken"), await transport.get_state("taken"))
    await transport.create_state(pending("args", "wf", {"x": 1}))
    with pytest.raises(ConflictError, match="other arguments"):
        await store_unstored(transport, pending("args", "wf", {"x": 2}), None)
    # The same workflow and arguments: the same invocation.
    rec = await store_unstored(transport, pending("args", "wf", {"x": 1}), None)
    assert rec is not None and rec.state.status == pb.STATUS_PENDING
