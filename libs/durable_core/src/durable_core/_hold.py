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
   stream sequence, written with a revision check) before it runs anything. A later holder
   waits until the lock is released, or its owner's lease no longer lists the command (that
   run is over: it listed the command before it took the lock, and drops it only when it
   lets the command go), or the lease is gone (deleted, or provably lapsed: unchanged for its
   TTL, and then re-driven here). So a stale NAK can only take a command from a holder that
   runs it under its lock, and whoever receives it waits for that lock: a run that stopped
   because it lost its hold hands its command back at once. Other NAKs and terminations are
   sent only while the delivery is surely held.
3. *Another command of the same invocation* (a wake-up racing the run, a second start, a
   turn of a partition key, a wake-up or start redelivered after its holder died). Every
   journal entry a run writes carries its command's stream sequence (``command_seq``); a
   fresh start records it in the state as it moves it from PENDING to RUNNING (a revision-
   checked write, so one start wins). A delivery takes a running invocation over only if
   the run is its own command's (case 1 made sure that run's holder stopped); wake-ups never
   start an invocation that has not started (its start does); any command may claim an
   invocation whose last run suspended, with a fenced CLAIM (one claimer wins).

The processor lease: created (and confirmed) before the first command is pulled, renewed with
a revision check every ``lease_ttl / 3``. The scheduler deletes a lease it saw unchanged for
its TTL (a revision-checked delete), so a processor whose renewal was stored at time t cannot
have its commands re-driven before t + TTL; if its lease was deleted, its next renewal fails
and it runs no more steps under it (it carries on under a new lease).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import re
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Iterable

from durable_core._transport import Delivery, StateConflict, Transport

__all__ = ["LEASE_LIST_BYTES", "ProcessorLease", "lock_run", "unlock_run"]

log = logging.getLogger("durable_core.worker")

LEASE_LIST_BYTES = 400_000  # a lease lists at most this much of held ack subjects


