"""Large values (claim check, issue 18) in the JetStream object store bucket
``<prefix>_payloads``.

The bucket is a JetStream object store (stream ``OBJ_<prefix>_payloads``, created with the
engine's replicas), but objects are written and read here, chunk by chunk, with bounded
memory (nats-py's ``ObjectStore.get`` gathers a whole object in memory, or pushes chunks
faster than a slow writer takes them). An object is the chunks on one subject,
``$O.<bucket>.C.<invocation id>.<token>``, each chunk carrying its index; it has no meta
message: its reference (name, size, SHA-256) lives in the journal, state or command that
uses it, and every read checks the bytes against it. Naming objects by invocation id makes an
invocation's objects one subject wildcard: retention purges them with one request, and the
sweep finds which invocation each object belongs to from its subject alone.

Holds: a fork or rerun shares the objects of the invocation it came from (its copied journal
entries and arguments carry the same references), and so does an invocation given another's
``Blob`` (as its arguments, a step's result or its output). It writes a hold,
``$O.<bucket>.M.hold.<source id>.<its id>.<token>`` (one subject per write: a new invocation
that takes an expired one's id never shares a hold subject with it, so the expiry removes
only the old one's); retention of the source leaves the source's objects alone while a hold on
it exists, and retention of the fork removes the fork's holds (those it listed before its
state went). Holds written before the token (no ``<token>``) are read and removed alike.
Objects are then collected by :meth:`Payloads.sweep` once nothing references them.

Expiries under way: retention notes ``$O.<bucket>.M.expiring.<id>`` before it removes an
invocation's state and drops it once the journal and objects are gone, so that one cut short
between the two is found and finished by the next pass (``Transport.finish_expiries``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import nats.js.errors
from nats.js.api import StorageType, StreamConfig

from durable_core._naming import payload_owner
from durable_core._pb.durable.v1 import durable_pb2 as pb
from durable_core._transport.connection import Link
from durable_core._transport.errors import check_created_elsewhere
from durable_core._transport.inbox import DirectGets
from durable_core.errors import (
    NatsUnavailableError,
    PayloadTooLargeError,
    PayloadUnavailableError,
)

__all__ = ["CHUNK_SIZE", "Payloads"]

log = logging.getLogger("durable_core.payloads")

CHUNK_SIZE = 256 * 1024
_READ_BATCH = 8  # chunks per direct get: 2 MB in memory at most
_LAG_TRIES = 50  # a follower answering a direct get may lag a few ms behind the write
_CHUNK = "Durable-Chunk"


class _Reader:
    """Reads a source (bytes or anything with ``read``) in chunks, counting and hashing."""

    def __init__(self, source: Any, limit: int) -> None:
        self._source = source
        self._view = memoryview(source) if isinstance(source, bytes | bytearray) else None
        self._limit = limit
        self.size = 0
        self.digest = hashlib.sha256()

    def read(self, n: int) -> bytes:
        if self._view is not None:
            chunk = bytes(self._view[self.size : self.size + n])
        else:
            chunk = self._source.read(n)
            if isinstance(chunk, str):
                chunk = chunk.encode()
        self.size += len(chunk)
        check_size(self.size, self._limit)
        self.digest.update(chunk)
        return bytes(chunk)


def check_size(size: int, limit: int) -> None:
    """Refuse a value of ``size`` bytes over the max object size ``limit``."""
    if size > limit:
        raise PayloadTooLargeError(
            f"the value is larger than the max object size of {limit} bytes "
            "(EngineConfig.max_object_size / DURABLE_MAX_OBJECT_SIZE)"
        )


class Payloads:
    """The ``<prefix>_payloads`` object store: put and read objects in chunks, purge an
    invocation's objects, sweep unreferenced ones."""

    def __init__(self, link: Link, gets: DirectGets) -> None:
        self._link = link
        self._gets = gets
        self._ready = False
        self.bucket = link.names.payloads_bucket
        self.stream = f"OBJ_{self.bucket}"

    @property
    def threshold(self) -> int:
        """Encodings above this go to the object store: the configured threshold, within the
        inline payload limit (``EngineConfig.max_payload`` and what the server's max_payload
        leaves for a state holding arguments and output; see Commands.payload_limit)."""
        link = self._link
        server = link.nc.max_payload or 2 * link.engine.max_payload + 16 * 1024
        inline = min(link.engine.max_payload, (server - 8 * 1024) // 2)
        return min(link.engine.payload_threshold, inline)

    @property
    def max_size(self) -> int:
        return self._link.engine.max_object_size

    def check_size(self, size: int) -> None:
        """Refuse a value of ``size`` bytes over the max object size (PayloadTooLargeError)."""
        check_size(size, self.max_size)

    def _chunks_subject(self, name: str) -> str:
        return f"$O.{self.bucket}.C.{name}"

    def _owner_subjects(self, invocation_id: str) -> str:
        return f"$O.{self.bucket}.C.{invocation_id}.>"

    def _hold_subject(self, source: str, holder: str) -> str:
        return f"$O.{self.bucket}.M.hold.{source}.{holder}"

    async def _hold_subjects(self, source: str, holder: str) -> list[str]:
        """The subjects of the holds matching ``source`` and ``holder`` (``*`` for any): one
        per write, and an older one without its token."""
        base = self._hold_subject(source, holder)
        return [*await self._subjects(base + ".*"), *await self._subjects(base)]

    def _expiry_subject(self, invocation_id: str) -> str:
        return f"$O.{self.bucket}.M.expiring.{invocation_id}"

    # -- the bucket ------------------------------------------------------------------------

    async def ensure(self) -> None:
        """Create the bucket with the engine's replicas, or bind it (once per process)."""
        if self._ready:
            return
        link = self._link
        js = link.js
        want = StreamConfig(
            name=self.stream,
            description="durable: large values (arguments, step results, outputs) by reference",
            subjects=[f"$O.{self.bucket}.C.>", f"$O.{self.bucket}.M.>"],
            storage=StorageType.FILE,
            num_replicas=link.engine.replicas,
            allow_rollup_hdrs=True,
            allow_direct=True,
            discard=nats.js.api.DiscardPolicy.NEW,
            max_msgs=-1,
            max_bytes=-1,
        )

        async def create() -> None:
            try:
                await js.stream_info(self.stream)
            except nats.js.errors.NotFoundError:
                try:
                    await js.add_stream(want)
                    log.info(
                        "created object store %s (replicas=%d)", self.bucket, want.num_replicas
                    )
                except nats.js.errors.BadRequestError as e:
                    check_created_elsewhere(e, f"object store {self.bucket}")

        await link.retry(f"set up object store {self.bucket}", create)
        self._ready = True

    # -- writing ---------------------------------------------------------------------------

    async def put(self, owner: str, source: Any) -> pb.PayloadRef:
        """Store ``source`` as a new object of invocation ``owner``, chunk by chunk (each
        chunk's publish retried on its own, deduplicated by its message id); its reference.
        Memory: one chunk. A failure part way leaves chunks that nothing references: the
        object is purged here when NATS still answers, else by the sweep."""
        await self.ensure()
        link = self._link
        name = f"{owner}.{secrets.token_hex(8)}"
        subject = self._chunks_subject(name)
        reader = _Reader(source, self.max_size)
        size = min(CHUNK_SIZE, max((link.nc.max_payload or 1024 * 1024) - 8 * 1024, 1024))
        index = 0
        try:
            while True:
                chunk = await _read(reader, size)
                if not chunk and index:
                    break
                headers = {_CHUNK: str(index), "Nats-Msg-Id": f"{name}:{index}"}

                async def pub(chunk: bytes = chunk, headers: dict[str, str] = headers) -> Any:
                    return await link.js.publish(subject, chunk, headers=headers)

                await link.retry(f"store a chunk of payload {name}", pub)
                index += 1
                if not chunk:
                    break
            # An upload that stalled past the sweep's grace may have lost its first chunks to
            # it (nothing referenced the object yet): never hand out a reference to the rest.
            stored = await self._count(subject)
            if stored != index:
                raise PayloadUnavailableError(
                    name,
                    f"{stored} of its {index} chunks are stored (the upload stalled longer "
                    "than the sweep's grace, DURABLE_PAYLOAD_GRACE, and lost its first "
                    "chunks?); store it again",
                )
        except BaseException:
            await self._purge_quietly(subject)
            raise
        return pb.PayloadRef(object=name, size=reader.size, sha256=reader.digest.digest())

    async def _purge_quietly(self, subject: str) -> None:
        try:
            await asyncio.shield(self._link.js.purge_stream(self.stream, subject=subject))
        except Exception as e:  # noqa: BLE001 - the sweep collects what is left
            log.debug("could not purge %s after a failed upload: %s", subject, e)

    # -- reading ---------------------------------------------------------------------------

    async def chunks(self, ref: pb.PayloadRef) -> AsyncIterator[bytes]:
        """The object's bytes in order, ``_READ_BATCH`` chunks per request; checked against
        the reference (PayloadUnavailableError: missing, short, out of order or not the
        recorded bytes)."""
        await self.ensure()
        subject = self._chunks_subject(ref.object)
        digest = hashlib.sha256()
        seq, index, size, lagging = 1, 0, 0, 0
        while True:
            msgs = await self._read_batch(ref.object, subject, seq)
            if not msgs:
                if size >= ref.size and index:
                    break
                if index == 0 and lagging >= _LAG_TRIES:
                    raise PayloadUnavailableError(ref.object, "no such object (deleted?)")
                if lagging >= _LAG_TRIES:
                    raise PayloadUnavailableError(
                        ref.object, f"only {size} of {ref.size} bytes are stored"
                    )
                lagging += 1  # a follower behind the leader, or a missing object
                await asyncio.sleep(0.02)
                continue
            lagging = 0
            for msg in msgs:
                hdrs = msg.headers or {}
                if hdrs.get(_CHUNK) != str(index):
                    raise PayloadUnavailableError(
                        ref.object, f"chunk {hdrs.get(_CHUNK)} where {index} was expected"
                    )
                size += len(msg.data)
                if size > ref.size:
                    raise PayloadUnavailableError(ref.object, f"more than {ref.size} bytes stored")
                digest.update(msg.data)
                index += 1
                if size == ref.size and digest.digest() != ref.sha256:
                    raise PayloadUnavailableError(ref.object, "digest mismatch (corrupt object)")
                if msg.data:
                    yield msg.data
                seq = int(hdrs["Nats-Sequence"]) + 1
            if size == ref.size and digest.digest() == ref.sha256:
                return

    async def _read_batch(self, name: str, subject: str, seq: int) -> list[Any]:
        """The next chunks of object ``name`` from stream sequence ``seq`` on. NATS failing
        the read is never the reader's own error: NatsUnavailableError once transient errors
        outlast the deadline, PayloadUnavailableError for any other refusal."""
        try:
            msgs, _ = await self._link.retry(
                f"read payload {name}",
                lambda: self._gets.batch(self.stream, subject, seq, _READ_BATCH),
            )
        except (NatsUnavailableError, PayloadUnavailableError):
            raise
        except Exception as e:
            raise PayloadUnavailableError(
                name, f"NATS failed its read: {type(e).__name__} {e}"
            ) from e
        return msgs

    # -- lifecycle -------------------------------------------------------------------------

    async def hold(self, source: str, holder: str) -> None:
        """Record that ``holder`` (a fork or rerun) references objects of ``source``."""
        await self.ensure()
        subject = f"{self._hold_subject(source, holder)}.{secrets.token_hex(8)}"
        await self._link.retry(
            f"hold payloads of {source}", lambda: self._link.js.publish(subject, b"")
        )

    async def _stream_info(self, what: str, subjects: str, offset: int = 0) -> dict[str, Any]:
        """The stream's info with its subjects matching ``subjects`` and their message counts
        (from an ``offset`` into their sorted list), from the stream leader: a write
        acknowledged before is always seen."""
        api = f"$JS.API.STREAM.INFO.{self.stream}"
        req = json.dumps({"subjects_filter": subjects, "offset": offset}).encode()

        async def info() -> dict[str, Any]:
            resp: dict[str, Any] = json.loads((await self._link.requests.request(api, req)).data)
            if (error := resp.get("error")) is not None:
                raise nats.js.errors.APIError.from_error(error)
            return resp

        return await self._link.retry(what, info)

    async def _count(self, subject: str) -> int:
        """How many messages ``subject`` has (from the stream leader)."""
        resp = await self._stream_info("count a payload's chunks", subject)
        return int(((resp.get("state") or {}).get("subjects") or {}).get(subject, 0))

    async def _subjects(self, pattern: str) -> list[str]:
        """The subjects of the bucket's stream matching ``pattern`` (from the stream leader,
        so a write acknowledged before is always seen). The server answers at most 100,000
        subjects at a time, sorted, from an offset: every page is read."""
        found = set[str]()
        while True:
            resp = await self._stream_info("list payload subjects", pattern, len(found))
            subjects = (resp.get("state") or {}).get("subjects") or {}
            before = len(found)
            found.update(subjects)
            # Done, or the list moved under the pages (the next pass sees what this one missed).
            if len(found) == before or len(found) >= resp.get("total", 0):
                return sorted(found)

    async def held(self, source: str) -> bool:
        """Whether a fork or rerun holds objects of ``source`` (read from the leader: a hold
        acknowledged before is always seen)."""
        await self.ensure()
        return bool(await self._hold_subjects(source, "*"))

    async def holds(self) -> list[tuple[str, str, int]]:
        """Every hold: ``(owner, holder, age in ms)``."""
        await self.ensure()
        head = f"$O.{self.bucket}.M.hold."
        out = []
        for subject in await self._subjects(head + ">"):
            owner, _, rest = subject.removeprefix(head).partition(".")
            out.append((owner, rest.split(".")[0], await self._age_ms(subject)))
        return out

    async def drop_hold(self, source: str, holder: str) -> None:
        """Remove one hold (the sweep: its holder never came to exist)."""
        for subject in await self._hold_subjects(source, holder):
            await self._purge("drop a payload hold", subject)

    async def holds_of(self, holder: str) -> list[str]:
        """The subjects of the holds ``holder`` has on others' objects (see :meth:`expire`)."""
        await self.ensure()
        return await self._hold_subjects("*", holder)

    async def expire(
        self,
        invocation_id: str,
        names: Iterable[str] | None = None,
        holds: Iterable[str] | None = None,
    ) -> bool:
        """Retention: drop the holds ``invocation_id`` has on others' objects (``holds``, as
        :meth:`holds_of` listed them; all if None), and remove its own objects unless a fork
        or rerun holds them (then the sweep takes them once none does): those of ``names``
        (the others are the sweep's), or every one if None. Returns whether its objects were
        removed."""
        await self.ensure()
        for subject in await self.holds_of(invocation_id) if holds is None else holds:
            await self._purge("drop payload holds", subject)
        if await self.held(invocation_id):
            return False
        if names is None:
            subjects = [self._owner_subjects(invocation_id)]
        else:
            prefix = f"{invocation_id}."
            subjects = [self._chunks_subject(n) for n in sorted(names) if n.startswith(prefix)]
        for subject in subjects:
            await self._purge(f"purge payloads of {invocation_id}", subject)
        return True

    async def begin_expiry(self, invocation_id: str) -> None:
        """Note that retention of ``invocation_id`` has begun (before its state goes), so that
        an expiry cut short is found and finished by a later pass (see :meth:`expiring`)."""
        await self.ensure()
        subject = self._expiry_subject(invocation_id)
        await self._link.retry(
            f"note the expiry of {invocation_id}", lambda: self._link.js.publish(subject, b"")
        )

    async def end_expiry(self, invocation_id: str) -> None:
        """Drop the note of :meth:`begin_expiry`: the expiry is done (or did not happen)."""
        await self.ensure()
        await self._purge(f"end the expiry of {invocation_id}", self._expiry_subject(invocation_id))

    async def expiring(self) -> list[str]:
        """The invocations whose expiry has begun and not ended (read from the leader)."""
        await self.ensure()
        head = f"$O.{self.bucket}.M.expiring."
        return [s.removeprefix(head) for s in await self._subjects(head + "*")]

    async def _purge(self, what: str, subject: str) -> None:
        js = self._link.js

        async def purge() -> None:
            await js.purge_stream(self.stream, subject=subject)

        await self._link.retry(what, purge)

    async def objects(self) -> list[str]:
        """Every object's name (one stream info request, answered by the leader)."""
        await self.ensure()
        prefix = f"$O.{self.bucket}.C."
        return [s.removeprefix(prefix) for s in await self._subjects(prefix + ">")]

    async def _age_ms(self, subject: str) -> int:
        """How long ago the last message of ``subject`` was stored, as the stream's leader has
        it (0 if it has none). The last, not the first: an upload that takes longer than the
        sweep's grace is still young while its chunks keep coming."""
        js = self._link.js

        async def last() -> Any:
            try:
                return await js.get_last_msg(self.stream, subject)
            except nats.js.errors.NotFoundError:
                return None

        msg = await self._link.retry("read a payload's last message", last)
        if msg is None or msg.time is None:
            return 0
        return int((time.time() - msg.time.timestamp()) * 1000)

    async def age_ms(self, name: str) -> int:
        """How long ago object ``name``'s last chunk was stored."""
        return await self._age_ms(self._chunks_subject(name))

    async def sweep(
        self, referenced: Callable[[str], Awaitable[set[str] | None]], grace_ms: int
    ) -> list[str]:
        """Delete the objects older than ``grace_ms`` that nothing references; the names
        deleted. ``referenced(invocation_id)`` is the set of object names the invocation's
        state and journal reference, or None to keep all of its objects (it may still run and
        journal one). Objects are grouped by invocation (their name starts with its id), so
        each invocation is looked at once; those a fork or rerun holds are kept; only the
        unreferenced ones have their age read."""
        by_owner: dict[str, list[str]] = {}
        for name in await self.objects():
            by_owner.setdefault(payload_owner(name), []).append(name)
        deleted = []
        for owner, names in by_owner.items():
            if await self.held(owner):
                continue  # a fork or rerun shares them
            keep = await referenced(owner)
            if keep is None:
                continue
            for name in names:
                if name not in keep and await self.age_ms(name) >= grace_ms:
                    await self._purge(f"delete payload {name}", self._chunks_subject(name))
                    deleted.append(name)
        return deleted


async def _read(reader: _Reader, n: int) -> bytes:
    """A chunk of the source: in a thread when it is a file (its reads may block)."""
    if reader._view is not None:
        return reader.read(n)
    return await asyncio.to_thread(reader.read, n)
