"""Encoding of values that cross a durable boundary (arguments, step results, outputs)."""

from __future__ import annotations

import collections.abc
import dataclasses
import hashlib
import json
import types
import typing
from collections.abc import Callable
from typing import Any

from google.protobuf import symbol_database
from google.protobuf.message import DecodeError, Message

from durable_core._pb.durable.v1 import durable_pb2 as pb
from durable_core.errors import InvalidInputError, PayloadUnavailableError

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
        data = json.dumps(
            value, separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=_jsonable
        )
    except InvalidInputError:
        raise
    except RecursionError as e:
        raise InvalidInputError("cannot store a value nested this deeply") from e
    except (TypeError, ValueError) as e:
        raise InvalidInputError(
            f"cannot store a value of type {type(value).__name__} ({_excerpt(str(e))}): use "
            "JSON values (dict, list, str, int, float, bool, None), bytes or a protobuf message"
        ) from e
    try:
        raw = data.encode()
    except UnicodeEncodeError as e:
        raise InvalidInputError(
            "cannot store a value holding text that is not valid Unicode "
            f"(lone surrogate {data[e.start]!r})"
        ) from e
    return pb.Payload(encoding=pb.ENCODING_JSON, data=raw)


def decode(payload: pb.Payload, as_type: type[Message] | None = None) -> Any:
    """Decode a payload back to a Python value.

    Args:
        payload: The stored payload.
        as_type: A protobuf message class to parse into; otherwise the type is looked up by
            name among the imported protobuf modules, and bytes are returned if it is unknown.
    """
    enc = payload.encoding
    if payload.HasField("ref") and not payload.data and payload.ref.size:
        # A reference must be read from the payload store first (durable_core._payloads):
        # never decode its empty data as a value.
        raise PayloadUnavailableError(payload.ref.object, "a reference, not read from the store")
    if enc == pb.ENCODING_UNSPECIFIED:
        return None
    if enc == pb.ENCODING_JSON:
        return _loads_stored(payload.data)
    if enc == pb.ENCODING_BYTES:
        return payload.data
    if enc == pb.ENCODING_PROTOBUF:
        if (
            as_type is not None
            and payload.type_name
            and payload.type_name != as_type.DESCRIPTOR.full_name
        ):
            # Never the bytes of one message read as another (a Duration as a Timestamp).
            raise InvalidInputError(
                f"expected a {as_type.DESCRIPTOR.full_name}, got a {payload.type_name}"
            )
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


def loads_stored(data: bytes | bytearray) -> Any:
    """A stored JSON value (see ``_loads_stored``)."""
    return _loads_stored(data)


def _loads_stored(data: bytes | bytearray) -> Any:
    """A stored JSON payload, or InvalidInputError if it is not valid JSON (this engine never
    writes such a payload, but a raw command or a foreign journal entry may carry one)."""
    try:
        return json.loads(data)
    except RecursionError as e:
        raise InvalidInputError("stored JSON payload is nested too deeply to decode") from e
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, too many integer digits
        raise InvalidInputError(f"stored JSON payload does not parse: {_excerpt(str(e))}") from e


def _excerpt(text: str, limit: int = 200) -> str:
    """At most ``limit`` characters of ``text`` (for error messages)."""
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


def to_jsonable(value: Any) -> Any:
    """``value`` as plain JSON values, at any depth: dataclasses and pydantic models as
    objects, tuples and sets as arrays (a set's items in order, when they have one);
    anything else unchanged (and refused when it is stored). InvalidInputError for a value
    that holds itself or nests deeper than Python's recursion allows (``encode`` refuses
    those alike): a bare RecursionError reached the caller, and the CLI printed a trace."""
    try:
        return _plain(value)
    except RecursionError as e:
        raise InvalidInputError(
            "cannot store a value that holds itself or nests this deeply"
        ) from e


def _plain(value: Any) -> Any:
    # Loops, not comprehensions: a comprehension is a frame of its own, which halved the
    # depth taken here against what ``encode`` (json.dumps) stores.
    if isinstance(value, dict):
        obj = {}
        for k, v in value.items():
            obj[k] = _plain(v)
        return obj
    if isinstance(value, list | tuple):
        items = []
        for v in value:
            items.append(_plain(v))
        return items
    converted = _jsonable(value, strict=False)
    return value if converted is value else _plain(converted)


