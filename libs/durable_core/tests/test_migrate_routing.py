"""``migrate_routing`` moves commands left on the subjects of the layout before routing, on a
real server, even when its reads lag behind its own deletes.

A direct get may be answered by a follower a moment behind: the migration read back a command
it had just moved and deleted, deleted it again, and JetStream refused with "sequence N not
found" (err_code 10043), which failed the migration (CI 2026-12-06)."""

from __future__ import annotations

from typing import Any

import pytest

from durable_core._naming import encode_partition_key
from durable_core._pb.durable.v1 import durable_pb2 as pb
from durable_core._transport import Transport


def _seq(msg: Any) -> int:
    return int(msg.headers["Nats-Sequence"])


async def _publish_old(transport: Transport, invocation_id: str) -> int:
    n = transport.names
    cmd = pb.Command(invocation_id=invocation_id, workflow="hello_workflow")
    cmd.kind = pb.COMMAND_KIND_START
    ack = await transport.js.publish(
        f"{n.prefix}.cmd.{encode_partition_key(invocation_id)}", cmd.SerializeToString()
    )
    return int(ack.seq)


async def test_a_lagging_read_moves_each_old_command_once(
    transport: Transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    seqs = [await _publish_old(transport, f"old-{i}") for i in range(3)]
    gets = transport._commands._gets
    real_batch = gets.batch
    frozen: list[Any] = []

    async def lagging(stream: str, subject: str, start: int, batch: int) -> tuple[list[Any], bool]:
        # A follower that never sees the migration's deletes: what the stream held at first.
        if not frozen:
            frozen.extend((await real_batch(stream, subject, 1, 256))[0])
        out = [m for m in frozen if _seq(m) >= start][:batch]
        return out, len(out) == batch

    monkeypatch.setattr(gets, "batch", lagging)
    done = await transport.migrate_routing("processor")
    assert done == [f"moved command {s} to its route" for s in seqs]
    monkeypatch.setattr(gets, "batch", real_batch)
    assert await transport.legacy_layout("processor") == ""
    n = transport.names
    for i in range(3):
        moved = await transport.js.get_last_msg(
            n.command_stream, n.command_subject("hello_workflow", "", f"old-{i}")
        )
        assert pb.Command.FromString(moved.data).invocation_id == f"old-{i}"


async def test_deleting_a_moved_command_again_is_not_an_error(transport: Transport) -> None:
    first, middle, _last = [await _publish_old(transport, f"old-{i}") for i in range(3)]
    stream = transport.names.command_stream
    await transport.js.delete_msg(stream, middle)
    await transport._commands._delete(stream, middle)  # between first and last: 10043
    await transport.js.delete_msg(stream, first)
    await transport._commands._delete(stream, first)  # below the first sequence now: 10057
