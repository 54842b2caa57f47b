"""Encoding of values that cross a durable boundary (arguments, step results, outputs)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from google.protobuf import symbol_database
from google.protobuf.message import DecodeError, Message

from durable_core._pb.durable.v1 import durable_pb2 as pb
from durable_core.errors import InvalidInputError

_SYMBOLS = symbol_database.Default()


def encode(value: Any) -> pb.Payload:
    """Encode a Python value: None, a protobuf message, bytes, or anything JSON can hold."""
    if value is None:
        return pb.Payload()
    if isinstance(value, Message):
        return pb.Payload(
            encoding=pb.ENCODING_PROTOBUF,
            type_name=value.DESCRIPTOR.full_name,
            data=value.SerializeToString(deterministic=True),
        )
    if isinstance(value, bytes | bytearray | memoryview):
        return pb.Payload(encoding=pb.ENCODING_BYTES, data=bytes(value))
    try:
        data = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise InvalidInputError(
            f"cannot store a value of type {type(value).__name__}: use JSON values "
            "(dict, list, str, int, float, bool, None), bytes or a protobuf message"
        ) from e
    return pb.Payload(encoding=pb.ENCODING_JSON, data=data.encode())


def decode(payload: pb.Payload, as_type: type[Message] | None = None) -> Any:
    """Decode a payload back to a Python value.

    Args:
        payload: The stored payload.
        as_type: A protobuf message class to parse into; otherwise the type is looked up by
            name among the imported protobuf modules, and bytes are returned if it is unknown.
    """
    enc = payload.encoding
    if enc == pb.ENCODING_UNSPECIFIED:
        return None
    if enc == pb.ENCODING_JSON:
        return json.loads(payload.data)
    if enc == pb.ENCODING_BYTES:
        return payload.data
    if enc == pb.ENCODING_PROTOBUF:
        cls = as_type or _message_class(payload.type_name)
        if cls is None:
            return payload.data
        msg = cls()
        try:
            msg.ParseFromString(payload.data)
        except DecodeError as e:
            raise InvalidInputError(f"stored {payload.type_name} does not parse: {e}") from e
        return msg
    raise InvalidInputError(f"unknown payload encoding {enc}")


def _message_class(type_name: str) -> type[Message] | None:
    try:
        return _SYMBOLS.GetSymbol(type_name)
    except KeyError:
        return None


def to_json_compatible(payload: pb.Payload) -> Any:
    """Render a payload for humans (CLI, inspector): JSON as is, protobuf as its JSON form."""
    from google.protobuf import json_format

    value = decode(payload)
    if isinstance(value, Message):
        return json_format.MessageToDict(value, preserving_proto_field_name=True)
    if isinstance(value, bytes):
        return {"$bytes": value.hex()} if payload.encoding == pb.ENCODING_BYTES else value.hex()
    return value


def input_hash(data: bytes) -> bytes:
    """A short digest of a step's input, recorded to detect non-determinism."""
    return hashlib.sha256(data).digest()[:8]


def parse_json_args(text: str) -> Any:
    """Parse JSON arguments given on a command line, with a clear error."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InvalidInputError(
            f"--args is not valid JSON ({e.msg} at line {e.lineno} column {e.colno}): {text!r}"
        ) from e
