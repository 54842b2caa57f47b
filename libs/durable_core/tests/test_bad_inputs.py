"""Bad input is refused with a typed error (InvalidInputError; exit 2 on the command line),
never a raw Python error, a wrong value read back, or a signal delivered twice."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from durable_core import Client, Context, EngineConfig, _codec, _naming
from durable_core.cli import main
from durable_core.cli._base import read_json
from durable_core.client._client import _wait_seconds
from durable_core.errors import InvalidInputError, WorkflowFailedError
from durable_core.testing import NatsServer

NOWHERE = ["--nats-url", "nats://127.0.0.1:1"]  # nothing listens there: never connects
DEV_FULL = Path("/dev/full") if os.path.exists("/dev/full") else None  # writes fail: ENOSPC


def run_cli(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


async def run_cli_async(
    capsys: pytest.CaptureFixture[str], argv: list[str]
) -> tuple[int, str, str]:
    """``run_cli`` from a test's event loop (the command runs its own, in a thread)."""
    return await asyncio.to_thread(run_cli, capsys, argv)


# -- 1. protobuf messages are what they say they are -------------------------------------------


def test_a_message_of_another_type_is_refused_by_convert_and_decode() -> None:
    """A Duration was accepted for a Timestamp, and its bytes read as a Timestamp."""
    with pytest.raises(InvalidInputError, match="expected a google.protobuf.Timestamp"):
        _codec.convert(Duration(seconds=5), Timestamp)
    with pytest.raises(InvalidInputError, match="expected a google.protobuf.Timestamp"):
        _codec.convert({"seconds": 5}, Timestamp)  # stored as JSON, unreadable as a message
    with pytest.raises(InvalidInputError, match="got a google.protobuf.Duration"):
        _codec.decode(_codec.encode(Duration(seconds=5)), Timestamp)
    with pytest.raises(InvalidInputError, match="got a google.protobuf.Duration"):
        _codec.decode_as(_codec.encode(Duration(seconds=5)), Timestamp)
    # What matches still passes.
    ts = Timestamp(seconds=7)
    assert _codec.convert(ts, Timestamp) is ts
    assert _codec.convert(None, Timestamp | None) is None
    assert _codec.decode(_codec.encode(ts), Timestamp) == ts
    assert _codec.decode_as(_codec.encode(ts), Timestamp) == ts


async def at_time(ctx: Context, t: Timestamp) -> int:
    return t.seconds


async def test_a_message_of_another_type_never_reaches_the_workflow(
    local_engine: Callable[..., Any],
) -> None:
    async with local_engine(at_time) as (client, _):
        # By the function: refused at intake, nothing stored.
        with pytest.raises(InvalidInputError, match="does not match its declared type"):
            await client.invoke(at_time, Duration(seconds=5), id="by-fn", timeout=30)
        assert await client._t.get_state("by-fn") is None
        # By name (no check at intake): the processor refuses it, never reads it as another.
        with pytest.raises(WorkflowFailedError, match="InvalidInputError"):
            await client.invoke("at_time", Duration(seconds=5), id="by-name", timeout=30)
        assert (await client.invoke(at_time, Timestamp(seconds=9), timeout=30)).output == 9


# -- 2. dataclasses that refuse their fields, or hold themselves -------------------------------


@dataclasses.dataclass
class Positive:
    n: int

    def __post_init__(self) -> None:
        if self.n <= 0:
            raise ValueError("n must be positive")


@dataclasses.dataclass
class Node:
    name: str
    next: Node | None = None


def test_a_dataclass_that_refuses_its_fields_is_invalid_input() -> None:
    with pytest.raises(InvalidInputError, match="cannot build Positive: n must be positive"):
        _codec.convert({"n": -1}, Positive)
    assert _codec.convert({"n": 2}, Positive) == Positive(2)


