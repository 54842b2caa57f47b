"""Shards (issue 19, item 4): an engine made with ``shards = 3`` on the 3-node cluster keeps each
invocation's journal and state in the journal stream and state bucket its id hashes to, and
each command in the command stream its partition key (or id) hashes to, each kind's three
leaders on three nodes; per-key order, timers, delayed starts and schedules work across the
shards; clients and the CLI take the number from the streams; a processor configured with
another number is refused."""

from __future__ import annotations

import asyncio
import json
import time
from collections import defaultdict
from datetime import timedelta
from pathlib import Path

import pytest

from durable_core import Client, EngineConfig
from durable_core._naming import SHARD_SLOTS, shard_of
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
    assert n.command_streams == [f"{n.prefix.upper()}_COMMANDS_{k}" for k in range(SHARDS)]
    for kind in (n.command_streams, journals, states):
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
        # Its start went through the command shard of its id (no partition key): the
        # command's number names the shard it was delivered from.
        assert st.state.run_command_seq % SHARD_SLOTS == shard, (inv, st.state.run_command_seq)
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


async def test_keys_timers_delayed_starts_and_schedules_work_across_command_shards(
    stack: ProcessStack, transport: Transport, client: Client, tmp_path: Path
) -> None:
    """Two processors on the sharded engine: a key's invocations run one at a time in order
    (its commands in one shard), sleeps and delayed starts fire into their shards, and a
    schedule (its firings in the first stream) starts runs."""
    n = transport.names
    record = tmp_path / "calls.jsonl"
    stack.start_service(ORDER_SERVICE_RECORD_FILE=str(record))
    for name in ("p-s1", "p-s2"):
        stack.start_processor(name, DURABLE_SHARDS=str(SHARDS))
    stack.start_scheduler()  # told nothing of shards: takes the stored number
    keys = [f"key{i}" for i in range(6)]
    assert {n.command_shard(k) for k in keys} == set(range(SHARDS))  # every shard has a key
    ids = []
    for i in range(48):
        key = keys[i % len(keys)]
        ids.append(
            await client.invoke_async(
                "order_processing",
                {"order_id": f"{key}-{i // len(keys):02d}", "amount_cents": 1},
                partition_key=key,
            )
        )
    sleeper = await client.invoke_async("delayed_greeting", {"name": "S", "delay_seconds": 1})
    later = await client.invoke_async("greet_later", {"name": "L", "delay_seconds": 1})
    await client.create_schedule(
        "every-s", "hello_workflow", {"name": "C"}, every=timedelta(seconds=1)
    )

    results = await asyncio.gather(*(client.wait(i, timeout=120) for i in ids))
    assert [r.status.value for r in results] == ["completed"] * len(ids)
    calls: dict[str, list[str]] = defaultdict(list)
    for line in record.read_text().splitlines():
        call = json.loads(line)
        key, seq = call["order_id"].split("-")
        calls[key].append(f"{seq}:{call['method'].rsplit('/', 1)[-1]}")
    for key, seen in calls.items():
        expected = [f"{s:02d}:{m}" for s in range(8) for m in ("Validate", "Charge", "Ship")]
        assert seen == expected, f"key {key} ran out of order or overlapped: {seen[:9]}"
    for inv in ids[: len(keys)]:  # each key's commands came from its own shard
        st = await transport.get_state(inv)
        assert st is not None
        key = st.state.partition_key
        assert st.state.run_command_seq % SHARD_SLOTS == n.command_shard(key), (inv, key)

    slept = await client.wait(sleeper, timeout=60)
    assert slept.status.value == "completed", slept
    sent = await client.wait(later, timeout=60)
    assert sent.status.value == "completed", sent
    greeted = await client.wait(str(sent.output["sent"]), timeout=60)
    assert greeted.status.value == "completed" and "Hello" in str(greeted.output)

    async def a_scheduled_run() -> bool:
        runs = await client.list_executions(workflow="hello_workflow")
        return any(
            r.status.value == "completed" and r.invocation_id != greeted.invocation_id for r in runs
        )

    deadline = time.monotonic() + 30
    while not await a_scheduled_run():
        assert time.monotonic() < deadline, "no scheduled run completed within 30 s"
        await asyncio.sleep(0.5)
    found = await asyncio.to_thread(stack.cli, "admin", "consumers", "--json")
    assert found.returncode == 0, found.stderr
    streams = {c["stream"] for c in json.loads(found.stdout)["consumers"]}
    assert streams == set(n.command_streams), streams
