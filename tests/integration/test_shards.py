"""Shards (issue 19, item 4): an engine made with ``shards = 3`` on the 3-node cluster keeps each
invocation's journal and state in the journal stream and state bucket its id hashes to, each
kind's three leaders on three nodes; clients and the CLI take the number from the streams; a
processor configured with another number is refused. Commands stay in one stream."""

from __future__ import annotations

import asyncio
import time

import pytest

from durable_core import Client, EngineConfig
from durable_core._naming import shard_of
from durable_core._transport import Transport
from durable_core.testing import ProcessStack

SHARDS = 3


@pytest.fixture
def engine(prefix: str) -> EngineConfig:
    return EngineConfig(prefix=prefix, replicas=3, shards=SHARDS)


async def _leaders(t: Transport, streams: list[str]) -> dict[str, str]:
    out = {}
    for stream in streams:
        info = await t.js.stream_info(stream)
        assert info.cluster is not None
        out[stream] = info.cluster.leader or ""
    return out


async def _count(t: Transport, stream: str, subjects: str) -> int:
    info = await t.js.stream_info(stream, subjects_filter=subjects)
    return sum((info.state.subjects or {}).values())


async def test_three_shards_spread_their_leaders_and_hold_their_own_journals_and_states(
    stack: ProcessStack, transport: Transport, client: Client
) -> None:
    n = transport.names
    journals = n.journal_streams
    states = [f"KV_{b}" for b in n.state_buckets]
    assert journals == [f"{n.prefix.upper()}_JOURNAL_{k}" for k in range(SHARDS)]
    assert states == [f"KV_{n.prefix}_state_{k}" for k in range(SHARDS)]
    for kind in (journals, states):
        leaders = await _leaders(transport, kind)
        assert len(set(leaders.values())) == SHARDS, f"leaders not spread: {leaders}"

    stack.start_service()
    stack.start_processor("p-shards", DURABLE_SHARDS=str(SHARDS))
    ids = [f"sharded-{i}" for i in range(30)]
    for inv in ids:
        await client.invoke_async("hello_workflow", {"name": inv}, id=inv)
    results = await asyncio.gather(*(client.wait(inv, timeout=60) for inv in ids))
    assert [r.status.value for r in results] == ["completed"] * len(ids)
    assert all("Hello" in str(r.output) for r in results)

    per_shard = [0] * SHARDS
    for inv in ids:
        shard = shard_of(inv, SHARDS)
        per_shard[shard] += 1
        assert await transport.read_journal(inv), f"no journal for {inv} in shard {shard}"
        st = await transport.get_state(inv)
        assert st is not None and st.state.status == 4  # COMPLETED, read from its shard
        for other in range(SHARDS):  # nothing of it in another shard
            in_journal = await _count(transport, journals[other], f"{n.prefix}.journal.*.{inv}")
            in_state = await _count(transport, states[other], f"$KV.*.{inv}")
            assert (in_journal > 0) == (in_state > 0) == (other == shard), (inv, other)
    assert all(per_shard), f"30 ids left a shard empty: {per_shard}"

    # Every state, whatever its shard: the sweeps' list and the inspector's watch.
    assert set(ids) <= set(await transport.state_ids())
    seen: set[str] = set()
    async for item in transport.watch_states():
        if item is None:
            break
        seen.add(item[0])
    assert set(ids) <= seen

    # A client told nothing of shards takes the stored number; so does the CLI.
    other = await Client.connect(stack.nats_url, engine=EngineConfig(prefix=n.prefix))
    try:
        again = await other.wait(ids[0], timeout=10)
        assert again.status.value == "completed"
        assert other._t.names.shards == SHARDS
    finally:
        await other.close()
    shown = await asyncio.to_thread(stack.cli, "status", ids[1])
    assert shown.returncode == 0 and "completed" in shown.stdout.lower(), shown.stderr


def test_a_processor_configured_with_another_number_of_shards_is_refused(
    stack: ProcessStack, transport: Transport
) -> None:
    stack.start_service()
    proc = stack.start("p-two", ["-m", "durable_processor"], {"DURABLE_SHARDS": "2"})
    deadline = time.monotonic() + 30
    while proc.proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert proc.proc.returncode not in (None, 0), proc.tail()
    log = proc.log()
    assert "was made with 3 shard(s)" in log and "configured with 2" in log, log
    assert "consuming" not in log
