"""Hostile input on a real 3-node JetStream cluster (Issue 8, item 3).

(a) Garbage published raw on the command subjects (random bytes, truncated commands, commands
    with invalid ids, huge fields, unknown kinds, commands aimed at a finished execution),
    interleaved with real invocations: the real ones complete, the consumer ends with nothing
    pending, and a finished execution's state and journal stay byte-identical.
(b) Client arguments: refused at intake with InvalidInputError and nothing written; payloads
    over the configured limit and over the NATS server's limit.
(c) Garbage in an execution's journal: the processor keeps serving.

Commands that poison the processor today are pinned with strict xfails, each on its own stack.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

import nats.js.errors
import pytest
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from durable_core import (
    Client,
    DurableError,
    EngineConfig,
    InvalidInputError,
    NotFoundError,
    PayloadTooLargeError,
)
from durable_core._codec import encode
from durable_core._naming import (
    check_invocation_id,
    check_workflow_name,
    encode_partition_key,
)
from durable_core._pb.durable.v1 import durable_pb2 as pb
from durable_core._transport import Transport
from durable_core.cli import main as cli_main
from durable_core.config import NatsConfig
from durable_core.testing import ChildProcess, NatsCluster, ProcessStack, assert_eventually_async

pytestmark = pytest.mark.integration

GREETING = "Hello, {}! Welcome to Durable Execution on NATS JetStream."
NATS_MAX_PAYLOAD = 1024 * 1024  # the test cluster's max_payload (nats-server's default)
CRASHED = "execution task crashed"
REFUSED = "terminating malformed command"

# NATS examples: few, no deadline, no shrinking (each example is a round trip to the cluster),
# one stack shared by all examples of a test.
nats_examples = settings(
    max_examples=6,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


async def assert_settled(
    consumer_idle: Callable[[], Awaitable[bool]], proc: ChildProcess, timeout: float
) -> None:
    """Until the consumer is idle (bounded); fails at once when the processor logs a crashed
    task."""

    async def settled() -> bool:
        assert CRASHED not in proc.log(), proc.log()
        return await consumer_idle()

    await assert_eventually_async(settled, timeout, "the processors' consumer to be idle")


async def publish_raw(transport: Transport, key: str, data: bytes) -> bool:
    """Publish straight to the command stream; False if the server refused the message itself
    (over the stream's max_msg_size, err 10054): it never reaches a processor."""
    try:
        await transport.js.publish(transport.names.command_subject(HOSTILE_ROUTE, "", key), data)
    except nats.js.errors.BadRequestError as e:
        if e.err_code != _MESSAGE_TOO_BIG:
            raise
        return False
    return True


HOSTILE_ROUTE = "hello_workflow"  # garbage lands on a served workflow's consumer
_MESSAGE_TOO_BIG = 10054  # JetStream: message size exceeds the stream's max_msg_size


async def raw_journal(transport: Transport, invocation_id: str) -> list[tuple[int, bytes]]:
    return await transport._journals.read_raw(invocation_id)


async def raw_state(transport: Transport, invocation_id: str) -> tuple[bytes, int]:
    entry = await transport.kv.get(invocation_id)
    return bytes(entry.value or b""), int(entry.revision or 0)


async def command_count(transport: Transport) -> int:
    info = await transport.js.stream_info(transport.names.command_stream)
    return int(info.state.messages)


def new_id(tag: str) -> str:
    return f"{tag}-{uuid.uuid4().hex[:12]}"


async def assert_greeted(client: Client, invocation_id: str, name: str) -> None:
    result = await client.wait(invocation_id, timeout=30)
    assert result.status == "completed", result.failure
    assert result.output == {"message": GREETING.format(name)}


# -- (a) garbage on the command subjects --------------------------------------------------------

INT64 = st.integers(-(2**63), 2**63 - 1)
UINT64 = st.integers(0, 2**64 - 1)
fresh_ids = st.uuids().map(lambda u: "g" + u.hex[:20])
short_text = st.text(max_size=30)  # at most 120 bytes: a partition key the engine accepts
hostile_payloads = st.one_of(
    st.builds(lambda n: encode({"name": n}), short_text),
    st.builds(pb.Payload, encoding=st.just(pb.ENCODING_JSON), data=st.binary(max_size=64)),
    st.builds(pb.Payload, encoding=st.integers(-1, 9), data=st.binary(max_size=64)),
    st.builds(
        pb.Payload,
        encoding=st.just(pb.ENCODING_PROTOBUF),
        type_name=st.sampled_from(["durable.v1.Command", "no.such.Type", ""]) | short_text,
        data=st.binary(max_size=64),
    ),
    st.just(pb.Payload(encoding=pb.ENCODING_BYTES, data=b"\x00" * 300_000)),  # huge
)
workflows = st.sampled_from(["hello_workflow", "", "no_such_workflow", "9bad name"]) | short_text
metadata = st.dictionaries(
    st.sampled_from(["traceparent", "tracestate", ""]) | short_text,
    short_text | st.just("v" * 100_000),
    max_size=3,
)


def _valid_id_command(data: bytes) -> bool:
    """Mirrors Worker._handle's intake checks: what it does not terminate."""
    cmd = pb.Command()
    try:
        cmd.ParseFromString(data)
        check_invocation_id(cmd.invocation_id)
        if cmd.kind not in (pb.COMMAND_KIND_START, pb.COMMAND_KIND_WAKE):
            return False
        if not cmd.workflow:  # commands route by their workflow (issue 16)
            return False
        check_workflow_name(cmd.workflow)
        if cmd.partition_key:
            encode_partition_key(cmd.partition_key)
    except (DecodeError, InvalidInputError, ValueError):
        return False
    return True


def new_invocation_commands() -> st.SearchStrategy[pb.Command]:
    """Well-formed envelopes with hostile contents, for ids nobody used.

    Left out on purpose (each pinned by its own xfail below): partition keys over 1024 bytes,
    created_at_ms outside the years 1-9999, and unknown kinds being run at all. A WAKE of an
    unknown invocation with min_journal_seq > 0 is left out too: the processor then waits
    for that journal sequence for append_deadline (30 s), which no test here can afford.
    """
    return st.builds(
        pb.Command,
        invocation_id=fresh_ids,
        workflow=workflows | st.just("w" * 100_000),
        args=hostile_payloads,
        partition_key=st.just("") | short_text,
        kind=st.sampled_from([0, 1, 2, 3, 99, 2**31 - 1]),
        created_at_ms=st.integers(-(2**40), 2**41),
        parent_id=short_text,
        metadata=metadata,
        min_journal_seq=st.just(0),
    )


def finished_invocation_commands(invocation_id: str) -> st.SearchStrategy[pb.Command]:
    """Anything addressed to a finished invocation: it must be acked and change nothing."""
    return st.builds(
        pb.Command,
        invocation_id=st.just(invocation_id),
        workflow=workflows,
        args=hostile_payloads,
        partition_key=st.sampled_from(["", invocation_id]) | short_text,
        kind=st.sampled_from([0, 1, 2, 99]),
        created_at_ms=INT64,
        metadata=metadata,
        min_journal_seq=UINT64,
    )


def truncated_commands() -> st.SearchStrategy[bytes]:
    def cut(args: tuple[str, str, int]) -> bytes:
        invocation_id, name, at = args
        data = pb.Command(
            invocation_id=invocation_id,
            workflow="hello_workflow",
            args=encode({"name": name}),
            kind=pb.COMMAND_KIND_START,
            created_at_ms=int(time.time() * 1000),
        ).SerializeToString()
        return data[: at % len(data)]

    return st.tuples(fresh_ids, short_text, st.integers(min_value=0)).map(cut)


def invalid_id_commands() -> st.SearchStrategy[bytes]:
    bad_ids = st.text(max_size=140).filter(lambda s: not _valid(s)) | st.sampled_from(
        ["", "a.b", "a b", "*", ">", "x" * 129, "é", "\x00"]
    )
    return st.builds(
        lambda i, w: pb.Command(invocation_id=i, workflow=w).SerializeToString(), bad_ids, workflows
    )


def _valid(invocation_id: str) -> bool:
    try:
        check_invocation_id(invocation_id)
    except InvalidInputError:
        return False
    return True


def _valid_name(name: str) -> bool:
    try:
        check_workflow_name(name)
    except InvalidInputError:
        return False
    return True


def garbage(finished_id: str) -> st.SearchStrategy[tuple[str, bytes]]:
    data = st.one_of(
        st.binary(max_size=2048).filter(lambda b: not _valid_id_command(b)),
        truncated_commands(),
        invalid_id_commands(),
        new_invocation_commands().map(lambda c: c.SerializeToString()),
        finished_invocation_commands(finished_id).map(lambda c: c.SerializeToString()),
    )
    keys = st.sampled_from(["hostile", finished_id, ""]) | short_text
    return st.tuples(keys, data)


FINISHED_ID = "finished-" + uuid.uuid4().hex[:8]  # fixed per session: strategies need it


@settings(nats_examples, max_examples=25)
@given(
    batch=st.lists(garbage(FINISHED_ID), min_size=1, max_size=10),
    names=st.lists(
        st.text(st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"]), max_size=12),
        min_size=1,
        max_size=2,
    ),
)
@example(batch=[("hostile", b"\xff\xff\xff"), ("", b"")], names=["Ada"])
@example(batch=[("hostile", b"\x00" * 600_000)], names=["Big"])  # over max_msg_size
async def test_garbage_commands_never_block_or_corrupt(
    stack: ProcessStack,
    client: Client,
    transport: Transport,
    batch: list[tuple[str, bytes]],
    names: list[str],
    consumer_idle: Callable[[], Awaitable[bool]],
) -> None:
    if not stack.procs:
        stack.start_service()
        stack.start_processor("p1")
        await assert_greeted(
            client,
            await client.invoke_async("hello_workflow", {"name": "Before"}, id=FINISHED_ID),
            "Before",
        )
    processor = stack.procs[-1]
    # A waiting client has its result from the processor's notice one write before the final
    # state lands, so the snapshot waits for the command to be acked (after that write).
    await assert_eventually_async(consumer_idle, 30, "the finished invocation to settle")
    before = (await raw_state(transport, FINISHED_ID), await raw_journal(transport, FINISHED_ID))
    refused_before = processor.log().count(REFUSED)

    real: list[tuple[str, str]] = []
    stored: list[bytes] = []  # what the stream took (it refuses messages over its size limit)
    for i, (key, data) in enumerate(batch):
        if await publish_raw(transport, key, data):
            stored.append(data)
        if i % 4 == 0 and len(real) < len(names):
            name = names[len(real)]
            real.append((await client.invoke_async("hello_workflow", {"name": name}), name))
    for name in names[len(real) :]:
        real.append((await client.invoke_async("hello_workflow", {"name": name}), name))

    for invocation_id, name in real:
        await assert_greeted(client, invocation_id, name or "World")
    await assert_eventually_async(consumer_idle, 30, "every garbage command to be settled")
    after = (await raw_state(transport, FINISHED_ID), await raw_journal(transport, FINISHED_ID))
    assert after == before, "a finished execution changed"
    log = processor.log()
    assert processor.proc.poll() is None and CRASHED not in log
    # Every command without a usable id was refused, each with its own log line.
    malformed = sum(not _valid_id_command(data) for data in stored)
    assert log.count(REFUSED) - refused_before == malformed


async def test_poison_commands_do_not_stop_the_processor(
    stack: ProcessStack, client: Client, transport: Transport
) -> None:
    """The commands pinned below poison their own invocation, not the processor."""
    stack.start_service()
    processor = stack.start_processor("p1")
    for cmd in (
        pb.Command(
            invocation_id=new_id("longkey"), workflow="hello_workflow", partition_key="k" * 1100
        ),
        pb.Command(invocation_id=new_id("future"), workflow="hello_workflow", created_at_ms=2**62),
        pb.Command(invocation_id=new_id("kind"), workflow="hello_workflow", kind=99),
    ):
        await publish_raw(transport, "hostile", cmd.SerializeToString())
    await assert_greeted(
        client, await client.invoke_async("hello_workflow", {"name": "After"}), "After"
    )
    assert processor.proc.poll() is None


async def test_command_with_an_oversized_partition_key_is_settled(
    stack: ProcessStack, transport: Transport, consumer_idle: Callable[[], Awaitable[bool]]
) -> None:
    stack.start_service()
    processor = stack.start_processor("p1")
    cmd = pb.Command(
        invocation_id=new_id("longkey"), workflow="hello_workflow", partition_key="k" * 1100
    )
    await publish_raw(transport, "hostile", cmd.SerializeToString())
    await assert_settled(consumer_idle, processor, 10)


async def test_command_with_an_absurd_timestamp_leaves_readable_state(
    stack: ProcessStack,
    client: Client,
    transport: Transport,
    consumer_idle: Callable[[], Awaitable[bool]],
) -> None:
    stack.start_service()
    stack.start_processor("p1")
    invocation_id = new_id("future")
    cmd = pb.Command(invocation_id=invocation_id, workflow="hello_workflow", created_at_ms=2**62)
    await publish_raw(transport, "hostile", cmd.SerializeToString())
    await assert_eventually_async(consumer_idle, 20, "the command to be settled")
    if await transport.get_state(invocation_id) is None:
        return  # refused at intake: fine
    await client.get_result(invocation_id)
    async for item in client.watch_executions():
        if item is None:
            break  # the snapshot went through


async def test_command_of_an_unknown_kind_is_refused(
    stack: ProcessStack, transport: Transport, consumer_idle: Callable[[], Awaitable[bool]]
) -> None:
    stack.start_service()
    stack.start_processor("p1")
    invocation_id = new_id("kind")
    cmd = pb.Command(invocation_id=invocation_id, workflow="hello_workflow", kind=99)
    await publish_raw(transport, invocation_id, cmd.SerializeToString())
    await assert_eventually_async(consumer_idle, 20, "the command to be settled")
    assert await transport.get_state(invocation_id) is None


async def test_wake_for_an_unknown_invocation_is_dropped_at_once(
    stack: ProcessStack, transport: Transport, consumer_idle: Callable[[], Awaitable[bool]]
) -> None:
    stack.start_service()
    stack.start_processor("p1", durable_shutdown_grace="1")
    invocation_id = new_id("ghost")
    cmd = pb.Command(
        invocation_id=invocation_id,
        workflow="hello_workflow",
        kind=pb.COMMAND_KIND_WAKE,
        min_journal_seq=5,
    )
    await publish_raw(transport, invocation_id, cmd.SerializeToString())
    await assert_eventually_async(consumer_idle, 5, "the wake-up to be settled")
    assert await transport.get_state(invocation_id) is None


# -- (b) client arguments -----------------------------------------------------------------------


@dataclasses.dataclass
class Submission:
    workflow: Any = "hello_workflow"
    args: Any = None
    id: Any = None
    partition_key: Any = None
    delay: Any = None
    start_at: Any = None

    def kwargs(self) -> dict[str, Any]:
        out = {"id": self.id, "partition_key": self.partition_key}
        if self.delay is not None:
            out["delay"] = self.delay
        if self.start_at is not None:
            out["start_at"] = self.start_at
        return out


LIMIT = EngineConfig().max_payload
bad_names = (
    st.text(max_size=140).filter(lambda s: not _valid_name(s))
    | st.sampled_from(["", "1abc", "a b", "x" * 129, "wf\n"])
    | st.sampled_from([123, None, b"wf"])
)
bad_ids = st.text(min_size=1, max_size=140).filter(lambda s: not _valid(s)) | st.sampled_from(
    [7, b"abc", ["x"]]
)
bad_keys = st.sampled_from([5, b"k", ["k"]]) | st.builds(
    lambda c, n: c * n, st.characters(exclude_categories=["Cs"]), st.integers(1025, 1100)
)
non_json = st.sampled_from(
    [object(), 1j, float("nan"), [float("inf")], {"k": object()}, {(1, 2): 3}]
)
hostile_submissions = st.one_of(
    st.builds(Submission, workflow=bad_names, id=fresh_ids),
    st.builds(Submission, id=bad_ids),
    st.builds(Submission, id=fresh_ids, partition_key=bad_keys),
    st.builds(Submission, id=fresh_ids, args=non_json),
    st.builds(
        Submission,
        id=fresh_ids,
        delay=st.sampled_from([timedelta(seconds=-1), timedelta(days=3700 * 2), 5, "5"]),
    ),
    st.builds(
        Submission,
        id=fresh_ids,
        start_at=st.sampled_from([datetime(2030, 1, 1), "2030-01-01", 0]),  # naive on purpose
    ),
    st.builds(
        Submission,
        id=fresh_ids,
        delay=st.just(timedelta(seconds=1)),
        start_at=st.just(datetime.now().astimezone()),
    ),
)


@given(sub=hostile_submissions)
@settings(nats_examples, max_examples=40)
async def test_hostile_client_arguments_are_refused_at_intake(
    client: Client, transport: Transport, sub: Submission
) -> None:
    with pytest.raises(InvalidInputError) as refused:
        await client.invoke_async(sub.workflow, sub.args, **sub.kwargs())
    assert str(refused.value)
    if isinstance(sub.id, str) and _valid(sub.id):
        assert await transport.get_state(sub.id) is None
    assert await command_count(transport) == 0


async def test_args_over_the_max_object_size_name_the_limit_and_write_nothing(
    cluster: NatsCluster, engine: EngineConfig, transport: Transport
) -> None:
    """Issue 18: arguments over the inline limit go by reference; over the max object size
    they are refused with the limit, and nothing is left: no state, no command, no object."""
    small = dataclasses.replace(engine, payload_threshold=1024, max_object_size=64 * 1024)
    async with await Client.connect(cluster.url, engine=small) as client:
        invocation_id = new_id("big")
        with pytest.raises(PayloadTooLargeError, match="max object size of 65536 bytes"):
            await client.invoke("hello_workflow", {"name": "x" * LIMIT}, id=invocation_id)
    assert await transport.get_state(invocation_id) is None
    assert await command_count(transport) == 0
    assert await transport.payloads.objects() == []
    assert await command_count(transport) == 0


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda c: c.get_result("a.b"), InvalidInputError),
        (lambda c: c.get_result("é"), InvalidInputError),
        (lambda c: c.wait("x" * 129, timeout=1), InvalidInputError),
        (lambda c: c.signal("a b", "go"), InvalidInputError),
        (lambda c: c.signal("inv-1", ""), InvalidInputError),
        (lambda c: c.signal("inv-1", "s" * 257), InvalidInputError),
        (lambda c: c.resolve_awakeable("awk.a.b.c", 1), NotFoundError),
        (lambda c: c.resolve_awakeable("awk.bad id.1", 1), NotFoundError),
        (lambda c: c.reject_awakeable(">", "no"), NotFoundError),
        (lambda c: c.signal("no-such-invocation", "go"), NotFoundError),
    ],
    ids=[
        "result-dot",
        "result-unicode",
        "wait-long",
        "signal-bad-id",
        "signal-empty-name",
        "signal-long-name",
        "resolve-malformed",
        "resolve-bad-owner",
        "reject-wildcard",
        "signal-unknown",
    ],
)
async def test_other_client_calls_refuse_bad_ids(
    client: Client, transport: Transport, call: Callable[[Client], Awaitable[Any]], error: type
) -> None:
    with pytest.raises(error):
        await call(client)
    assert await command_count(transport) == 0


