"""Upgrading workflow code under running invocations (issue 16): ``ctx.patched`` and BLOCKED.

The plugin ``upgrade_probe`` exists here in two versions, each an installed distribution in a
directory of its own (a ``.dist-info`` with its version and entry point, as pip leaves it);
a processor runs the version whose directory is on its ``PYTHONPATH``. Each step's result
names the version that executed it (``charge@1.0``), so the outputs show which code ran what.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path

import pytest

from durable_core import Client, IllegalTransitionError, NatsUnavailableError
from durable_core._code import version_token
from durable_core._pb.durable.v1 import durable_pb2 as pb
from durable_core._transport import Transport
from durable_core.testing import ChildProcess, ProcessStack, assert_eventually_async

pytestmark = pytest.mark.integration

PACKAGE = "upgrade-probe"
V1_TOKEN = version_token(PACKAGE, "1.0")
V2_TOKEN = version_token(PACKAGE, "2.0")
SLEEP_S = 40  # long enough for 200 invocations to fall asleep and every processor to change

_PLUGIN = '''"""upgrade_probe {version}: one plugin, two versions, for the rolling-upgrade test."""

from datetime import timedelta

from durable_core import Context, hookimpl

__version__ = "{version}"


def _done(name: str) -> str:
    return f"{{name}}@{version}"  # which version executed the step


async def upgrade_patched(ctx: Context, inp: dict) -> dict:
    prepared = await ctx.run("prepare", _done, "prepare")
{charge_patched}
    await ctx.sleep(timedelta(seconds=inp["sleep"]))
    done = await ctx.run("finish", _done, "finish")
    return {{"branch": branch, "prepared": prepared, "charge": charge, "done": done}}


async def upgrade_unpatched(ctx: Context, inp: dict) -> dict:
    prepared = await ctx.run("prepare", _done, "prepare")
    charge = await ctx.run("{unpatched_step}", _done, "{unpatched_step}")
    await ctx.sleep(timedelta(seconds=inp["sleep"]))
    done = await ctx.run("finish", _done, "finish")
    return {{"prepared": prepared, "charge": charge, "done": done}}


@hookimpl
def durable_register_workflows(registry):
    registry.register(upgrade_patched)
    registry.register(upgrade_unpatched)
'''

_V1_CHARGE = """    branch = "old"
    charge = await ctx.run("charge", _done, "charge")"""
# v2 changes the charge step behind ctx.patched ...
_V2_CHARGE = """    if ctx.patched("charge-v2"):
        branch = "new"
        charge = await ctx.run("charge_v2", _done, "charge_v2")
    else:
        branch = "old"
        charge = await ctx.run("charge", _done, "charge")"""
# ... and renames the other workflow's charge step without it (the change that diverges).


def write_plugin(root: Path, version: str) -> Path:
    """``upgrade_probe`` at ``version`` as an installed distribution under ``root``."""
    v2 = version != "1.0"
    home = root / f"upgrade_probe-{version}"
    (home / "upgrade_probe").mkdir(parents=True)
    (home / "upgrade_probe" / "__init__.py").write_text(
        _PLUGIN.format(
            version=version,
            charge_patched=_V2_CHARGE if v2 else _V1_CHARGE,
            unpatched_step="charge_in_cents" if v2 else "charge",
        )
    )
    info = home / f"upgrade_probe-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {PACKAGE}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text("[durable.plugins]\nupgrade_probe = upgrade_probe\n")
    (info / "top_level.txt").write_text("upgrade_probe\n")
    return home


def start(stack: ProcessStack, name: str, home: Path) -> ChildProcess:
    return stack.start_processor(name, DURABLE_LOAD_PLUGINS="upgrade_probe", PYTHONPATH=str(home))


async def statuses(client: Client, ids: list[str]) -> dict[str, str]:
    results = await asyncio.gather(*(client.get_result(i) for i in ids))
    return {r.invocation_id: r.status.value for r in results}


def all_are(client: Client, ids: list[str], status: str) -> Callable[[], Awaitable[bool]]:
    async def reached() -> bool:
        now = await statuses(client, ids)
        failed = [i for i, s in now.items() if s == "failed"]
        if failed:  # a diverged replay must never end FAILED: say so at once
            result = await client.get_result(failed[0])
            raise AssertionError(f"{len(failed)} FAILED, e.g. {failed[0]}: {result.failure}")
        return set(now.values()) == {status}

    return reached


async def wait_all(client: Client, ids: list[str], status: str, timeout: float, what: str) -> None:
    """Wait (bounded) until every invocation of ``ids`` is ``status``; fail at once if any
    ended FAILED."""
    await assert_eventually_async(all_are(client, ids, status), timeout, what, interval=0.5)


async def submit(client: Client, workflow: str, n: int, sleep: int) -> list[str]:
    ids: list[str] = []
    for chunk in range(0, n, 50):
        batch = [
            client.invoke_async(workflow, {"sleep": sleep})
            for _ in range(chunk, min(n, chunk + 50))
        ]
        ids.extend(await asyncio.gather(*batch))
    return ids


async def test_rolling_upgrade_patched_changes_complete_and_unmarked_ones_block_until_v1_returns(
    stack: ProcessStack, client: Client, transport: Transport, tmp_path: Path
) -> None:
    """200 invocations asleep on v1; every processor replaced by v2. The change behind
    ``ctx.patched`` lets them all complete (old ones on the old branch, new ones on the new);
    the unmarked change leaves its invocations BLOCKED with their reason, none FAILED, until
    a v1 processor started later finishes them. Before issue 16 the unmarked change FAILED
    every affected invocation (NonDeterminismError) for good."""
    v1, v2 = write_plugin(tmp_path, "1.0"), write_plugin(tmp_path, "2.0")
    stack.start_service()
    old_fleet = [start(stack, f"p-v1-{i}", v1) for i in range(3)]

    began = time.monotonic()
    patched = await submit(client, "upgrade_patched", 150, SLEEP_S)
    unpatched = await submit(client, "upgrade_unpatched", 50, SLEEP_S)
    asleep = patched + unpatched
    await wait_all(client, asleep, "suspended", 60, "200 invocations asleep on v1")

    for proc in old_fleet:
        assert proc.stop() == 0
    new_fleet = [start(stack, f"p-v2-{i}", v2) for i in range(3)]
    if time.monotonic() - began > SLEEP_S - 3:
        pytest.fail("setting up took longer than the sleep: the upgrade did not happen under it")
    fresh = await submit(client, "upgrade_patched", 50, 1)  # started on v2: the new branch

    # Every patched one completes: those recorded on v1 replay their old charge.
    await wait_all(client, patched + fresh, "completed", SLEEP_S + 60, "patched completed")
    outputs = {i: (await client.get_result(i)).output for i in patched + fresh}
    for i in patched:
        assert outputs[i] == {
            "branch": "old",
            "prepared": "prepare@1.0",
            "charge": "charge@1.0",
            "done": "finish@2.0",
        }, i
    for i in fresh:
        assert outputs[i] == {
            "branch": "new",
            "prepared": "prepare@2.0",
            "charge": "charge_v2@2.0",
            "done": "finish@2.0",
        }, i
    marker = [r.entry for r in await transport.read_journal(fresh[0], current=True)][1]
    assert (marker.kind, marker.name, marker.step) == (pb.ENTRY_KIND_PATCH, "charge-v2", 2)

    # The unmarked change: blocked, none failed, pinned to the version they ran on.
    await wait_all(client, unpatched, "blocked", 60, "the unmarked change blocked")
    every = await statuses(client, asleep + fresh)
    assert "failed" not in every.values()
    for i in unpatched:
        st = (await transport.get_state(i)).state  # type: ignore[union-attr]
        assert st.pinned_version == V1_TOKEN, i
        assert "replay diverged at step 2" in st.blocked_reason
        assert "'charge'" in st.blocked_reason and "'charge_in_cents'" in st.blocked_reason
        assert "started on upgrade-probe 1.0, this processor runs upgrade-probe 2.0" in (
            st.blocked_reason
        )
        assert f"Waits for a processor running upgrade-probe 1.0 (route {V1_TOKEN})" in (
            st.blocked_reason
        )
    # What operators see (`durable status --json` is the inspector's API document).
    shown = stack.cli("status", unpatched[0], "--json")
    assert shown.returncode == 0, shown.stderr
    view = json.loads(shown.stdout)
    assert view["status"] == "blocked"
    assert view["pinned_version"] == V1_TOKEN
    assert "replay diverged at step 2" in view["blocked_reason"]
    assert view["started_on"]["plugin"] == PACKAGE and view["started_on"]["version"] == "1.0"
    assert set(view["actions"]) == {"cancel", "fork"}
    assert view["history"][-1]["status"] == "blocked"
    listed = stack.cli("list", "--status", "blocked", "--limit", "1000", "--json")
    assert listed.returncode == 0, listed.stderr
    assert {row["invocation_id"] for row in json.loads(listed.stdout)} == set(unpatched)

    # A v1 processor started later finishes them, with the code they started on.
    start(stack, "p-v1-late", v1)
    await wait_all(client, unpatched, "completed", 60, "the blocked ones completed on v1")
    for i in unpatched:
        result = await client.get_result(i)
        assert result.output == {
            "prepared": "prepare@1.0",
            "charge": "charge@1.0",
            "done": "finish@1.0",
        }, i
    view = json.loads(stack.cli("status", unpatched[0], "--json").stdout)
    assert [c["version"] for c in view["ran_on"]] == ["1.0", "2.0", "1.0"]
    assert view["blocked_reason"] is None
    assert all(p.proc.poll() is None for p in new_fleet)


async def test_operators_cancel_or_fork_a_blocked_invocation(
    stack: ProcessStack, client: Client, transport: Transport, tmp_path: Path
) -> None:
    """No processor of the pinned version comes: cancel ends a blocked invocation CANCELLED
    without running it; fork re-runs it with today's code and cancels the original (else a
    processor of its version could finish it too). A processor that runs the very version
    the invocation is pinned to (the code changed, the version did not) leaves it blocked
    without handing it on, and says so."""
    v1, v2 = write_plugin(tmp_path, "1.0"), write_plugin(tmp_path, "2.0")
    stack.start_service()
    first = start(stack, "p-v1", v1)
    ids = await submit(client, "upgrade_unpatched", 2, 10)
    await wait_all(client, ids, "suspended", 30, "asleep on v1")
    assert first.stop() == 0
    second = start(stack, "p-v2", v2)
    await wait_all(client, ids, "blocked", 40, "blocked on v2")
    to_cancel, to_fork = ids

    assert (await client.cancel(to_cancel)).value == "cancelled"
    result = await client.get_result(to_cancel)
    assert result.status.value == "cancelled"
    assert result.failure is not None and "cancelled while blocked" in result.failure.message
    kinds = [r.entry.kind for r in await transport.read_journal(to_cancel, current=True)]
    assert kinds[-2:] == [pb.ENTRY_KIND_SUSPENDED, pb.ENTRY_KIND_CANCELLED]
    with pytest.raises(IllegalTransitionError):
        await client.cancel(to_cancel)

    forked = await client.fork(to_fork, from_step=2)  # step 2 is where v2 diverged
    original = await client.get_result(to_fork)
    assert original.status.value == "cancelled"
    assert original.failure is not None and f"replaced by fork {forked}" in (
        original.failure.message
    )
    await wait_all(client, [forked], "completed", 40, "the fork completed on v2")
    assert (await client.get_result(forked)).output == {
        "prepared": "prepare@1.0",  # copied from the original
        "charge": "charge_in_cents@2.0",
        "done": "finish@2.0",
    }

    # Changed code under an unchanged version: the pin would route it back to the same code,
    # so it waits for an operator instead.
    stuck = (await submit(client, "upgrade_unpatched", 1, 10))[0]
    await wait_all(client, [stuck], "suspended", 30, "asleep")
    assert second.stop() == 0
    same_version = tmp_path / "same"
    changed = write_plugin(same_version, "2.0")
    init = changed / "upgrade_probe" / "__init__.py"
    init.write_text(init.read_text().replace('"charge_in_cents"', '"charge_in_euros"'))
    start(stack, "p-v2-changed", changed)
    await wait_all(client, [stuck], "blocked", 40, "blocked by a change without a version")
    st = (await transport.get_state(stuck)).state  # type: ignore[union-attr]
    assert st.pinned_version == V2_TOKEN
    assert "This processor runs that very version" in st.blocked_reason
    assert "Waits for an operator" in st.blocked_reason
    claims = [
        r
        for r in await transport.read_journal(stuck, current=True)
        if r.entry.kind == pb.ENTRY_KIND_CLAIM
    ]
    assert len(claims) == 1  # taken once, not handed round in a loop


@pytest.mark.parametrize("same_version", [False, True], ids=["v2", "changed-under-v1"])
async def test_a_blocked_invocation_fails_at_its_execution_timeout_blocked_once(
    stack: ProcessStack, client: Client, transport: Transport, tmp_path: Path, same_version: bool
) -> None:
    """The execution timeout's wake-up was armed only when an invocation suspended, so one
    that blocked (its replay diverged, no processor of its version came) stayed blocked past
    its timeout for good. Its deadline is armed as it blocks now, on every version's route:
    past it, any processor of the workflow fails it without a replay.

    Changed code under an unchanged version (it waits for an operator): the deadline's
    wake-up, up to a second early, was replayed, diverged and blocked again, re-arming the
    deadline, which fired at once, again and again until the deadline (2-5 blocks, each
    journaled). A run that would block that close to its deadline now waits it out."""
    v1 = write_plugin(tmp_path, "1.0")
    if same_version:
        then = write_plugin(tmp_path / "same", "1.0")
        init = then / "upgrade_probe" / "__init__.py"
        init.write_text(init.read_text().replace('"charge"', '"charge_in_euros"'))
    else:
        then = write_plugin(tmp_path, "2.0")
    stack.start_service()
    first = start(stack, "p-v1-deadline", v1)
    inv = await client.invoke_async(
        "upgrade_unpatched", {"sleep": 6}, execution_timeout=timedelta(seconds=16)
    )
    await wait_all(client, [inv], "suspended", 20, "asleep on v1")
    assert first.stop() == 0
    start(stack, "p-then-deadline", then)
    await wait_all(client, [inv], "blocked", 25, "blocked")
    result = await client.wait(inv, timeout=40)
    assert result.status.value == "failed"
    assert result.failure is not None and result.failure.type == "ExecutionTimeoutError"
    blocks = [
        r
        for r in await transport.read_journal(inv, current=True)
        if r.entry.kind == pb.ENTRY_KIND_SUSPENDED and r.entry.failure.type == "NonDeterminismError"
    ]
    assert len(blocks) == 1, f"blocked {len(blocks)} times"


async def test_a_cancel_of_a_blocked_invocation_cut_short_is_finished_by_the_next(
    stack: ProcessStack, client: Client, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Cancelling a blocked invocation journals its end, then settles what a processor would:
    the state, a waiting parent, the partition key. Cut short after the journal (NATS gone,
    the CLI killed), it left the state blocked and the key held, and a second cancel was
    refused ("already cancelled"): everything behind the key waited for good."""
    v1, v2 = write_plugin(tmp_path, "1.0"), write_plugin(tmp_path, "2.0")
    stack.start_service()
    first = start(stack, "p-v1-cut", v1)
    key = "cut-short"
    blocked = await client.invoke_async("upgrade_unpatched", {"sleep": 3}, partition_key=key)
    await wait_all(client, [blocked], "suspended", 20, "asleep on v1")
    assert first.stop() == 0
    start(stack, "p-v2-cut", v2)
    await wait_all(client, [blocked], "blocked", 25, "blocked on v2")
    behind = await client.invoke_async("upgrade_unpatched", {"sleep": 0}, partition_key=key)
    real_update = client._t.update_state

    async def gone(*args: object, **kwargs: object) -> object:
        raise NatsUnavailableError(["nats://127.0.0.1:1"], "gone while settling")

    monkeypatch.setattr(client._t, "update_state", gone)
    with pytest.raises(NatsUnavailableError):
        await client.cancel(blocked)
    monkeypatch.setattr(client._t, "update_state", real_update)
    assert (await client.cancel(blocked)).value == "cancelled"
    assert (await client.get_result(blocked)).status.value == "cancelled"
    result = await client.wait(behind, timeout=30)
    assert result.status.value == "completed"


