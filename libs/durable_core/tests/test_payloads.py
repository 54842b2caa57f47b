"""Large values by reference (claim check, issue 18): references, the threshold, the max
object size, chunked reads and writes, and a missing or corrupt object, on a real server."""

from __future__ import annotations

import asyncio
import hashlib
import io
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
import pytest_asyncio

from durable_core import (
    Blob,
    EngineConfig,
    PayloadTooLargeError,
    PayloadUnavailableError,
    _codec,
    _payloads,
)
from durable_core._pb.durable.v1 import durable_pb2 as pb
from durable_core._transport import Transport
from durable_core._transport.payloads import CHUNK_SIZE
from durable_core.admin import Engine
from durable_core.config import NatsConfig
from durable_core.errors import ConfigError
from durable_core.testing import NatsServer

MB = 1024 * 1024


@pytest_asyncio.fixture
async def small(server: NatsServer) -> AsyncIterator[Transport]:
    """A transport whose threshold is 1 KiB and max object size 64 KiB."""
    engine = EngineConfig(
        prefix="p" + uuid.uuid4().hex[:8], payload_threshold=1024, max_object_size=64 * 1024
    )
    t = await Transport.connect(NatsConfig.from_url(server.url), engine, create=True)
    try:
        yield t
    finally:
        await t.close()


def test_a_reference_reads_as_size_and_digest() -> None:
    ref = pb.PayloadRef(object="inv.ab", size=48_213_000, sha256=bytes.fromhex("ab" * 32))
    assert _codec.describe_ref(ref) == "<object 48.2 MB sha256:abababababab…>"
    assert _codec.describe_ref(pb.PayloadRef(size=12)).startswith("<object 12 B ")
    shown = _codec.to_json_compatible(pb.Payload(encoding=pb.ENCODING_JSON, ref=ref))
    assert shown == "<object 48.2 MB sha256:abababababab…>"


def test_a_reference_never_decodes_as_a_value() -> None:
    """Decoding a reference's (empty) data would be a silent wrong value: it is an error."""
    ref = pb.PayloadRef(object="inv.ab", size=10, sha256=b"x" * 32)
    with pytest.raises(PayloadUnavailableError, match="inv.ab"):
        _codec.decode(pb.Payload(encoding=pb.ENCODING_JSON, ref=ref))


def test_the_threshold_and_max_object_size_are_checked() -> None:
    assert EngineConfig().payload_threshold == 256 * 1024
    assert EngineConfig().max_object_size == 1024**3
    with pytest.raises(ConfigError, match="payload_threshold"):
        EngineConfig(payload_threshold=10)
    with pytest.raises(ConfigError, match="max_object_size"):
        EngineConfig(payload_threshold=4096, max_object_size=2048)


async def test_values_above_the_threshold_go_by_reference(transport: Transport) -> None:
    store = transport.payloads
    assert store.threshold == 256 * 1024
    small = await _payloads.store_value(store, "x" * 1000, "inv1")
    assert not small.HasField("ref") and small.data
    value = {"text": "y" * (300 * 1024)}
    big = await _payloads.store_value(store, value, "inv1")
    assert big.HasField("ref") and not big.data
    assert big.ref.object.startswith("inv1.")
    encoded = _codec.encode(value).data
    assert big.ref.size == len(encoded)
    assert big.ref.sha256 == hashlib.sha256(encoded).digest()
    assert await _payloads.load_value(store, big) == value
    raw = bytes(range(256)) * 1200  # bytes go straight to the store, and come back as bytes
    stored = await _payloads.store_value(store, raw, "inv1")
    assert stored.encoding == pb.ENCODING_BYTES and stored.ref.size == len(raw)
    assert await _payloads.load_value(store, stored) == raw
    assert _payloads.same_payload(big, await _payloads.store_value(store, value, "inv2"))