async def test_empty_invocation_id_is_refused(client: Client, transport: Transport) -> None:
    with pytest.raises(InvalidInputError):
        await client.invoke_async("hello_workflow", None, id="")
    assert await command_count(transport) == 0


async def test_args_at_the_configured_limit_go_by_reference(
    client: Client, transport: Transport
) -> None:
    """Issue 18: arguments above the payload threshold (256 KB) are accepted, stored by
    reference; the state and the command carry the reference only."""
    invocation_id = new_id("edge")
    args = "x" * (LIMIT - 2)  # JSON-encoded: exactly LIMIT bytes
    await client.invoke_async("hello_workflow", args, id=invocation_id, queue_unserved=True)
    rec = await transport.get_state(invocation_id)
    assert rec is not None and rec.state.args.ref.size == LIMIT and not rec.state.args.data


async def test_args_over_the_nats_server_limit_go_by_reference(
    cluster: NatsCluster, prefix: str
) -> None:
    """Before issue 18 these were refused (a state could not hold them); now the threshold
    is capped by what the server's max_payload leaves, so they go by reference."""
    engine = EngineConfig(prefix=prefix + "b", replicas=3, max_payload=8 * NATS_MAX_PAYLOAD)
    # Processors configured for more than the server takes created the streams; the client
    # reads that limit from them.
    processor = await Transport.connect(NatsConfig.from_url(cluster.url), engine, create=True)
    await processor.close()
    async with await Client.connect(cluster.url, engine=EngineConfig(prefix=engine.prefix)) as big:
        assert big._t.engine.max_payload == 8 * NATS_MAX_PAYLOAD
        invocation_id = new_id("huge")
        await big.invoke_async(
            "hello_workflow", "x" * (2 * NATS_MAX_PAYLOAD), id=invocation_id, queue_unserved=True
        )
        rec = await big._t.get_state(invocation_id)
        assert rec is not None and rec.state.args.ref.size == 2 * NATS_MAX_PAYLOAD + 2


