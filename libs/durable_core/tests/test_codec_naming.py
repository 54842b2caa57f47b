"""Payload encoding, and the names, ids and keys that become NATS subjects."""

from __future__ import annotations

import math
import re
from typing import Any

import pytest

from durable_core import ConfigError, EngineConfig, InvalidInputError, _codec
from durable_core._naming import (
    MAX_PARTITION_KEY_BYTES,
    Names,
    check_invocation_id,
    check_workflow_name,
    decode_partition_key,
    encode_partition_key,
    shard_of,
)
from durable_core._pb.durable.v1 import durable_pb2 as pb
from durable_examples.hello.v1.hello_pb2 import HelloRequest, HelloResponse

TOKEN = re.compile(r"[A-Za-z0-9_-]+")


# -- codec -------------------------------------------------------------------------------------


def test_none_round_trips_as_an_empty_payload() -> None:
    payload = _codec.encode(None)
    assert payload.encoding == pb.ENCODING_UNSPECIFIED
    assert payload.data == b""
    assert _codec.decode(payload) is None


@pytest.mark.parametrize(
    "value",
    [
        {"name": "Ada", "tags": ["a", "b"], "n": 3, "x": 1.5, "ok": True, "none": None},
        [1, [2, [3]]],
        "héllo wörld ✓",
        "",
        0,
        -(2**70),
        False,
        {},
    ],
)
def test_json_values_round_trip(value: Any) -> None:
    payload = _codec.encode(value)
    assert payload.encoding == pb.ENCODING_JSON
    assert _codec.decode(payload) == value


def test_json_is_compact_and_keeps_unicode() -> None:
    assert _codec.encode({"a": "é", "b": [1, 2]}).data == '{"a":"é","b":[1,2]}'.encode()


@pytest.mark.parametrize("value", [b"\x00\xffraw", bytearray(b"abc"), memoryview(b"xyz"), b""])
def test_bytes_round_trip(value: bytes | bytearray | memoryview) -> None:
    payload = _codec.encode(value)
    assert payload.encoding == pb.ENCODING_BYTES
    decoded = _codec.decode(payload)
    assert type(decoded) is bytes
    assert decoded == bytes(value)


def test_protobuf_round_trips_by_type_name() -> None:
    message = HelloResponse(message="Hello, Ada!")
    payload = _codec.encode(message)
    assert payload.encoding == pb.ENCODING_PROTOBUF
    assert payload.type_name == "durable_examples.hello.v1.HelloResponse"
    decoded = _codec.decode(payload)
    assert isinstance(decoded, HelloResponse)
    assert decoded == message


def test_protobuf_decodes_into_an_explicit_type() -> None:
    payload = _codec.encode(HelloRequest(name="Ada"))
    assert _codec.decode(payload, HelloRequest) == HelloRequest(name="Ada")


def test_protobuf_of_an_unknown_type_decodes_to_its_bytes() -> None:
    payload = pb.Payload(
        encoding=pb.ENCODING_PROTOBUF, type_name="nowhere.Unknown", data=b"\x0a\x01x"
    )
    assert _codec.decode(payload) == b"\x0a\x01x"


def test_corrupt_protobuf_is_invalid_input() -> None:
    payload = pb.Payload(
        encoding=pb.ENCODING_PROTOBUF, type_name=HelloResponse.DESCRIPTOR.full_name, data=b"\xff"
    )
    with pytest.raises(InvalidInputError, match="does not parse"):
        _codec.decode(payload)


@pytest.mark.parametrize("value", [object(), 1j, math.nan, {"k": math.inf}, [1, object()]])
def test_unsupported_values_are_invalid_input(value: Any) -> None:
    with pytest.raises(InvalidInputError, match="cannot store a value") as info:
        _codec.encode(value)
    assert isinstance(info.value, ValueError)  # callers may catch it as a ValueError too


def test_sets_are_stored_as_sorted_arrays() -> None:
    """A ``set[str]`` input is a set in the workflow, which may return it; its order must
    not depend on how the set iterates (a step's input hash is taken over it)."""
    assert _codec.encode({"b", "a", "c"}).data == b'["a","b","c"]'
    assert _codec.encode({"k": frozenset({2, 1})}).data == b'{"k":[1,2]}'


