"""The ``durable`` command line against a real 3-node cluster (issue 17, items 1-3).

Each test runs the CLI as a subprocess (``python -m durable_core.cli``) next to the example
service and a processor on the test's own engine prefix.
"""

from __future__ import annotations

import asyncio
import json
import os
import pty
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from durable_core import Client
from durable_core.testing import ProcessStack, assert_eventually_async

pytestmark = pytest.mark.integration


def ok(cp: subprocess.CompletedProcess[str]) -> str:
    assert cp.returncode == 0, f"exit {cp.returncode}: {cp.stderr}"
    assert "Traceback" not in cp.stderr
    return cp.stdout


async def cli(stack: ProcessStack, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(stack.cli, *args, **kw)


async def view(stack: ProcessStack, invocation_id: str) -> dict[str, Any]:
    return json.loads(ok(await cli(stack, "status", invocation_id, "--json")))  # type: ignore[no-any-return]


def started_id(stderr: str) -> str:
    match = re.search(r"invocation (\S+) started", stderr)
    assert match, stderr
    return match.group(1)


async def test_invoke_inputs_listing_and_id_reuse(stack: ProcessStack, tmp_path: Path) -> None:
    stack.start_service()
    stack.start_processor("p-cli")
    doc = tmp_path / "args.json"
    doc.write_text('{"name": "File"}')

    out = json.loads(
        ok(await cli(stack, "invoke", "hello_workflow", "--args", f"@{doc}", "--json"))
    )
    assert out["status"] == "completed" and out["args"] == {"name": "File"}
    assert "File" in out["output"]["message"]
    cp = await cli(
        stack, "invoke", "hello_workflow", "--args", "-", "--json", stdin='{"name": "In"}'
    )
    from_stdin = json.loads(ok(cp))
    assert from_stdin["args"] == {"name": "In"}
    # The id is on stderr before the result: an interrupted wait would not lose it.
    assert started_id(cp.stderr) == from_stdin["invocation_id"]

    # The same --id: with the same arguments it is that invocation, with others a conflict.
    first = ok(await cli(stack, "invoke", "hello_workflow", "--id", "same-id", "--args", "{}"))
    assert "completed" in first
    ok(await cli(stack, "invoke", "hello_workflow", "--id", "same-id", "--args", "{ }"))
    cp = await cli(stack, "invoke", "hello_workflow", "--id", "same-id", "--args", '{"name": "B"}')
    assert cp.returncode == 6 and "taken by an invocation of hello_workflow" in cp.stderr

    # Arguments that do not match the workflow's declared type exit 2 (it was exit 1).
    cp = await cli(stack, "invoke", "hello_workflow", "--args", '"Ada"')
    assert cp.returncode == 2 and "does not match its declared type" in cp.stderr

    # list: a header, newest first, --limit; the connection flags after the subcommand.
    cp = await cli(
        stack, "list", "--limit", "2", "--prefix", stack.prefix, unset=["DURABLE_PREFIX"]
    )
    header, *rows = ok(cp).splitlines()
    assert header.split() == ["INVOCATION", "WORKFLOW", "STATUS", "CREATED", "UPDATED", "FAILURE"]
    assert len(rows) == 2 and rows[0].split()[0] == "same-id"
    listed = json.loads(ok(await cli(stack, "list", "--json", "--limit", "10")))
    assert [e["invocation_id"] for e in listed][:1] == ["same-id"]
    created = [e["created_at"] for e in listed]
    assert created == sorted(created, reverse=True) and len(listed) == 3  # '"Ada"' never got in


async def test_waits_lifecycle_and_what_status_shows(stack: ProcessStack, client: Client) -> None:
    stack.start_service()
    stack.start_processor("p-cli")
    args = {"expense_id": "e-cli", "amount_cents": 4200, "hold_seconds": 3600}
    # --timeout: the run waits for an hour; the id is printed at once, the wait times out (5).
    cp = await cli(
        stack, "invoke", "expense_approval", "--args", json.dumps(args), "--timeout", "2"
    )
    assert cp.returncode == 5, cp.stderr
    inv = started_id(cp.stderr)

    async def suspended() -> dict[str, Any] | None:
        v = await view(stack, inv)
        return v if v["status"] == "suspended" and len(v["steps"]) == 4 else None

    v = await assert_eventually_async(
        suspended, 30, "the expense to wait for its hold and its approval"
    )
    assert v["args"] == args and v["actions"] == ["pause", "cancel"]
    sleep, awakeable = v["steps"][2:]
    assert sleep["kind"] == "sleep" and sleep["state"] == "waiting"
    assert sleep["detail"]["duration_ms"] == 3_600_000 and sleep["detail"]["wake_at"]
    assert awakeable["state"] == "waiting" and awakeable["detail"]["awakeable_id"] == f"awk.{inv}.1"
    assert [h["status"] for h in v["history"]] == ["pending", "running", "suspended"]
    assert v["history"][0]["at"] == v["created_at"]  # the journal's times, not a watcher's
    text = ok(await cli(stack, "status", inv))
    assert "1 h 0 min, wakes" in text and "waiting" in text
    assert f"durable awakeable resolve awk.{inv}.1" in text

    # Lifecycle verbs report the state they lead to, not the one read before.
    assert ok(await cli(stack, "pause", inv)).strip() == f"{inv}: paused"
    out = json.loads(ok(await cli(stack, "pause", inv, "--json")))
    assert out == {"invocation_id": inv, "action": "pause", "status": "paused", "settled": True}
    assert ok(await cli(stack, "resume", inv)).strip() in (f"{inv}: suspended", f"{inv}: running")
    resolved = json.loads(
        ok(
            await cli(
                stack,
                "awakeable",
                "resolve",
                f"awk.{inv}.1",
                "--json",
                "--payload",
                "-",
                stdin='{"approver": "ann"}',
            )
        )
    )
    assert resolved == {"awakeable_id": f"awk.{inv}.1", "resolved": True}

    async def approved() -> dict[str, Any] | None:
        step = (await view(stack, inv))["steps"][3]
        return step if step["state"] == "completed" else None

    step = await assert_eventually_async(approved, 30, "the awakeable's payload in status")
    assert step["output"] == {"approver": "ann"} and step["detail"]["completed_at"]
    assert ok(await cli(stack, "cancel", inv)).strip() == f"{inv}: cancelled"
    cp = await cli(stack, "cancel", inv)
    assert cp.returncode == 6 and "already cancelled" in cp.stderr
    v = await view(stack, inv)
    assert v["steps"][2]["state"] == "cancelled" and v["actions"] == ["rerun", "fork"]
    assert ("suspended", "cancel requested") in [(h["status"], h["note"]) for h in v["history"]]

    # A signal's name and payload.
    sig = json.loads(
        ok(await cli(stack, "invoke", "expense_by_signal", "--args", "{}", "--no-wait", "--json"))
    )["invocation_id"]
    sent = json.loads(
        ok(await cli(stack, "signal", sig, "approved", "--payload", '{"by": "cy"}', "--json"))
    )
    assert sent == {"invocation_id": sig, "signal": "approved", "sent": True}
    await client.wait(sig, timeout=30)
    (step,) = (await view(stack, sig))["steps"]
    assert step["kind"] == "signal" and step["name"] == "approved"
    assert step["output"] == {"by": "cy"} and step["state"] == "completed"


async def test_retry_rerun_and_fork_show_where_they_came_from(stack: ProcessStack) -> None:
    stack.start_service()
    stack.start_processor("p-cli")
    # The step fails twice with two attempts allowed: the invocation fails (exit 1).
    cp = await cli(stack, "invoke", "flaky", "--args", '{"failures": 2, "attempts": 2}', "--json")
    assert cp.returncode == 1, cp.stderr
    failed = json.loads(cp.stdout)
    inv = failed["invocation_id"]
    (step,) = failed["steps"]
    assert step["state"] == "failed" and [a["attempt"] for a in step["failed_attempts"]] == [1]
    assert failed["actions"] == ["retry", "rerun", "fork"]

    out = ok(await cli(stack, "retry", inv, "--wait", "30")).strip()
    assert out in (f"{inv}: completed", f"{inv}: running"), out

    async def completed() -> dict[str, Any] | None:
        v = await view(stack, inv)
        return v if v["status"] == "completed" else None

    v = await assert_eventually_async(completed, 30, "the retried invocation to complete")
    (retry,) = v["retries"]  # the body's failure is kept, with when it was retried
    assert retry["type"] == "StepFailedError" and retry["failed_at"] < retry["retried_at"]
    assert [h["status"] for h in v["history"]][-3:] == ["failed", "pending", "running"][:2] + [
        "running"
    ] or "retry requested" in [h["note"] for h in v["history"]]
    (step,) = v["steps"]
    assert step["state"] == "completed" and len(step["failed_attempts"]) == 2

    rerun = json.loads(ok(await cli(stack, "rerun", inv, "--json")))
    assert rerun["rerun_of"] == inv
    assert (await view(stack, rerun["invocation_id"]))["rerun_of"] == inv

    order = json.loads(
        ok(
            await cli(
                stack,
                "invoke",
                "order_processing",
                "--json",
                "--args",
                '{"order_id": "o-cli", "amount_cents": 100}',
            )
        )
    )
    assert len(order["steps"]) == 3
    cp = await cli(stack, "fork", order["invocation_id"], "--from-step", "5")
    assert cp.returncode == 2 and "(1 to 3)" in cp.stderr, cp.stderr
    fork = json.loads(
        ok(await cli(stack, "fork", order["invocation_id"], "--from-step", "2", "--json"))
    )

    async def forked() -> dict[str, Any] | None:
        v = await view(stack, fork["invocation_id"])
        return v if v["status"] == "completed" else None

    v = await assert_eventually_async(forked, 30, "the fork to complete")
    assert v["forked_from"] == order["invocation_id"] and v["fork_from_step"] == 2
    assert [s["copied_from"] for s in v["steps"]] == [order["invocation_id"], None, None]


def test_invoke_shows_a_live_status_line_on_a_terminal(stack: ProcessStack) -> None:
    stack.start_service()
    stack.start_processor("p-cli")
    primary, secondary = pty.openpty()
    args = '{"expense_id": "e-tty", "amount_cents": 1}'
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "durable_core.cli",
            "invoke",
            "expense_approval",
            "--args",
            args,
            "--timeout",
            "4",
        ],
        env={**os.environ, **stack.env, "COLUMNS": "200"},
        stdout=subprocess.PIPE,
        stderr=secondary,
    )
    os.close(secondary)
    seen = b""
    try:
        while proc.poll() is None or not seen:
            try:
                chunk = os.read(primary, 4096)
            except OSError:  # the child closed its end
                break
            if not chunk:
                break
            seen += chunk
    finally:
        proc.wait(timeout=30)
        os.close(primary)
        assert proc.stdout is not None
        proc.stdout.close()
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", seen.decode(errors="replace"))  # no colours
    assert proc.returncode == 5, text
    assert "started (expense_approval)" in text
    assert re.search(r"suspended · \d+\.\d s", text), text  # the live line, updated


async def test_cancelling_a_queued_invocation_says_no_step_runs(stack: ProcessStack) -> None:
    """A cancel of an invocation no processor serves yet said "the step in flight is
    interrupted": there is none."""
    stack.start_service()
    stack.start_processor("p-cli-queued")
    ok(await cli(stack, "invoke", "served_by_nobody", "--queue", "--no-wait", "--id", "q-1"))
    out = ok(await cli(stack, "cancel", "q-1", "--wait", "0"))
    assert "no other step runs" in out and "in flight" not in out, out