# -- (b) the CLI against the cluster ------------------------------------------------------------


def run_cli(
    capsys: pytest.CaptureFixture[str], cluster: NatsCluster, prefix: str, *argv: str
) -> tuple[int, str]:
    """The CLI on ``prefix`` (whose streams the caller's ``transport`` fixture created, as a
    processor does: the CLI never creates them)."""
    capsys.readouterr()
    code = cli_main(["--nats-url", cluster.url, "--prefix", prefix, *argv])
    _, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, err


@pytest.mark.parametrize(
    ("argv", "mentions"),
    [
        (["invoke", "bad name!"], "invalid workflow name"),
        (["invoke", "hello_workflow", "--id", "é\u202e"], "invalid invocation id"),
        (["invoke", "hello_workflow", "--partition-key", "k" * 1100], "the limit is 1024"),
        (["invoke", "hello_workflow", "--args", "{}", "--blob"], "--blob needs --args @FILE"),
        (["invoke", "hello_workflow", "--args", '{"name": NaN}'], "cannot store"),
        (["invoke", "hello_workflow", "--delay", "-1", "--id", "d1"], "delay must be"),
        (["status", "a.b"], "invalid invocation id"),
        (["signal", "a b", "go"], "invalid invocation id"),
    ],
    ids=["name", "id", "key", "blob-no-file", "args-nan", "delay", "status-id", "signal-id"],
)
def test_cli_bad_input_exits_2(
    capsys: pytest.CaptureFixture[str],
    cluster: NatsCluster,
    prefix: str,
    streams: None,
    argv: list[str],
    mentions: str,
) -> None:
    code, err = run_cli(capsys, cluster, prefix, *argv)
    assert code == 2 and mentions in err, err