def test_unknown_encoding_is_invalid_input() -> None:
    with pytest.raises(InvalidInputError, match="unknown payload encoding"):
        _codec.decode(pb.Payload(encoding=99, data=b"?"))  # type: ignore[arg-type]


def test_input_hash_is_short_stable_and_sensitive() -> None:
    assert len(_codec.input_hash(b"abc")) == 8
    assert _codec.input_hash(b"abc") == _codec.input_hash(b"abc")
    assert _codec.input_hash(b"abc") != _codec.input_hash(b"abd")


def test_to_json_compatible_renders_protobuf_and_bytes() -> None:
    assert _codec.to_json_compatible(_codec.encode(HelloRequest(name="Ada"))) == {"name": "Ada"}
    assert _codec.to_json_compatible(_codec.encode(b"\x01\x02")) == {"$bytes": "0102"}
    assert _codec.to_json_compatible(_codec.encode([1])) == [1]


def test_parse_json_args_names_the_problem() -> None:
    assert _codec.parse_json_args('{"name": "Ada"}') == {"name": "Ada"}
    with pytest.raises(InvalidInputError, match="not valid JSON"):
        _codec.parse_json_args("{name: Ada}")


# -- partition keys ------------------------------------------------------------------------------

KEYS = [
    "customer-42",
    "",
    "a.b.c",
    "...",
    "with spaces  ",
    ">",
    "*",
    "orders.>",
    "a*b>c",
    "ünïcödé ✓ 漢字",
    "emoji 🚀",
    "_",
    "-",
    "\x00\n\t",
    "x" * MAX_PARTITION_KEY_BYTES,
]


@pytest.mark.parametrize("key", KEYS)
def test_partition_key_round_trips_through_one_safe_token(key: str) -> None:
    token = encode_partition_key(key)
    assert TOKEN.fullmatch(token), token
    assert decode_partition_key(token) == key


def test_empty_partition_key_has_its_own_token() -> None:
    assert encode_partition_key("") == "_"


def test_distinct_partition_keys_get_distinct_tokens() -> None:
    tokens = [encode_partition_key(k) for k in KEYS]
    assert len(set(tokens)) == len(KEYS)


def test_oversized_partition_key_is_invalid_input() -> None:
    with pytest.raises(InvalidInputError, match=str(MAX_PARTITION_KEY_BYTES)):
        encode_partition_key("é" * MAX_PARTITION_KEY_BYTES)  # 2 bytes a character


def test_non_string_partition_key_is_invalid_input() -> None:
    with pytest.raises(InvalidInputError, match="must be a string"):
        encode_partition_key(42)  # type: ignore[arg-type]


def test_command_subject_uses_the_encoded_key() -> None:
    names = Names("durable")
    subject = names.command_subject("order.v2", "", "orders.>")
    wf, key = encode_partition_key("order.v2"), encode_partition_key("orders.>")
    assert subject == f"durable.cmd.{wf}.any.{key}"
    assert subject.count(".") == 4  # workflow, route and key are one token each
    assert names.route_of(subject) == ("order.v2", "any")
    assert names.command_subject("w", "v-0123456789abcdef", "k").split(".")[3] == (
        "v-0123456789abcdef"
    )
    assert names.command_stream == "DURABLE_COMMANDS"
    assert names.journal_subject("inv-1") == "durable.journal.inv-1"
    assert names.state_bucket == "durable_state"


