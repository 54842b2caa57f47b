"""The fleet registry and the type registry: two KV buckets of records that describe the
processors, not the invocations.

``<prefix>_fleet`` holds one record per live processor, written with a per-message TTL
(``Nats-TTL``): the server itself removes the record of a processor that stops renewing it,
so a reader needs no clock and no janitor to tell the living from the dead.
``<prefix>_types`` holds the serialized protobuf descriptors of the message types the
processors' workflows use, by full message name, so a payload can be read without its plugin.
Both are created by processors; readers bind, and a missing bucket reads as empty.
"""

from __future__ import annotations

import math

import nats.js.errors
from nats.js.kv import KeyValue

from durable_core._transport.connection import Link
from durable_core._transport.provision import Provisioner
from durable_core._transport.records import watch_bucket

__all__ = ["FleetRecords"]


class FleetRecords:
    """The ``<prefix>_fleet`` and ``<prefix>_types`` buckets."""

    def __init__(self, link: Link, provision: Provisioner) -> None:
        self._link = link
        self._provision = provision
        self._fleet: KeyValue | None = None
        self._types: KeyValue | None = None

    async def _bound(self, name: str) -> KeyValue | None:
        js = self._link.js

        async def bind() -> KeyValue | None:
            try:
                return await js.key_value(name)
            except nats.js.errors.BucketNotFoundError:
                return None

        return await self._link.retry(f"bind bucket {name}", bind)

    async def _fleet_bucket(self, *, create: bool) -> KeyValue | None:
        if self._fleet is None:
            n = self._link.names
            if create:
                self._fleet = await self._provision.bucket(
                    n.fleet_bucket,
                    "durable: what each live processor serves (expires with the processor)",
                    msg_ttl=True,
                )
            else:
                self._fleet = await self._bound(n.fleet_bucket)
        return self._fleet

    async def _types_bucket(self, *, create: bool) -> KeyValue | None:
        if self._types is None:
            n = self._link.names
            if create:
                self._types = await self._provision.bucket(
                    n.types_bucket, "durable: protobuf descriptors by full message name"
                )
            else:
                self._types = await self._bound(n.types_bucket)
        return self._types

    # -- the fleet -------------------------------------------------------------------------

    async def register(self, key: str, data: bytes, ttl: float) -> None:
        """Write processor record ``key``; the server removes it ``ttl`` seconds (at least 1)
        after this write unless it is written again. One try: the next renewal retries."""
        await self._fleet_bucket(create=True)
        subject = f"$KV.{self._link.names.fleet_bucket}.{key}"
        await self._link.publish(subject, data, {"Nats-TTL": f"{max(1, math.ceil(ttl))}s"})

    async def unregister(self, key: str, ttl: float) -> None:
        """Remove processor record ``key`` (a clean exit). The purge marker itself goes after
        ``ttl`` seconds: every process start has its own key, so markers kept for good would
        pile up one per start."""
        kv = await self._fleet_bucket(create=True)
        assert kv is not None
        marker_ttl = max(1, math.ceil(ttl))
        await self._link.retry(
            f"delete fleet record {key}", lambda: kv.purge(key, msg_ttl=marker_ttl)
        )

    async def processors(self) -> dict[str, bytes]:
        """Every live processor's record, by key (empty when no processor ever registered)."""
        kv = await self._fleet_bucket(create=False)
        if kv is None:
            self._fleet = None  # look again next time: a processor may create it
            return {}
        return await self._records(kv, "read the fleet registry")

    async def _records(self, kv: KeyValue, what: str) -> dict[str, bytes]:
        """Every live key of ``kv`` with its value, from one snapshot watch
        (:func:`watch_bucket`), not a listing and one get per key."""

        async def read() -> dict[str, bytes]:
            out: dict[str, bytes] = {}
            async for item in watch_bucket(kv, self._link):
                if item is None:
                    return out
                key, value, _ = item
                if value is None:
                    out.pop(key, None)
                else:
                    out[key] = value
            return out

        return await self._link.retry(what, read)

    # -- message types ---------------------------------------------------------------------

    async def type_record(self, name: str) -> bytes | None:
        """The stored descriptors of message type ``name``, or None."""
        kv = await self._types_bucket(create=False)
        if kv is None:
            self._types = None
            return None

        async def get() -> bytes | None:
            try:
                return (await kv.get(name)).value
            except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
                return None

        return await self._link.retry(f"read descriptors of {name}", get)

    async def put_type_records(self, records: dict[str, bytes]) -> int:
        """Store the descriptors of each name in ``records`` unless the same are stored (all
        stored ones read in one batched get); how many were written."""
        kv = await self._types_bucket(create=True)
        assert kv is not None
        stored = await self._records(kv, "read the type registry")
        changed = {name: data for name, data in sorted(records.items()) if stored.get(name) != data}
        for name, data in changed.items():

            async def put(name: str = name, data: bytes = data) -> None:
                await kv.put(name, data)

            await self._link.retry(f"write descriptors of {name}", put)
        return len(changed)
