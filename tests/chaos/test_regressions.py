"""Regression tests for bugs the chaos suite found, each small and on real parts.

1. A scheduler replica exited (exit code 1) when its tick fetch got a 503 from JetStream, as it
   does while the tick consumer has no leader after a node died: in the first chaos run both
   replicas died on the same leader kill and no schedule fired again. Here the consumer is
   deleted under a running scheduler, which makes every pull request a 503 (no responders),
   deterministically; then it is created again and a tick must still be handled.

2. A redelivered command whose journal reads empty runs without appending a CLAIM first
   (``worker.py``, ``_Execution.run``: ``if self.machine.final is None and self.entries:``), so
   the earlier holder is not fenced. Under chaos the read was a stale direct get (a follower
   just back from SIGSTOP) and the redelivered run executed Validate seconds after it had been
   committed; its own append then failed, it abandoned the run and ACKED the command. Here, on
   real processes and no stale read: processor A (no heartbeats) is still inside step 1 when
   its command is redelivered to B; B runs step 1 too, loses the append race, abandons and acks;
   A is then killed in step 2, and nothing is left to finish the invocation. Fixed when B
   claims first (A's step-1 append then fails, B finishes the run): fixed, B now claims.

3. An append the server stored but answered with "wrong last sequence" (seen under chaos for
   four invocations at once, around a journal leader change after a partition healed): the
   worker re-read the journal, took its own new entry for another processor's, abandoned the
   run and acked the command. The invocations stayed RUNNING forever. Here a transport stores
   step 1's entry and then reports that conflict; the run must recognise its own entry (by its
   message id) and finish, running each step once.

4. A journal append answered 409 / 10158 "duplicate message id is in process" (a clustered
   leader still proposing the first try of the same message id) failed the invocation: the raw
   APIError went up through the workflow and was journaled as its FAILED entry. It is now a
   transient answer (retried until the first try's outcome shows), and any other NATS error
   that reaches the workflow releases the run instead of failing it.

5. (Found by CI, in the per-key ordering test.) Two deliveries of one keyed start, the
   original and a turn, or two turns: one processor read the state (PENDING) and was slow to
   read the key's record; meanwhile the other delivery ran the invocation to the end and
   freed the key. The slow one then took the key, found its RUNNING write in conflict with
   COMPLETED, carried on regardless, ran step 1 again from the journal it never read, lost
   the append race and acked, leaving the finished invocation holding the key: whoever had
   queued behind it stayed PENDING for good. A fresh start now runs only over the PENDING
   state it read; a finished one is acked and its key handed on.

6. (Issue 14.) The engine's control-flow signals (``_LostClaim``, ``_Finished``, ``_NotIdle``)
   derived from Exception and were raised inside workflow code (a ``ctx`` call appends). A
   workflow that wraps its steps in ``try: ... except Exception:`` swallowed a lost claim and
   went on: the zombie run executed its next step's side effect before that step's append was
   refused. They now derive from ``SuspendExecution`` (a BaseException), and a run that was
   stopped refuses every further step, even when the workflow swallows BaseException.

7. (Issue 14, the widened chaos run.) A processor that had lived through a few reconnects
   stopped every run it was given at the first step, for good: its consumer's idea of which
   pull requests were open drifted one request per status the server never sent (requests
   open during a disconnect end silently), and a delivery's bound counted from the oldest of
   them. Each pull request now has its own reply subject, so a delivery's bound counts from
   the request that brought it.

8. (Issue 14, the widened chaos run.) A ``reckless_order`` (``except BaseException`` around
   every step) whose step 1 waited for its next attempt called Charge and Ship while its run
   was being suspended, and journaled them before the suspension: the engine ends a run by
   cancelling the workflow's task, and the workflow swallowed the cancellation and went on.
   Ending a run now marks it stopped first, so every step it tries meanwhile is refused.

9. (Issue 14, the same family.) A worker stopping past its shutdown grace released its runs
   (their commands NAKed, so another processor may start them at once) but left each
   workflow's own task running: a step in flight finished and the next one started. The
   released run's workflow task is now halted as well.

10. (Issue 14, the widened chaos run, seed 14006.) A resolve_awakeable whose journal write was
    stored but answered "wrong last sequence" (as around a leader change, see 3) read the
    journal again, found its own result there and raised AlreadyResolvedError: the caller was
    told its resolve failed while the workflow went on with it. Its own entry (by message id)
    now counts as done before any check runs.

11. (Issue 19, chaos seed 19007 and CI.) A finished child tells its parent after its own state
    says finished (a reader never sees the parent ahead of the child), and a redelivery that
    finds the child finished tells the parent again, in case the run ended between the two;
    a parent gone by retention is left alone (no orphan journal under its id).

12. (The harness, soak seed 20907 of 2026-12-06.) The nemesis's recovery check listed the
    streams once, 1 s after a SIGSTOPped node came back: JetStream's API did not answer within
    10 s (the meta leader was still being elected) and the run was failed for "not recovered"
    while all 36,000 invocations completed. The listing is now asked again until the check's
    own bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import nats.js.errors
import pytest

from durable_core import (
    Client,
    Context,
    EngineConfig,
    InvocationResult,
    InvocationTimeoutError,
    Worker,
    WorkerConfig,
)
from durable_core._pb.durable.v1 import durable_pb2 as pb
from durable_core._transport import JournalConflict, JournalRecord, Transport
from durable_core.admin import Engine
from durable_core.config import NatsConfig
from durable_core.engine import _intake
from durable_core.engine._keys import KeyRecord
from durable_core.errors import NatsUnavailableError
from durable_core.plugins import WorkflowRegistry
from durable_core.schedules import create_schedule
from durable_core.testing import NatsCluster, NatsServer, ProcessStack, assert_eventually_async
from durable_scheduler.runner import Scheduler
from durable_scheduler.settings import SchedulerSettings
from order_processing.testing import OrderServiceControl

from .nemesis import Nemesis

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server() -> Iterator[NatsServer]:
    with NatsServer() as s:
        yield s


async def test_scheduler_keeps_serving_when_its_tick_fetch_gets_a_503(server: NatsServer) -> None:
    engine = EngineConfig(prefix="rg" + uuid.uuid4().hex[:8])
    settings = SchedulerSettings(
        nats=NatsConfig.from_url(server.url), engine=engine, metrics_port=0
    )
    t = await Transport.connect(settings.nats, settings.engine, create=True)  # as a processor
    scheduler = Scheduler(Engine(t), settings)
    run = asyncio.create_task(scheduler.run())
    try:
        stream = t.names.command_stream
        await assert_eventually_async(  # the loop is up once its consumer exists
            lambda: t.js.consumer_info(stream, settings.consumer),
            10,
            "the scheduler's tick consumer",
            retry_on=nats.js.errors.NotFoundError,
        )
        await t.js.delete_consumer(stream, settings.consumer)
        await asyncio.sleep(3.0)  # several fetches, each answered 503
        assert not run.done(), f"the scheduler loop ended: {run.exception()!r}"

        # The consumer comes back (as a new leader would): ticks are handled again.
        await t.tick_consumer(consumer=settings.consumer, ack_wait=10, max_ack_pending=1000)
        await create_schedule(
            t, "again", "hello_workflow", {}, every=timedelta(seconds=1), overlap="allow"
        )

        async def started() -> bool:
            return any(s.invocation_id.startswith("again-") for s in await t.list_states())

        await assert_eventually_async(started, 10, "a tick handled after the consumer came back")
    finally:
        scheduler.stop()
        await asyncio.wait_for(run, 15)
        await t.close()


@pytest.mark.slow
async def test_a_redelivery_fences_the_first_holder_even_before_its_first_entry(
    server: NatsServer, tmp_path: Path
) -> None:
    prefix = "rg" + uuid.uuid4().hex[:8]
    stack = ProcessStack(server.url, prefix, tmp_path, replicas=1)
    try:
        service = OrderServiceControl(stack.start_service().channel)
        service.set_delay("Validate", 3000)
        service.set_delay("Charge", 3000)
        first = stack.start_processor(
            "p-first", "--ack-wait", "1.5", "--heartbeat", "-1", "--max-concurrent", "1"
        )
        client = await Client.connect(server.url, engine=EngineConfig(prefix=prefix))
        try:
            inv = "order-unfenced-1"
            await client.invoke_async(
                "order_processing", {"order_id": "o-1", "amount_cents": 100}, id=inv
            )
            await assert_eventually_async(
                lambda: asyncio.to_thread(service.method_counts, "Validate"),
                20,
                "step 1",
                interval=0.05,
            )
            # The command is redelivered to `second` while `first` is still in step 1.
            stack.start_processor("p-second", "--ack-wait", "1.5")
            await assert_eventually_async(
                lambda: asyncio.to_thread(service.method_counts, "Charge"),
                30,
                "step 2 to start",
                interval=0.05,
            )
            first.kill()  # in step 2, which the first holder was allowed to start
            stack.start_processor("p-third", "--ack-wait", "1.5")
            try:
                result = await client.wait(inv, timeout=30)
            except InvocationTimeoutError:
                pytest.fail(
                    f"{inv} never finished: its command was acked by the run that lost the "
                    f"race, and the holder died\n"
                    + "\n".join(p.log()[-3000:] for p in stack.procs[1:])
                )
            assert result.status == "completed"
        finally:
            await client.close()
    finally:
        stack.stop()


@contextlib.asynccontextmanager
async def _worker_and_client(
    server: NatsServer, transport_cls: type[Transport], *workflows: Callable[..., Any]
) -> AsyncIterator[Client]:
    """An in-process worker for ``workflows`` on ``transport_cls``, and a client."""
    engine = EngineConfig(prefix="rg" + uuid.uuid4().hex[:8])
    registry = WorkflowRegistry()
    for workflow in workflows:
        registry.register(workflow)
    transport = await transport_cls.connect(NatsConfig.from_url(server.url), engine, create=True)
    worker = Worker(transport, registry, WorkerConfig())
    task = asyncio.create_task(worker.run())
    await asyncio.wait_for(worker.consuming.wait(), 20)  # registered: intake accepts it
    client = await Client.connect(server.url, engine=engine)
    try:
        yield client
    finally:
        await client.close()
        worker.stop()
        await task
        await transport.close()


class _StoredButConflicting(Transport):
    """Stores the first RUN entry, then answers as the server did: "wrong last sequence"."""

    lied = False

    async def append(
        self, invocation_id: str, entry: pb.JournalEntry, expected_seq: int, msg_id: str
    ) -> int:
        seq = await super().append(invocation_id, entry, expected_seq, msg_id)
        if entry.kind == pb.ENTRY_KIND_RUN and not self.lied:
            type(self).lied = True
            raise JournalConflict(invocation_id, expected_seq)
        return seq


async def test_an_append_stored_but_answered_as_a_conflict_is_taken_as_ours(
    server: NatsServer,
) -> None:
    runs: list[str] = []

    async def two_steps(ctx: Context) -> str:
        async def step(name: str) -> str:
            runs.append(name)
            return name

        a = await ctx.run("a", step, "a")
        b = await ctx.run("b", step, "b")
        return a + b

    async with _worker_and_client(server, _StoredButConflicting, two_steps) as client:
        inv = await client.invoke_async("two_steps")
        try:
            result = await client.wait(inv, timeout=10)
        except InvocationTimeoutError:
            pytest.fail(f"{inv} was abandoned after its own append: steps run {runs}")
    assert _StoredButConflicting.lied
    assert result.status == "completed"
    assert result.output == "ab"
    assert runs == ["a", "b"]  # step a was not run again


class _RefusesOneJournalPublish(Transport):
    """Answers the first journal write of a RUN entry with ``error`` instead of storing it
    (a step's entry goes alone, or first in an atomic batch with the final entry: then the
    batch's commit is refused, and the batch is dropped whole)."""

    error: dict[str, object] = {}
    refused = 0

    async def _js_publish(
        self, subject: str, data: bytes, headers: dict[str, str]
    ) -> tuple[int, bool]:
        if subject.startswith(self.names.journal_subjects[:-1]):
            entry = pb.JournalEntry.FromString(data)
            step = entry.kind == pb.ENTRY_KIND_RUN or "Nats-Batch-Commit" in headers
            if step and not type(self).refused:
                type(self).refused += 1
                raise nats.js.errors.APIError.from_error(dict(self.error))
        return await super()._js_publish(subject, data, headers)


@pytest.mark.parametrize(
    "error",
    [
        {"code": 409, "err_code": 10158, "description": "duplicate message id is in process"},
        {"code": 500, "err_code": 10077, "description": "store is closed"},
    ],
    ids=["in-process", "other-refusal"],
)
@pytest.mark.parametrize("batches", [True, False], ids=["batch", "one-by-one"])
async def test_a_refused_journal_write_never_fails_the_workflow(
    server: NatsServer, error: dict[str, object], batches: bool
) -> None:

    async def one_step(ctx: Context) -> str:
        async def step() -> str:
            return "done"

        return await ctx.run("a", step)

    # One node writes the last step and the final entry one by one; a replicated journal as
    # one batch (Transport.atomic_batches): both ways here.
    transport_cls = type(
        "Refusing",
        (_RefusesOneJournalPublish,),
        {"error": error, "refused": 0, "atomic_batches": batches},
    )
    async with _worker_and_client(server, transport_cls, one_step) as client:
        result = await client.wait(await client.invoke_async("one_step"), timeout=15)
    assert transport_cls.refused == 1
    assert result.status == "completed", result.failure
    assert result.output == "done"


async def test_a_run_that_lost_its_hold_never_claims(
    server: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A wake-up whose hold lapses before its run claims the invocation claims nothing: the
    run stops and hands the command back, and its next delivery claims it once. Chaos seed
    19005: a run whose in-progress acks went unanswered through a partition claimed an
    invocation that the command's redelivery had meanwhile run, suspended and acked in another
    processor; it stayed RUNNING under a command nobody had (its timer's wake-up was acked as
    "in progress under" it) until the stranded-run sweep, 90 s later. The hold was checked
    before each step only, after the CLAIM: two CLAIMs here."""
    refused: list[int] = []
    real = Worker.holds

    def holds(self: Worker, delivery: Any, lease_epoch: int) -> bool:
        kind = pb.Command.FromString(delivery.data).kind
        if kind == pb.COMMAND_KIND_WAKE and delivery.num_delivered == 1 and not refused:
            refused.append(delivery.command_seq)  # its hold lapsed (just this once)
            return False
        return real(self, delivery, lease_epoch)

    monkeypatch.setattr(Worker, "holds", holds)

    async def naps(ctx: Context) -> str:
        await ctx.sleep(timedelta(seconds=3))  # parked: a server-side timer wakes it
        return await ctx.run("after", lambda: "done")

    async with _worker_and_client(server, Transport, naps) as client:
        inv = await client.invoke_async("naps")
        result = await client.wait(inv, timeout=30)
        records = await client._t.read_journal(inv)
    assert result.status == "completed" and result.output == "done"
    assert refused
    claims = [r.entry for r in records if r.entry.kind == pb.ENTRY_KIND_CLAIM]
    assert [c.command_seq for c in claims] == refused, [r.entry.kind for r in records]


async def _parent_and_kid(
    server: NatsServer, transport_cls: type[Transport]
) -> tuple[str, InvocationResult, list[JournalRecord]]:
    """A parent that starts one child with one step, to its end: id, result, journal."""

    async def kid(ctx: Context) -> str:
        return await ctx.run("k", lambda: "kid done")

    async def parent(ctx: Context) -> str:
        return "parent got " + str(await ctx.invoke("kid"))

    async with _worker_and_client(server, transport_cls, kid, parent) as client:
        inv = await client.invoke_async("parent", id="parent-" + uuid.uuid4().hex[:8])
        result = await client.wait(inv, timeout=30)
        return inv, result, await client._t.read_journal(inv)


class _FirstParentWakeLost(Transport):
    """The first wake-up of a parent (a child's report) is never stored: its processor died
    after the child's final state was written (the stream's leader was away meanwhile)."""

    lost: list[str] = []

    async def publish_wake(self, invocation_id: str, *args: Any, **kwargs: Any) -> None:
        if invocation_id.startswith("parent-") and not type(self).lost:
            type(self).lost.append(invocation_id)
            raise NatsUnavailableError(["nats://test"], "the wake-up's publish timed out")
        await super().publish_wake(invocation_id, *args, **kwargs)


async def test_a_child_whose_report_was_cut_short_reports_again(server: NatsServer) -> None:
    """Chaos seed 19007: a child's run wrote its final state and its result into the
    parent's journal, then died before the parent's wake-up was stored; the child's
    redelivered command found it COMPLETED and was only acked, and the parent stayed
    SUSPENDED with the result in its journal, waiting for nothing. The redelivery now hands
    the outcome to the parent again (the result once, the wake-up deduplicated)."""

    _FirstParentWakeLost.lost = []
    inv, result, records = await _parent_and_kid(server, _FirstParentWakeLost)
    assert _FirstParentWakeLost.lost == [inv]
    assert result.status == "completed" and result.output == "parent got kid done"
    assert [r.entry.kind for r in records].count(pb.ENTRY_KIND_CHILD_RESULT) == 1


class _ChildSeenAtWake(Transport):
    """Records, as a parent's wake-up is published, what its children's states say."""

    seen: list[int] = []

    async def publish_wake(self, invocation_id: str, *args: Any, **kwargs: Any) -> None:
        if invocation_id.startswith("parent-"):
            parent = await self.get_state(invocation_id)
            for child in parent.state.child_ids if parent is not None else ():
                rec = await self.get_state(child)
                type(self).seen.append(rec.state.status if rec is not None else -1)
        await super().publish_wake(invocation_id, *args, **kwargs)


async def test_a_parent_hears_of_its_child_only_after_the_childs_state_says_finished(
    server: NatsServer,
) -> None:
    """CI on a84576f: the parent was told first, and a reader saw the child's result in the
    parent while the child's own state still said RUNNING (its output not there yet)."""

    _ChildSeenAtWake.seen = []
    _, result, _ = await _parent_and_kid(server, _ChildSeenAtWake)
    assert result.status == "completed"
    assert _ChildSeenAtWake.seen == [pb.STATUS_COMPLETED], [
        pb.Status.Name(s) if s >= 0 else "gone" for s in _ChildSeenAtWake.seen
    ]


async def test_a_late_report_to_a_parent_that_is_gone_writes_nothing(server: NatsServer) -> None:
    """A finished child's command redelivered after its parent was purged by retention
    reports again (see above); it must not start an orphan journal under the parent's id."""

    async def kid(ctx: Context) -> str:
        return "kid done"

    async with _worker_and_client(server, Transport, kid) as client:
        t = client._t
        child = pb.ExecutionState(
            invocation_id="gone-parent-1-1",
            workflow="kid",
            status=pb.STATUS_COMPLETED,
            parent_id="gone-parent-1",
            parent_workflow="parent",
            parent_partition_key="gone-parent-1",
            notify_parent=True,
        )
        final = pb.JournalEntry(kind=pb.ENTRY_KIND_COMPLETED)
        await _intake.report_to_parent(t, child, final)
        assert await t.read_journal("gone-parent-1") == []


_KEYED_ID = "keyed-twice-1"


class _SlowKeyRead(Transport):
    """The first read of a key's record waits until the invocation has finished elsewhere."""

    stalled = 0

    async def key_record(self, partition_key: str) -> tuple[bytes | None, int]:
        if not type(self).stalled:
            type(self).stalled += 1
            for _ in range(200):
                rec = await self.get_state(_KEYED_ID)
                if rec is not None and rec.state.status == pb.STATUS_COMPLETED:
                    break
                await asyncio.sleep(0.05)
        return await super().key_record(partition_key)


async def test_a_second_delivery_of_a_finished_keyed_start_neither_reruns_it_nor_keeps_the_key(
    server: NatsServer,
) -> None:
    runs: list[str] = []

    async def keyed(ctx: Context) -> str:
        async def step() -> str:
            runs.append(ctx.invocation_id)
            return "done"

        return await ctx.run("a", step)

    async with _worker_and_client(server, _SlowKeyRead, keyed) as client:
        t = client._t
        inv = await client.invoke_async("keyed", id=_KEYED_ID, partition_key="k")
        # The same start once more, as a second turn of the key is: this one runs it while
        # the first delivery waits on its read of the key.
        await t.publish_command(
            pb.Command(
                invocation_id=inv, workflow="keyed", partition_key="k", kind=pb.COMMAND_KIND_START
            ),
            msg_id=f"turn:{inv}:test",
        )
        result = await client.wait(inv, timeout=15)
        await _wait_until_settled(t, 10)  # the slow delivery too
        holder = KeyRecord.parse((await t.key_record("k"))[0]).active
        after = await client.invoke("keyed", partition_key="k", timeout=15)
    assert _SlowKeyRead.stalled == 1
    assert result.status == "completed" and after.status == "completed"
    assert runs == [inv, after.invocation_id], "step 1 of a finished invocation ran again"
    assert holder == "", f"the key is still held by {holder}, which has finished"


async def _wait_until_settled(t: Transport, timeout: float = 15) -> None:
    """Until the processors' consumer holds nothing (every command acked or terminated)."""

    async def settled() -> bool:
        pending, ack_pending, _ = await t.consumer_stats("processor")
        return not (ack_pending or pending)

    await assert_eventually_async(settled, timeout, "every command settled", interval=0.05)


class _StepA:
    """Steps that note their name; step "a" blocks until ``release`` is set."""

    def __init__(self) -> None:
        self.effects: list[str] = []
        self.in_step = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, name: str) -> str:
        self.effects.append(name)
        if name == "a":
            self.in_step.set()
            await self.release.wait()
        return name


@pytest.mark.parametrize("caught", [Exception, BaseException], ids=["Exception", "BaseException"])
async def test_a_workflow_that_catches_everything_runs_no_step_after_losing_its_claim(
    server: NatsServer, caught: type[BaseException]
) -> None:
    step = _StepA()
    effects, in_step, release = step.effects, step.in_step, step.release

    async def careless(ctx: Context) -> str:
        for name in ("a", "b", "c"):
            try:  # noqa: SIM105 - the careless pattern under test, as users write it
                await ctx.run(name, step, name)
            except caught:
                pass
        return "done"

    async with _worker_and_client(server, Transport, careless) as client:
        t = client._t
        inv = await client.invoke_async("careless")
        await asyncio.wait_for(in_step.wait(), 10)
        # Another processor takes the invocation over while step a runs: its CLAIM fences
        # this run, whose append of step a then fails.
        records = await t.read_journal(inv)
        claim = pb.JournalEntry(
            kind=pb.ENTRY_KIND_CLAIM, index=len(records) + 1, writer="elsewhere/0001"
        )
        await t.append(inv, claim, records[-1].seq if records else 0, f"{inv}:claim:elsewhere")
        release.set()
        await _wait_until_settled(t)
        journal = [r.entry for r in await t.read_journal(inv)]
    assert effects == ["a"], f"steps run after the claim was lost: {effects[1:]}"
    assert [e.kind for e in journal] == [pb.ENTRY_KIND_CLAIM]


@pytest.mark.slow
async def test_a_consumer_whose_pull_requests_died_unanswered_still_holds_new_deliveries(
    tmp_path: Path,
) -> None:
    """7. (Issue 14, found by the widened chaos run.) A processor that had lived through a few
    reconnects stopped every run it was given, at its first step, for minutes ("may be
    redelivered to another processor by now"), even delivery 1 of fresh commands, while the
    cluster was healthy: a delivery's bound counted from the oldest pull request the consumer
    believed open, but requests open during a disconnect end without a status (the server
    forgets them), so that belief drifted one request per lost status, for good, until every
    new delivery was born expired. Here the server is restarted under an open pull request
    eight times; then a command's delivery must still be surely held for most of ack_wait."""
    ack_wait = 4.0
    server = NatsServer(store_dir=tmp_path / "store").start()
    try:
        engine = EngineConfig(prefix="rg" + uuid.uuid4().hex[:8])
        t = await Transport.connect(NatsConfig.from_url(server.url), engine, create=True)
        try:
            consumer = await t.command_consumer(
                WorkerConfig(ack_wait=timedelta(seconds=ack_wait), max_concurrent=10),
                [("w", "")],
            )
            for _ in range(8):
                fetching = asyncio.create_task(consumer.fetch(10, timeout=2.0))
                await asyncio.sleep(0.3)  # a pull request is open
                await asyncio.to_thread(server.kill)
                await asyncio.to_thread(server.start)
                assert await fetching == []
                for _ in range(100):
                    if t.nc.is_connected:
                        break
                    await asyncio.sleep(0.1)
            await t.publish_command(
                pb.Command(invocation_id="x", workflow="w", kind=pb.COMMAND_KIND_START),
                msg_id="start:x",
            )
            deliveries = await consumer.fetch(1, timeout=10.0)
            assert len(deliveries) == 1
            left = deliveries[0].held_until - time.monotonic()
            assert left > ack_wait / 2, f"a fresh delivery is held for {left:.1f}s more only"
        finally:
            await t.close()
    finally:
        server.stop()


async def test_a_workflow_that_swallows_its_suspension_runs_no_step_before_it_wakes(
    server: NatsServer,
) -> None:
    """8. (Issue 14, found by the widened chaos run.) The engine suspends a run whose steps all
    wait by cancelling the workflow's task; a workflow that catches BaseException around the
    wait swallowed that and ran its next step at once, before the wait was over."""
    effects: list[str] = []
    swallowed = BaseException  # the reckless pattern under test, as users write it

    async def reckless_sleeper(ctx: Context) -> str:
        async def step(name: str) -> str:
            effects.append(name)
            return name

        try:  # noqa: SIM105
            await ctx.sleep(timedelta(minutes=10))
        except swallowed:
            pass
        return await ctx.run("b", step, "b")

    async with _worker_and_client(server, Transport, reckless_sleeper) as client:
        t = client._t
        inv = await client.invoke_async("reckless_sleeper")
        kinds: list[int] = []
        for _ in range(200):
            kinds = [r.entry.kind for r in await t.read_journal(inv)]
            if pb.ENTRY_KIND_SUSPENDED in kinds:
                break
            await asyncio.sleep(0.05)
        await _wait_until_settled(t)
        kinds = [r.entry.kind for r in await t.read_journal(inv)]
    assert effects == [], f"a step ran while the run was being suspended: {effects}"
    assert pb.ENTRY_KIND_RUN not in kinds, [pb.EntryKind.Name(k) for k in kinds]
    assert kinds[-1] == pb.ENTRY_KIND_SUSPENDED, [pb.EntryKind.Name(k) for k in kinds]


async def test_a_run_released_at_shutdown_runs_no_further_step(server: NatsServer) -> None:
    """9. (Issue 14, the same family.) A worker stopping past its shutdown grace cancels its
    executions and hands their commands back at once, so another processor may run them
    now; but the workflow's own task was left running and went on to its next step."""
    step = _StepA()
    effects, in_step, release = step.effects, step.in_step, step.release

    async def slow(ctx: Context) -> str:
        return await ctx.run("a", step, "a") + await ctx.run("b", step, "b")

    engine = EngineConfig(prefix="rg" + uuid.uuid4().hex[:8])
    registry = WorkflowRegistry()
    registry.register(slow)
    t = await Transport.connect(NatsConfig.from_url(server.url), engine, create=True)
    worker = Worker(t, registry, WorkerConfig(shutdown_grace=timedelta(seconds=0.5)))
    running = asyncio.create_task(worker.run())
    await asyncio.wait_for(worker.consuming.wait(), 20)
    client = await Client.connect(server.url, engine=engine)
    try:
        await client.invoke_async("slow")
        await asyncio.wait_for(in_step.wait(), 10)
        worker.stop()
        await asyncio.wait_for(running, 30)  # the grace ran out: the run was released
        release.set()  # step a ends now: nothing of the released run may go on
        for _ in range(20):  # a while for step b to show up, if it would
            if len(effects) > 1:
                break
            await asyncio.sleep(0.05)
        assert effects == ["a"], f"a released run went on: {effects}"
    finally:
        release.set()
        worker.stop()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(running, 30)
        await client.close()
        await t.close()


async def test_a_resolve_stored_but_answered_as_a_conflict_succeeds(server: NatsServer) -> None:
    """10. (Issue 14, found by the widened chaos run.) The resolve's write is stored but
    answered "wrong last sequence"; the retry must see its own entry, not someone else's."""

    async def approve(ctx: Context) -> Any:
        return await ctx.awakeable().result()

    async with _worker_and_client(server, Transport, approve) as client:
        inv = await client.invoke_async("approve")
        for _ in range(200):  # until the run waits for the awakeable
            if (await client.get_result(inv)).status.value == "suspended":
                break
            await asyncio.sleep(0.05)
        t = client._t
        real, lied = t.append, []

        async def stored_but_conflicting(
            invocation_id: str, entry: pb.JournalEntry, expected_seq: int, msg_id: str
        ) -> int:
            seq = await real(invocation_id, entry, expected_seq, msg_id)
            if entry.kind == pb.ENTRY_KIND_AWAKEABLE_RESULT and not lied:
                lied.append(seq)
                raise JournalConflict(invocation_id, expected_seq)
            return seq

        t.append = stored_but_conflicting  # type: ignore[method-assign]
        await client.resolve_awakeable(f"awk.{inv}.1", {"ok": True})
        result = await client.wait(inv, timeout=15)
    assert lied, "the resolve's write was never answered as a conflict"
    assert result.output == {"ok": True}


async def test_the_recovery_check_asks_again_while_jetstream_is_not_answering() -> None:
    with NatsCluster(size=3) as cluster:
        nc = await nats.connect(cluster.urls)
        try:
            await nc.jetstream().add_stream(
                name="RECOVERY_PROBE", subjects=["recovery.probe"], num_replicas=3
            )
        finally:
            await nc.close()
        leader = cluster.wait_for_meta_leader()
        first = next(n for n in cluster.nodes if n.name != leader)
        others = [n for n in cluster.nodes if n is not first]  # the meta leader among them
        # Connected to a live node that is not the meta leader, asking JetStream while the
        # leader and quorum are gone: as right after a SIGSTOPped leader comes back, nobody
        # answers the API (or the answer is "unavailable") until a leader is elected.
        stub: Any = SimpleNamespace(cluster=SimpleNamespace(urls=[first.url]))
        stub._streams = lambda: Nemesis._streams(stub, request_timeout=2)
        for node in others:
            cluster.pause_node(node.name)
        try:
            listing = asyncio.create_task(Nemesis._stream_names(stub, time.monotonic() + 60))
            await asyncio.sleep(6)  # two tries at least
            assert not listing.done(), listing
        finally:
            for node in others:
                cluster.resume_node(node.name)
        assert await asyncio.wait_for(listing, 60) == ["RECOVERY_PROBE"]

    async def never() -> list[str]:
        raise nats.errors.TimeoutError

    started = time.monotonic()
    with pytest.raises(nats.errors.TimeoutError):  # a bound is a bound: past it, the error
        await Nemesis._stream_names(SimpleNamespace(_streams=never), started + 3)
    assert 2 <= time.monotonic() - started < 5
