"""Large values through the object store (issue 18), on the 3-node cluster (R3): a 3-step
workflow with a 50 MB argument and a 200 MB middle step result, with the processor's and the
client's peak memory measured; a processor SIGKILLed during a large upload; retention and
forks.

The workflow is ``bench_workflows.large_payload``: step 1 reads the argument (a Blob) in
chunks, step 2 returns a generated stream four times its size, step 3 reads that back.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import re
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path

import httpx2 as httpx
import pytest

from bench_workflows import Generated
from durable_core import Client, InvalidInputError, UnknownWorkflowError
from durable_core._pb.durable.v1 import durable_pb2 as pb
from durable_core._transport import Transport
from durable_core._transport.payloads import CHUNK_SIZE
from durable_core.admin import Engine
from durable_core.testing import ProcessStack, assert_eventually_async

pytestmark = pytest.mark.integration

MB = 1024 * 1024

# The client: `durable invoke large_payload --args @FILE --blob`, and its peak RSS on stderr.
# The CLI's own peak: VmHWM of its memory map. (getrusage's ru_maxrss keeps the high-water
# mark of the process before exec, i.e. of the forking pytest worker: 428 MB under xdist.)
_CLIENT = """
import runpy, sys
sys.argv = ["durable", *sys.argv[1:]]
try:
    runpy.run_module("durable_core.cli", run_name="__main__")
finally:
    with open("/proc/self/status") as f:
        hwm = next(line.split()[1] for line in f if line.startswith("VmHWM:"))
    print(f"peak-rss-kb {hwm}", file=sys.stderr)
"""


def _argument(tmp_path: Path, size: int) -> tuple[Path, str]:
    path = tmp_path / "argument.bin"
    h = hashlib.sha256()
    g = Generated(size, seed="argument")
    with open(path, "wb") as f:
        while block := g.read(MB):
            f.write(block)
            h.update(block)
    return path, h.hexdigest()


def _expected_result(size: int) -> str:
    h = hashlib.sha256()
    g = Generated(size)
    while block := g.read(MB):
        h.update(block)
    return h.hexdigest()


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(MB):
            h.update(block)
    return h.hexdigest()


def _peak_rss_kb(pid: int) -> int:
    """The process's peak resident set (VmHWM), in KB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmHWM for {pid}")