class ProcessorLease:
    """This processor's lease in the ``<prefix>_processors`` bucket, and until when it is
    surely alive (``until``, monotonic).

    Args:
        held: what the processor holds now (listed in every renewal).
    """

    def __init__(
        self,
        transport: Transport,
        processor_id: str,
        ttl: float,
        held: Callable[[], Iterable[Delivery]],
    ) -> None:
        self.t = transport
        self.processor_id = processor_id
        self.ttl = ttl
        self._held = held
        self.changed = asyncio.Event()  # something taken or settled: renew soon
        self.epoch = 0
        self.name = self._new_name()
        self.revision = 0
        self.until = -math.inf
        self.listed: frozenset[int] = frozenset()  # commands the last stored renewal lists
        self._renewed = asyncio.Event()

    def _new_name(self) -> str:
        # One lease per process start (and per lost lease): a restarted processor with the
        # same id is not mistaken for the one that died (whose commands must be re-driven).
        base = re.sub(r"[^A-Za-z0-9_=-]", "_", self.processor_id)[:200]
        return f"{base}.{secrets.token_hex(4)}"

    @property
    def margin(self) -> float:
        """Room kept before ``until`` (clock rates, the time from a check to the step)."""
        return min(self.ttl / 10, 1.0)

    def alive(self, epoch: int) -> bool:
        """Whether lease ``epoch`` is this processor's lease and surely not re-driven yet."""
        return epoch == self.epoch and time.monotonic() + self.margin < self.until

    async def create(self, stopping: asyncio.Event) -> None:
        """Write the first lease, retrying until it is stored (or ``stopping``)."""
        while not stopping.is_set():
            if await self._write():
                return
            await asyncio.sleep(1.0)

    async def keep(self) -> None:
        """Renew every ``ttl / 3`` and soon (at most 5 times a second) after a change."""
        renew_every, min_gap = self.ttl / 3, 0.2
        last = -math.inf
        while True:
            # asyncio.wait, not wait_for: on 3.11 wait_for can swallow our cancellation.
            changed = asyncio.ensure_future(self.changed.wait())
            try:
                await asyncio.wait(
                    {changed}, timeout=max(renew_every - (time.monotonic() - last), 0)
                )
            finally:
                changed.cancel()
            gap = min_gap - (time.monotonic() - last)
            if gap > 0:
                await asyncio.sleep(gap)  # coalesce a burst of changes into one write
            self.changed.clear()
            last = time.monotonic()
            await self._write()

    async def wait_listed(self, stream_seq: int, stopping: asyncio.Event) -> bool:
        """Wait until a stored renewal lists command ``stream_seq``; False if ``stopping``."""
        while stream_seq not in self.listed:
            if stopping.is_set():
                return False
            self.changed.set()
            self._renewed.clear()
            renewed = asyncio.ensure_future(self._renewed.wait())
            try:
                await asyncio.wait({renewed}, timeout=1.0)
            finally:
                renewed.cancel()
        return True

    def _record(self) -> tuple[bytes, frozenset[int]]:
        held, seqs, size = [], [], 0
        for d in list(self._held()):
            size += len(d.reply) + 12
            if size > LEASE_LIST_BYTES:
                break  # the rest waits for ack_wait, like before leases
            held.append(d.reply)
            seqs.append(d.stream_seq)
        record = {
            "processor": self.processor_id,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "ttl_ms": int(self.ttl * 1000),
            "renewed_at_ms": int(time.time() * 1000),
            "held": held,
            "seqs": seqs,  # the commands' stream sequences (run locks name them)
        }
        return json.dumps(record).encode(), frozenset(seqs)

    async def _write(self) -> bool:
        """One create or revision-checked renewal; True when it was stored."""
        data, seqs = self._record()
        sent = time.monotonic()
        try:
            if self.revision == 0:
                self.revision = await self.t.create_lease(self.name, data)
            else:
                self.revision = await self.t.renew_lease(self.name, data, self.revision)
        except StateConflict:
            await self._conflict()
            return False
        except Exception as e:  # noqa: BLE001 - the next renewal tries again
            log.warning("could not renew lease %s: %s: %s", self.name, type(e).__name__, e)
            return False
        self.until = max(self.until, sent + self.ttl)
        self.listed = seqs
        self._renewed.set()
        return True

    async def _conflict(self) -> None:
        """A renewal found another revision: an earlier write of ours whose answer was lost,
        or the scheduler deleted the lease (it found it lapsed and re-drove its commands)."""
        try:
            data, revision = await self.t.lease_record(self.name)
        except Exception as e:  # noqa: BLE001 - the next renewal looks again
            log.warning("could not read lease %s: %s: %s", self.name, type(e).__name__, e)
            return
        if data is not None:
            self.revision = revision  # ours (nobody else writes it): renew from there
            return
        old = self.name
        self.epoch += 1
        self.name, self.revision, self.until = self._new_name(), 0, -math.inf
        self.listed = frozenset()
        log.warning(
            "lease %s was deleted: it was not renewed for %.0fs and presumed dead, its commands "
            "re-driven; the runs under it stop at their next step, this processor goes on "
            "as %s",
            old,
            self.ttl,
            self.name,
        )
        self.changed.set()

    async def delete(self) -> None:
        """Delete the lease on a clean exit (everything it held was settled or handed back)."""
        if self.revision:
            await self.t.delete_lease(self.name)


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
    NAK), or is about to let it go.
    """
    seq = delivery.stream_seq
    if not await lease.wait_listed(seq, stopping):
        return 0
    mine = json.dumps(
        {"lease": lease.name, "processor": lease.processor_id, "delivery": delivery.num_delivered}
    ).encode()
    seen: tuple[str, int, float] | None = None  # holder's lease, its revision, first seen at
    waiting_since = time.monotonic()
    while not stopping.is_set():
        data, revision = await t.run_lock(seq)
        holder = _holder(data)
        gone = data is None or holder in ("", lease.name)
        if not gone:
            lease_data, lease_revision = await t.lease_record(holder)
            now = time.monotonic()
            if lease_data is None or seq not in _seqs(lease_data):
                gone = True  # its processor is gone, or let the command go (its run is over)
            elif seen is None or seen[:2] != (holder, lease_revision):
                seen = (holder, lease_revision, now)
            elif now - seen[2] > _ttl(lease_data):
                # Not renewed for its TTL: its processor runs no more steps (it checks its
                # lease before each). Re-drive it, as a scheduler would, then take the lock.
                try:
                    handed_back = await t.redrive_lease(holder, lease_revision, _held(lease_data))
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


async def unlock_run(t: Transport, stream_seq: int, revision: int) -> None:
    """Release a run lock (best effort: a later holder reaps it anyway)."""
    try:
        await t.delete_run_lock(stream_seq, revision)
    except Exception as e:  # noqa: BLE001 - left behind only until a later holder needs it
        log.debug("could not release run lock %d: %s", stream_seq, e)


def _holder(data: bytes | None) -> str:
    try:
        return str(json.loads(data or b"{}").get("lease", ""))
    except (ValueError, AttributeError):
        return ""


def _ttl(data: bytes) -> float:
    try:
        return max(float(json.loads(data)["ttl_ms"]) / 1000, 0.0)
    except (ValueError, KeyError, TypeError):
        return 15.0


def _seqs(data: bytes) -> set[int]:
    try:
        return {int(n) for n in json.loads(data).get("seqs", [])}
    except (ValueError, AttributeError, TypeError):
        return set()


def _held(data: bytes) -> list[str]:
    try:
        return [str(r) for r in json.loads(data).get("held", [])]
    except (ValueError, AttributeError, TypeError):
        return []
