"""Branches (``asyncio.gather``, ``create_task``) that take several steps each: a replay
matches each step to its entry by the branch that asked for it and its place there, not by
the order steps were asked for, which differs between runs (a replayed step takes no time,
so the first branch replayed all its steps before the second asked for its first)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from durable_core import Context, StepFailedError
from durable_core._pb.durable.v1 import durable_pb2 as pb
from durable_core.errors import TerminalError
from durable_core.testing import replay_workflow

RAN: Counter[str] = Counter()


async def fanout(ctx: Context, items: list[str]) -> list[Any]:
    """Each item: validate, then charge; the first item's validation is the slow one, so
    the other branches take their second step before it takes its first."""

    async def process(item: str, delay: float) -> list[str]:
        async def validate() -> str:
            await asyncio.sleep(delay)
            RAN[f"{ctx.invocation_id} validate {item}"] += 1
            return f"ok-{item}"

        async def charge(token: str) -> str:
            RAN[f"{ctx.invocation_id} charge {item}"] += 1
            return f"charged-{item}"

        token = str(ctx.uuid())  # a branch's own values: the same on replay
        v = await ctx.run("validate", validate)
        c = await ctx.run("charge", charge, token)
        return [v, c, token]

    delays = [0.3] + [0.01] * (len(items) - 1)
    out = await asyncio.gather(*(process(i, d) for i, d in zip(items, delays, strict=True)))
    await ctx.sleep(timedelta(seconds=3))  # suspends: the next run replays every step
    return out


async def test_branches_of_several_steps_replay_after_a_suspension(
    local_engine: Callable[..., Any],
) -> None:
    """The next run replayed the first branch's charge against the second branch's
    validation: blocked ('the journal recorded run validate, the code asks for run
    charge'), as run on the code before."""
    async with local_engine(fanout) as (client, _):
        await client.invoke_async("fanout", ["a", "b", "c"], id="fan1")
        result = await client.wait("fan1", timeout=30)
        assert result.status == "completed", result
        assert [row[:2] for row in result.output] == [
            ["ok-a", "charged-a"],
            ["ok-b", "charged-b"],
            ["ok-c", "charged-c"],
        ]
        assert len({row[2] for row in result.output}) == 3
        ran = {k: n for k, n in RAN.items() if k.startswith("fan1 ")}
        assert ran == {f"fan1 {what} {i}": 1 for what in ("validate", "charge") for i in "abc"}


async def _two_branches(ctx: Context) -> list[Any]:
    async def branch(item: str, delay: float) -> tuple[str, str, str]:
        async def fetch() -> str:
            await asyncio.sleep(delay)
            RAN[f"fetch {item}"] += 1
            return f"price-of-{item}"

        async def charge() -> str:
            RAN[f"charge {item}"] += 1
            return f"charged-{item}"

        p = await ctx.run("work", fetch)  # same name, no input: only the branch tells them apart
        c = await ctx.run("work", charge)
        return item, p, c

    return list(await asyncio.gather(branch("A", 0.05), branch("B", 0.001)))


async def test_a_resumed_run_never_runs_a_journaled_step_of_another_branch_again() -> None:
    """B took both its steps while A's first was in flight; A's second was in flight at a
    crash. The resumed run ran B's journaled charge again (as step 4, under a new
    idempotency key), never A's, and swapped the branches' results: as run on the code
    before."""
    RAN.clear()
    first = await replay_workflow(_two_branches)
    assert first.output == [
        ("A", "price-of-A", "charged-A"),
        ("B", "price-of-B", "charged-B"),
    ]
    in_flight = [e for e in first.new_entries if (e.branch, e.branch_step) == ("1", 2)]
    assert len(in_flight) == 1  # A's charge, the last step to end
    crashed = [e for e in first.new_entries if e not in in_flight]
    RAN.clear()
    resumed = await replay_workflow(_two_branches, journal=crashed)
    assert resumed.output == first.output
    assert dict(RAN) == {"charge A": 1}
    assert resumed.replayed_steps == 3


async def test_a_retry_runs_again_only_the_step_that_failed_the_invocation(
    local_engine: Callable[..., Any],
) -> None:
    """The workflow caught the charge's failure (and notified), then the shipment failed.
    A retry forgot every failed step: the charge ran again, succeeded, and the workflow
    asked for the shipment where the journal had the notice (blocked, the customer
    charged), as run on the code before."""
    calls: Counter[str] = Counter()

    async def order(ctx: Context) -> str:
        def charge() -> str:
            calls["charge"] += 1
            if calls["charge"] == 1:
                raise TerminalError("card declined")  # not retried
            return "charged"

        def ship() -> str:
            calls["ship"] += 1
            if calls["ship"] == 1:
                raise TerminalError("no courier")
            return "shipped"

        try:
            paid = await ctx.run("charge", charge)
        except StepFailedError:
            paid = await ctx.run("notify declined", lambda: "declined")
        return paid + " and " + await ctx.run("ship", ship)

    async with local_engine(order) as (client, _):
        await client.invoke_async("order", id="ord1")
        assert (await client.wait("ord1", timeout=30)).status == "failed"
        await client.retry("ord1")
        result = await client.wait("ord1", timeout=30)
        assert (result.status, result.output) == ("completed", "declined and shipped")
        assert calls == Counter({"charge": 1, "ship": 2})


def test_a_journal_from_before_branches_replays_by_step_number() -> None:
    """Entries without a branch (written before it existed) are matched as they were."""
    from durable_core._journal import Execute, Replay, ReplayMachine

    old = [
        pb.JournalEntry(kind=pb.ENTRY_KIND_RUN, step=1, name="a"),
        pb.JournalEntry(kind=pb.ENTRY_KIND_RUN, step=2, name="b"),
    ]
    m = ReplayMachine("inv", old)
    assert isinstance(m.next_step(pb.ENTRY_KIND_RUN, "a", b"", ("1", 1)), Replay)
    assert isinstance(m.next_step(pb.ENTRY_KIND_RUN, "b", b"", ("", 1)), Replay)
    assert m.next_step(pb.ENTRY_KIND_RUN, "c", b"", ("", 2)) == Execute(3)


@dataclass
class _User:
    name: str


async def _loads_a_user(ctx: Context) -> list[Any]:
    u = await ctx.run("load", lambda: _User("ada"))
    pair = await ctx.run("pair", lambda: (1, 2))
    return [type(u).__name__, u, pair]


async def test_a_run_step_returns_what_a_replay_returns() -> None:
    """The first run got the function's own dataclass and tuple, a replay their JSON (a
    dict, a list): code using u.name failed only after a resume, as run on the code before."""
    first = await replay_workflow(_loads_a_user)
    again = await replay_workflow(_loads_a_user, journal=first.new_entries)
    assert first.output == again.output == ["dict", {"name": "ada"}, [1, 2]]


async def _clock_after_a_send(ctx: Context) -> str:
    await ctx.send("other_wf", {"n": 1})
    seen = ctx.now().isoformat()
    await ctx.run("use the time", lambda t: t, seen)
    return seen


async def test_the_clock_after_a_submission_is_the_same_on_replay() -> None:
    """A replayed send moved ctx.now() to its entry's time, the first run did not: the step
    that took the time as input diverged (blocked), as run on the code before."""
    first = await replay_workflow(_clock_after_a_send, start_time=datetime(2020, 1, 1, tzinfo=UTC))
    again = await replay_workflow(
        _clock_after_a_send, journal=first.new_entries, start_time=datetime(2020, 1, 1, tzinfo=UTC)
    )
    assert again.error is None and again.output == first.output


async def _child_of_tracing(ctx: Context, n: int) -> int:
    return n + 1


async def _parent_of_tracing(ctx: Context, n: int) -> int:
    return int(await ctx.invoke("_child_of_tracing", n))


async def test_a_child_joins_its_parents_trace_with_tracing_off(
    local_engine: Callable[..., Any],
) -> None:
    """Only the tracing interceptor filled a step's outgoing headers: with tracing off a
    child got none, no trace id, and on a processor with tracing began a trace of its own
    (as run on the code before)."""
    async with local_engine(_parent_of_tracing, _child_of_tracing) as (client, _):
        assert (await client.invoke("_parent_of_tracing", 1, id="tp1", timeout=30)).output == 2
        parent = await client.describe("tp1")
        (child_id,) = parent.child_ids
        assert parent.trace_id and (await client.describe(child_id)).trace_id == parent.trace_id


async def _patched_in_branches(ctx: Context) -> list[Any]:
    async def branch(item: str, delay: float) -> list[Any]:
        async def slow() -> str:
            await asyncio.sleep(delay)
            return item

        first = await ctx.run("first", slow)
        new = ctx.patched("new-pricing")
        second = await ctx.run("priced" if new else "old", lambda: item)
        return [first, new, second]

    return list(await asyncio.gather(branch("A", 0.05), branch("B", 0.001)))


async def test_patched_in_a_branch_answers_the_same_on_replay() -> None:
    """The marker named the next step by the count of steps the whole workflow had taken,
    which differs on replay when branches take steps at once: the replay found no marker
    there, took the old code against a journal of the new (blocked), as run on the code
    before."""
    first = await replay_workflow(_patched_in_branches)
    assert first.output == [["A", True, "A"], ["B", True, "B"]]
    again = await replay_workflow(_patched_in_branches, journal=first.new_entries)
    assert again.error is None and again.output == first.output
    assert again.executed_steps == 0
    # Journaled by code from before the change (no marker): the old branch, in each branch.
    old = [e for e in first.new_entries if e.kind != pb.ENTRY_KIND_PATCH]
    for e in old:
        if e.name == "priced":
            e.name = "old"
    before = await replay_workflow(_patched_in_branches, journal=old)
    assert before.error is None and before.output == [["A", False, "A"], ["B", False, "B"]]


CHARGES: list[int] = []


async def _fanout_after_a_timed_step(ctx: Context) -> list[int]:
    async def stamp() -> str:
        return ctx.now().isoformat()  # step code that asks the context, in wait_for's task

    await ctx.run("stamp", stamp, timeout=timedelta(seconds=5))

    async def item(i: int) -> int:
        def charge() -> int:
            CHARGES.append(i)
            return i

        return int(await ctx.run("charge", charge))

    return list(await asyncio.gather(item(1), item(2)))


async def test_tasks_a_step_starts_take_no_branch() -> None:
    """A step with a timeout runs in a task of its own (Python 3.11's wait_for), which only
    the executing run starts: counted as a branch, it shifted the later siblings on replay,
    and the first item's charge ran again while the second got the first's result, as run
    on the code before."""
    CHARGES.clear()
    first = await replay_workflow(_fanout_after_a_timed_step)
    again = await replay_workflow(_fanout_after_a_timed_step, journal=first.new_entries)
    assert first.output == again.output == [1, 2]
    assert CHARGES == [1, 2] and again.executed_steps == 0


async def _sync_first_request(ctx: Context) -> list[Any]:
    await ctx.run("first", lambda: 0)  # its outcome is deferred: the next step's settle waits

    async def pay() -> str:
        return str(await ctx.run("pay", lambda: "paid"))

    async def approval() -> str:
        aw = ctx.awakeable()  # a first request that does not wait
        await ctx.run("notify", lambda: aw.id)
        return aw.id

    return list(await asyncio.gather(pay(), approval()))


async def test_a_branch_is_named_before_its_first_step_waits(
    local_engine: Callable[..., Any],
) -> None:
    """The branch was named after the step's settle, which waits for a write only in a run
    that executes: a sibling whose first request did not wait took its place there, and
    the replay asked for pay where the journal had notify (blocked), as run on the code
    before."""

    async def wf(ctx: Context) -> list[Any]:
        out = await _sync_first_request(ctx)
        await ctx.sleep(timedelta(seconds=3))  # the next run replays it all
        return out

    async with local_engine(wf, batches=True) as (client, _):
        await client.invoke_async("wf", id="sync1")
        result = await client.wait("sync1", timeout=30)
        assert result.status == "completed", result
        assert result.output == ["paid", "awk.sync1.2_1"]


async def _charges_side_by_side(ctx: Context) -> list[int]:
    async def charge(i: int) -> int:
        def f() -> int:
            if not OUTAGE_OVER:
                raise TerminalError(f"outage {i}")
            return i

        return int(await ctx.run(f"charge-{i}", f))

    res = await asyncio.gather(*(charge(i) for i in range(3)), return_exceptions=True)
    errors = [r for r in res if isinstance(r, BaseException)]
    if errors:
        raise errors[0]
    return [int(r) for r in res if isinstance(r, int)]


OUTAGE_OVER = False


async def test_a_retry_runs_again_every_branch_that_failed() -> None:
    """Three charges failed side by side (gather, return_exceptions) and the workflow raised
    the first: a retry forgot only that one and failed again at once (one retry per failed
    branch), as run on the first version of this change."""
    global OUTAGE_OVER
    OUTAGE_OVER = False
    first = await replay_workflow(_charges_side_by_side, raise_on_error=False)
    assert isinstance(first.error, StepFailedError)
    failed = pb.JournalEntry(
        kind=pb.ENTRY_KIND_FAILED,
        failure=pb.Failure(type="StepFailedError", message="outage", step=first.error.step),
    )
    journal = [*first.new_entries, failed, pb.JournalEntry(kind=pb.ENTRY_KIND_RETRY_REQUEST)]
    OUTAGE_OVER = True
    again = await replay_workflow(_charges_side_by_side, journal=journal)
    assert again.output == [0, 1, 2] and again.executed_steps == 3


async def test_is_replaying_ends_where_the_journal_does() -> None:
    """It stayed True for the rest of a run after its first new step (the run's own entries
    counted as not yet replayed), as run on the first version of this change."""

    async def wf(ctx: Context) -> list[bool]:
        seen = [ctx.is_replaying]
        await ctx.run("a", lambda: 1)
        seen.append(ctx.is_replaying)
        await ctx.run("b", lambda: 2)
        return seen

    first = await replay_workflow(wf)
    assert first.output == [False, False]
    again = await replay_workflow(wf, journal=first.new_entries[:1])
    assert again.output == [True, False]


COUNT = iter(range(1, 10**6))


async def _nested_groups(ctx: Context) -> list[Any]:
    async def leaf(tag: str) -> tuple[str, int]:
        return tag, int(await ctx.run("charge", lambda: next(COUNT)))

    async def group() -> list[tuple[str, int]]:
        return list(await asyncio.gather(leaf("g1"), leaf("g2")))  # starts tasks, asks nothing

    g = asyncio.create_task(group())
    await ctx.run("a", lambda: 0)
    other = asyncio.create_task(leaf("o"))
    return list(await asyncio.gather(g, other))


async def test_a_branch_is_named_when_it_is_created() -> None:
    """Named at its first request, a task started by one that had asked nothing yet was
    counted under that one's parent, among its siblings in the order they first asked:
    which, on replay, the root's replayed step no longer held back; the charges went to
    the wrong branches, as run on the code before."""
    global COUNT
    COUNT = iter(range(1, 10**6))
    first = await replay_workflow(_nested_groups)
    again = await replay_workflow(_nested_groups, journal=first.new_entries)
    assert again.output == first.output and again.executed_steps == 0
    assert first.output == [[("g1", 1), ("g2", 2)], ("o", 3)]


async def _audit_beside(ctx: Context) -> str:
    def slow(x: Any) -> Any:
        time.sleep(0.05)
        return x

    async def audit() -> str:
        return str(await ctx.run("audit", slow, ctx.now().isoformat()))

    t = asyncio.create_task(audit())
    await ctx.run("a", slow, 1)
    return await t


async def test_a_branch_starts_with_its_parents_clock_when_created() -> None:
    """A branch took its parent's clock when it first asked: in the first run while the
    parent's step ran, on replay after it had replayed (later): its step's input differed
    (blocked), as run on the code before."""
    start = datetime(2020, 1, 1, tzinfo=UTC)
    first = await replay_workflow(_audit_beside, start_time=start)
    again = await replay_workflow(_audit_beside, journal=first.new_entries, start_time=start)
    assert again.error is None and again.output == first.output == start.isoformat()


async def _charges_in_branches(ctx: Context) -> list[str]:
    from durable_examples.order.v1.order_pb2 import ChargeRequest, ValidateRequest
    from order_processing import orders

    async def item(i: int, delay: float) -> str:
        await ctx.run("hold", asyncio.sleep, delay)
        await ctx.call(orders.Validate, ValidateRequest(order_id=f"o-{i}"))
        charged = await ctx.call(orders.Charge, ChargeRequest(order_id=f"o-{i}"))
        return str(charged.charge_id)

    return list(await asyncio.gather(item(1, 0.05), item(2, 0.0)))


def _fake_order_calls() -> dict[str, Any]:
    from durable_examples.order.v1.order_pb2 import ChargeResponse, ValidateResponse

    return {
        "Validate": lambda req: ValidateResponse(),
        "Charge": lambda req: ChargeResponse(charge_id=f"ch-{req.order_id}"),
    }


async def test_a_call_in_flight_at_a_crash_keeps_its_idempotency_key() -> None:
    """A branch's call in flight when its processor died was sent again under another step
    number, so another key (<id>:<step>): the service ran the charge twice, as run on the
    code before. Keys now name the branch and the step's place there."""
    first = await replay_workflow(_charges_in_branches, calls=_fake_order_calls())
    keys = {
        c.request.order_id + " " + c.path.rsplit("/", 1)[1]: c.metadata["idempotency-key"]
        for c in first.calls
    }
    assert (
        keys["o-1 Charge"] == "test-invocation:1/3" and keys["o-2 Charge"] == "test-invocation:2/3"
    )
    # Both charges in flight at a crash (item 2's asked for first: item 1 held longer).
    charges = [e for e in first.new_entries if e.name.endswith("/Charge")]
    assert [e.branch for e in sorted(charges, key=lambda e: e.step)] == ["2", "1"]
    crashed = [e for e in first.new_entries if e not in charges]
    again = await replay_workflow(_charges_in_branches, journal=crashed, calls=_fake_order_calls())
    resent = {c.request.order_id: c.metadata["idempotency-key"] for c in again.calls}
    assert resent == {"o-1": keys["o-1 Charge"], "o-2": keys["o-2 Charge"]}
    assert again.output == first.output == ["ch-o-1", "ch-o-2"]


async def test_a_retry_replays_a_failure_a_branch_caught(
    local_engine: Callable[..., Any],
) -> None:
    """Each branch caught its charge's failure and went on (returned None); then the
    shipment failed. A caught failure that is its branch's last step looked like one let
    through, and the retry charged the declined card again (as run on the code before);
    the final entry now names the failures the workflow let through."""
    calls: Counter[str] = Counter()

    async def orders_of(ctx: Context) -> str:
        async def try_charge(i: int) -> str | None:
            def charge() -> str:
                calls[f"charge {i}"] += 1
                if i == 2 and calls["charge 2"] == 1:
                    raise TerminalError("declined")
                return f"ch-{i}"

            try:
                return str(await ctx.run(f"charge {i}", charge))
            except StepFailedError:
                return None

        charged = await asyncio.gather(try_charge(1), try_charge(2))

        def ship() -> str:
            calls["ship"] += 1
            if calls["ship"] == 1:
                raise TerminalError("no courier")
            return "shipped"

        return f"{await ctx.run('ship', ship)} {charged}"

    async with local_engine(orders_of) as (client, _):
        await client.invoke_async("orders_of", id="caught1")
        assert (await client.wait("caught1", timeout=30)).status == "failed"
        await client.retry("caught1")
        result = await client.wait("caught1", timeout=30)
        assert (result.status, result.output) == ("completed", "shipped ['ch-1', None]")
        assert calls == Counter({"charge 1": 1, "charge 2": 1, "ship": 2})


async def _retry_once_fails(
    local_engine: Callable[..., Any], wf: Callable[..., Any], calls: Counter[str]
) -> Any:
    async with local_engine(wf) as (client, _):
        iid = f"r-{wf.__name__}"
        await client.invoke_async(wf.__name__, id=iid)
        assert (await client.wait(iid, timeout=30)).status == "failed"
        await client.retry(iid)
        return await client.wait(iid, timeout=30)


def _card(calls: Counter[str], name: str, fail_first: bool = False) -> Callable[[], str]:
    def charge() -> str:
        calls[name] += 1
        if fail_first and calls[name] == 1:
            raise TerminalError(f"{name} failed")
        return name

    return charge


async def test_a_retry_replays_failures_caught_in_any_way(
    local_engine: Callable[..., Any],
) -> None:
    """Caught failures stay as they were on a retry, however they were caught: by the one
    that awaited the failed branch's task; in an except block in which a later step then
    failed (the caught one is only its __context__); or before the workflow raised an error
    of its own, with no step's failure in it. Each was run again on the first version of
    the named failures (a card charged twice, the invocation blocked), as run."""
    calls: Counter[str] = Counter()

    async def awaited(ctx: Context) -> str:
        t = asyncio.create_task(ctx.run("charge", _card(calls, "awaited card1", True)))
        try:
            await t
        except StepFailedError:
            await ctx.run("charge2", _card(calls, "awaited card2"))
        return str(await ctx.run("ship", _card(calls, "awaited ship", True)))

    async def in_handler(ctx: Context) -> str:
        try:
            await ctx.run("charge", _card(calls, "handler card1", True))
        except StepFailedError:
            await ctx.run("charge2", _card(calls, "handler card2"))
            return str(await ctx.run("ship", _card(calls, "handler ship", True)))
        return "paid"

    async def own_error(ctx: Context) -> str:
        async def try_charge() -> None:
            with contextlib.suppress(StepFailedError):
                await ctx.run("charge", _card(calls, "own card", True))

        await asyncio.gather(try_charge())
        calls["audit"] += 1
        if calls["audit"] == 1:
            raise TerminalError("audit service down")
        return "audited"

    for wf, card in ((awaited, "awaited card1"), (in_handler, "handler card1")):
        result = await _retry_once_fails(local_engine, wf, calls)
        assert result.status == "completed", (wf.__name__, result)
        assert calls[card] == 1, wf.__name__
    result = await _retry_once_fails(local_engine, own_error, calls)
    assert (result.status, result.output) == ("completed", "audited")
    assert calls["own card"] == 1


async def test_a_task_factory_set_over_the_engines_names_each_branch_once() -> None:
    """A library that sets a task factory chaining the one already there (the engine's)
    made the engine's run twice per task: every task a branch started was named a level
    too deep, its journaled steps not found, and run again under new keys (as run on the
    first version of the factory)."""
    first = await replay_workflow(_nested_groups)
    loop = asyncio.get_running_loop()
    engines = loop.get_task_factory()
    assert engines is not None

    def chaining(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> Any:
        return engines(loop, coro, **kwargs)

    loop.set_task_factory(chaining)
    try:
        again = await replay_workflow(_nested_groups, journal=first.new_entries)
    finally:
        loop.set_task_factory(None)
    assert again.executed_steps == 0 and again.output == first.output
