"""The processor lease: a record in the ``<prefix>_processors`` bucket that says a processor is
alive and lists the commands it holds; renewed with a revision check, deleted by a scheduler
(or a processor waiting on a run lock) that finds it lapsed, which then hands its commands back.

``LeaseRecord`` is the record itself, written here and read by whoever decides on it (the
scheduler's re-drive, run locks): one type, so writer and readers cannot drift apart. Why a
lease makes runs exclusive is argued in ``durable_core.engine._hold``.
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
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from durable_core._transport import Delivery, StateConflict, Transport

__all__ = ["LEASE_LIST_BYTES", "LeaseRecord", "ProcessorLease"]

log = logging.getLogger("durable_core.worker")

LEASE_LIST_BYTES = 400_000  # a lease lists at most this much of held ack subjects


@dataclass(frozen=True, slots=True)
class LeaseRecord:
    """What a processor lease says: whose it is, how long it lasts unrenewed, what it holds.

    Attributes:
        processor: the processor's id.
        ttl: seconds the lease stays alive without a renewal.
        held: the ack subjects of the command deliveries it holds (a re-drive NAKs them).
        seqs: their command numbers (``Delivery.command_seq``; run locks name them).
        pid: the processor's process id.
        host: the host it runs on.
        renewed_at_ms: when it was written, by the processor's clock (for people: nobody
            compares clocks across hosts).
        truncated: it holds more than it lists (``LEASE_LIST_BYTES``): whoever looks for a
            command's holder cannot conclude that nobody holds it.
    """

    processor: str
    ttl: float
    held: tuple[str, ...] = ()
    seqs: tuple[int, ...] = ()
    pid: int = 0
    host: str = ""
    renewed_at_ms: int = 0
    truncated: bool = False

    def to_json(self) -> bytes:
        """The stored record."""
        record = {
            "processor": self.processor,
            "pid": self.pid,
            "host": self.host,
            "ttl_ms": int(self.ttl * 1000),
            "renewed_at_ms": self.renewed_at_ms,
            "held": list(self.held),
            "seqs": list(self.seqs),
        }
        if self.truncated:
            record["truncated"] = True
        return json.dumps(record).encode()

    @classmethod
    def parse(cls, data: bytes) -> LeaseRecord:
        """Read a stored record.

        Raises:
            ValueError: it is not a lease record (or its TTL is not positive).
        """
        try:
            rec = json.loads(data)
            ttl = float(rec["ttl_ms"]) / 1000
            held = tuple(str(r) for r in rec.get("held", []))
            seqs = tuple(int(n) for n in rec.get("seqs", []))
            processor = str(rec.get("processor", ""))
            pid, host = int(rec.get("pid", 0) or 0), str(rec.get("host", ""))
            renewed_at_ms = int(rec.get("renewed_at_ms", 0) or 0)
            truncated = bool(rec.get("truncated", False))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"is not a lease record: {e}") from e
        if ttl <= 0:
            raise ValueError(f"has ttl {ttl}")
        return cls(processor, ttl, held, seqs, pid, host, renewed_at_ms, truncated)

    @classmethod
    def read(cls, data: bytes | None) -> LeaseRecord | None:
        """The record, or None where there is none or it is not a lease."""
        if data is None:
            return None
        try:
            return cls.parse(data)
        except ValueError:
            return None


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

    async def wait_listed(self, command_seq: int, stopping: asyncio.Event) -> bool:
        """Wait until a stored renewal lists command ``command_seq``; False if ``stopping``."""
        while command_seq not in self.listed:
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
        held, seqs, size, truncated = [], [], 0, False
        for d in list(self._held()):
            size += len(d.reply) + 12
            if size > LEASE_LIST_BYTES:
                truncated = True
                break  # the rest waits for ack_wait, like before leases
            held.append(d.reply)
            seqs.append(d.command_seq)
        record = LeaseRecord(
            processor=self.processor_id,
            ttl=self.ttl,
            held=tuple(held),
            seqs=tuple(seqs),
            pid=os.getpid(),
            host=socket.gethostname(),
            renewed_at_ms=int(time.time() * 1000),
            truncated=truncated,
        )
        return record.to_json(), frozenset(seqs)

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
