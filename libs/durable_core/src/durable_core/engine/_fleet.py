"""This processor's place in the fleet registry, and the descriptors of its message types.

Why a bucket of its own and not a field of the lease record (``_lease``): the lease is renewed
up to five times a second while commands come and go and lists every held delivery; the
registry changes only when the process starts, and its readers (intake, ``durable plugins
--fleet``) must see the dead drop out without a scheduler deleting lapsed leases (the
scheduler may not run: ``durable dev`` without it, a test). A record with a per-message TTL of
one lease, renewed every third of it, is gone one lease after the process died, by the server's
own clock; a clean exit deletes it at once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import re
import secrets
import socket
from collections.abc import Iterable
from datetime import UTC, datetime

from durable_core._transport import Transport
from durable_core._types import message_types, publish_types
from durable_core.fleet import ProcessorInfo, ServedWorkflow
from durable_core.plugins import WorkflowRegistry

__all__ = ["FleetMember"]

log = logging.getLogger("durable_core.worker")

DEFAULT_TTL = 15.0  # seconds, when the processor runs without a lease
# The record outlives its TTL by this much on the server: a renewal stalls while the bucket's
# leader fails over (4-8 s measured, more under load), and a record that expired meanwhile made
# intake refuse a workflow a live processor serves ("no live processor serves ...", seen with a
# node frozen under load). A processor that died drops out within TTL + grace.
FAILOVER_GRACE = 20.0


class FleetMember:
    """Registers a processor's workflows under a TTL and keeps the record alive.

    Args:
        ttl: seconds the record outlives the last renewal (the processor's lease).
        services: gRPC service names the workflows call (their message types are published).
        grace: seconds the server keeps the record past ``ttl`` (``FAILOVER_GRACE``).
    """

    def __init__(
        self,
        transport: Transport,
        processor_id: str,
        registry: WorkflowRegistry,
        ttl: float,
        services: Iterable[str] = (),
        *,
        grace: float = FAILOVER_GRACE,
    ) -> None:
        self.t = transport
        self.grace = grace
        self.registry = registry
        self.ttl = ttl or DEFAULT_TTL
        self.services = tuple(services)
        from durable_core import __version__  # the package imports this module

        base = re.sub(r"[^A-Za-z0-9_=-]", "_", processor_id)[:200]
        self.key = f"{base}.{secrets.token_hex(4)}"  # per process start, like the lease's
        self.registered = False
        self._record = ProcessorInfo(
            key=self.key,
            processor=processor_id,
            host=socket.gethostname(),
            pid=os.getpid(),
            core_version=__version__,
            ttl=self.ttl,
            started_at=datetime.now(UTC),
            workflows=tuple(ServedWorkflow.of(wf) for wf in sorted(registry, key=lambda w: w.name)),
        )

    async def _write(self) -> bool:
        record = dataclasses.replace(self._record, renewed_at=datetime.now(UTC))
        try:
            await self.t.register_processor(self.key, record.to_json(), self.ttl + self.grace)
        except Exception as e:  # noqa: BLE001 - the next renewal tries again
            log.warning("could not renew fleet record %s: %s: %s", self.key, type(e).__name__, e)
            return False
        self.registered = True
        return True

    async def join(self, stopping: asyncio.Event) -> None:
        """Publish the message types, then write the first record, retrying until it is stored
        (or ``stopping``): a processor is in the registry before it takes a command."""
        try:
            types = message_types(self.registry, self.services)
            written = await publish_types(self.t, types)
            log.info("type registry: %d message types, %d written", len(types), written)
        except Exception as e:  # noqa: BLE001 - payloads then read as hex elsewhere, no more
            log.warning("could not publish message descriptors: %s: %s", type(e).__name__, e)
        while not stopping.is_set():
            if await self._write():
                return
            await asyncio.sleep(1.0)

    async def keep(self) -> None:
        """Renew every third of the TTL, until cancelled."""
        while True:
            await asyncio.sleep(self.ttl / 3)
            await self._write()

    async def leave(self) -> None:
        """Remove the record (a clean exit)."""
        if self.registered:
            await self.t.unregister_processor(self.key, self.ttl)