def test_a_command_routes_by_its_workflow_and_route() -> None:
    names = Names("durable")
    assert names.route_subjects("order.v2", "") == (
        f"durable.cmd.{encode_partition_key('order.v2')}.any.>"
    )
    assert names.key_subjects("k") == f"durable.cmd.*.*.{encode_partition_key('k')}"
    with pytest.raises(InvalidInputError, match="must name its workflow"):
        names.command_subject("", "", "k")
    with pytest.raises(InvalidInputError, match="invalid command route"):
        names.command_subject("w", "a.b", "k")
    # Consumer names hold no dots, differ per workflow and route, and keep the group's name.
    a = names.route_consumer("processor", "order.v2", "")
    b = names.route_consumer("processor", "order.v2", "v-0123456789abcdef")
    c = names.route_consumer("processor", "order_v2", "")
    assert len({a, b, c}) == 3 and all(
        n.startswith("processor-") and "." not in n for n in (a, b, c)
    )
    assert names.route_consumer("processor", "order.v2", "any") == a
    assert names.route_of("durable.cmd.x") is None  # the layout before routing


# -- ids and names -------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["a", "inv-1", "A_b-9", "x" * 128, "01HZX3"])
def test_valid_invocation_ids(value: str) -> None:
    assert check_invocation_id(value) == value


@pytest.mark.parametrize(
    "value",
    [
        *["", "a.b", "a b", "a>b", "*", "é", "x" * 129, "a/b", "a\nb", 42, None],
        "inv\n",
    ],
)
def test_invalid_invocation_ids(value: Any) -> None:
    with pytest.raises(InvalidInputError, match="invalid invocation id"):
        check_invocation_id(value)


@pytest.mark.parametrize("value", ["hello_workflow", "_private", "a.b-c", "W" + "x" * 127])
def test_valid_workflow_names(value: str) -> None:
    assert check_workflow_name(value) == value


@pytest.mark.parametrize(
    "value",
    [
        *["", "1abc", "-x", ".x", "a b", "a>b", "a*", "W" * 129, 3],
        "hello_workflow\n",
    ],
)
def test_invalid_workflow_names(value: Any) -> None:
    with pytest.raises(InvalidInputError, match="invalid workflow name"):
        check_workflow_name(value)


def test_an_optional_type_takes_the_type_or_null_only() -> None:
    """`dict | None` took any value: hello_workflow got the string "Ada" and failed in its body
    with an AttributeError instead of refusing the input (issue 17)."""
    from typing import Any

    from durable_core import _codec

    assert _codec.convert(None, dict[str, Any] | None) is None
    assert _codec.convert({"a": 1}, dict[str, Any] | None) == {"a": 1}
    for bad in ("Ada", 5, [1]):
        with pytest.raises(InvalidInputError, match="expected null"):
            _codec.convert(bad, dict[str, Any] | None)


def test_an_invocation_s_shard_never_changes_between_versions() -> None:
    """SHA-256 of the id, first 8 bytes big-endian, modulo the shards: pinned, because a
    changed hash would look for existing journals and states in the wrong shard."""
    assert [shard_of(x, 3) for x in ("a", "hello-1", "sharded-0", "x" * 128)] == [1, 2, 2, 1]
    assert [shard_of(x, 7) for x in ("a", "hello-1")] == [4, 3]
    assert shard_of("anything", 1) == 0
    spread = [0, 0, 0]
    for i in range(3000):
        spread[shard_of(f"inv-{i}", 3)] += 1
    assert all(900 < n < 1100 for n in spread), spread


def test_one_shard_keeps_the_names_of_an_engine_made_before_shards() -> None:
    one, three = Names("durable"), Names("durable", 3)
    assert one.journal_streams == ["DURABLE_JOURNAL"]
    assert one.journal_stream_of("a") == "DURABLE_JOURNAL"
    assert one.journal_subject("a") == "durable.journal.a"
    assert one.journal_shard_subjects(0) == "durable.journal.>"
    assert three.journal_streams == ["DURABLE_JOURNAL_0", "DURABLE_JOURNAL_1", "DURABLE_JOURNAL_2"]
    assert three.journal_stream_of("a") == "DURABLE_JOURNAL_1"
    assert three.journal_subject("a") == "durable.journal.s1.a"
    assert three.journal_shard_subjects(1) == "durable.journal.s1.*"
    assert one.state_buckets == ["durable_state"] and one.state_bucket_of("a") == "durable_state"
    assert three.state_buckets == ["durable_state_0", "durable_state_1", "durable_state_2"]
    assert three.state_bucket_of("a") == "durable_state_1"  # the journal's shard


