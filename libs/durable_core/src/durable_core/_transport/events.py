"""State events: the server republishes every state write on ``<prefix>.state.<id>``, and a
processor publishes its result notice there when an invocation finishes (core NATS)."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import nats.errors
from google.protobuf.message import DecodeError

from durable_core._pb.durable.v1 import durable_pb2 as pb
from durable_core._transport.connection import Link
from durable_core._transport.inbox import MsgQueue

__all__ = ["StateEvents", "publish_result", "subscribe_state_events"]


def _varint(n: int) -> bytes:
    """Protobuf's base-128 varint encoding of ``n`` >= 0."""
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_RESULT_HEADER = "Durable-Journal"
_RESULT_JOURNAL_FIELD = 1000  # never a field of ExecutionState: readers skip it
_RESULT_JOURNAL_TAG = _varint(_RESULT_JOURNAL_FIELD << 3 | 2)  # length-delimited
_RESULT_MAX_BYTES = 512 * 1024


async def publish_result(
    link: Link, state: pb.ExecutionState, entries: Sequence[pb.JournalEntry]
) -> None:
    """Tell clients waiting on an invocation that it finished (core NATS, best effort).

    Sent by the processor once the journal holds the final entry and before the state is
    written, on the subject where the state's changes are republished: a waiting client
    has its result one write earlier, and without reading the journal. The body is the
    final state followed by the journal's entries as field ``_RESULT_JOURNAL_FIELD``,
    unknown to ExecutionState (a reader that does not know it sees a plain state); the
    header ``Durable-Journal`` gives the offset of the entries. A journal too large for
    one message is left out (the client reads it).
    """
    body = state.SerializeToString()
    parts = [body]
    limit = min(_RESULT_MAX_BYTES, (link.nc.max_payload or 1024 * 1024) - 16 * 1024)
    size = len(body)
    for entry in entries:
        data = entry.SerializeToString()
        size += len(data) + 16
        if size > limit:
            parts = [body]
            break
        parts.append(_RESULT_JOURNAL_TAG + _varint(len(data)) + data)
    headers = {_RESULT_HEADER: str(len(body))} if len(parts) > 1 else None
    await link.nc.publish(
        link.names.state_event_subject(state.invocation_id),
        b"".join(parts),
        headers=headers,
    )


def _journal_of_result(data: bytes, offset: str) -> list[pb.JournalEntry] | None:
    """The journal entries a result notice carries after its state; None if malformed."""
    try:
        pos = int(offset)
        entries = []
        tag = _RESULT_JOURNAL_TAG
        while pos < len(data):
            if data[pos : pos + len(tag)] != tag:
                return None
            pos += len(tag)
            size, shift = 0, 0
            while True:
                byte = data[pos]
                pos += 1
                size |= (byte & 0x7F) << shift
                shift += 7
                if byte < 0x80:
                    break
            if pos + size > len(data):
                return None
            entry = pb.JournalEntry()
            entry.ParseFromString(data[pos : pos + size])
            entries.append(entry)
            pos += size
    except (ValueError, IndexError, DecodeError):
        return None
    return entries or None


async def subscribe_state_events(link: Link, invocation_id: str) -> StateEvents:
    """Subscribe to the server's republished state changes of one invocation."""
    queue = MsgQueue()
    sub = await link.nc.subscribe(link.names.state_event_subject(invocation_id), cb=queue.put)
    return StateEvents(sub, queue)


class StateEvents:
    """State changes of one invocation, pushed by the server (KV republish), and the
    processor's result notice (see :func:`publish_result`)."""

    def __init__(self, sub: Any, queue: MsgQueue) -> None:
        self._sub = sub
        self._queue = queue
        # The state as this client created it, if it did: the present, without a read.
        self.created: pb.ExecutionState | None = None

    async def next(self, timeout: float) -> pb.ExecutionState:
        """The next state change; asyncio.TimeoutError if none comes in time."""
        return (await self.next_with_journal(timeout))[0]

    async def next_with_journal(
        self, timeout: float
    ) -> tuple[pb.ExecutionState, list[pb.JournalEntry] | None]:
        """The next state change, with the whole journal when a result notice carries it."""
        msg = await self._queue.get(timeout)
        st = pb.ExecutionState()
        offset = (msg.headers or {}).get(_RESULT_HEADER)
        if offset is None or not offset.isdigit():
            st.ParseFromString(msg.data)
            return st, None
        st.ParseFromString(msg.data[: int(offset)])
        return st, _journal_of_result(msg.data, offset)

    async def close(self) -> None:
        """Stop listening."""
        with contextlib.suppress(nats.errors.Error):
            await self._sub.unsubscribe()
