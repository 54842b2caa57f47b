"""A fork replays the steps it copied, whatever they were: a step whose input used ctx.uuid()
(seeded by the invocation id, which differs in the fork), a wait for an awakeable (its id names
the invocation), a signal or a child (their outcomes came as entries of their own, which the
fork copies with the steps that took them). Only the steps from ``from_step`` on run again."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from durable_core import Context
from durable_core._journal import ReplayMachine
from durable_core._pb.durable.v1 import durable_pb2 as pb
from durable_core.errors import (
    ConflictError,
    NatsUnavailableError,
    NonDeterminismError,
    NotFoundError,
    TerminalError,
)
from durable_core.views import InvocationView

RUNS: Counter[str] = Counter()
HANDED: dict[str, str] = {}  # invocation -> the awakeable id its step handed out
FAIL_ONCE: set[str] = set()  # keys whose "last" step fails (once)


def _tagged(invocation_id: str, token: str) -> str:
    RUNS[f"{invocation_id}:tagged"] += 1
    return token


def _hand_out(invocation_id: str, awakeable_id: str) -> str:
    RUNS[f"{invocation_id}:hand_out"] += 1
    HANDED[invocation_id] = awakeable_id
    return awakeable_id


def _last(invocation_id: str, key: str) -> str:
    RUNS[f"{invocation_id}:last"] += 1
    if key in FAIL_ONCE:
        FAIL_ONCE.discard(key)
        raise TerminalError("the last step fails the first time")
    return "done"


def _double(invocation_id: str, n: int) -> int:
    RUNS[f"{invocation_id}:double"] += 1
    return 2 * n


async def doubled(ctx: Context, n: int) -> int:
    return await ctx.run("double", _double, ctx.invocation_id, n)


async def tagged_then_last(ctx: Context, key: str) -> list[str]:
    """Step 1's input is a ctx.uuid(); step 2 fails the first time."""
    token = await ctx.run("tagged", _tagged, ctx.invocation_id, str(ctx.uuid()))
    return [token, await ctx.run("last", _last, ctx.invocation_id, key)]