@pytest.mark.parametrize(
    "argv",
    [["--timeout", "nan"], ["--delay", "nan"], ["--delay", "inf"], ["--delay", "1e300"]],
    ids=["timeout-nan", "delay-nan", "delay-inf", "delay-huge"],
)
def test_cli_non_finite_durations_exit_2(
    capsys: pytest.CaptureFixture[str],
    cluster: NatsCluster,
    prefix: str,
    streams: None,
    argv: list[str],
) -> None:
    code, _ = run_cli(capsys, cluster, prefix, "invoke", "hello_workflow", *argv)
    assert code == 2


@pytest.mark.parametrize(
    "argv",
    [["--args", '"x\udcff"'], ["--partition-key", "k\udcff"]],
    ids=["args", "partition-key"],
)
def test_cli_undecodable_argv_bytes_exit_2(
    capsys: pytest.CaptureFixture[str],
    cluster: NatsCluster,
    prefix: str,
    streams: None,
    argv: list[str],
) -> None:
    code, _ = run_cli(capsys, cluster, prefix, "invoke", "hello_workflow", "--no-wait", *argv)
    assert code == 2


# -- (c) garbage in a journal -------------------------------------------------------------------

UNDECODABLE = b"\xff\xff\xff\xff"  # not a JournalEntry: DecodeError
DECODABLE = pb.JournalEntry(kind=77, step=-3, name="\x00", timestamp_ms=-1).SerializeToString()


