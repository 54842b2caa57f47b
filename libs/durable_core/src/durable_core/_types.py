"""Protobuf descriptors in the type registry, so any payload reads as JSON without its plugin.

Processors collect the message types their workflows use (declared input and output types, the
request and response types of the gRPC services they call, messages their modules import) and
store, per message, the serialized ``FileDescriptorSet`` of its file with every dependency
(dependencies first) under its full name in ``<prefix>_types``. Readers decode a protobuf
payload with the local class when one is imported, else with a class built from the stored
descriptors in a private ``DescriptorPool`` (never the default pool: a stored descriptor must
not clash with, or stand in for, code imported later).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, symbol_database
from google.protobuf.descriptor import Descriptor, FileDescriptor
from google.protobuf.message import DecodeError, Message

from durable_core._grpc import ServiceRef, module_values

if TYPE_CHECKING:
    from durable_core._transport import Transport
    from durable_core.plugins import WorkflowRegistry

__all__ = ["TypeResolver", "descriptor_set", "message_types", "publish_types"]

log = logging.getLogger("durable_core.types")

_RETRY_MISSING = 10.0  # seconds before a type found in no record is looked up again


def message_types(
    registry: WorkflowRegistry, services: Iterable[str] = ()
) -> dict[str, Descriptor]:
    """Every message type the registered workflows are known to use, by full name: declared
    input and output types, the request and response types of the gRPC services they call
    (``ServiceRef`` objects in their modules, and ``services`` by name), messages their modules
    name, and every other message declared in the same ``.proto`` files."""
    found: dict[str, Descriptor] = {}
    files: dict[str, FileDescriptor] = {}

    def add(desc: Descriptor | None) -> None:
        if desc is not None:
            found.setdefault(desc.full_name, desc)
            files.setdefault(desc.file.name, desc.file)

    def add_service(name: str) -> None:
        try:
            svc = descriptor_pool.Default().FindServiceByName(name)
        except KeyError:
            return
        for m in svc.methods:
            add(m.input_type)
            add(m.output_type)

    for wf in registry:
        for hint in (wf.input_type, wf.output_type):
            add(_descriptor_of(hint))
        for value in module_values(wf.fn):
            if isinstance(value, ServiceRef):
                add_service(value.name)
            else:
                add(_descriptor_of(value))
    for name in services:
        add_service(name)
    for f in list(files.values()):
        for desc in _declared(f.message_types_by_name.values()):
            add(desc)
    return found


def _descriptor_of(value: Any) -> Descriptor | None:
    if isinstance(value, type) and issubclass(value, Message) and value is not Message:
        desc = getattr(value, "DESCRIPTOR", None)
        return desc if isinstance(desc, Descriptor) else None
    return None


def _declared(messages: Iterable[Descriptor]) -> Iterable[Descriptor]:
    for m in messages:
        if m.GetOptions().map_entry:
            continue
        yield m
        yield from _declared(m.nested_types)


def descriptor_set(desc: Descriptor) -> bytes:
    """The serialized FileDescriptorSet of ``desc``'s file and its dependencies, dependencies
    first (the order a pool must be given them)."""
    ordered: list[FileDescriptor] = []
    seen: set[str] = set()

    def visit(f: FileDescriptor) -> None:
        if f.name in seen:
            return
        seen.add(f.name)
        for dep in f.dependencies:
            visit(dep)
        ordered.append(f)

    visit(desc.file)
    out = descriptor_pb2.FileDescriptorSet()
    for f in ordered:
        proto = out.file.add()
        f.CopyToProto(proto)
    return out.SerializeToString(deterministic=True)


async def publish_types(t: Transport, types: Mapping[str, Descriptor]) -> int:
    """Store the descriptors of ``types`` (only those absent or changed); how many written."""
    per_file: dict[str, bytes] = {}  # the messages of one file share its descriptor set
    records: dict[str, bytes] = {}
    for name, desc in types.items():
        if desc.file.name not in per_file:
            per_file[desc.file.name] = descriptor_set(desc)
        records[name] = per_file[desc.file.name]
    return await t.put_type_records(records)


class TypeResolver:
    """Message classes by full name: the local one when imported, else one built from the
    type registry's descriptors (``load`` first: lookups are synchronous, for the views)."""

    def __init__(self) -> None:
        self._pool = descriptor_pool.DescriptorPool()
        self._classes: dict[str, type[Message]] = {}
        self._missing: dict[str, float] = {}  # names not stored, when last looked up

    def __call__(self, name: str) -> type[Message] | None:
        local = _local_class(name)
        return local if local is not None else self._classes.get(name)

    async def load(self, t: Transport, names: Iterable[str]) -> None:
        """Fetch the descriptors of every name in ``names`` without a local or loaded class."""
        for name in sorted(set(names)):
            if self(name) is not None or not name:
                continue
            if time.monotonic() - self._missing.get(name, -math.inf) < _RETRY_MISSING:
                continue  # looked up a moment ago: a page refresh does not ask again
            try:
                data = await t.type_record(name)
            except Exception as e:  # noqa: BLE001 - the payload is then shown undecoded
                log.debug("cannot read descriptors of %s: %s", name, e)
                continue
            if data is None:
                self._missing[name] = time.monotonic()
                continue
            try:
                self._classes[name] = self._build(name, data)
            except (DecodeError, KeyError, TypeError, ValueError) as e:
                log.warning("stored descriptors of %s are unusable: %s", name, e)

    def _build(self, name: str, data: bytes) -> type[Message]:
        files = descriptor_pb2.FileDescriptorSet()
        files.ParseFromString(data)
        for f in files.file:
            try:
                self._pool.FindFileByName(f.name)
            except KeyError:
                self._pool.AddSerializedFile(f.SerializeToString())
        return message_factory.GetMessageClass(self._pool.FindMessageTypeByName(name))


def _local_class(name: str) -> type[Message] | None:
    try:
        cls = symbol_database.Default().GetSymbol(name)
    except KeyError:
        return None
    return cls if isinstance(cls, type) else None
