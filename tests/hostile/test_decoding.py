"""Hostile input to the pure decoding layers (no NATS): protobuf wire messages, payloads, names
and keys, the replay machine, and the processor's command intake (``Worker._handle``).

Each property says what the engine promises about input it did not write itself: it is either
taken as a value or refused with the engine's own error (DecodeError from protobuf,
InvalidInputError from durable_core), never with anything else. Bugs are pinned with strict
xfails whose reason names the function and the input that breaks it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import re
import string
from typing import Any

import pytest
from google.protobuf.message import DecodeError, Message
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from durable_core import (
    InvalidInputError,
    NonDeterminismError,
    WorkerConfig,
    WorkflowRegistry,
    _codec,
)
from durable_core._journal import STEP_KINDS, Execute, Replay, ReplayMachine
from durable_core._naming import (
    MAX_PARTITION_KEY_BYTES,
    Names,
    check_invocation_id,
    check_workflow_name,
    decode_partition_key,
    encode_partition_key,
)
from durable_core._pb.durable.v1 import durable_pb2 as pb
from durable_core.engine import Worker

TOKEN = re.compile(r"[A-Za-z0-9_-]+")
KV_KEY = re.compile(r"[-/_=.a-zA-Z0-9]+")
SUBJECT_SPECIALS = set(". *>\t\r\n\x00")
INT32 = st.integers(-(2**31), 2**31 - 1)
INT64 = st.integers(-(2**63), 2**63 - 1)
UINT64 = st.integers(0, 2**64 - 1)

FAST = settings(max_examples=300, deadline=None)

# Characters NATS treats specially in subjects, and Unicode that trips naive code: NUL, the
# byte-order mark, a right-to-left override, a combining mark, an astral emoji, non-ASCII
# digits and spaces.
NASTY = "\x00.*> \t\r\n\ufeff\u202e\u0301\U0001f600\u0663\u00a0\u2028/\\$%"
nasty_text = st.text(st.sampled_from(NASTY) | st.characters(), max_size=40)
lone_surrogates = st.characters(categories=["Cs"])


# -- protobuf wire messages --------------------------------------------------------------------


WIRE_TYPES = [pb.Command, pb.JournalEntry, pb.ExecutionState, pb.Payload, pb.Failure]


def payloads(max_data: int = 64) -> st.SearchStrategy[pb.Payload]:
    return st.builds(
        pb.Payload,
        encoding=st.integers(0, 5),
        type_name=st.sampled_from(["", "durable.v1.Command", "no.such.Type"]) | st.text(),
        data=st.binary(max_size=max_data),
    )


def commands() -> st.SearchStrategy[pb.Command]:
    return st.builds(
        pb.Command,
        invocation_id=st.text(max_size=140),
        workflow=st.text(max_size=140),
        args=payloads(),
        partition_key=st.text(max_size=64),
        kind=st.integers(0, 5),
        created_at_ms=INT64,
        parent_id=st.text(max_size=20),
        metadata=st.dictionaries(st.text(max_size=10), st.text(max_size=10), max_size=3),
        min_journal_seq=UINT64,
    )


def journal_entries() -> st.SearchStrategy[pb.JournalEntry]:
    kinds = st.sampled_from(list(pb.EntryKind.values())) | INT32
    return st.builds(
        pb.JournalEntry,
        index=INT32,
        kind=kinds,
        step=st.one_of(st.integers(-2, 8), INT32),
        name=st.sampled_from(["a", "b", "/svc/M", ""]) | st.text(max_size=20),
        input_hash=st.binary(max_size=12),
        output=payloads(),
        failure=st.builds(pb.Failure, type=st.text(max_size=10), message=st.text(max_size=20)),
        timestamp_ms=INT64,
        writer=st.text(max_size=10),
        attempts=INT32,
        duration_us=INT64,
        wake_at_ms=INT64,
        detached=st.booleans(),
        command_seq=UINT64,
    )


def valid_messages() -> st.SearchStrategy[Message]:
    return st.one_of(commands(), journal_entries(), payloads(max_data=256))


def _parse(cls: type[Message], data: bytes) -> Message | None:
    """Parse, or None on DecodeError; any other exception escapes (that is the bug)."""
    msg = cls()
    try:
        msg.ParseFromString(data)
    except DecodeError:
        return None
    return msg


@FAST
@given(cls=st.sampled_from(WIRE_TYPES), data=st.binary(max_size=2048))
@example(cls=pb.Command, data=b"\x0a\xff\xff\xff\xff\x0f")  # a length far past the end
@example(cls=pb.Command, data=b"\x0a\x02\xc3\x28")  # invalid UTF-8 in a string field
@example(cls=pb.JournalEntry, data=b"\x0b" * 1000)  # unknown groups nested 1000 deep
@example(cls=pb.Command, data=b"\x28\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01")  # 11-byte varint
def test_random_bytes_parse_or_raise_decode_error(cls: type[Message], data: bytes) -> None:
    msg = _parse(cls, data)
    if msg is not None:
        # What parsed re-serializes and parses back to the same message.
        again = _parse(cls, msg.SerializeToString())
        assert again == msg


@FAST
@given(msg=valid_messages(), cut=st.integers(min_value=0), flip=st.integers(0, 255))
def test_truncated_and_bit_flipped_messages_parse_or_raise_decode_error(
    msg: Message, cut: int, flip: int
) -> None:
    data = msg.SerializeToString()
    truncated = data[: cut % (len(data) + 1)]
    _parse(type(msg), truncated)
    if data:
        i = cut % len(data)
        _parse(type(msg), data[:i] + bytes([data[i] ^ flip]) + data[i + 1 :])


def test_huge_fields_round_trip() -> None:
    big = pb.Command(
        invocation_id="x" * 100_000,
        workflow="w" * 1_000_000,
        args=pb.Payload(encoding=pb.ENCODING_BYTES, data=b"\x00" * 2_000_000),
        metadata={str(i): "v" * 100 for i in range(10_000)},
        min_journal_seq=2**64 - 1,
        created_at_ms=-(2**63),
        kind=2**31 - 1,  # an unknown kind survives (proto3 enums are open)
    )
    again = _parse(pb.Command, big.SerializeToString())
    assert again == big and again is not None and again.kind == 2**31 - 1


# -- payloads (_codec) -------------------------------------------------------------------------


def json_values() -> st.SearchStrategy[Any]:
    scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text()
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
        max_leaves=12,
    )


@dataclasses.dataclass
class Point:
    x: int
    y: float = 0.0


@dataclasses.dataclass
class Box:
    point: Point
    tags: list[str]
    note: str | None = None


TARGET_TYPES: list[Any] = [
    None,
    Any,
    "int",  # an unresolved annotation is taken as is
    dict,
    list,
    str,
    int,
    float,
    bool,
    dict[str, Any] | None,
    int | None,
    int | str,
    list[int],
    Point,
    Box,
    Point | None,
]


def _check_converted(value: Any, as_type: Any) -> None:
    if as_type is int:
        assert isinstance(value, int) and not isinstance(value, bool)
    elif as_type is float:
        assert isinstance(value, float)
    elif as_type in (dict, list, str, bool, Point, Box):
        assert isinstance(value, as_type)


@FAST
@given(value=json_values(), as_type=st.sampled_from(TARGET_TYPES))
def test_convert_returns_a_value_of_the_type_or_invalid_input(value: Any, as_type: Any) -> None:
    try:
        out = _codec.convert(value, as_type)
    except InvalidInputError as e:
        assert str(e)
        return
    _check_converted(out, as_type)


@FAST
@given(
    value=st.fixed_dictionaries(
        {"point": st.fixed_dictionaries({"x": json_values()}) | json_values()},
        optional={"tags": json_values(), "note": json_values(), "extra": json_values()},
    )
)
def test_convert_nested_dataclass_fields_hostile(value: Any) -> None:
    try:
        out = _codec.convert(value, Box)
    except InvalidInputError:
        return
    assert isinstance(out, Box) and isinstance(out.point, Point)


@pytest.mark.parametrize("as_type", [float, Point])
def test_convert_int_beyond_float_range_is_invalid_input(as_type: Any) -> None:
    value: Any = 10**400 if as_type is float else {"x": 1, "y": 10**400}
    with pytest.raises(InvalidInputError):
        _codec.convert(value, as_type)


@FAST
@given(
    payload=st.builds(
        pb.Payload,
        encoding=st.sampled_from([0, 2, 3, 4, 7, -1, 2**31 - 1]),
        type_name=st.sampled_from(
            [
                "",
                "durable.v1.Command",
                "durable.v1.JournalEntry",
                "durable.v1.Encoding",  # an enum, not a message
                "durable.v1",
                "no.such.Type",
                "google.protobuf.Any",
            ]
        )
        | st.text(max_size=30),
        data=st.binary(max_size=512),
    ),
    as_type=st.sampled_from([None, pb.Command, pb.Payload, *TARGET_TYPES]),
)
def test_decode_non_json_payloads_value_or_invalid_input(payload: pb.Payload, as_type: Any) -> None:
    try:
        _codec.decode(payload)
        _codec.decode_as(payload, as_type)
        _codec.to_json_compatible(payload)
    except InvalidInputError as e:
        assert str(e)


def json_payloads() -> st.SearchStrategy[pb.Payload]:
    text = st.one_of(
        json_values().map(json.dumps).map(str.encode),
        st.binary(max_size=64),
        st.text(max_size=64).map(str.encode),
        json_values().map(json.dumps).map(str.encode).map(lambda b: b[: len(b) // 2]),
    )
    return st.builds(pb.Payload, encoding=st.just(pb.ENCODING_JSON), data=text)


CORRUPT_JSON = {
    "invalid UTF-8": b"\xff",
    "malformed JSON": b"{",
    "an integer of 5000 digits": b"1" * 5000,
    "nesting 100000 deep": b"[" * 100_000 + b"]" * 100_000,
}


@FAST
@given(payload=json_payloads(), as_type=st.sampled_from(TARGET_TYPES))
@example(payload=pb.Payload(encoding=pb.ENCODING_JSON, data=b"\xff"), as_type=None)
def test_decode_json_payloads_value_or_invalid_input(payload: pb.Payload, as_type: Any) -> None:
    with contextlib.suppress(InvalidInputError):
        _codec.decode_as(payload, as_type)


@pytest.mark.parametrize("data", list(CORRUPT_JSON.values()), ids=list(CORRUPT_JSON))
def test_corrupt_json_payload_is_invalid_input(data: bytes) -> None:
    with pytest.raises(InvalidInputError):
        _codec.decode(pb.Payload(encoding=pb.ENCODING_JSON, data=data))


@FAST
@given(value=json_values())
def test_encode_json_values_round_trip_or_invalid_input(value: Any) -> None:
    try:
        payload = _codec.encode(value)
    except InvalidInputError:
        return  # NaN and infinities are refused
    assert _codec.decode(payload) == value


@pytest.mark.parametrize(
    "value", [object(), 1j, {"k": object()}, float("nan"), [float("inf")], {(1, 2): 3}]
)
def test_encode_non_json_values_is_invalid_input(value: Any) -> None:
    with pytest.raises(InvalidInputError, match="cannot store a value"):
        _codec.encode(value)


@given(s=lone_surrogates, where=st.sampled_from(["value", "key"]))
@settings(max_examples=20, deadline=None)
def test_encode_lone_surrogate_is_invalid_input(s: str, where: str) -> None:
    value = s if where == "value" else {s: 1}
    with pytest.raises(InvalidInputError):
        _codec.encode(value)


@given(text=st.text(max_size=200) | st.sampled_from(["{", "[", "NaN", '"\\ud800"', ""]))
@FAST
def test_parse_json_args_value_or_invalid_input(text: str) -> None:
    try:
        _codec.parse_json_args(text)
    except InvalidInputError as e:
        assert "--args is not valid JSON" in str(e)


@pytest.mark.parametrize("text", ["[" * 100_000, "1" * 5000], ids=["deep", "digits"])
def test_parse_json_args_resource_limits_are_invalid_input(text: str) -> None:
    with pytest.raises(InvalidInputError):
        _codec.parse_json_args(text)


# -- names and keys (_naming) ------------------------------------------------------------------


def long_text(min_bytes: int) -> st.SearchStrategy[str]:
    return st.builds(
        lambda c, extra: c * (-(-min_bytes // len(c.encode())) + extra),
        st.characters(exclude_categories=["Cs"]),
        st.integers(0, 3),
    )


@FAST
@given(key=nasty_text | long_text(MAX_PARTITION_KEY_BYTES - 2) | st.text())
@example(key="")
@example(key="_")
@example(key="a.b.*.>")
@example(key="\x00")
@example(key=" ")
@example(key="x" * MAX_PARTITION_KEY_BYTES)
@example(key="x" * (MAX_PARTITION_KEY_BYTES + 1))
@example(key="é" * 513)
def test_partition_key_is_one_round_tripping_token_or_invalid_input(key: str) -> None:
    if any("\ud800" <= c <= "\udfff" for c in key):  # nasty_text can hold lone surrogates
        with pytest.raises(InvalidInputError, match="not valid Unicode"):
            encode_partition_key(key)
        return
    size = len(key.encode())
    try:
        token = encode_partition_key(key)
    except InvalidInputError as e:
        assert size > MAX_PARTITION_KEY_BYTES
        assert str(MAX_PARTITION_KEY_BYTES) in str(e) and str(size) in str(e)
        return
    assert size <= MAX_PARTITION_KEY_BYTES
    assert TOKEN.fullmatch(token), token
    assert decode_partition_key(token) == key
    subject = Names("durable").command_subject("wf", "", key)
    assert subject.split(".") == ["durable", "cmd", encode_partition_key("wf"), "any", token]


@given(a=st.text(max_size=30), b=st.text(max_size=30))
@FAST
def test_partition_key_encoding_is_injective(a: str, b: str) -> None:
    if a != b:
        assert encode_partition_key(a) != encode_partition_key(b)


@pytest.mark.parametrize("key", [None, 1, b"bytes", ["k"], 1.5])
def test_partition_key_of_another_type_is_invalid_input(key: Any) -> None:
    with pytest.raises(InvalidInputError, match="must be a string"):
        encode_partition_key(key)


@given(prefix=st.text(max_size=5), s=lone_surrogates)
@settings(max_examples=20, deadline=None)
def test_partition_key_with_lone_surrogate_is_invalid_input(prefix: str, s: str) -> None:
    with pytest.raises(InvalidInputError):
        encode_partition_key(prefix + s)


@FAST
@given(
    invocation_id=st.from_regex(r"[A-Za-z0-9_-]{1,128}", fullmatch=True)
    | nasty_text
    | st.text(string.ascii_letters + string.digits + "_-", min_size=129, max_size=200)
    | lone_surrogates
)
@example(invocation_id="")
@example(invocation_id="abc\n")
@example(invocation_id="a.b")
@example(invocation_id="\u0663")  # an Arabic-Indic digit: isdigit(), but not [0-9]
def test_invocation_id_is_a_safe_token_or_invalid_input(invocation_id: str) -> None:
    try:
        got = check_invocation_id(invocation_id)
    except InvalidInputError as e:
        assert "invalid invocation id" in str(e)
        return
    assert got == invocation_id and 1 <= len(got) <= 128
    assert TOKEN.fullmatch(got) and KV_KEY.fullmatch(got)
    assert not SUBJECT_SPECIALS & set(got)
    assert Names("durable").journal_subject(got).split(".") == ["durable", "journal", got]


@FAST
@given(
    name=st.from_regex(r"[A-Za-z_][A-Za-z0-9_.-]{0,127}", fullmatch=True)
    | nasty_text
    | lone_surrogates
)
@example(name="")
@example(name="1abc")
@example(name="a" * 129)
@example(name="wf\n")
def test_workflow_name_is_valid_or_invalid_input(name: str) -> None:
    try:
        got = check_workflow_name(name)
    except InvalidInputError as e:
        assert "invalid workflow name" in str(e)
        return
    assert got == name and 1 <= len(got) <= 128 and got.isascii()
    assert not set(" *>\t\r\n\x00") & set(got)


@pytest.mark.parametrize("value", [None, 7, b"abc", ["abc"], object()])
def test_ids_and_names_of_another_type_are_invalid_input(value: Any) -> None:
    with pytest.raises(InvalidInputError):
        check_invocation_id(value)
    with pytest.raises(InvalidInputError):
        check_workflow_name(value)


# -- the replay machine ------------------------------------------------------------------------


entry_sequences = st.lists(
    journal_entries()
    | st.binary(max_size=64).map(lambda b: _parse(pb.JournalEntry, b) or pb.JournalEntry()),
    max_size=20,
)
asks = st.lists(
    st.tuples(
        st.sampled_from(sorted(STEP_KINDS)),
        st.sampled_from(["a", "b", "/svc/M", ""]),
        st.binary(max_size=8),
    ),
    max_size=12,
)


@FAST
@given(entries=entry_sequences, asks=asks, probe=st.text(max_size=10), index=st.integers(0, 5))
def test_replay_machine_takes_any_journal(
    entries: list[pb.JournalEntry],
    asks: list[tuple[int, str, bytes]],
    probe: str,
    index: int,
) -> None:
    machine = ReplayMachine("inv", entries)
    # Reading any property or lookup never raises, whatever the journal holds.
    _ = (machine.final, machine.recorded_steps, machine.is_replaying, machine.idle)
    _ = (machine.awakeable_result(probe), machine.signal(probe, index), machine.child_result(probe))
    assert machine.steps_taken == 0
    for n, (kind, name, digest) in enumerate(asks, start=1):
        try:
            decision = machine.next_step(kind, name, digest)
        except NonDeterminismError as e:
            assert e.step == n and e.invocation_id == "inv" and str(e)
            continue
        assert decision.step == n
        if isinstance(decision, Replay):
            assert decision.entry.kind == kind and decision.entry.name == name
        else:
            assert isinstance(decision, Execute)
    assert machine.steps_taken == len(asks)


# -- the processor's command intake ------------------------------------------------------------


class _Accepted(Exception):  # noqa: N818 - a test signal
    """The worker got past intake and touched the transport."""


class _TransportTrap:
    """Any use of the transport means the command was accepted for execution."""

    def __getattr__(self, name: str) -> Any:
        raise _Accepted(name)


class _Delivery:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.num_delivered = 1
        self.stream_seq = self.command_seq = 42
        self.settled: list[str] = []

    async def ack(self) -> None:
        self.settled.append("ack")

    async def ack_sync(self) -> None:
        self.settled.append("ack")

    async def nak(self, delay: float | None = None) -> None:
        self.settled.append("nak")

    async def in_progress(self) -> None:
        pass

    async def term(self) -> None:
        self.settled.append("term")


def _handle(data: bytes) -> tuple[list[str], bool]:
    """Run Worker._handle on one delivery: (how it was settled, whether it was accepted)."""
    worker = Worker(_TransportTrap(), WorkflowRegistry(), WorkerConfig())  # type: ignore[arg-type]
    delivery = _Delivery(data)
    try:
        asyncio.run(worker._handle(delivery))  # type: ignore[arg-type]
    except _Accepted:
        return delivery.settled, True
    return delivery.settled, False


def _acceptable(data: bytes) -> bool:
    cmd = _parse(pb.Command, data)
    if cmd is None:
        return False
    try:
        check_invocation_id(cmd.invocation_id)
        if cmd.kind not in (pb.COMMAND_KIND_START, pb.COMMAND_KIND_WAKE):
            return False
        if not cmd.workflow:
            return False  # it cannot be routed (issue 16): malformed
        check_workflow_name(cmd.workflow)
        if cmd.partition_key:
            encode_partition_key(cmd.partition_key)
    except InvalidInputError:
        return False
    return True


garbage_commands = st.one_of(
    st.binary(max_size=256),
    commands().map(lambda c: c.SerializeToString()),
    st.tuples(commands(), st.integers(min_value=0)).map(
        lambda t: t[0].SerializeToString()[: t[1] % (len(t[0].SerializeToString()) + 1)]
    ),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=garbage_commands)
@example(data=b"")
@example(data=b"\xff\xff\xff")
@example(data=pb.Command(invocation_id="a.b", workflow="hello_workflow").SerializeToString())
@example(data=pb.Command(invocation_id="x" * 129).SerializeToString())
@example(data=pb.Command(invocation_id="ok-id", kind=pb.COMMAND_KIND_START).SerializeToString())
@example(
    data=pb.Command(
        invocation_id="ok-id", workflow="hello_workflow", kind=pb.COMMAND_KIND_START
    ).SerializeToString()
)
def test_worker_terminates_malformed_commands_before_touching_nats(data: bytes) -> None:
    settled, accepted = _handle(data)
    if _acceptable(data):
        assert accepted and "term" not in settled
    else:
        assert not accepted and settled == ["term"]