async def test_garbage_in_a_journal_does_not_stop_the_processor(
    stack: ProcessStack, client: Client, transport: Transport
) -> None:
    """What happens, for the record: a foreign entry that decodes (unknown kind) is taken in and
    the invocation completes; one that does not decode leaves its invocation stuck (pinned
    below), while the processor goes on serving every other invocation."""
    stack.start_service()
    processor = stack.start_processor("p1")
    tolerated, poisoned = new_id("decodable"), new_id("undecodable")
    await transport.js.publish(transport.names.journal_subject(tolerated), DECODABLE)
    await transport.js.publish(transport.names.journal_subject(poisoned), UNDECODABLE)
    await client.invoke_async("hello_workflow", {"name": "Odd"}, id=tolerated)
    await client.invoke_async("hello_workflow", {"name": "Bad"}, id=poisoned)

    await assert_greeted(client, tolerated, "Odd")
    for name in ("Ada", "Bob"):
        await assert_greeted(
            client, await client.invoke_async("hello_workflow", {"name": name}), name
        )
    assert processor.proc.poll() is None


async def test_undecodable_journal_entry_fails_its_invocation_clearly(
    stack: ProcessStack,
    client: Client,
    transport: Transport,
    consumer_idle: Callable[[], Awaitable[bool]],
) -> None:
    stack.start_service()
    processor = stack.start_processor("p1")
    invocation_id = new_id("undecodable")
    await transport.js.publish(transport.names.journal_subject(invocation_id), UNDECODABLE)
    await client.invoke_async("hello_workflow", {"name": "Bad"}, id=invocation_id)
    await assert_settled(consumer_idle, processor, 10)
    rec = await transport.get_state(invocation_id)
    assert rec is not None and rec.state.status == pb.STATUS_FAILED


async def test_reading_a_journal_with_garbage_raises_a_durable_error(
    client: Client, transport: Transport
) -> None:
    invocation_id = new_id("undecodable")
    await transport.js.publish(transport.names.journal_subject(invocation_id), UNDECODABLE)
    # No processor: pending.
    await client.invoke_async("hello_workflow", None, id=invocation_id, queue_unserved=True)
    with pytest.raises(DurableError):
        await client.get_result(invocation_id)
