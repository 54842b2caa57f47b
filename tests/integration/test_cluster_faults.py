"""The integration suite's cluster itself: containers where `make images` built them, and the
faults Docker gives (a network partition, a frozen node) on the engine's hot path."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Sequence

import pytest

from durable_core import Client, InvocationTimeoutError
from durable_core._pb.durable.v1 import durable_pb2 as pb
from durable_core._transport import Transport
from durable_core.testing import NatsCluster, ProcessStack
from order_processing.testing import OrderServiceControl

pytestmark = pytest.mark.integration


def test_the_suite_runs_on_containers_wherever_images_were_built(
    cluster: NatsCluster, images_or_reason: object
) -> None:
    forced = os.environ.get("DURABLE_TEST_CLUSTER") == "process"
    expected = "process" if isinstance(images_or_reason, str) or forced else "docker"
    assert cluster.backend == expected, images_or_reason


async def _journal_kinds(transport: Transport, invocation_id: str) -> list[str]:
    return [
        pb.EntryKind.Name(r.entry.kind).removeprefix("ENTRY_KIND_")
        for r in await transport.read_journal(invocation_id, current=True)
    ]


@pytest.mark.parametrize("fault", ["partition", "pause"])
async def test_workflows_complete_while_the_journal_leader_is_cut_off(
    fault: str,
    stack: ProcessStack,
    client: Client,
    transport: Transport,
    cluster: NatsCluster,
    diagnose: Callable[[Sequence[str]], Awaitable[str]],
) -> None:
    if cluster.backend != "docker":
        pytest.skip("Docker's network partitions need the Docker backend (make images)")
    service = OrderServiceControl(stack.start_service().channel)
    # A command the consumer hands out through the node that then freezes is lost in that
    # node's buffers; nothing but ack-wait brings it back (the processor never saw it, so it
    # cannot give it back or list it in its lease). Hence a short ack-wait here: the bound.
    stack.start_processor("p1", "--ack-wait", "15")
    first = await client.invoke("order_processing", {"order_id": "before", "amount_cents": 1})
    assert first.status == "completed"
    leader = cluster.stream_leader(transport.names.journal_stream)
    assert leader is not None
    cut, heal = (
        (cluster.isolate_node, cluster.rejoin_node)
        if fault == "partition"
        else (cluster.pause_node, cluster.resume_node)
    )
    cut(leader)
    try:
        ids = [f"cut-{fault}-{i}" for i in range(10)]
        for i, inv in enumerate(ids):
            await client.invoke_async(
                "order_processing", {"order_id": f"o{i}", "amount_cents": 100}, id=inv
            )
        try:
            results = await asyncio.gather(*(client.wait(inv, timeout=90) for inv in ids))
        except InvocationTimeoutError as e:
            n = transport.names
            leaders = {s: cluster.stream_leader(s) for s in (n.command_stream, n.journal_stream)}
            why = await diagnose(ids)
            raise AssertionError(f"{e}\ncut node: {leader}; leaders {leaders}\n{why}") from e
        assert [r.status for r in results] == ["completed"] * len(ids)
        assert cluster.stream_leader(transport.names.journal_stream) != leader
    finally:
        heal(leader)
    await asyncio.to_thread(cluster.wait_stream_current, transport.names.journal_stream)
    for inv in ids:
        assert (await _journal_kinds(transport, inv)).count("COMPLETED") == 1
    expected = {f"{first.invocation_id}:1"} | {f"{i}:1" for i in ids}
    assert set(service.method_counts("Validate")) == expected
