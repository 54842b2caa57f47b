"""State events: the server republishes every state write on ``<prefix>.state.<id>``, and a
processor publishes its result notice when an invocation finishes (core NATS): to the
submitting client's notice subject if the invocation names one, else on the state subject."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Awaitable, Callable, Sequence

import nats.errors
from google.protobuf.message import DecodeError

from durable_core._pb.durable.v1 import durable_pb2 as pb
from durable_core._transport.connection import Link
from durable_core._transport.inbox import Mailboxes, MsgQueue

__all__ = [
    "Notices",
    "StateEvents",
    "journal_of_result",
    "publish_result",
    "result_notice",
    "subscribe_state_events",
]


_NOTICE_POLL = 2.0  # seconds: a waiter on a notice alone reads the state this often
_RESULT_HEADER = "Durable-Journal"
_RESULT_MAX_BYTES = 512 * 1024


async def publish_result(
    link: Link, state: pb.ExecutionState, entries: Sequence[pb.JournalEntry]
) -> None:
    """Tell clients waiting on an invocation that it finished (core NATS, best effort).

    Sent by the processor once the journal holds the final entry and before the state is
    written: a waiting client has its result one write earlier, and without reading the
    journal. It goes to the state's ``notify`` subject, the submitting client's (one
    subscription per client, not one per invocation); to the subject where the state's
    changes are republished if it names none (or names one that is not a notice subject:
    a state never makes a processor publish anywhere else). The body is the final state
    followed by a ``ResultNotice`` holding the journal (its field 1000 is unknown to
    ExecutionState: a reader that does not know it sees a plain state); the header
    ``Durable-Journal`` gives the offset of the notice. A journal too large for one message
    is left out (the client reads it).
    """
    limit = min(_RESULT_MAX_BYTES, (link.nc.max_payload or 1024 * 1024) - 16 * 1024)
    data, headers = result_notice(state, entries, limit)
    n = link.names
    if n.is_notice_subject(state.notify):
        subject = state.notify
    else:
        subject = n.state_event_subject(state.invocation_id)
    await link.nc.publish(subject, data, headers=headers)


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

    async def close() -> None:
        with contextlib.suppress(nats.errors.Error):
            await sub.unsubscribe()

    return StateEvents(queue, close)


class Notices:
    """A client's result notices: one subscription (made on first use) for every invocation
    it submits and waits for, each given a subject of its own to name in its state."""

    def __init__(self, link: Link) -> None:
        self._boxes = Mailboxes(link.nc, link.names.notice_prefix(uuid.uuid4().hex))

    async def watch(self) -> tuple[str, StateEvents]:
        """A notice subject for one invocation, and its result notice when it comes (only
        that: not its other state changes, so a caller polls as well, see ``poll``)."""
        subject, queue, token = await self._boxes.take()

        async def close() -> None:
            self._boxes.drop(token)

        return subject, StateEvents(queue, close, poll=_NOTICE_POLL)


class StateEvents:
    """State changes of one invocation, pushed by the server (KV republish), and the
    processor's result notice (see :func:`publish_result`); or only the notice.

    ``poll``: how long a waiter goes without an event before it reads the state itself: a
    notice (or a republished change) may be missed across a reconnect, and notices come
    only once.
    """

    def __init__(
        self, queue: MsgQueue, close: Callable[[], Awaitable[None]], *, poll: float = 5.0
    ) -> None:
        self._queue = queue
        self._close = close
        self.poll = poll
        # The state as this client created it, if it did: the present, without a read.
        self.created: pb.ExecutionState | None = None
        # The state this client left to the processor that starts the invocation
        # (``Command.state_at_start``): not stored yet; the waiter creates it PENDING if
        # nothing has started the invocation within its first poll.
        self.unstored: pb.ExecutionState | None = None

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
        await self._close()