def _client(stack: ProcessStack, *args: str, timeout: float) -> tuple[str, int]:
    env = {**os.environ, **stack.env}
    cp = subprocess.run(
        [sys.executable, "-c", _CLIENT, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert cp.returncode == 0, (cp.returncode, cp.stdout[-2000:], cp.stderr[-3000:])
    peak = next(int(x.split()[1]) for x in cp.stderr.splitlines() if x.startswith("peak-rss-kb"))
    return cp.stdout, peak


async def _invoke_file(client: Client, path: Path, invocation_id: str) -> None:
    """Invoke large_payload with the file's bytes (streamed: the client passes the file)."""
    f = await asyncio.to_thread(path.open, "rb")
    try:
        await client.invoke_async("large_payload", f, id=invocation_id, queue_unserved=True)
    finally:
        f.close()


async def _refs(transport: Transport, invocation_id: str) -> list[pb.PayloadRef]:
    records = await transport.read_journal(invocation_id, current=True)
    return [r.entry.output.ref for r in records if r.entry.output.HasField("ref")]


async def _objects_of(transport: Transport, invocation_id: str) -> set[str]:
    return {n for n in await transport.payloads.objects() if n.startswith(invocation_id + ".")}


async def test_a_50_mb_argument_and_a_200_mb_step_result_with_bounded_memory(
    stack: ProcessStack, client: Client, transport: Transport, tmp_path: Path
) -> None:
    stack.start_service()
    processor = stack.start_processor("p-large")
    path, arg_digest = _argument(tmp_path, 50 * MB)
    started = time.monotonic()
    out, client_kb = await asyncio.to_thread(
        _client,
        stack,
        "invoke",
        "large_payload",
        "--args",
        f"@{path}",
        "--blob",
        "--id",
        "large-1",
        "--timeout",
        "280",
        "--json",
        timeout=290,
    )
    took = time.monotonic() - started
    processor_kb = _peak_rss_kb(processor.pid)
    result = await client.get_result("large-1")
    assert result.status.value == "completed", result
    assert result.output == {
        "argument": {"sha256": arg_digest, "size": 50 * MB},
        "result": {"sha256": _expected_result(200 * MB), "size": 200 * MB},
    }
    # Arguments and step 2's result are references: the state and journal stay small.
    state = (await transport.get_state("large-1")).state  # type: ignore[union-attr]
    assert state.args.blob and state.args.ref.size == 50 * MB and not state.args.data
    refs = await _refs(transport, "large-1")
    assert [r.size for r in refs] == [200 * MB]
    assert refs[0].object.startswith("large-1.")
    print(
        f"\n50 MB argument + 200 MB step result on R3: {took:.1f} s; peak RSS: processor "
        f"{processor_kb / 1024:.0f} MB, client {client_kb / 1024:.0f} MB"
    )
    assert processor_kb < 150 * 1024, processor_kb
    assert client_kb < 150 * 1024, client_kb
    # `durable status` shows references, never their bytes.
    cp = await asyncio.to_thread(stack.cli, "status", "large-1")
    assert cp.returncode == 0, cp.stderr
    assert "<object 52.4 MB sha256:" in cp.stdout, cp.stdout
    # `durable payload get` streams step 2's 200 MB result to a file, in bounded memory.
    target = tmp_path / "result.bin"
    _, get_kb = await asyncio.to_thread(
        _client, stack, "payload", "get", "large-1:2", "-o", str(target), timeout=120
    )
    assert target.stat().st_size == 200 * MB
    assert await asyncio.to_thread(_file_digest, target) == _expected_result(200 * MB)
    print(f"durable payload get of 200 MB: peak RSS {get_kb / 1024:.0f} MB")
    assert get_kb < 150 * 1024, get_kb


async def test_a_processor_killed_during_a_large_upload(
    stack: ProcessStack, client: Client, transport: Transport, tmp_path: Path
) -> None:
    """SIGKILL while step 2's result is being uploaded: the next processor runs the step
    again and completes; the journal references one object for it; the partial upload is an
    orphan that the sweep deletes, and nothing else."""
    stack.start_service()
    first = stack.start_processor("p-doomed", DURABLE_ACK_WAIT="4")
    path, _ = _argument(tmp_path, 20 * MB)
    await _invoke_file(client, path, "large-kill")

    async def uploading() -> bool:
        # The argument plus step 2's object under way (step 2 not journaled yet).
        return len(await _objects_of(transport, "large-kill")) >= 2

    await assert_eventually_async(uploading, 120, "step 2's upload to start")
    first.kill()
    names = [r.entry.name for r in await transport.read_journal("large-kill", current=True)]
    assert "generate" not in names, f"the upload ended before the kill: {names}"
    partial = await _objects_of(transport, "large-kill")
    stack.start_processor("p-next", DURABLE_ACK_WAIT="4")
    result = await client.wait("large-kill", timeout=240)
    assert result.status.value == "completed", result
    assert result.output["result"] == {"sha256": _expected_result(80 * MB), "size": 80 * MB}
    refs = await _refs(transport, "large-kill")
    assert len(refs) == 1 and refs[0].size == 80 * MB
    state = (await transport.get_state("large-kill")).state  # type: ignore[union-attr]
    live = {state.args.ref.object, refs[0].object}
    orphans = partial - live
    assert orphans, partial  # the killed run's partial upload
    assert await _objects_of(transport, "large-kill") >= live | orphans
    swept = await Engine(transport).sweep_payloads(timedelta(0))
    assert set(swept) >= orphans
    assert await _objects_of(transport, "large-kill") == live


async def _rewrite(transport: Transport, name: str, data: bytes) -> None:
    """Replace the chunks of object ``name`` with ``data`` (as Payloads.put lays them out)."""
    store = transport.payloads
    subject = f"$O.{store.bucket}.C.{name}"
    await transport.js.purge_stream(store.stream, subject=subject)
    for index, start in enumerate(range(0, len(data), CHUNK_SIZE)):
        chunk = data[start : start + CHUNK_SIZE]
        await transport.js.publish(subject, chunk, headers={"Durable-Chunk": str(index)})


async def test_a_corrupt_object_releases_the_run_until_it_is_mended(
    stack: ProcessStack,
    client: Client,
    transport: Transport,
    tmp_path: Path,
    kinds: Callable[[str], Awaitable[list[str]]],
) -> None:
    """The argument's bytes no longer match its digest: the run is released (an engine
    error, logged), never failed and never run on the wrong bytes; once the object holds the
    right bytes again, the next delivery completes it."""
    path, digest = _argument(tmp_path, 300 * 1024)
    await _invoke_file(client, path, "large-bad")  # no processor yet: nothing runs
    # A step that catches every error while it reads: still no wrong value journaled.
    f = await asyncio.to_thread(path.open, "rb")
    try:
        await client.invoke_async("swallow_blob", f, id="swallow-bad", queue_unserved=True)
    finally:
        f.close()
    data = path.read_bytes()
    names = {}
    for invocation_id in ("large-bad", "swallow-bad"):
        (names[invocation_id],) = await _objects_of(transport, invocation_id)
        await _rewrite(transport, names[invocation_id], data[:-1] + b"!")  # same size
    stack.start_service()
    processor = stack.start_processor("p-bad")
    processor.wait_log("digest mismatch", timeout=30)
    processor.wait_log("releasing it", timeout=10)

    async def both_released() -> bool:
        log = processor.log()
        return all(f"invocation {i}: stored payload" in log for i in ("large-bad", "swallow-bad"))

    await assert_eventually_async(both_released, 30, "both runs released")
    for invocation_id in ("large-bad", "swallow-bad"):
        journaled = set(await kinds(invocation_id))
        assert not {"FAILED", "COMPLETED", "RUN", "ATTEMPT_FAILED"} & journaled, journaled
    await _rewrite(transport, names["large-bad"], data)
    result = await client.wait("large-bad", timeout=60)
    assert result.status.value == "completed", result
    assert result.output["argument"] == {"sha256": digest, "size": 300 * 1024}


async def test_a_replay_reads_only_the_values_it_hands_to_the_workflow(
    stack: ProcessStack,
    client: Client,
    transport: Transport,
    kinds: Callable[[str], Awaitable[list[str]]],
) -> None:
    """After the wake-up the run replays both large steps: the Blob (never read) is not
    downloaded, so corrupting it changes nothing; the string is handed to the workflow, so it
    is read (and checked) again: corrupting it releases the run instead of a wrong value."""
    stack.start_service()
    processor = stack.start_processor("p-replay")
    refs: list[pb.PayloadRef] = []
    for invocation_id in ("replay-blob", "replay-text"):
        await client.invoke_async("sleep_over_large", {"seconds": 3}, id=invocation_id)

        async def asleep(invocation_id: str = invocation_id) -> bool:
            return "SUSPENDED" in await kinds(invocation_id)

        await assert_eventually_async(asleep, 30, f"{invocation_id} to sleep")
        refs.append(pb.PayloadRef())
        refs[-1].CopyFrom(
            (await _refs(transport, invocation_id))[0 if "blob" in invocation_id else 1]
        )
    blob_ref, text_ref = refs
    await _rewrite(transport, blob_ref.object, b"x" * blob_ref.size)
    await _rewrite(transport, text_ref.object, b"x" * text_ref.size)
    done = await client.wait("replay-blob", timeout=60)
    assert done.status.value == "completed" and done.output == {"blob": 300_000, "text": 300_000}
    processor.wait_log("digest mismatch", timeout=30)  # replay-text: its string was read
    assert "COMPLETED" not in await kinds("replay-text")


async def test_a_childs_retention_leaves_the_output_its_parent_still_needs(
    stack: ProcessStack,
    client: Client,
    transport: Transport,
    wait_status: Callable[[str, str], Awaitable[None]],
    kinds: Callable[[str], Awaitable[list[str]]],
) -> None:
    """The parent replays its child's stored output after the child has expired."""
    stack.start_service()
    stack.start_processor("p-family")
    await client.invoke_async("large_parent", {"seconds": 3}, id="parent-1")

    async def has_result() -> bool:
        return "CHILD_RESULT" in await kinds("parent-1")

    await assert_eventually_async(has_result, 30, "the child's result in the parent's journal")
    await wait_status("parent-1", "suspended")  # asleep
    (child_id,) = (await transport.get_state("parent-1")).state.child_ids  # type: ignore[union-attr]
    rec = await transport.get_state(child_id)
    assert rec is not None and rec.state.output.HasField("ref")
    await _expire(transport, child_id)
    assert await _objects_of(transport, child_id)  # held by the parent
    done = await client.wait("parent-1", timeout=60)
    assert done.status.value == "completed" and done.output == 300_000
    await _expire(transport, "parent-1")
    await Engine(transport).sweep_payloads(timedelta(0))
    assert await _objects_of(transport, child_id) == set()


async def test_retention_removes_objects_and_a_fork_shares_them(
    stack: ProcessStack, client: Client, transport: Transport, tmp_path: Path
) -> None:
    stack.start_service()
    stack.start_processor("p-fork")
    path, _ = _argument(tmp_path, 300 * 1024)  # above the threshold: stored by reference
    await _invoke_file(client, path, "large-src")
    done = await client.wait("large-src", timeout=60)
    assert done.status.value == "completed"
    source = await _objects_of(transport, "large-src")
    assert len(source) == 2  # the argument and step 2's result

    # The inspector shows references and offers their bytes as a download, streamed.
    proc = stack.start(
        "inspector", ["-m", "durable_inspector", "--port", "0"], ready="inspector listening on"
    )
    match = re.search(r"inspector listening on (http://\S+)", proc.log())
    assert match, proc.log()
    async with httpx.AsyncClient(base_url=match.group(1), timeout=30) as http:
        page = await http.get("/executions/large-src")
        assert page.status_code == 200
        assert 'href="/api/executions/large-src/payloads/2" download' in page.text
        assert 'id="download-args"' in page.text
        got = await http.get("/api/executions/large-src/payloads/2")
        assert got.status_code == 200, got.text
        assert hashlib.sha256(got.content).hexdigest() == done.output["result"]["sha256"]
        assert got.headers["x-content-sha256"] == done.output["result"]["sha256"]
        missing = await http.get("/api/executions/large-src/payloads/9")
        assert missing.status_code == 404, missing.text

    fork_id = await client.fork("large-src", from_step=3)
    forked = await client.wait(fork_id, timeout=60)
    assert forked.output == done.output
    # The fork shares the source's objects (none copied under its own id).
    assert {r.object for r in await _refs(transport, fork_id)} <= source
    assert await _objects_of(transport, fork_id) == set()

    engine = Engine(transport)
    await _expire(transport, "large-src")
    assert await _objects_of(transport, "large-src") == source  # the fork holds them
    assert await engine.sweep_payloads(timedelta(0)) == []
    await _expire(transport, fork_id)
    await engine.sweep_payloads(timedelta(0))  # nothing holds or references them any more
    assert await _objects_of(transport, "large-src") == set()

    # Without a fork, retention removes them at once.
    await _invoke_file(client, path, "large-alone")
    await client.wait("large-alone", timeout=60)
    assert len(await _objects_of(transport, "large-alone")) == 2
    await _expire(transport, "large-alone")
    assert await _objects_of(transport, "large-alone") == set()


async def test_a_refused_submission_uploads_nothing(client: Client, transport: Transport) -> None:
    """An unknown workflow (or a bad partition key) is refused before the arguments are
    uploaded: no object is left behind for the sweep."""
    with pytest.raises(UnknownWorkflowError):
        await client.invoke_async("no_such_workflow", io.BytesIO(b"n" * MB), id="refused-1")
    with pytest.raises(InvalidInputError):
        await client.invoke_async(
            "large_payload", io.BytesIO(b"n" * MB), id="refused-2", partition_key="k" * 2000
        )
    assert await transport.payloads.objects() == []


async def _expire(transport: Transport, invocation_id: str) -> None:
    """Expire a finished invocation as the janitor does: again when its state changed between
    the read and the revision-checked removal (the janitor's next sweep would)."""

    async def expired() -> bool:
        rec = await transport.get_state(invocation_id)
        if rec is None:
            return True  # an earlier try landed although its answer was lost
        return await transport.expire_execution(rec, int(time.time() * 1000), 60)

    await assert_eventually_async(expired, 20, f"{invocation_id} expired")
