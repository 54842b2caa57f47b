"""The integration suite's cluster itself: containers where `make images` built them, and the
faults Docker gives (a network partition, a frozen node) on the engine's hot path."""

from __future__ import annotations

import asyncio
import os

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
        for r in await transport.read_journal(invocation_id)
    ]


async def _diagnosis(
    transport: Transport, cluster: NatsCluster, cut: str, stack: ProcessStack, ids: list[str]
) -> str:
    """What the unfinished invocations, the streams, the consumers of the workflow and the
    processor looked like (for a failure message)."""
    n = transport.names
    lines = [f"cut node: {cut}"]
    for inv in ids:
        rec = await transport.get_state(inv)
        status = pb.Status.Name(rec.state.status) if rec else "no state"
        if rec is None or rec.state.status != pb.STATUS_COMPLETED:
            lines.append(f"{inv}: {status}, journal {await _journal_kinds(transport, inv)}")
    for stream in (n.command_stream, n.journal_stream):
        lines.append(f"{stream}: leader {cluster.stream_leader(stream)}")
    try:
        for _, workflow, route, info in await transport.routed_consumers("processor"):
            if workflow != "order_processing":
                continue
            lines.append(
                f"consumer of {workflow} on {route}: leader "
                f"{info.cluster.leader if info.cluster else '?'}, "
                f"pending {info.num_pending}, ack pending {info.num_ack_pending}, "
                f"redelivered {info.num_redelivered}, waiting {info.num_waiting}, "
                f"delivered {info.delivered}, ack floor {info.ack_floor}"
            )
    except Exception as e:  # noqa: BLE001 - a diagnosis never fails the report
        lines.append(f"consumer info: {type(e).__name__}: {e}")
    for proc in stack.procs:
        if proc.name.startswith("p"):
            lines.append(f"--- {proc.name} (last 80 lines)\n{proc.tail(80)}")
    return "\n".join(lines)


@pytest.mark.parametrize("fault", ["partition", "pause"])
async def test_workflows_complete_while_the_journal_leader_is_cut_off(
    fault: str, stack: ProcessStack, client: Client, transport: Transport, cluster: NatsCluster
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
            raise AssertionError(
                f"{e}\n{await _diagnosis(transport, cluster, leader, stack, ids)}"
            ) from e
        assert [r.status for r in results] == ["completed"] * len(ids)
        assert cluster.stream_leader(transport.names.journal_stream) != leader
    finally:
        heal(leader)
    await asyncio.to_thread(cluster.wait_stream_current, transport.names.journal_stream)
    for inv in ids:
        assert (await _journal_kinds(transport, inv)).count("COMPLETED") == 1
    expected = {f"{first.invocation_id}:1"} | {f"{i}:1" for i in ids}
    assert set(service.method_counts("Validate")) == expected
