"""The processor's result notice: a real protobuf message, on the wire as before.

The notice is the final state followed by a ``ResultNotice`` (field 1000, unknown to
``ExecutionState``). These tests pin that its bytes are those of the hand-rolled encoding it
replaced, so clients and processors of either version read each other's notices.
"""

from __future__ import annotations

from durable_core import _codec
from durable_core._pb.durable.v1 import durable_pb2 as pb
from durable_core._transport.events import journal_of_result, result_notice


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _hand_rolled(state: pb.ExecutionState, entries: list[pb.JournalEntry]) -> bytes:
    """The encoding of the notice before it was a message (field 1000, length-delimited)."""
    tag = _varint(1000 << 3 | 2)
    body = state.SerializeToString()
    return body + b"".join(
        tag + _varint(len(e.SerializeToString())) + e.SerializeToString() for e in entries
    )


STATE = pb.ExecutionState(invocation_id="inv-1", workflow="wf", status=pb.STATUS_COMPLETED)
ENTRIES = [
    pb.JournalEntry(index=1, kind=pb.ENTRY_KIND_CLAIM, writer="p-1"),
    pb.JournalEntry(
        index=2, kind=pb.ENTRY_KIND_RUN, step=1, name="a" * 300, output=_codec.encode({"x": 1})
    ),
    pb.JournalEntry(index=3, kind=pb.ENTRY_KIND_COMPLETED, output=_codec.encode("done")),
]


def test_the_notice_is_byte_for_byte_the_old_encoding_and_reads_back() -> None:
    data, headers = result_notice(STATE, ENTRIES, limit=1 << 20)
    assert data == _hand_rolled(STATE, ENTRIES)
    assert headers == {"Durable-Journal": str(STATE.ByteSize())}
    assert journal_of_result(data, headers["Durable-Journal"]) == ENTRIES
    # A reader that knows only ExecutionState sees the plain state.
    as_state = pb.ExecutionState.FromString(data)
    assert (as_state.invocation_id, as_state.status) == ("inv-1", pb.STATUS_COMPLETED)


def test_a_journal_over_the_limit_or_none_is_left_out() -> None:
    assert result_notice(STATE, ENTRIES, limit=100) == (STATE.SerializeToString(), None)
    assert result_notice(STATE, [], limit=1 << 20) == (STATE.SerializeToString(), None)


def test_a_malformed_notice_reads_as_no_journal() -> None:
    data, _ = result_notice(STATE, ENTRIES, limit=1 << 20)
    assert journal_of_result(data, "x") is None
    assert journal_of_result(data[:-3], str(STATE.ByteSize())) is None
