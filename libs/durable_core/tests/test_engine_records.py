"""The engine's pure decisions about its records: per-key ordering and processor leases."""

from __future__ import annotations

import json

import pytest

from durable_core._pb.durable.v1 import durable_pb2 as pb
from durable_core.engine import LeaseRecord
from durable_core.engine._keys import KeyRecord


def _start(invocation_id: str) -> pb.Command:
    return pb.Command(invocation_id=invocation_id, kind=pb.COMMAND_KIND_START)


def test_a_free_key_is_taken_by_the_lowest_ticket_only() -> None:
    rec = KeyRecord()
    assert rec.may_take(5, holder_finished=False)
    rec.enqueue("early", 3, "wf")
    assert not rec.may_take(5, holder_finished=False)  # an earlier ticket waits
    assert rec.may_take(3, holder_finished=False)
    rec.take("early", 3)
    assert (rec.active, rec.waiting) == ("early", [])
    assert not rec.may_take(7, holder_finished=False)
    assert rec.may_take(7, holder_finished=True)  # the holder finished without handing over


def test_starts_still_in_the_stream_go_first_unless_they_are_known() -> None:
    rec = KeyRecord(active="holder", active_ticket=1, waiting=[(4, "queued", "wf")])
    queued = [
        _start("me"),
        _start("holder"),
        _start("queued"),
        pb.Command(invocation_id="wake", kind=pb.COMMAND_KIND_WAKE),
        _start("other"),
    ]
    assert rec.starts_before(queued, "me") == ["other"]


def test_queueing_names_whom_it_waits_for_and_whose_turn_it_is() -> None:
    rec = KeyRecord(active="holder", active_ticket=1)
    assert rec.queue("me", 9, "wf", holder_done=False, earlier="") == (None, "holder")
    assert rec.waiting == [(9, "me", "wf")]
    rec.queue("me", 9, "wf", holder_done=False, earlier="")
    assert rec.waiting == [(9, "me", "wf")]  # once

    rec = KeyRecord(active="holder", active_ticket=1, waiting=[(2, "second", "wf")])
    turn, behind = rec.queue("me", 9, "wf", holder_done=True, earlier="")
    assert turn == (2, "second", "wf") and behind == "holder"  # the holder never handed over
    turn, behind = rec.queue("me", 9, "wf", holder_done=True, earlier="sooner")
    assert (turn, behind) == (None, "sooner")  # an earlier start is on its way: it goes first


def test_handing_over_frees_the_key_and_skips_finished_waiters() -> None:
    waiting = [(2, "done", "wf"), (3, "next", "wf")]
    rec = KeyRecord(active="me", active_ticket=1, waiting=list(waiting))
    assert rec.hand_over("me", {"done"}) == (True, (3, "next", "wf"))
    assert (rec.active, rec.waiting) == ("", [(3, "next", "wf")])

    rec = KeyRecord(waiting=[(3, "next", "wf")])
    assert rec.hand_over("me", set()) == (False, (3, "next", "wf"))  # nothing to write
    assert KeyRecord.parse(rec.dump()) == rec


def test_a_lease_record_reads_back_what_was_written() -> None:
    lease = LeaseRecord(
        "p1", 15.0, held=("$JS.ACK.a.1",), seqs=(7,), pid=42, host="h", renewed_at_ms=5
    )
    assert LeaseRecord.parse(lease.to_json()) == lease
    assert json.loads(lease.to_json())["ttl_ms"] == 15000  # the stored form is unchanged
    assert LeaseRecord.read(None) is None and LeaseRecord.read(b"junk") is None


@pytest.mark.parametrize(
    "data", [b"not json", b"[]", b'{"held": []}', b'{"ttl_ms": 0}', b'{"ttl_ms": "x"}']
)
def test_what_is_not_a_lease_is_refused(data: bytes) -> None:
    with pytest.raises(ValueError, match="lease record|ttl"):
        LeaseRecord.parse(data)


@pytest.mark.parametrize(
    "field",
    ["journal_length", "forked_from", "rerun_of", "deadline_ms", "parent_id", "notify_parent"],
)
def test_only_a_state_the_command_rebuilds_is_created_while_the_start_is_sent(field: str) -> None:
    # A processor that finds no state yet runs from the command: any field the command does
    # not carry (a rerun's origin, a fork's journal, a deadline, a parent) would be lost.
    from durable_core.engine._intake import _rebuildable

    cmd = _start("inv-1")
    plain = pb.ExecutionState(invocation_id="inv-1", partition_key="inv-1")
    assert _rebuildable(plain, cmd)
    value = {"journal_length": 2, "deadline_ms": 5, "notify_parent": True}.get(field, "x")
    st = pb.ExecutionState(invocation_id="inv-1", partition_key="inv-1", **{field: value})
    assert not _rebuildable(st, cmd)