def test_a_dataclass_that_holds_itself_is_invalid_input() -> None:
    loop = Node("a")
    loop.next = loop
    with pytest.raises(InvalidInputError, match="nested this deeply"):
        _codec.encode(loop)
    assert _codec.decode(_codec.encode(Node("a", Node("b")))) == {
        "name": "a",
        "next": {"name": "b", "next": None},
    }


def _deep(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = [value]
    return value


def test_a_value_that_holds_itself_or_nests_too_deeply_is_invalid_input_when_made_plain() -> None:
    """A typed workflow's input (and every schedule's arguments) is made plain JSON first,
    recursively: a bare RecursionError came out of ``invoke`` and ``create_schedule``, and
    the CLI printed a trace with exit 1. As deep as ``encode`` stores is taken alike."""
    loop: dict[str, Any] = {}
    loop["self"] = loop
    for value in (loop, _deep(5000)):
        with pytest.raises(InvalidInputError, match="holds itself or nests this deeply"):
            _codec.to_jsonable(value)
    deep = _deep(600)
    assert _codec.to_jsonable(deep) == deep
    assert _codec.decode(_codec.encode(deep)) == deep


# -- 3. a --timeout that rounds to 0 ----------------------------------------------------------


@pytest.mark.parametrize("timeout", ["1e-7", "4e-7"])
def test_a_timeout_below_a_microsecond_is_refused_before_connecting(
    capsys: pytest.CaptureFixture[str], timeout: str
) -> None:
    """timedelta(seconds=1e-7) is 0: the invocation was stored, then the wait refused."""
    argv = ["invoke", "hello_workflow", "--args", "{}", "--timeout", timeout, *NOWHERE]
    code, _, err = run_cli(capsys, argv)
    assert code == 2 and "--timeout" in err and "rounds to 0" in err, err


def test_a_bad_timeout_is_refused_before_the_args_file_is_opened(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    argv = ["invoke", "hello_workflow", "--blob", "--args", f"@{tmp_path}/nope"]
    code, _, err = run_cli(capsys, [*argv, "--timeout", "1e-7", *NOWHERE])
    assert code == 2 and "--timeout" in err, err


# -- 4. signal names and ids ------------------------------------------------------------------


async def waits_for_go(ctx: Context, _: Any = None) -> Any:
    return await ctx.wait_for_signal("go")


BAD_SIGNAL_IDS = ["s-1 ", " s-1", "s-1\r\n", "a b", "\udc80", "", "x" * 257, "é", "a/b"]


async def test_bad_signal_names_and_ids_are_refused(
    local_engine: Callable[..., Any], capsys: pytest.CaptureFixture[str], server: NatsServer
) -> None:
    """A lone surrogate raised UnicodeEncodeError (protobuf for the name, the NATS header for
    the id); an id with blanks or a line break around it was changed by NATS in the message
    id header, so the engine's own duplicate check never matched it again."""
    engine = EngineConfig(prefix="t" + uuid.uuid4().hex[:8])
    async with local_engine(waits_for_go, engine=engine) as (client, _):
        iid = await client.invoke_async("waits_for_go", id="sig")
        outcomes: dict[str, str] = {}
        cases = [("name", "go\udc80", None)] + [("id", "other", bad) for bad in BAD_SIGNAL_IDS]
        for what, name, signal_id in cases:
            try:
                await client.signal(iid, name, 1, signal_id=signal_id)
                outcome = "accepted"
            except InvalidInputError as e:
                outcome = "refused" if f"signal {what}" in str(e) else f"refused: {e}"
            except Exception as e:  # noqa: BLE001 - what the old code raised, shown
                outcome = type(e).__name__
            outcomes[f"{what} {name if what == 'name' else signal_id!r}"] = outcome
        assert outcomes == dict.fromkeys(outcomes, "refused")
        url = ["--nats-url", server.url, "--prefix", engine.prefix]
        code, _, err = await run_cli_async(capsys, ["signal", iid, "other", "--id", " s-1", *url])
        assert code == 2 and "invalid signal id" in err, err
        # The ids in use stay valid: the chaos workload's `<invocation>.<n>`, the README's.
        for good in ("sig.1", "s-1", "a:b_c.D-9", "x" * 256):
            await client.signal(iid, "other", good, signal_id=good)
        await client.signal(iid, "go", "done", signal_id="go-1")
        assert (await client.wait(iid, timeout=30)).output == "done"


# -- 5. stdin that is not UTF-8 ---------------------------------------------------------------


def test_stdin_that_is_not_utf8_is_invalid_input(monkeypatch: pytest.MonkeyPatch) -> None:
    strict = io.TextIOWrapper(io.BytesIO(b'{"a": "\xff"}'), encoding="utf-8", errors="strict")
    monkeypatch.setattr(sys, "stdin", strict)
    with pytest.raises(InvalidInputError, match="--args -: cannot read stdin as UTF-8"):
        read_json("-", "--args")
    ok = io.TextIOWrapper(io.BytesIO('{"a": "é"}'.encode()), encoding="utf-8")
    monkeypatch.setattr(sys, "stdin", ok)
    assert read_json("-", "--args") == {"a": "é"}


def test_the_cli_refuses_stdin_that_is_not_utf8_with_exit_2() -> None:
    env = {**os.environ, "PYTHONIOENCODING": "utf-8:strict"}
    proc = subprocess.run(
        [sys.executable, "-m", "durable_core.cli", "invoke", "x", "--args", "-", *NOWHERE],
        input=b'{"a": "\xff"}',
        capture_output=True,
        env=env,
        timeout=60,
    )
    err = proc.stderr.decode()
    assert proc.returncode == 2 and "Traceback" not in err and "UTF-8" in err, err


@pytest.mark.parametrize("verb", ["pause", "resume", "cancel", "retry"])
def test_a_lifecycle_wait_of_nan_is_refused_with_exit_2(verb: str) -> None:
    """NaN passed click's FloatRange(0, 600) (it compares False both ways): the command went
    on as if ``--wait 0`` had been given."""
    proc = subprocess.run(
        [sys.executable, "-m", "durable_core.cli", verb, "some-id", "--wait", "nan", *NOWHERE],
        capture_output=True,
        timeout=60,
    )
    err = proc.stderr.decode()
    assert proc.returncode == 2 and "nan is not a number of seconds" in err, err


# -- 6. payload get -o somewhere it cannot write ----------------------------------------------


async def echo_back(ctx: Context, args: Any = None) -> Any:
    return args


async def test_payload_get_to_an_unwritable_path_is_exit_2(
    local_engine: Callable[..., Any],
    capsys: pytest.CaptureFixture[str],
    server: NatsServer,
    tmp_path: Path,
) -> None:
    engine = EngineConfig(prefix="t" + uuid.uuid4().hex[:8])
    async with local_engine(echo_back, engine=engine) as (client, _):
        await client.invoke("echo_back", {"x": 1}, id="pl", timeout=30)
    url = ["--nats-url", server.url, "--prefix", engine.prefix]
    targets = [tmp_path / "no-such-dir" / "out", tmp_path]
    if DEV_FULL is not None:
        targets.append(DEV_FULL)  # opens, then the write fails: never removed
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        targets.append(locked / "out")
    for target in targets:
        argv = ["payload", "get", "pl:output", "-o", str(target), *url]
        code, _, err = await run_cli_async(capsys, argv)
        assert code == 2 and f"-o {target}" in err, err
    if DEV_FULL is not None:
        assert await asyncio.to_thread(DEV_FULL.exists)
    out = tmp_path / "out.json"
    code, _, err = await run_cli_async(
        capsys, ["payload", "get", "pl:output", "-o", str(out), *url]
    )
    assert code == 0 and out.read_bytes() == b'{"x":1}', err
    # A reference of no known shape said "invalid invocation id ''" (outside-in).
    code, _, err = await run_cli_async(capsys, ["payload", "get", "zzz", "-o", str(out), *url])
    assert code == 2 and "'zzz': say <invocation>:args" in err, err


# -- 7. the client's waits ---------------------------------------------------------------------


def test_a_timeout_beyond_float_range_is_invalid_input() -> None:
    with pytest.raises(InvalidInputError, match="timeout"):
        _wait_seconds(10**400)


@pytest.mark.parametrize("wait", [5, 5.0, "5", -1, None])
async def test_wait_for_engine_that_is_no_timedelta_is_invalid_input(wait: Any) -> None:
    with pytest.raises(InvalidInputError, match="wait_for_engine must be a timedelta"):
        await Client.connect("nats://127.0.0.1:1", wait_for_engine=wait)


async def test_a_negative_wait_for_engine_is_invalid_input() -> None:
    from datetime import timedelta

    with pytest.raises(InvalidInputError, match="wait_for_engine"):
        await Client.connect("nats://127.0.0.1:1", wait_for_engine=timedelta(seconds=-1))


# -- 8. fork's from_step ------------------------------------------------------------------------


async def two_steps(ctx: Context, _: Any = None) -> int:
    a = await ctx.run("one", lambda: 1)
    b = await ctx.run("two", lambda: 2)
    return a + b


async def test_fork_from_a_step_that_is_no_step_number_is_invalid_input(
    local_engine: Callable[..., Any],
) -> None:
    """``from_step="2"`` was compared with the recorded steps first: a TypeError."""
    async with local_engine(two_steps) as (client, _):
        await client.invoke("two_steps", id="src", timeout=30)
        for from_step in ("2", 2.0, True, None, 0, -1, 4):
            with pytest.raises(InvalidInputError, match="from_step"):
                await client.fork("src", from_step=from_step)
        forked = await client.fork("src", from_step=3)
        assert (await client.wait(forked, timeout=30)).output == 3


# -- 9. a huge id or name is not copied whole into the message ----------------------------------


def test_a_huge_id_or_workflow_name_gives_a_short_message() -> None:
    huge = "x" * 1_000_000 + " "
    for check in (_naming.check_invocation_id, _naming.check_workflow_name):
        with pytest.raises(InvalidInputError) as caught:
            check(huge)
        assert len(str(caught.value)) < 300


# -- 9. partition keys --------------------------------------------------------------------------


async def child_keyed(ctx: Context, key: str) -> Any:
    try:
        return await ctx.invoke("echo_back", "x", partition_key=key)
    except InvalidInputError as e:
        return f"refused: {e}"


async def test_an_empty_or_oversized_partition_key_is_refused_everywhere(
    local_engine: Callable[..., Any], capsys: pytest.CaptureFixture[str], server: NatsServer
) -> None:
    """An empty key was taken, then run as no key (a command's empty key means none):
    invocations submitted "one at a time per key" ran side by side; a child's too. A key
    too long was refused already; a child's still is, as the workflow's own error."""
    engine = EngineConfig(prefix="t" + uuid.uuid4().hex[:8])
    async with local_engine(child_keyed, echo_back, engine=engine) as (client, _):
        with pytest.raises(InvalidInputError, match="partition key is empty"):
            await client.invoke_async("echo_back", 1, partition_key="")
        with pytest.raises(InvalidInputError, match="partition key is empty"):
            await client.create_schedule(
                "s", "echo_back", every=timedelta(seconds=60), partition_key=""
            )
        url = ["--nats-url", server.url, "--prefix", engine.prefix]
        code, _, err = await run_cli_async(
            capsys, ["invoke", "echo_back", "--args", "1", "--partition-key", "", "--no-wait", *url]
        )
        assert code == 2 and "partition key is empty" in err, err
        for key, refused in (("", "partition key is empty"), ("k" * 1025, "the limit is 1024")):
            out = await client.invoke("child_keyed", key, timeout=30)
            assert out.status == "completed" and refused in out.output, out.output
        assert (await client.invoke("child_keyed", "k" * 1024, timeout=30)).output == "x"
