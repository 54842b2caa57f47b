"""What a processor holds, and until when it surely holds it: its lease and its run locks.

Why two processors never run steps of one invocation at the same time
----------------------------------------------------------------------
The journal is fenced (every append names the sequence it expects), so two runs can never
both journal a step. What this module and the worker add is that a second run never *starts*
a step while the first could still start one: the service sees a step twice only when it was
in flight in a processor that crashed, or that lost touch with NATS for longer than its
``ack_wait`` or ``lease_ttl`` (from the cluster's point of view the same thing).

A run rides on one delivery of one command (a start or a wake-up). Every way a second copy of
an invocation could become runnable, and what closes it:

1. *The same command delivered again* (JetStream redelivers after ``ack_wait`` without
   progress; the scheduler's re-drive NAKs the commands of a lapsed lease; a processor NAKs
   what it gives up). The holder knows, by its own clock, until when the server cannot have
   redelivered (``Delivery.held_until``: ``ack_wait`` after the pull request, then after each
   in-progress ack the server answered in time; heartbeats run from the moment of delivery).
   It runs a step only before that bound, less one heartbeat interval (the consumer leader
   answers an in-progress ack before replicating it; a leader change can lose the latest).
   It also runs a step only while its processor lease is surely alive (below), so once the
   scheduler can find the lease lapsed and NAK its commands, it runs none. A redelivery that
   comes back to the same process while the run goes on is absorbed: the run carries on
   with it (``Delivery.adopt``); no second run starts in that process.
2. *A stale NAK*. Acks and NAKs act on the message, not on one delivery of it (measured: a
   NAK sent on the reply subject of an earlier delivery takes the message from its current
   holder and redelivers it). The re-drive NAKs what a lapsed lease lists; if the command
   had meanwhile been redelivered to a live processor, that NAK takes it from the live one.
   The first delivery of a command has no earlier delivery whose NAK could do this, so only
   a command delivered more than once is exposed: its holder lists the command in its lease
   (a renewal the server confirmed), then takes the command's *run lock* (a KV entry per
   command number, written with a revision check) before it runs anything. A later holder
   waits until the lock is released, or its owner's lease no longer lists the command (that
   run is over: it listed the command before it took the lock, and drops it only when it
   lets the command go), or the lease is gone (deleted, or provably lapsed: unchanged for its
   TTL, and then re-driven here). So a stale NAK can only take a command from a holder that
   runs it under its lock, and whoever receives it waits for that lock: a run that stopped
   because it lost its hold hands its command back at once. Other NAKs and terminations are
   sent only while the delivery is surely held.
3. *Another command of the same invocation* (a wake-up racing the run, a second start, a
   turn of a partition key, a wake-up or start redelivered after its holder died). Every
   journal entry a run writes carries its command's number (``command_seq``: its stream
   sequence, made unique across shards, see ``Names.command_seq``); a fresh start records it
   in the state as it moves it from PENDING to RUNNING (a revision-checked write, so one start
   wins). A delivery takes a running invocation over only if
   the run is its own command's (case 1 made sure that run's holder stopped); wake-ups never
   start an invocation that has not started (its start does); any command may claim an
   invocation whose last run suspended, with a fenced CLAIM (one claimer wins).

4. *A lost command* (issue 14: once in a soak, a command handed back with a NAK was never
   delivered again, and its invocation stayed RUNNING under it). The scheduler looks for
   invocations RUNNING under a command that no processor lease has listed for a while
   (``durable_scheduler.stranded``) and publishes a rescue: a wake-up that ``supersedes`` it.
   The rescue first marks the lost command's run lock superseded (revision-checked, and only
   while no live lease that lists the command holds the lock), then claims the invocation
   with a fenced CLAIM. Any later delivery of the lost command is delivered more than once,
   so it meets the mark in ``lock_run`` and is acked without running: the two never run
   side by side. One way a command got lost (chaos, seed 19005): a run whose hold had
   lapsed (in-progress acks unanswered through a partition) wrote a CLAIM after the
   command's redelivery had run the invocation, suspended it and acked the command
   elsewhere. A CLAIM is now written only while the command is surely held, like a step
   (``JournalWriter`` asks before each claim).

5. *A processor that freezes between its last check and the call leaving* (SIGSTOP, a paused
   VM, a stop-the-world pause). The hold is checked right before each call is made, after the
   interceptors (one may wait), but no check in a process can cover the instant after it: a
   process frozen there for longer than its hold sends the call when it thaws, and by then
   another processor may have taken the invocation over, run the step and journaled it (seen
   once under chaos, seed 21206: a Ship arrived 6.4 s after the step was committed by the
   processor that took over). Only the service can refuse such a call, so every call carries
   a fence (``durable-fence``): the journal's last sequence as its run knows it. A run that
   takes an invocation over appends a CLAIM (fenced) before it calls anything, so its fence is
   above every fence of the runs before it; a later attempt of the same run follows its
   ATTEMPT_FAILED entry, so it is above its own earlier attempts too. A service that keeps
   the highest fence seen per idempotency key and refuses a lower one (the example
   OrderService answers FAILED_PRECONDITION) never executes a superseded run's call.
   Sequences only grow within a stream, so fences compare within one journal stream: a
   journal stream deleted and made again starts them over.

The processor lease (``_lease``): created (and confirmed) before the first command is pulled,
renewed with a revision check every ``lease_ttl / 3``. The scheduler deletes a lease it saw
unchanged for its TTL (a revision-checked delete), so a processor whose renewal was stored at
time t cannot have its commands re-driven before t + TTL; if its lease was deleted, its next
renewal fails and it runs no more steps under it (it carries on under a new lease).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable

from durable_core._transport import Delivery, StateConflict, Transport
from durable_core.engine._lease import LeaseRecord, ProcessorLease

__all__ = ["SUPERSEDED", "lock_run", "supersede_run", "unlock_run"]

log = logging.getLogger("durable_core.worker")

SUPERSEDED = -1  # lock_run: a rescue took this command's run over (ack it, run nothing)


async def lock_run(
    t: Transport,
    lease: ProcessorLease,
    delivery: Delivery,
    *,
    finished: Callable[[], Awaitable[bool]],
    stopping: asyncio.Event,
) -> int:
    """Take the run lock of a command delivered more than once; its revision, or 0 when this
    delivery must not run (``stopping``, or ``finished()`` became true while waiting).

    Waits while the lock is held under a lease that still exists and was renewed within its
    TTL and still lists the command: that processor runs it (our delivery came from a stale
    NAK), or is about to let it go. ``SUPERSEDED`` when a rescue took the run over.
    """
    seq = delivery.command_seq
    if not await lease.wait_listed(seq, stopping):
        return 0
    mine = json.dumps(
        {"lease": lease.name, "processor": lease.processor_id, "delivery": delivery.num_delivered}
    ).encode()
    seen: tuple[str, int, float] | None = None  # holder's lease, its revision, first seen at
    waiting_since = time.monotonic()
    while not stopping.is_set():
        data, revision = await t.run_lock(seq)
        if _superseded_by(data):
            return SUPERSEDED
        holder = _holder(data)
        gone = data is None or holder in ("", lease.name)
        if not gone:
            lease_data, lease_revision = await t.lease_record(holder)
            theirs = LeaseRecord.read(lease_data)
            now = time.monotonic()
            if theirs is None or seq not in theirs.seqs:
                gone = True  # its processor is gone, or let the command go (its run is over)
            elif seen is None or seen[:2] != (holder, lease_revision):
                seen = (holder, lease_revision, now)
            elif now - seen[2] > theirs.ttl:
                # Not renewed for its TTL: its processor runs no more steps (it checks its
                # lease before each). Re-drive it, as a scheduler would, then take the lock.
                try:
                    handed_back = await t.redrive_lease(holder, lease_revision, theirs.held)
                    log.warning(
                        "lease %s lapsed (run lock of command %d): handed %d commands back",
                        holder,
                        seq,
                        handed_back,
                    )
                    gone = True
                except StateConflict:
                    seen = None  # renewed or deleted meanwhile: look again
        if gone:
            try:
                return await t.put_run_lock(seq, mine, revision)
            except StateConflict:
                continue
        if await finished():
            return 0
        if time.monotonic() - waiting_since > 5:
            waiting_since = time.monotonic()
            log.info("command %d: waiting for its run under lease %s to end", seq, holder)
        await asyncio.sleep(0.25)
    return 0


async def supersede_run(t: Transport, command_seq: int, by: int) -> bool:
    """Mark the run lock of the lost command ``command_seq`` superseded by command ``by`` (a
    rescue); False when a run of it is alive (its lock is held under a lease that lists it),
    or the lock changed meanwhile. Once marked, no delivery of it runs (``lock_run``)."""
    data, revision = await t.run_lock(command_seq)
    if _superseded_by(data) == by:
        return True  # ours, from an earlier delivery of the rescue
    holder = _holder(data)
    if data is not None and holder:
        theirs = LeaseRecord.read((await t.lease_record(holder))[0])
        if theirs is not None and command_seq in theirs.seqs:
            return False  # its run is alive after all
    mark = json.dumps({"lease": "", "superseded_by": by}).encode()
    try:
        await t.put_run_lock(command_seq, mark, revision)
    except StateConflict:
        return False
    return True


async def unlock_run(t: Transport, command_seq: int, revision: int) -> None:
    """Release a run lock (best effort: a later holder reaps it anyway)."""
    try:
        await t.delete_run_lock(command_seq, revision)
    except Exception as e:  # noqa: BLE001 - left behind only until a later holder needs it
        log.debug("could not release run lock %d: %s", command_seq, e)


def _holder(data: bytes | None) -> str:
    """The lease named by a run lock record ("" if none)."""
    try:
        return str(json.loads(data or b"{}").get("lease", ""))
    except (ValueError, AttributeError):
        return ""


def _superseded_by(data: bytes | None) -> int:
    """The rescue command that superseded a lock's command (0 if none)."""
    try:
        return int(json.loads(data or b"{}").get("superseded_by", 0) or 0)
    except (ValueError, AttributeError, TypeError):
        return 0
