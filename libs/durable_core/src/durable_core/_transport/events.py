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

__all__ = [
    "StateEvents",
    "journal_of_result",
    "publish_result",
    "result_notice",
    "subscribe_state_events",
]


_RESULT_HEADER = "Durable-Journal"
_RESULT_MAX_BYTES = 512 * 1024


async def publish_result(
    link: Link, state: pb.ExecutionState, entries: Sequence[pb.JournalEntry]
) -> None:
    """Tell clients waiting on an invocation that it finished (core NATS, best effort).

    Sent by the processor once the journal holds the final entry and before the state is
    written, on the subject where the state's changes are republished: a waiting client
    has its result one write earlier, and without reading the journal. The body is the
    final state followed by a ``ResultNotice`` holding the journal (its field 1000 is
    unknown to ExecutionState: a reader that does not know it sees a plain state); the
    header ``Durable-Journal`` gives the offset of the notice. A journal too large for
    one message is left out (the client reads it).
    """
    limit = min(_RESULT_MAX_BYTES, (link.nc.max_payload or 1024 * 1024) - 16 * 1024)
    data, headers = result_notice(state, entries, limit)
    await link.nc.publish(
        link.names.state_event_subject(state.invocation_id), data, headers=headers
    )


def result_notice(
    state: pb.ExecutionState, entries: Sequence[pb.JournalEntry], limit: int
) -> tuple[bytes, dict[str, str] | None]:
    """The body and headers of a result notice (see :func:`publish_result`); the journal is
    left out when the notice would be over ``limit`` bytes."""
    body = state.SerializeToString()
    notice = pb.ResultNotice(journal=entries)
    if not entries or len(body) + notice.ByteSize() > limit:
        return body, None
    return body + notice.SerializeToString(), {_RESULT_HEADER: str(len(body))}


def journal_of_result(data: bytes, offset: str) -> list[pb.JournalEntry] | None:
    """The journal entries a result notice carries after its state; None if malformed."""
    try:
        notice = pb.ResultNotice.FromString(data[int(offset) :])
    except (ValueError, DecodeError):
        return None
    return list(notice.journal) or None


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
        return st, journal_of_result(msg.data, offset)

    async def close(self) -> None:
        """Stop listening."""
        with contextlib.suppress(nats.errors.Error):
            await self._sub.unsubscribe()