@pytest.mark.parametrize("end", ["timeout", "cancel"])
async def test_a_pinned_invocation_asleep_ends_without_its_version(
    stack: ProcessStack, client: Client, transport: Transport, tmp_path: Path, end: str
) -> None:
    """An invocation pinned to v1 (blocked on v2, then taken up by v1) that suspends again
    re-armed its execution timeout's wake-up on v1's route only: once every v1 processor had
    gone, nothing consumed it, and the invocation slept past its timeout for good. The
    deadline goes to every version's route now: a v2 processor fails it, without a replay."""
    v1, v2 = write_plugin(tmp_path, "1.0"), write_plugin(tmp_path, "2.0")
    stack.start_service()
    old = start(stack, "p-v1-pinned-a", v1)
    inv = await client.invoke_async(
        "upgrade_unpatched", {"sleep": 300}, execution_timeout=timedelta(seconds=35)
    )
    began = time.monotonic()
    await wait_all(client, [inv], "suspended", 20, "asleep on v1")
    assert old.stop() == 0
    start(stack, "p-v2-pinned", v2)
    await client.pause(inv)  # a resume wakes it: v2 replays it, diverges and blocks
    await client.resume(inv)
    await wait_all(client, [inv], "blocked", 25, "blocked on v2")
    again = start(stack, "p-v1-pinned-b", v1)  # takes the pinned wake-up and sleeps on
    await wait_all(client, [inv], "suspended", 25, "asleep again on v1")
    st = (await transport.get_state(inv)).state  # type: ignore[union-attr]
    assert st.pinned_version == V1_TOKEN
    assert again.stop() == 0
    if time.monotonic() - began > 30:
        pytest.fail("setting up took longer than the timeout: the case was not made")
    if end == "cancel":
        # Its cancel's wake-up went to v1's route only, and waited there for a v1 processor
        # (for good if none came), the invocation "suspended" meanwhile. It ends at once.
        assert (await client.cancel(inv)).value == "cancelled"
        result = await client.get_result(inv)
        assert result.status.value == "cancelled"
        assert result.failure is not None
        assert "no processor ran its version" in result.failure.message
        return
    result = await client.wait(inv, timeout=60)
    assert result.status.value == "failed"
    assert result.failure is not None and result.failure.type == "ExecutionTimeoutError"
