"""Per-key ordering: invocations with the same partition key run one at a time, in order.

A small record per key in the ``<prefix>_keys`` bucket says which invocation holds the key
(``active``) and which wait (``waiting``, by ticket). The ticket of an invocation is the stream
sequence of its start command, so submission order is the order of tickets. Writes are
revision-checked (compare and set); this module is the pure decision part.

An invocation takes the key when nobody holds it (or the holder has finished) and no earlier
ticket waits or is still on its way (an unacknowledged start with a lower sequence).
Otherwise it joins ``waiting`` and its start is acknowledged. The holder keeps the key while
suspended; when it finishes, the lowest waiting ticket is started (a "turn").

``KeyRecord`` decides (pure: no I/O); ``take_key`` and ``release_key`` read, decide and write
with a revision check, deciding again on a conflict.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Collection, Iterable
from dataclasses import dataclass, field

from durable_core._pb.durable.v1 import durable_pb2 as pb
from durable_core._transport import Delivery, StateConflict, Transport
from durable_core.errors import DurableError

__all__ = ["KeyRecord", "Turn", "give_turn", "release_key", "take_key"]

log = logging.getLogger("durable_core.worker")

Turn = tuple[int, str, str]  # (ticket, invocation id, workflow) of a waiting invocation
_ROUNDS = 50  # read-decide-write rounds before a busy key gives up (the command comes back)


@dataclass(slots=True)
class KeyRecord:
    """Who holds a partition key, and who waits for it."""

    active: str = ""
    active_ticket: int = 0
    waiting: list[Turn] = field(default_factory=list)  # (ticket, id, workflow)

    @classmethod
    def parse(cls, data: bytes | None) -> KeyRecord:
        """Read a stored record (an empty one for none)."""
        if not data:
            return cls()
        raw = json.loads(data)
        return cls(
            raw.get("active", ""),
            int(raw.get("active_ticket", 0)),
            [(int(t), str(i), str(w)) for t, i, w in raw.get("waiting", [])],
        )

    def dump(self) -> bytes:
        """The stored record."""
        return json.dumps(
            {"active": self.active, "active_ticket": self.active_ticket, "waiting": self.waiting},
            separators=(",", ":"),
        ).encode()

    def lowest_waiting(self) -> Turn | None:
        """The waiting invocation whose turn is next."""
        return min(self.waiting) if self.waiting else None

    def ticket_of(self, invocation_id: str) -> int | None:
        """The ticket of a waiting invocation."""
        return next((t for t, i, _ in self.waiting if i == invocation_id), None)

    def may_take(self, ticket: int, holder_finished: bool) -> bool:
        """Whether ticket may take the key now (ignoring starts still on their way)."""
        if self.active and not holder_finished:
            return False
        lowest = self.lowest_waiting()
        return lowest is None or lowest[0] >= ticket

    def take(self, invocation_id: str, ticket: int) -> None:
        """``invocation_id`` holds the key now."""
        self.active, self.active_ticket = invocation_id, ticket
        self.waiting = [w for w in self.waiting if w[1] != invocation_id]

    def enqueue(self, invocation_id: str, ticket: int, workflow: str) -> None:
        """``invocation_id`` waits for the key (once)."""
        if self.ticket_of(invocation_id) is None:
            self.waiting.append((ticket, invocation_id, workflow))
            self.waiting.sort()

    def release(self, invocation_id: str) -> Turn | None:
        """The holder is done: free the key; returns whose turn it is next."""
        if self.active == invocation_id:
            self.active, self.active_ticket = "", 0
        return self.lowest_waiting() if not self.active else None

    def starts_before(self, queued: Iterable[pb.Command], invocation_id: str) -> list[str]:
        """The invocations of starts still in the stream before ``invocation_id``'s ticket
        that may go first: neither this one nor the holder, and not waiting already (those
        not finished yet go first; whether they are is not this record's to know)."""
        return [
            cmd.invocation_id
            for cmd in queued
            if cmd.kind == pb.COMMAND_KIND_START
            and cmd.invocation_id not in (invocation_id, self.active)
            and self.ticket_of(cmd.invocation_id) is None
        ]

    def queue(
        self, invocation_id: str, ticket: int, workflow: str, *, holder_done: bool, earlier: str
    ) -> tuple[Turn | None, str]:
        """``invocation_id`` waits: ``(turn, behind)``, where ``turn`` is the waiting invocation
        to start now (the holder finished without handing over, and no earlier start is on its
        way) and ``behind`` whom it waits for."""
        self.enqueue(invocation_id, ticket, workflow)
        turn = self.lowest_waiting() if (not self.active or holder_done) and not earlier else None
        behind = earlier or self.active or (turn[1] if turn else "")
        return turn, behind

    def hand_over(self, invocation_id: str, finished: Collection[str]) -> tuple[bool, Turn | None]:
        """The holder ``invocation_id`` is done: free the key and drop the waiting invocations
        that have ``finished``; ``(changed, turn)``, ``turn`` the lowest waiting one."""
        was_holder = self.active == invocation_id
        self.release(invocation_id)
        stale = [w for w in self.waiting if w[1] in finished]
        self.waiting = [w for w in self.waiting if w not in stale]
        return was_holder or bool(stale), self.lowest_waiting()


Finished = Callable[[str], Awaitable[bool]]


async def take_key(
    t: Transport,
    cmd: pb.Command,
    delivery: Delivery,
    *,
    finished: Finished,
    queued: Callable[[str], Awaitable[object]],
) -> str | None:
    """Take the partition key of ``cmd`` (a start) ("took"), find it ours already ("held"), or
    queue behind its holder, ack the start and return None.

    Args:
        finished: whether an invocation has finished (reads its state).
        queued: records in the state that the invocation waits, and for whom.
    """
    me, key = cmd.invocation_id, cmd.partition_key
    for attempt in range(_ROUNDS):
        if attempt and await finished(me):
            await delivery.ack()  # a turn ran it meanwhile; don't queue it again
            return None
        data, revision = await t.key_record(key)
        rec = KeyRecord.parse(data)
        ticket = rec.ticket_of(me) or delivery.command_seq
        if rec.active == me:
            if rec.active_ticket != ticket:
                # Another start of ours (a retry) while our earlier run's hold is still
                # recorded (it releases the key after the failure it wrote): the record is
                # written anew, so that release meets a changed record, reads again and
                # finds us running (see release_key); else it freed the key under the
                # retried run, and the next in line ran beside it.
                rec.take(me, ticket)
                try:
                    await t.put_key_record(key, rec.dump(), revision)
                except StateConflict:
                    continue
            return "held"
        holder_done = bool(rec.active) and await finished(rec.active)
        earlier = ""
        if rec.may_take(ticket, holder_done):
            for other in rec.starts_before(await t.queued_commands(key, ticket), me):
                if not await finished(other):
                    earlier = other  # submitted before us, not yet taken in: it goes first
                    break
            if not earlier:
                rec.take(me, ticket)
                try:
                    await t.put_key_record(key, rec.dump(), revision)
                except StateConflict:
                    continue
                return "took"
        turn, behind = rec.queue(me, ticket, cmd.workflow, holder_done=holder_done, earlier=earlier)
        try:
            written = await t.put_key_record(key, rec.dump(), revision)
        except StateConflict:
            continue
        await queued(f"partition key {key!r} (behind {behind})")
        if turn is not None and turn[1] != me:
            # the holder finished without handing over
            await give_turn(t, key, turn, me, written)
        await delivery.ack()
        log.info("invocation %s queued on partition key %r behind %s", me, key, behind)
        return None
    raise DurableError(f"partition key {key!r} keeps changing; retrying later")


async def release_key(t: Transport, key: str, invocation_id: str, *, finished: Finished) -> None:
    """Free the key (if ``invocation_id`` holds it) and give the turn to the lowest unfinished
    ticket."""
    turn: Turn | None = None
    revision = 0
    for _ in range(_ROUNDS):
        data, revision = await t.key_record(key)
        rec = KeyRecord.parse(data)
        if rec.active and rec.active != invocation_id:
            return  # someone else holds it: they hand over when done
        if rec.active and not await finished(invocation_id):
            return  # retried since it finished: the retry's run holds the key now
        done = {w[1] for w in rec.waiting if await finished(w[1])}
        changed, turn = rec.hand_over(invocation_id, done)
        if not changed and data is not None and revision:
            break  # nothing to write: the key was free already
        try:
            revision = await t.put_key_record(key, rec.dump(), revision)
            break
        except StateConflict:
            continue
    if turn is not None:
        await give_turn(t, key, turn, invocation_id, revision)


async def give_turn(t: Transport, key: str, turn: Turn, by: str, revision: int) -> None:
    """Start the waiting invocation ``turn`` (its start command again, under the key, on its
    pinned route if it has one), for the key record's write ``revision`` that gave it."""
    _, invocation_id, workflow = turn
    rec = await t.get_state(invocation_id)
    await t.publish_command(
        pb.Command(
            invocation_id=invocation_id,
            workflow=workflow or (rec.state.workflow if rec is not None else ""),
            partition_key=key,
            kind=pb.COMMAND_KIND_START,
            route=rec.state.pinned_version if rec is not None else "",
        ),
        # One turn per hand-over (the record's write that gave it): a turn that finds an
        # earlier start still on its way queues again and needs a new turn later, and a
        # retried invocation is handed the key again by the same holder (two keyed
        # invocations that failed, both retried): neither may be deduplicated away, or
        # the key stays free with the invocation waiting for good.
        msg_id=f"turn:{invocation_id}:{by}:{revision}",
    )