async def every_wait(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    token = await ctx.run("tagged", _tagged, ctx.invocation_id, str(ctx.uuid()))  # 1
    awk = ctx.awakeable()
    await ctx.run("hand_out", _hand_out, ctx.invocation_id, awk.id)  # 2: its input is the id
    approved = await awk.result()  # 3
    go = await ctx.wait_for_signal("go")  # 4
    child = await ctx.invoke("doubled", args["n"])  # 5
    last = await ctx.run("last", _last, ctx.invocation_id, args["key"])  # 6
    again = await ctx.wait_for_signal("go")  # 7: a signal "go" sent after the first
    return {
        "token": token,
        "approved": approved,
        "go": go,
        "child": child,
        "last": last,
        "again": again,
    }


async def _view(client: Any, invocation_id: str, done: Callable[[InvocationView], bool]) -> Any:
    """The invocation's view once ``done`` says so; a blocked one, or none within 20 s, fails
    the test (a fork that waits for what its source had is never done)."""
    deadline = time.monotonic() + 20
    while True:
        view = await client.describe(invocation_id)
        if view.status == "blocked":
            pytest.fail(f"{invocation_id} is blocked: {view.blocked_reason}")
        if done(view):
            return view
        if time.monotonic() > deadline:
            steps = [(s.step, s.kind, s.name, s.state.value) for s in view.steps]
            pytest.fail(
                f"{invocation_id} is {view.status} (waiting for {view.waiting_for}): {steps}"
            )
        await asyncio.sleep(0.1)


def _finished(view: InvocationView) -> bool:
    return view.status in ("completed", "failed", "cancelled")


def _waits_at(step: int) -> Callable[[InvocationView], bool]:
    def waiting(view: InvocationView) -> bool:
        return _finished(view) or any(
            s.step == step and s.state.value == "waiting" for s in view.steps
        )

    return waiting


async def _run_every_wait(client: Any, source: str, key: str) -> None:
    """Run ``every_wait`` as ``source`` until its last step fails it."""
    FAIL_ONCE.add(key)
    await client.invoke_async("every_wait", {"key": key, "n": 4}, id=source)
    await _view(client, source, _waits_at(3))
    await client.resolve_awakeable(HANDED[source], "yes")
    await client.signal(source, "go", "first")
    await client.signal(source, "go", "second")  # kept: only step 7 would take it
    view = await _view(client, source, _finished)
    assert view.status == "failed" and view.failure["step"] == 6, view.failure


async def test_a_fork_replays_a_step_whose_input_used_ctx_uuid(
    local_engine: Callable[..., Any],
) -> None:
    """The fork's ctx.uuid() differs from its source's (another invocation id): the copied
    step's input hash did too, and the fork was blocked at step 1."""
    async with local_engine(tagged_then_last) as (client, _):
        FAIL_ONCE.add("uuid")
        await client.invoke_async("tagged_then_last", "uuid", id="u-src")
        assert (await _view(client, "u-src", _finished)).status == "failed"
        assert await client.fork("u-src", from_step=2, id="u-fork") == "u-fork"
        view = await _view(client, "u-fork", _finished)
        assert view.status == "completed", view.failure
        source_token = (await client.describe("u-src")).steps[0].output
        assert view.output == [source_token, "done"]  # step 1 as the source recorded it
        assert RUNS["u-fork:tagged"] == 0 and RUNS["u-fork:last"] == 1


async def test_a_fork_replays_an_awakeable_a_signal_and_a_child_and_runs_only_the_rest(
    local_engine: Callable[..., Any],
) -> None:
    """The copied waits find what the source's took (the awakeable's resolution under the
    fork's id for it, the first signal "go", the child's result); the fork runs step 6 and
    waits at step 7 for a signal of its own (the source's second "go" was not taken by any
    copied step, so it is not copied)."""
    async with local_engine(every_wait, doubled) as (client, t):
        await _run_every_wait(client, "w-src", "every")
        source = await client.describe("w-src")
        assert await client.fork("w-src", from_step=6, id="w-fork") == "w-fork"
        view = await _view(client, "w-fork", _waits_at(7))
        assert view.status != "completed", "step 7 took a signal the source had not taken"
        assert await client.fork("w-src", from_step=6, id="w-fork") == "w-fork"  # the same one
        await client.signal("w-fork", "go", "fresh")
        view = await _view(client, "w-fork", _finished)
        assert view.status == "completed", view.failure
        assert view.output == {
            "token": source.steps[0].output,
            "approved": "yes",
            "go": "first",
            "child": 8,
            "last": "done",
            "again": "fresh",
        }
        # Steps 1 to 5 replayed (nothing ran again, no second child), step 6 on ran.
        assert RUNS["w-fork:tagged"] == RUNS["w-fork:hand_out"] == 0
        assert RUNS["w-src-5:double"] == 1 and RUNS["w-fork-5:double"] == 0
        assert RUNS["w-fork:last"] == 1
        assert "w-fork" not in HANDED
        assert view.fork_from_step == 6
        assert [s.copied_from for s in view.steps] == ["w-src"] * 5 + ["", ""]
        # durable status shows the copied waits done (the awakeable's under the fork's id).
        assert [str(s.state) for s in view.steps] == ["completed"] * 7, view.steps
        # The FORKED entry, the five steps, then what their waits took, in the source's order.
        copies = [r.entry for r in await t.read_journal("w-fork")][:9]
        assert (copies[0].kind, copies[0].name, copies[0].step) == (
            pb.ENTRY_KIND_FORKED,
            "w-src",
            6,
        )
        assert [(e.kind, e.name) for e in copies[6:]] == [
            (pb.ENTRY_KIND_AWAKEABLE_RESULT, "awk.w-fork.1"),
            (pb.ENTRY_KIND_SIGNAL, "go"),
            (pb.ENTRY_KIND_CHILD_RESULT, "w-src-5"),
        ]


async def test_a_fork_of_a_fork_replays_the_copies_it_copied(
    local_engine: Callable[..., Any],
) -> None:
    """A fork's copied awakeable step names its source's awakeable: a fork of that fork
    copies it as the fork asked for it, and the resolution too."""
    async with local_engine(every_wait, doubled) as (client, _):
        await _run_every_wait(client, "ff-src", "fork-of-fork")
        await client.fork("ff-src", from_step=6, id="ff-1")
        await _view(client, "ff-1", _waits_at(7))
        await client.signal("ff-1", "go", "one")
        assert (await _view(client, "ff-1", _finished)).status == "completed"
        await client.fork("ff-1", from_step=7, id="ff-2")  # copies steps 1-6, runs step 7
        await _view(client, "ff-2", _waits_at(7))
        await client.signal("ff-2", "go", "two")
        view = await _view(client, "ff-2", _finished)
        assert view.status == "completed", view.failure
        assert view.output["approved"] == "yes" and view.output["again"] == "two"
        assert view.fork_from_step == 7
        assert RUNS["ff-2:tagged"] == RUNS["ff-2:last"] == RUNS["ff-2:hand_out"] == 0
        assert RUNS["ff-src-5:double"] == 1


async def test_a_fork_cut_short_among_the_copied_outcomes_is_finished_by_the_next_call(
    local_engine: Callable[..., Any], appends_cut_after: Callable[..., Any]
) -> None:
    """The first call copies the five steps and one outcome, then NATS is gone for it; the
    same call again checks those, copies the rest and submits: the fork completes."""
    async with local_engine(every_wait, doubled) as (client, t):
        await _run_every_wait(client, "cs-src", "cut-short")
        with appends_cut_after(client, 6), pytest.raises(NatsUnavailableError):
            await client.fork("cs-src", from_step=6, id="cs-fork")
        assert len(await t.read_journal("cs-fork")) == 6
        assert await client.fork("cs-src", from_step=6, id="cs-fork") == "cs-fork"
        await _view(client, "cs-fork", _waits_at(7))
        await client.signal("cs-fork", "go", "late")
        view = await _view(client, "cs-fork", _finished)
        assert view.status == "completed", view.failure
        assert view.output["go"] == "first" and view.output["child"] == 8
        assert RUNS["cs-fork:last"] == 1 and RUNS["cs-fork:tagged"] == 0


def _step(kind: pb.EntryKind, name: str, digest: bytes, writer: str) -> pb.JournalEntry:
    return pb.JournalEntry(
        kind=kind, step=1, name=name, input_hash=digest, writer=writer, branch="", branch_step=1
    )


def test_only_a_forks_copies_skip_the_input_hash_and_take_the_forks_awakeable_id() -> None:
    # A step the invocation ran itself is still checked.
    own = ReplayMachine("inv", [_step(pb.ENTRY_KIND_RUN, "a", b"\x01", "proc-1")])
    with pytest.raises(NonDeterminismError):
        own.next_step(pb.ENTRY_KIND_RUN, "a", b"\x02", ("", 1))
    copied = ReplayMachine("inv", [_step(pb.ENTRY_KIND_RUN, "a", b"\x01", "fork:src")])
    assert copied.next_step(pb.ENTRY_KIND_RUN, "a", b"\x02", ("", 1)).step == 1
    renamed = _step(pb.ENTRY_KIND_AWAKEABLE, "awk.src.2_1", b"", "fork:src")
    assert (
        ReplayMachine("inv", [renamed])
        .next_step(pb.ENTRY_KIND_AWAKEABLE, "awk.inv.2_1", b"", ("", 1))
        .step
        == 1
    )
    # The name and kind still count: another awakeable, or the source's own id, diverges.
    for name in ("awk.inv.1", "awk.src.2_1"):
        with pytest.raises(NonDeterminismError):
            ReplayMachine("inv", [renamed]).next_step(pb.ENTRY_KIND_AWAKEABLE, name, b"", ("", 1))
    with pytest.raises(NonDeterminismError):
        copied.next_step(pb.ENTRY_KIND_RUN, "b", b"\x01", ("", 1))


async def patched_then_fails(ctx: Context) -> str:
    if ctx.patched("fee"):
        await ctx.run("fee", lambda: RUNS.update([f"{ctx.invocation_id}:fee"]) or "fee")
    else:
        await ctx.run("old", lambda: "old")

    def last() -> str:
        RUNS[f"{ctx.invocation_id}:last"] += 1
        if ctx.invocation_id == "p-src":
            raise TerminalError("down")
        return "done"

    return str(await ctx.run("last", last))


async def test_a_fork_replays_the_code_its_source_took_at_a_patch(
    local_engine: Callable[..., Any],
) -> None:
    """The source took the new code at patched("fee"); the fork copied its steps but not the
    marker, so its replay took the old code where the journal had the new: blocked at
    once, as run on the code before."""
    async with local_engine(patched_then_fails) as (client, _):
        await client.invoke_async("patched_then_fails", id="p-src")
        assert (await _view(client, "p-src", _finished)).status == "failed"
        await client.fork("p-src", from_step=2, id="p-fork")
        view = await _view(client, "p-fork", _finished)
        assert (view.status, view.output) == ("completed", "done"), view.failure
        assert RUNS["p-fork:fee"] == 0 and RUNS["p-fork:last"] == 1


async def held_child(ctx: Context, n: int) -> int:
    """A child that finishes once it is sent the signal "release"."""
    await ctx.wait_for_signal("release")
    return await ctx.run("double", _double, ctx.invocation_id, n)


async def waits_for_a_child(ctx: Context, n: int) -> list[Any]:
    token = await ctx.run("tagged", _tagged, ctx.invocation_id, "t")  # 1
    child = await ctx.invoke("held_child", n)  # 2
    return [token, child, await ctx.run("last", _last, ctx.invocation_id, "child")]  # 3


async def test_a_fork_copying_a_wait_for_an_unfinished_child_is_refused_until_it_finishes(
    local_engine: Callable[..., Any],
) -> None:
    """The child reports to its parent alone: a fork that copied the wait for it waited for
    good. Refused (ConflictError) while the child runs; from the child's step it starts a
    child of its own; once the child has finished, a fork copies its result."""
    async with local_engine(waits_for_a_child, held_child) as (client, _):
        await client.invoke_async("waits_for_a_child", 3, id="cw-src")
        await _view(client, "cw-src", _waits_at(2))
        with pytest.raises(ConflictError, match="cw-src-2, which has not finished"):
            await client.fork("cw-src", from_step=3, id="cw-early")
        with pytest.raises(NotFoundError):
            await client.describe("cw-early")  # nothing was made
        # From the child's own step: the fork's child is its own.
        await client.fork("cw-src", from_step=2, id="cw-own")
        await _view(client, "cw-own", _waits_at(2))
        await client.signal("cw-own-2", "release")
        own = await _view(client, "cw-own", _finished)
        assert (own.status, own.output) == ("completed", ["t", 6, "done"]), own.failure
        await client.signal("cw-src-2", "release")
        assert (await _view(client, "cw-src", _finished)).status == "completed"
        await client.fork("cw-src", from_step=3, id="cw-late")
        late = await _view(client, "cw-late", _finished)
        assert (late.status, late.output) == ("completed", ["t", 6, "done"]), late.failure
        assert RUNS["cw-src-2:double"] == RUNS["cw-own-2:double"] == 1
        assert RUNS["cw-late:tagged"] == 0 and RUNS["cw-late:last"] == 1
        assert "cw-late-2" not in (await client.describe("cw-late")).child_ids


async def test_a_forks_status_names_its_own_id_for_a_copied_unresolved_awakeable(
    local_engine: Callable[..., Any],
) -> None:
    """The copied step names the source's awakeable; the fork waits for its own, and status
    showed the source's id, which resolved the source, never the fork."""
    async with local_engine(every_wait, doubled) as (client, _):
        await client.invoke_async("every_wait", {"key": "awk-status", "n": 1}, id="as-src")
        await _view(client, "as-src", _waits_at(3))
        await client.fork("as-src", from_step=4, id="as-fork")
        view = await _view(client, "as-fork", _waits_at(3))
        waiting = view.steps[2]
        assert waiting.detail["awakeable_id"] == "awk.as-fork.1", waiting.detail
        assert waiting.copied_from == "as-src"
        await client.resolve_awakeable(waiting.detail["awakeable_id"], "fork's")
        view = await _view(client, "as-fork", _waits_at(4))
        assert str(view.steps[2].state) == "completed" and view.steps[2].output == "fork's"
        # The source still waits for its own.
        source = await client.describe("as-src")
        assert source.steps[2].detail["awakeable_id"] == HANDED["as-src"]
        assert str(source.steps[2].state) == "waiting"
        await client.cancel("as-src")
        await client.cancel("as-fork")


def test_a_fork_copies_a_branchs_step_only_with_the_branchs_earlier_steps() -> None:
    """After a crash a branch's in-flight step took a higher number (3) than its branch's
    next step (1): a fork from step 2 copied the later step and ran the earlier one anew."""
    from durable_core.client._lifecycle import _whole_branches

    def at(step: int, branch: str, branch_step: int) -> pb.JournalEntry:
        return pb.JournalEntry(
            kind=pb.ENTRY_KIND_RUN, step=step, branch=branch, branch_step=branch_step
        )

    later, root, first_of_b = at(1, "a", 2), at(2, "", 1), at(4, "b", 1)
    assert _whole_branches([later, root, first_of_b]) == [root, first_of_b]
    earlier = at(3, "a", 1)
    assert _whole_branches([later, root, earlier]) == [later, root, earlier]
    legacy = pb.JournalEntry(kind=pb.ENTRY_KIND_RUN, step=1)  # before branches were named
    assert _whole_branches([legacy]) == [legacy]
