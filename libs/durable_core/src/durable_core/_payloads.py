"""Large values by reference (claim check): the one place where a value becomes a stored
object and a reference becomes a value again.

A value whose encoding is above ``EngineConfig.payload_threshold`` is written to the object
store bucket ``<prefix>_payloads`` and the command, state or journal entry carries a
``Payload`` with ``ref`` set (object name, size, SHA-256) and no ``data``. A file-like value
(anything with ``read``) or a :class:`Blob` is always stored by reference and streamed in
chunks, and reaches workflow code as a :class:`Blob`, never as one ``bytes`` in memory.

Readers resolve lazily: a reference is only downloaded when its value is handed to code
(a step's recorded result returned to the workflow on replay, the workflow's input, a signal,
``client.result``); the journal, the state, ``durable status`` and the inspector carry and show
references without reading them. A :class:`Blob` is never downloaded until it is read.

No NATS here: the store is a :class:`PayloadStore` (``durable_core._transport.payloads`` is
the engine's; tests may bring their own).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any, Protocol

from google.protobuf.message import Message

from durable_core import _codec
from durable_core._codec import describe_ref
from durable_core._naming import payload_owner
from durable_core._pb.durable.v1 import durable_pb2 as pb
from durable_core.errors import (
    ExpiredError,
    InvalidInputError,
    NotFoundError,
    PayloadUnavailableError,
)

__all__ = [
    "Blob",
    "Invocations",
    "PayloadStore",
    "describe_ref",
    "encoded",
    "is_file_like",
    "owners",
    "referenced",
    "load_value",
    "resolved",
    "same_payload",
    "share",
    "state_or_start",
    "store_value",
]


class PayloadStore(Protocol):
    """Where large values live (the engine's: the ``<prefix>_payloads`` object store)."""

    @property
    def threshold(self) -> int:
        """Encodings larger than this many bytes are stored by reference."""

    async def put(self, owner: str, source: Any) -> pb.PayloadRef:
        """Store the bytes read from ``source`` (bytes or anything with ``read``) in chunks
        as a new object of invocation ``owner``; its reference.

        Raises:
            PayloadTooLargeError: more than the max object size was read.
        """

    def chunks(self, ref: pb.PayloadRef) -> AsyncIterator[bytes]:
        """The object's bytes, chunk by chunk; PayloadUnavailableError (at the end, after the
        last chunk) when they do not match the reference's size and digest, at once when the
        object is missing."""

    async def hold(self, source: str, holder: str) -> None:
        """Record that invocation ``holder`` references objects of invocation ``source``
        (their retention leaves them while it does)."""


class Invocations(Protocol):
    """Where the owner of a shared object is looked up (the engine's transport)."""

    async def get_state(self, invocation_id: str) -> Any:
        """Its state, or None."""

    async def queued_start(self, invocation_id: str) -> Any:
        """Its start, while queued with no state made yet; else None."""

    async def expiry_note(self, invocation_id: str) -> dict[str, Any] | None:
        """How it ended, if it expired."""

    async def read_journal(
        self, invocation_id: str, *, min_entries: int = 0, current: bool = False, of: Any = None
    ) -> Sequence[Any]:
        """Its journal's records (``entry``), at least ``min_entries`` of state ``of``, as far
        as the leader has it now if ``current`` (NotFoundError if ``of`` went meanwhile)."""


class Blob:
    """A stream of bytes stored by the engine (a large file-like argument or step result).

    A step that returns a file-like object (anything with ``read``: an open file, a
    ``BytesIO``), or a client that passes one as arguments, has it uploaded in chunks; the
    workflow gets a ``Blob`` for it (the first time and on every replay), which reads it back
    in chunks. Pass a ``Blob`` on (as a step's result, a child's argument, the workflow's
    output, another invocation's arguments): the stored object is shared, never copied, and
    held for the invocation it is passed to, so the retention of the one that stored it
    leaves it in place while that one needs it.

    Attributes:
        size: the length in bytes.
        sha256: the SHA-256 digest, in hex.
    """

    def __init__(self, ref: pb.PayloadRef, store: PayloadStore | None) -> None:
        self._ref = ref
        self._store = store

    @property
    def ref(self) -> pb.PayloadRef:
        """The stored object's reference."""
        return self._ref

    @property
    def size(self) -> int:
        return int(self._ref.size)

    @property
    def sha256(self) -> str:
        return self._ref.sha256.hex()

    def __repr__(self) -> str:
        return f"Blob({describe_ref(self._ref)})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Blob) and (other.size, other.sha256) == (self.size, self.sha256)

    def __hash__(self) -> int:
        return hash(self._ref.sha256)

    async def chunks(self) -> AsyncIterator[bytes]:
        """The bytes, chunk by chunk (a few hundred KB each); the digest is checked at the
        end (PayloadUnavailableError if the stored bytes are not the recorded ones)."""
        if self._store is None:
            raise PayloadUnavailableError(self._ref.object, "no payload store to read it from")
        async for chunk in self._store.chunks(self._ref):
            yield chunk

    async def read(self) -> bytes:
        """All of it in memory (only for what fits)."""
        out = bytearray()
        async for chunk in self.chunks():
            out += chunk
        return bytes(out)

    async def save(self, path: str | os.PathLike[str]) -> None:
        """Write it to a file, chunk by chunk."""
        f = await asyncio.to_thread(open, path, "wb")
        try:
            async for chunk in self.chunks():
                await asyncio.to_thread(f.write, chunk)
        finally:
            f.close()


def is_file_like(value: Any) -> bool:
    """A value to stream: anything with ``read`` that is not already bytes or text."""
    return callable(getattr(value, "read", None)) and not isinstance(
        value, bytes | bytearray | memoryview | str
    )


async def store_value(
    store: PayloadStore | None, value: Any, owner: str, invocations: Invocations | None = None
) -> pb.Payload:
    """Encode ``value`` for the journal, a state or a command: inline when small, by
    reference when large, streamed when file-like. Without a store (the test replayer) values
    stay inline and file-like ones are read whole. Another invocation's Blob is shared, held
    for ``owner`` (see :func:`share`; ``invocations``: where its owner is confirmed).

    Raises:
        InvalidInputError: the value cannot be encoded.
        PayloadTooLargeError: it is larger than the max object size.
        ExpiredError: it is a Blob of an invocation that has expired (its objects go or went
            with it).
    """
    if isinstance(value, Blob):
        shared = encoded(value)
        await share(store, [shared], owner, invocations)
        return shared
    if is_file_like(value):
        if store is None:
            data = value.read()
            ref = pb.PayloadRef(object="", size=len(data), sha256=hashlib.sha256(data).digest())
            return pb.Payload(encoding=pb.ENCODING_BYTES, data=data, blob=True, ref=ref)
        ref = await store.put(owner, value)
        return pb.Payload(encoding=pb.ENCODING_BYTES, ref=ref, blob=True)
    if store is not None and isinstance(value, bytes | bytearray) and len(value) > store.threshold:
        # Large bytes go straight from the value, without a copy into a Payload first.
        return pb.Payload(encoding=pb.ENCODING_BYTES, ref=await store.put(owner, value))
    return await offload(store, _codec.encode(value), owner)


def unstored(store: PayloadStore | None, value: Any) -> pb.Payload | None:
    """``value`` encoded, when :func:`store_value` would keep it inline and write nothing;
    None when storing it writes (a Blob to share, a file-like value to stream, an encoding
    above the threshold) or there is no store.

    Raises:
        InvalidInputError: the value cannot be encoded.
    """
    if store is None or isinstance(value, Blob) or is_file_like(value):
        return None
    if isinstance(value, bytes | bytearray) and len(value) > store.threshold:
        return None
    payload = _codec.encode(value)
    return payload if len(payload.data) <= store.threshold else None


async def share(
    store: PayloadStore | None,
    payloads: Iterable[pb.Payload],
    holder: str,
    invocations: Invocations | None,
) -> None:
    """Hold, for invocation ``holder``, the objects of other invocations that ``payloads``
    reference, then confirm (``invocations``) that each owner is still there and that the
    objects are its own: its state, journal or queued start references them. An owner's
    retention removes its state before it looks for holds, so an owner found after the hold
    keeps its objects while the hold lasts; one not found may have lost them already
    (ExpiredError), and so may an expired one whose id a new invocation took (found, but
    the objects are not the new one's)."""
    payloads = list(payloads)
    shared = owners(payloads, but=holder)
    if store is None or not shared:
        return
    for owner in sorted(shared):
        await store.hold(owner, holder)
    if invocations is None:
        return
    for owner in sorted(shared):
        names = {p.ref.object for p in payloads if owners([p]) == {owner}}
        if await _owns(invocations, owner, names):
            continue
        error = ExpiredError.from_note(owner, await invocations.expiry_note(owner) or {})
        error.add_note(
            f"a Blob of {owner} was passed to {holder}: its stored bytes are gone, or go, "
            "with the invocation that stored them (a new invocation that took the id since "
            "does not own them); pass the bytes themselves instead"
        )
        raise error


async def _owns(invocations: Invocations, owner: str, names: set[str]) -> bool:
    """Whether invocation ``owner`` is there (its state, or its start queued) and references
    every object of ``names``: found the same way its own readers find them (the state, then
    the journal as far as its leader has it: an output the state does not hold yet)."""
    found = await state_or_start(invocations, owner)
    if found is None:
        return False
    if isinstance(found, pb.Command):  # a queued start: its arguments are all it has
        return names <= referenced(None, [], found.args)
    state = found.state
    missing = names - referenced(state, [])
    if not missing:
        return True
    try:
        records = await invocations.read_journal(
            owner, min_entries=state.journal_length, current=True, of=state
        )
    except NotFoundError:
        return False  # it went meanwhile (expired, or its id taken again)
    return missing <= referenced(None, [r.entry for r in records])


async def state_or_start(invocations: Invocations, invocation_id: str) -> Any:
    """The invocation's state; else its start, if queued (a plain invoke leaves its state to
    the processor that takes the start, however long that takes); else None."""
    found = await invocations.get_state(invocation_id)
    if found is not None:
        return found
    start = await invocations.queued_start(invocation_id)
    if start is not None:
        return start
    # The start may have left the queue between the two reads: the processor that took it
    # created the state before it acked it.
    return await invocations.get_state(invocation_id)


def encoded(value: Any) -> pb.Payload:
    """A value that is not a stream, encoded (a Blob: its reference, shared, never copied).

    Raises:
        InvalidInputError: the value cannot be encoded.
    """
    if isinstance(value, Blob):
        return pb.Payload(encoding=pb.ENCODING_BYTES, ref=value.ref, blob=True)
    return _codec.encode(value)


async def offload(store: PayloadStore | None, payload: pb.Payload, owner: str) -> pb.Payload:
    """``payload``, its data moved to the store when above the threshold."""
    if store is None or payload.HasField("ref") or len(payload.data) <= store.threshold:
        return payload
    ref = await store.put(owner, payload.data)
    return pb.Payload(encoding=payload.encoding, type_name=payload.type_name, ref=ref)


async def resolved(store: PayloadStore | None, payload: pb.Payload) -> pb.Payload:
    """``payload`` with its data, read from the store if it is a reference (checked against
    its size and digest). A blob is returned as is (it is read through a Blob)."""
    if not payload.HasField("ref") or payload.blob or payload.data:
        return payload
    if store is None:
        raise PayloadUnavailableError(payload.ref.object, "no payload store to read it from")
    data = await _read_all(store, payload.ref)
    return pb.Payload(encoding=payload.encoding, type_name=payload.type_name, data=bytes(data))


async def _read_all(store: PayloadStore, ref: pb.PayloadRef) -> bytearray:
    """A stored object's bytes in one buffer of its recorded size (no growing copies)."""
    data = bytearray(ref.size)
    view, at = memoryview(data), 0
    async for chunk in store.chunks(ref):
        view[at : at + len(chunk)] = chunk
        at += len(chunk)
    return data


async def load_value(store: PayloadStore | None, payload: pb.Payload, as_type: Any = None) -> Any:
    """The value ``payload`` holds, as workflow or client code gets it: a Blob for a blob,
    else the decoded value (a reference read from the store first)."""
    if payload.blob:
        return Blob(payload.ref, store if payload.ref.object else _Inline(payload.data))
    if as_type is Blob:  # bytes sent as such: a Blob over them (read from the store if stored)
        if payload.encoding != pb.ENCODING_BYTES:
            raise InvalidInputError(f"expected a Blob (bytes), got {_codec.describe(payload)}")
        if payload.HasField("ref"):
            return Blob(payload.ref, store)
        digest = hashlib.sha256(payload.data).digest()
        ref = pb.PayloadRef(size=len(payload.data), sha256=digest)
        return Blob(ref, _Inline(payload.data))
    if payload.HasField("ref") and not payload.data and store is not None:
        if payload.encoding == pb.ENCODING_BYTES and as_type in (None, bytes, Any):
            return bytes(await _read_all(store, payload.ref))
        typed_message = isinstance(as_type, type) and issubclass(as_type, Message)
        if payload.encoding == pb.ENCODING_JSON and not typed_message:  # no copy first
            return _codec.convert(_codec.loads_stored(await _read_all(store, payload.ref)), as_type)
    return _codec.decode_as(await resolved(store, payload), as_type)


def same_payload(a: pb.Payload, b: pb.Payload) -> bool | None:
    """For references: the same value (same encoding and digest); None if either is inline."""
    if not (a.HasField("ref") and b.HasField("ref")):
        return None
    return (a.encoding, a.type_name, a.blob, a.ref.sha256, a.ref.size) == (
        b.encoding,
        b.type_name,
        b.blob,
        b.ref.sha256,
        b.ref.size,
    )


class _Inline:
    """A store of one inline blob (the test replayer keeps blobs in memory)."""

    threshold = 0

    def __init__(self, data: bytes) -> None:
        self._data = data

    async def put(self, owner: str, source: Any) -> pb.PayloadRef:
        raise NotImplementedError

    async def hold(self, source: str, holder: str) -> None:
        pass

    async def chunks(self, ref: pb.PayloadRef) -> AsyncIterator[bytes]:
        yield self._data


def owners(payloads: Iterable[pb.Payload], but: str = "") -> set[str]:
    """The invocations whose objects ``payloads`` reference (object names start with the
    owner's id), except ``but``."""
    out = {payload_owner(p.ref.object) for p in payloads if p.HasField("ref") and p.ref.object}
    out.discard(but)
    return out


def referenced(
    state: pb.ExecutionState | None, entries: Iterable[pb.JournalEntry], *more: pb.Payload
) -> set[str]:
    """The object names a state and journal (and ``more`` payloads) reference."""
    found = [e.output for e in entries if e.HasField("output")]
    if state is not None:
        found += [state.args, state.output]
    found += more
    return {p.ref.object for p in found if p.HasField("ref") and p.ref.object}