def _jsonable(value: Any, *, strict: bool = True) -> Any:
    """What JSON stores for a value it does not take as it is (``json.dumps``'s ``default``,
    called for such values at any depth): a dataclass's fields, a pydantic model's dump, a
    set's items (sorted when they can be: a step's input hash must not depend on the
    order a set iterates in). Anything else: TypeError when ``strict``, else itself."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        try:
            return dataclasses.asdict(value)
        except RecursionError as e:  # it holds itself, or nests too deeply
            raise InvalidInputError(
                f"cannot store a {type(value).__name__} nested this deeply (does it hold itself?)"
            ) from e
    dump = getattr(value, "model_dump", None)
    if callable(dump) and not isinstance(value, type):
        return dump(mode="json")
    if isinstance(value, set | frozenset):
        try:
            return sorted(value)
        except TypeError:
            return list(value)
    if strict:
        raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")
    return value


def decode_as(payload: pb.Payload, as_type: Any) -> Any:
    """Decode a payload and convert it to ``as_type`` (None or Any: as stored).

    ``as_type`` may be a protobuf message class, a dataclass, a pydantic model, or a plain
    JSON type (dict, list, str, int, float, bool); a mismatch is an InvalidInputError.
    """
    if isinstance(as_type, type) and issubclass(as_type, Message):
        value = decode(payload, as_type)
        if not isinstance(value, as_type):
            raise InvalidInputError(f"expected a {as_type.__name__}, got {_describe(payload)}")
        return value
    return convert(decode(payload), as_type)


def convert(value: Any, as_type: Any) -> Any:
    """Convert a decoded JSON value to ``as_type`` (see decode_as)."""
    if as_type is None or as_type is Any or isinstance(as_type, str):
        return value
    origin = typing.get_origin(as_type)
    if origin is typing.Union or origin is types.UnionType:
        errors = []
        for option in typing.get_args(as_type):
            if option is type(None):
                if value is None:
                    return None
                errors.append(f"expected null, got {type(value).__name__}")
                continue  # `X | None` takes an X or null, never anything else
            try:
                return convert(value, option)
            except InvalidInputError as e:
                errors.append(str(e))
        raise InvalidInputError("; ".join(errors))
    base = origin or as_type
    if isinstance(base, type) and issubclass(base, Message):
        # A message is stored as itself; anything else (a dict, another message) would be
        # stored as something the workflow cannot read as this message.
        if not isinstance(value, base):
            got = value.DESCRIPTOR.full_name if isinstance(value, Message) else type(value).__name__
            raise InvalidInputError(f"expected a {base.DESCRIPTOR.full_name}, got {got}")
        return value
    if dataclasses.is_dataclass(base) and isinstance(base, type):
        if isinstance(value, base):
            return value  # built already (an item of a container handed over as it is)
        if not isinstance(value, dict):
            raise InvalidInputError(f"expected an object for {base.__name__}, got {value!r:.80}")
        hints = typing.get_type_hints(base)
        names = {f.name for f in dataclasses.fields(base)}
        unknown = set(value) - names
        if unknown:
            raise InvalidInputError(f"{base.__name__} has no field(s) {', '.join(sorted(unknown))}")
        try:
            return base(**{k: convert(v, hints.get(k)) for k, v in value.items()})
        except (TypeError, ValueError) as e:  # ValueError: e.g. from its __post_init__
            raise InvalidInputError(f"cannot build {base.__name__}: {_excerpt(str(e))}") from e
    if origin in (list, tuple, set, frozenset, dict) or _ABC.get(origin) is not None:
        return _convert_items(value, as_type, _ABC.get(origin, origin))
    validate = getattr(base, "model_validate", None)
    if callable(validate):
        try:
            return validate(value)
        except Exception as e:  # pydantic.ValidationError, without importing pydantic
            raise InvalidInputError(f"invalid {base.__name__}: {e}") from e
    if base in (dict, list, str, bool):
        if not isinstance(value, base):
            raise InvalidInputError(f"expected {base.__name__}, got {type(value).__name__}")
        return value
    if base is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidInputError(f"expected int, got {type(value).__name__}")
        return value
    if base is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidInputError(f"expected float, got {type(value).__name__}")
        try:
            return float(value)
        except OverflowError as e:  # an int beyond float range (JSON allows 10**400)
            raise InvalidInputError("expected float, got an integer beyond float range") from e
    return value


# Abstract containers a hint may name, as the concrete type a value is built as.
_ABC: dict[Any, type] = {
    collections.abc.Sequence: list,
    collections.abc.MutableSequence: list,
    collections.abc.Set: frozenset,
    collections.abc.MutableSet: set,
    collections.abc.Mapping: dict,
    collections.abc.MutableMapping: dict,
}


def _convert_items(value: Any, as_type: Any, kind: Any) -> Any:
    """A JSON array or object converted item by item to a parametrised container type
    (``list[Order]``, ``dict[str, Item]``, ``tuple[int, str]``): each item as its hint says,
    which a one-level check handed over as plain dicts, or let through unchecked."""
    args = typing.get_args(as_type)
    if kind is dict:
        if not isinstance(value, dict):
            raise InvalidInputError(f"expected an object, got {type(value).__name__}")
        # The keys as they are (JSON's are strings); each value as the hint says.
        item_type = args[1] if len(args) == 2 else None
        return {k: _item(v, item_type, repr(k)) for k, v in value.items()}
    if not isinstance(value, list | tuple):
        raise InvalidInputError(f"expected an array, got {type(value).__name__}")
    if kind is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_item(v, args[0], str(i)) for i, v in enumerate(value))
        if not args:
            return tuple(value)
        if len(args) != len(value):
            raise InvalidInputError(f"expected {len(args)} items, got {len(value)}")
        return tuple(_item(v, h, str(i)) for i, (v, h) in enumerate(zip(value, args, strict=True)))
    item_type = args[0] if args else None
    items = [_item(v, item_type, str(i)) for i, v in enumerate(value)]
    if kind is list:
        return items
    try:
        return kind(items)
    except TypeError as e:  # an item that is not hashable (a dict in a set)
        raise InvalidInputError(f"cannot build a {kind.__name__}: {e}") from e


def _item(value: Any, as_type: Any, where: str) -> Any:
    try:
        return convert(value, as_type)
    except InvalidInputError as e:
        raise InvalidInputError(f"item {where}: {e}") from e


def describe(payload: pb.Payload) -> str:
    """What a payload holds, in a word (for error messages)."""
    return _describe(payload)


def _describe(payload: pb.Payload) -> str:
    if payload.encoding == pb.ENCODING_PROTOBUF:
        return payload.type_name
    return pb.Encoding.Name(payload.encoding).removeprefix("ENCODING_").lower()


def _message_class(type_name: str) -> type[Message] | None:
    try:
        return _SYMBOLS.GetSymbol(type_name)
    except KeyError:
        return None


def to_json_compatible(
    payload: pb.Payload, resolve: Callable[[str], type[Message] | None] | None = None
) -> Any:
    """Render a payload for humans (CLI, inspector): JSON as is, protobuf as its JSON form.

    Args:
        resolve: finds the message class of a type not imported here (built from the type
            registry's descriptors); without one such a message shows as hex.
    """
    from google.protobuf import json_format

    if payload.HasField("ref"):
        return describe_ref(payload.ref)
    as_type = None
    if payload.encoding == pb.ENCODING_PROTOBUF and resolve is not None:
        as_type = _message_class(payload.type_name) or resolve(payload.type_name)
    value = decode(payload, as_type)
    if isinstance(value, Message):
        try:
            return json_format.MessageToDict(value, preserving_proto_field_name=True)
        except (json_format.Error, TypeError, ValueError, RecursionError) as e:
            # e.g. a google.protobuf.Any holding a type this process does not know
            raise InvalidInputError(
                f"stored {payload.type_name} cannot be shown as JSON: {_excerpt(str(e))}"
            ) from e
    if isinstance(value, bytes):
        return {"$bytes": value.hex()} if payload.encoding == pb.ENCODING_BYTES else value.hex()
    return value


def describe_ref(ref: pb.PayloadRef) -> str:
    """``<object 48.2 MB sha256:0123abcd…>`` (for humans: CLI, inspector)."""
    size = float(ref.size)
    unit = "B"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            break
        size /= 1000
    amount = f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
    return f"<object {amount} sha256:{ref.sha256.hex()[:12]}…>"


def input_hash(data: bytes) -> bytes:
    """A short digest of a step's input, recorded to detect non-determinism."""
    return hashlib.sha256(data).digest()[:8]


def parse_json_args(text: str, flag: str = "--args") -> Any:
    """Parse JSON given on a command line (``flag`` names it in the error), with a clear error.

    Raises:
        InvalidInputError: the text is not valid JSON, nests too deeply, or holds an integer
            with more digits than Python converts; the message quotes at most ~200 characters.
    """
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        where = f"{e.msg} at line {e.lineno} column {e.colno}"
        raise InvalidInputError(f"{flag} is not valid JSON ({where}): {_quote(text)}") from e
    except RecursionError as e:
        raise InvalidInputError(f"{flag} is not valid JSON (nested too deeply)") from e
    except ValueError as e:  # an integer of more than sys.get_int_max_str_digits() digits
        raise InvalidInputError(f"{flag} is not valid JSON ({_excerpt(str(e))})") from e


def _quote(text: str, limit: int = 200) -> str:
    """``repr(text)``, cut to about ``limit`` characters."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"