async def test_a_file_like_value_is_streamed_and_read_back_as_a_blob(
    transport: Transport,
) -> None:
    store = transport.payloads
    data = bytes(range(256)) * (5 * MB // 256 + 7)  # several chunks and a short last one
    payload = await _payloads.store_value(store, io.BytesIO(data), "inv3")
    assert payload.blob and payload.ref.size == len(data)
    blob = await _payloads.load_value(store, payload)
    assert isinstance(blob, Blob) and blob.sha256 == hashlib.sha256(data).hexdigest()
    sizes = [len(c) async for c in blob.chunks()]
    assert max(sizes) <= CHUNK_SIZE and sum(sizes) == len(data)
    assert await blob.read() == data
    # A Blob passed on is shared, never stored again.
    again = await _payloads.store_value(store, blob, "inv4")
    assert again.ref == payload.ref


async def test_an_empty_blob_round_trips(transport: Transport) -> None:
    payload = await _payloads.store_value(transport.payloads, io.BytesIO(b""), "inv5")
    blob = await _payloads.load_value(transport.payloads, payload)
    assert await blob.read() == b""


async def test_a_value_over_the_max_object_size_is_refused_and_leaves_nothing(
    small: Transport,
) -> None:
    store = small.payloads
    with pytest.raises(PayloadTooLargeError, match="max object size of 65536"):
        await _payloads.store_value(store, io.BytesIO(b"z" * (64 * 1024 + 1)), "inv6")
    with pytest.raises(PayloadTooLargeError):
        await _payloads.store_value(store, b"z" * (100 * 1024), "inv6")
    assert await store.objects() == []
    ok = await _payloads.store_value(store, b"z" * (64 * 1024), "inv6")
    assert ok.ref.size == 64 * 1024


async def test_a_corrupt_object_is_an_error_never_a_wrong_value(small: Transport) -> None:
    store = small.payloads
    payload = await _payloads.store_value(store, b"a" * 5000, "inv7")
    wrong = pb.Payload()
    wrong.CopyFrom(payload)
    wrong.ref.sha256 = hashlib.sha256(b"b" * 5000).digest()
    with pytest.raises(PayloadUnavailableError, match="digest mismatch"):
        await _payloads.load_value(store, wrong)
    short = pb.Payload()
    short.CopyFrom(payload)
    short.ref.size = 6000
    with pytest.raises(PayloadUnavailableError, match="5000 of 6000"):
        await _payloads.load_value(store, short)


async def test_a_missing_object_is_an_error(small: Transport) -> None:
    store = small.payloads
    payload = await _payloads.store_value(store, b"a" * 5000, "inv8")
    assert await store.expire("inv8")
    with pytest.raises(PayloadUnavailableError, match="no such object"):
        await _payloads.load_value(store, payload)


async def test_retention_keeps_what_a_fork_holds_and_the_sweep_collects_the_rest(
    small: Transport,
) -> None:
    store = small.payloads
    kept = await _payloads.store_value(store, b"k" * 5000, "src")
    orphan = await _payloads.store_value(store, b"o" * 5000, "src")
    await store.hold("src", "fork1")
    assert not await store.expire("src")  # held: the objects stay
    assert set(await store.objects()) == {kept.ref.object, orphan.ref.object}

    async def referenced(owner: str) -> set[str]:
        return {kept.ref.object} if owner == "src" else set()

    assert await store.sweep(referenced, grace_ms=0) == []  # still held
    assert await store.expire("fork1")  # the fork's retention drops its hold
    assert await store.sweep(referenced, grace_ms=3_600_000) == []  # too young
    assert await store.sweep(referenced, grace_ms=0) == [orphan.ref.object]
    assert set(await store.objects()) == {kept.ref.object}


async def test_the_sweep_drops_a_hold_whose_holder_never_came_to_exist(
    small: Transport,
) -> None:
    """A fork that failed after writing its hold must not keep its source's objects forever."""
    store = small.payloads
    await _payloads.store_value(store, b"g" * 5000, "gone")  # its invocation: no state
    await store.hold("gone", "never-forked")
    engine = Engine(small)
    assert await engine.sweep_payloads(timedelta(hours=1)) == []  # the hold is too young
    assert await store.held("gone")
    (name,) = await engine.sweep_payloads(timedelta(0))
    assert name.startswith("gone.") and not await store.held("gone")
    assert await store.objects() == []


async def test_every_object_is_listed_past_the_servers_page_of_subjects(
    transport: Transport,
) -> None:
    """The server lists at most 100,000 subjects per stream info answer: the sweep saw only
    the first page, and objects past it were never deleted. Every page is read now."""
    store = transport.payloads
    await store.ensure()
    n = 100_050
    js = transport._link.js
    for start in range(0, n, 5_000):
        acks = [
            await js.publish_async(f"$O.{store.bucket}.C.own{i:06d}", b"", wait_stall=30)
            for i in range(start, min(n, start + 5_000))
        ]
        await asyncio.gather(*acks)
    names = await store.objects()
    assert len(names) == n and names[-1] == f"own{n - 1:06d}"