def test_commands_are_sharded_by_their_partition_key_or_id() -> None:
    """With one shard a command's subject, stream, timer and number are what they were before
    shards; with several, a key's commands (of every workflow and route) and timers are in
    the one shard its key hashes to, and a command's number holds its shard."""
    one, three = Names("durable"), Names("durable", 3)
    assert one.command_streams == ["DURABLE_COMMANDS"]
    assert one.command_stream_of("a") == "DURABLE_COMMANDS"
    assert one.command_stream_subjects(None) == [
        "durable.cmd.>",
        "durable.sched.>",
        "durable.tick.>",
    ]
    assert one.schedule_subject("a.t1", "a") == "durable.sched.a.t1"
    assert (one.command_seq(0, 17), one.stream_seq_of(17)) == (17, 17)

    assert three.command_streams == [
        "DURABLE_COMMANDS_0",
        "DURABLE_COMMANDS_1",
        "DURABLE_COMMANDS_2",
    ]
    assert three.command_stream_of("a") == "DURABLE_COMMANDS_1"  # shard_of("a", 3)
    key, wf = encode_partition_key("a"), encode_partition_key("w")
    assert three.command_subject("w", "", "a") == f"durable.cmd.s1.{wf}.any.{key}"
    assert three.route_of(three.command_subject("w", "v-1", "a")) == ("w", "v-1")
    assert three.route_of(f"durable.cmd.{wf}.any.{key}") is None  # not a sharded subject
    assert three.key_subjects("a") == f"durable.cmd.s1.*.*.{key}"
    assert three.route_subjects("w", "", 2) == f"durable.cmd.s2.{wf}.any.>"
    assert three.schedule_subject("a.t1", "a") == "durable.sched.s1.a.t1"
    # The first stream keeps the schedules' firings; each shard its commands and timers.
    assert three.command_stream_subjects(None) == ["durable.sched.cron.>", "durable.tick.>"]
    assert three.command_stream_subjects(1) == ["durable.cmd.s1.>", "durable.sched.s1.>"]
    assert three.cron_subject("nightly").startswith("durable.sched.cron.")
    # Numbers: unique across shards, in stream order within one, and back again.
    numbers = [three.command_seq(k, seq) for seq in (1, 2) for k in range(3)]
    assert len(set(numbers)) == 6
    assert three.command_seq(1, 5) < three.command_seq(1, 6)
    assert three.stream_seq_of(three.command_seq(2, 41)) == 41
    assert three.command_seq(63, 1) < three.command_seq(0, 2)


def test_a_notice_goes_only_to_a_clients_notice_subject() -> None:
    names = Names("durable")
    box = names.notice_prefix("c0ffee")
    assert box == "durable.notice.c0ffee" and names.is_notice_subject(f"{box}.7")
    for other in (
        "",
        "durable.state.x",
        "$JS.API.STREAM.DELETE.DURABLE_JOURNAL",
        "other.notice.c0ffee.7",
        f"{box}.7.8",
        f"{box}.*",
        f"{box}.>",
        "durable.notice.c0ffee",
    ):
        assert not names.is_notice_subject(other), other


@pytest.mark.parametrize("shards", [0, -1, 65, 1.5, "3", True])
def test_a_number_of_shards_out_of_range_is_a_config_error(shards: Any) -> None:
    with pytest.raises(ConfigError, match="shards"):
        EngineConfig(shards=shards)


def test_a_store_not_created_because_another_service_created_it_is_asked_again() -> None:
    """Two services creating one stream at once in a cluster: the one that lost got "error
    creating store for stream" (500) rather than "name in use", and its set-up failed (CI,
    2026-12-06); looking again finds the stream."""
    import nats.js.errors

    from durable_core._transport.errors import is_transient

    lost = nats.js.errors.ServerError(
        code=500, err_code=10049, description="error creating store for stream"
    )
    assert is_transient(lost)
    other = nats.js.errors.ServerError(code=500, err_code=10001, description="other")
    assert not is_transient(other)
