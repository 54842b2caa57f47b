"""The fleet registry (records, views, intake's cache) and the type registry (descriptors
stored by processors, payloads decoded with them where the message classes are not imported),
on a real single NATS server."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from durable_core import (
    Context,
    NotFoundError,
    UnknownWorkflowError,
    WorkflowRegistry,
    _codec,
    grpc_service,
)
from durable_core._pb.durable.v1 import durable_pb2 as pb
from durable_core._transport import Transport
from durable_core._types import TypeResolver, descriptor_set, message_types, publish_types
from durable_core.client import Client
from durable_core.engine._fleet import FleetMember
from durable_core.fleet import FleetCache, FleetView, ProcessorInfo, ServedWorkflow, read_fleet
from durable_core.testing import assert_eventually_async
from durable_core.views import describe
from durable_examples.hello.v1.hello_pb2 import HelloRequest, HelloResponse
from durable_examples.hello.v1.hello_pb2_grpc import HelloServiceStub

hello = grpc_service(HelloServiceStub)


async def greet(ctx: Context, name: str) -> str:
    reply = await ctx.call(hello.SayHello, HelloRequest(name=name))
    return str(reply.message)


async def typed(ctx: Context, req: HelloRequest) -> HelloResponse:
    return HelloResponse(message=req.name)


def registry(*fns: object) -> WorkflowRegistry:
    r = WorkflowRegistry()
    for fn in fns:
        r.register(fn, plugin="test-plugin")  # type: ignore[arg-type]
    return r


# -- records and views (pure) -------------------------------------------------------------------


def test_a_processor_record_reads_back_as_written() -> None:
    at = datetime(2026, 12, 3, 15, 0, tzinfo=UTC)
    served = tuple(ServedWorkflow.of(wf) for wf in registry(greet, typed))
    p = ProcessorInfo("p1.ab", "p1", "host", 42, "0.1.0", 3.0, at, at, served)
    assert ProcessorInfo.parse("p1.ab", p.to_json()) == p
    assert served[0].name == "greet" and served[0].plugin == "test-plugin"
    assert served[0].token.startswith("v-") and len(served[0].fingerprint) == 64
    with pytest.raises(ValueError, match="not a processor record"):
        ProcessorInfo.parse("x", b"[1, 2]")


def test_the_view_answers_both_ways() -> None:
    wf = ServedWorkflow("w", "plug", "pkg", "1.0", "f" * 64, "v-1")
    other = ServedWorkflow("x", "plug", "pkg", "1.0", "f" * 64, "v-1")
    view = FleetView.of(
        [
            ProcessorInfo("b.1", "b", workflows=(wf,)),
            ProcessorInfo("a.1", "a", workflows=(wf, other)),
        ]
    )
    assert [p.processor for p in view.processors] == ["a", "b"]
    assert view.served() == ["w", "x"] and view.serves("x") and not view.serves("y")
    assert {k: [p.processor for p, _ in v] for k, v in view.by_workflow().items()} == {
        "w": ["a", "b"],
        "x": ["a"],
    }
    doc = view.to_dict()
    assert [p["processor"] for p in doc["processors"]] == ["a", "b"]
    assert doc["workflows"]["x"] == [
        {
            "processor": "a",
            "key": "a.1",
            "host": "",
            "pid": 0,
            "plugin": "plug",
            "package": "pkg",
            "version": "1.0",
            "fingerprint": "f" * 64,
            "token": "v-1",
        }
    ]


def test_unknown_workflow_error_is_a_not_found_error_naming_the_served() -> None:
    e = UnknownWorkflowError("nope", ["a", "b"])
    assert isinstance(e, NotFoundError)
    assert "'nope'" in str(e) and "a, b" in str(e) and "queue_unserved=True" in str(e)
    assert "none (no processor is running)" in str(UnknownWorkflowError("nope", []))


# -- the registry on NATS -------------------------------------------------------------------------


async def test_a_member_registers_renews_expires_and_leaves(transport: Transport) -> None:
    assert (await read_fleet(transport)).processors == ()  # no bucket yet: empty
    member = FleetMember(transport, "proc/1", registry(greet), ttl=2.0, grace=3.0)
    stopping = asyncio.Event()
    await member.join(stopping)
    view = await read_fleet(transport)
    assert [(p.processor, p.key) for p in view.processors] == [("proc/1", member.key)]
    assert member.key.startswith("proc_1.")
    assert view.served() == ["greet"]
    first = view.processors[0].renewed_at

    keep = asyncio.create_task(member.keep())
    try:
        # Renewed (every third of the TTL), so it outlives its TTL.
        await asyncio.sleep(3.0)
        (p,) = (await read_fleet(transport)).processors
        assert p.renewed_at is not None and first is not None and p.renewed_at > first
    finally:
        keep.cancel()

    # Not renewed: the server removes it after the TTL and the grace, by itself.
    async def gone() -> bool:
        return (await read_fleet(transport)).processors == ()

    started = time.monotonic()
    await assert_eventually_async(gone, 20, "the record to expire")
    # The TTL (2 s) and the grace (3 s) from the last renewal (at most 0.7 s before the
    # cancel), and the server's expiry sweep.
    assert 4.0 <= time.monotonic() - started < 12

    await member.join(stopping)
    assert (await read_fleet(transport)).served() == ["greet"]
    await member.leave()
    assert (await read_fleet(transport)).processors == ()


async def test_intake_cache_trusts_a_hit_and_looks_again_before_refusing(
    transport: Transport,
) -> None:
    reads = 0
    real = transport.processor_records

    async def counted() -> dict[str, bytes]:
        nonlocal reads
        reads += 1
        return await real()

    transport.processor_records = counted  # type: ignore[method-assign]
    cache = FleetCache(transport, max_age=60)
    with pytest.raises(UnknownWorkflowError) as err:
        await cache.check("greet")
    assert err.value.served == ()
    assert reads == 2  # the cached read, then a fresh one before refusing

    member = FleetMember(transport, "p", registry(greet, typed), ttl=30)
    await member.join(asyncio.Event())
    await cache.check("greet")  # a miss in the cache is read again: found
    reads_before = reads
    for _ in range(100):
        await cache.check("greet")  # warm: no read at all
    assert reads == reads_before
    with pytest.raises(UnknownWorkflowError) as err:
        await cache.check("other")
    assert err.value.served == ("greet", "typed")
    cache.max_age = 0.0
    await cache.check("typed")
    assert reads > reads_before + 1  # stale: read again
    await member.leave()


async def test_client_refuses_an_unserved_workflow_and_queues_it_on_request(
    transport: Transport,
) -> None:
    client = Client(transport)
    with pytest.raises(UnknownWorkflowError):
        await client.invoke_async("greet", "Ada", id="refused")
    assert await transport.get_state("refused") is None  # nothing stored
    iid = await client.invoke_async("greet", "Ada", id="queued", queue_unserved=True)
    assert iid == "queued" and await transport.get_state("queued") is not None
    member = FleetMember(transport, "p", registry(greet), ttl=30)
    await member.join(asyncio.Event())
    assert await client.invoke_async(greet, "Bob") != ""  # by function too
    assert (await client.fleet()).served() == ["greet"]
    await member.leave()


# -- descriptors ------------------------------------------------------------------------------


def test_message_types_cover_declared_types_called_services_and_their_files() -> None:
    found = message_types(registry(greet, typed))
    assert {
        "durable_examples.hello.v1.HelloRequest",
        "durable_examples.hello.v1.HelloResponse",
    } <= (set(found))
    assert message_types(registry(greet)).keys() == found.keys()  # via the ServiceRef
    assert "durable.v1.Payload" not in found  # only what the workflows use
    by_name = message_types(WorkflowRegistry(), ["durable_examples.hello.v1.HelloService"])
    assert "durable_examples.hello.v1.HelloResponse" in by_name
    assert message_types(WorkflowRegistry(), ["no.such.Service"]) == {}


def test_a_descriptor_set_builds_the_message_in_a_fresh_pool() -> None:
    data = descriptor_set(pb.ExecutionState.DESCRIPTOR)  # depends on another file? itself
    files = descriptor_pb2.FileDescriptorSet.FromString(data)
    assert files.file[-1].name == pb.DESCRIPTOR.name  # dependencies first, the file last
    pool = descriptor_pool.DescriptorPool()
    for f in files.file:
        pool.AddSerializedFile(f.SerializeToString())
    cls = message_factory.GetMessageClass(pool.FindMessageTypeByName("durable.v1.ExecutionState"))
    msg = cls.FromString(pb.ExecutionState(invocation_id="x", workflow="w").SerializeToString())
    assert msg.invocation_id == "x" and cls is not pb.ExecutionState


async def test_types_are_written_once_and_decode_where_the_class_is_unknown(
    transport: Transport,
) -> None:
    types = message_types(registry(greet))
    assert await publish_types(transport, types) == len(types)
    assert await publish_types(transport, types) == 0  # unchanged: nothing written

    # A payload of a type this process cannot import (renamed here by hand), stored in the
    # registry under that name: the resolver builds it from the stored descriptors.
    fds = descriptor_pb2.FileDescriptorSet()
    proto = fds.file.add()
    proto.name = "elsewhere/v1/thing.proto"
    proto.package = "elsewhere.v1"
    proto.syntax = "proto3"
    msg = proto.message_type.add()
    msg.name = "Thing"
    field = msg.field.add()
    field.name, field.number = "label", 1
    field.type = descriptor_pb2.FieldDescriptorProto.TYPE_STRING
    field.label = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
    await transport.put_type_record("elsewhere.v1.Thing", fds.SerializeToString())

    payload = pb.Payload(
        encoding=pb.ENCODING_PROTOBUF,
        type_name="elsewhere.v1.Thing",
        data=b"\x0a\x03abc",  # field 1, "abc"
    )
    assert _codec.to_json_compatible(payload) == payload.data.hex()  # unknown: hex, as before
    resolver = TypeResolver()
    await resolver.load(transport, ["elsewhere.v1.Thing", "no.such.Type"])
    assert _codec.to_json_compatible(payload, resolver) == {"label": "abc"}
    assert resolver("no.such.Type") is None
    assert resolver("durable_examples.hello.v1.HelloRequest") is HelloRequest  # local wins

    state = pb.ExecutionState(invocation_id="i", workflow="w", args=payload, output=payload)
    entry = pb.JournalEntry(kind=pb.ENTRY_KIND_CALL, step=1, name="/x/Y", output=payload)
    view = describe(state, [entry], types=resolver)
    assert view.args == {"label": "abc"} and view.steps[0].output == {"label": "abc"}
    assert describe(state, [entry]).args == payload.data.hex()
