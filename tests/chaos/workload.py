"""The workload: N invocations of a seeded mix, offered at a steady rate.

Submission ``i`` starts at ``t0 + i / rate`` whatever happened to the ones before it (a stalled
submission does not delay the next), and is retried with the same invocation id until the
client sees it acknowledged: a retried submission is stored once (message id ``start:<id>``),
so retries can never start one twice.

The mix (``MIX``; each draw from the seeded RNG, so a seed gives the same workload):

* ``order_processing`` without a partition key;
* ``order_processing`` and ``chaos_waits`` **with a partition key** (a handful of invocations
  per key): a keyed submission is sent only once the previous one of its key was
  acknowledged, so the key's submission order is known and the checker can hold the runs to
  it (one at a time, in that order);
* ``chaos_waits``: a sleep, an **awakeable** the workload resolves from outside through the
  client (a seeded 0-4 s after the submission was acknowledged, so before or after the
  workflow reaches its wait), and a **child** workflow;
* ``careless_order`` / ``reckless_order``: every step inside ``try/except Exception`` /
  ``BaseException``.

Every third unkeyed invocation without an awakeable (``Planned.waits``; by its number, so the
seeded draws are the same as without it) is submitted with a blocking ``invoke``, the others
with ``invoke_async``: ``invoke`` stores only the start and leaves the state to the processor
that starts the run (or to the waiting client, PENDING, if nobody has by its first poll), a
path of its own to hold to every rule under the same faults.

With ``lifecycle`` > 0 (the wide and mixed-fleet runs), that share of the unkeyed orders
gets an operator's hand (``Planned.lifecycle``, from an RNG of its own, so the draws
above stay those of the seed): a **cancel** of a ``cancellable_order`` (which refunds the
charge if the cancellation comes after it), or a **pause** of an ``order_processing`` and a
resume a moment later, each a seeded 0-50 ms or 0-1.5 s after the submission was
acknowledged (for a blocking ``invoke``, which answers only at the end, after the submission
began: the start may not be stored yet, or stored with no state yet): queued, in flight or
finished, racing the run's steps and the faults alike.

With ``operations`` > 0 (the same runs), that share of the other unkeyed orders, from an RNG of
its own again, becomes (``Planned.op``; ``operations.py`` does them):

* a **retry**: a ``chaos_retry``, whose gate step fails for good until the workload opens its
  gate (a file in ``gate_dir``) once it saw the invocation FAILED, then retries it (some asked
  twice); some are also **forked** once FAILED, after the gate was opened and before the
  retry, from a step up to the failed one;
* **signals**: a ``chaos_signals`` that waits for 1-3 signals, sent one after the other with a
  ``signal_id`` each, a seeded 0-1.5 s apart (one sometimes sent twice with its id);
* a **fork** of an ``order_processing`` once it COMPLETED, from a step 1-4 (4: all three
  copied, nothing left to run).

And half that share of the keyed orders is forked once completed: the fork takes the key's turn
(made once the key's previous submission was acknowledged) and joins the key's order.

With ``fanout`` > 0 (the same runs), that share of the orders still plain after all that, from an
RNG of its own again (so a seed keeps every other draw, and only some of its plain orders
change), becomes a ``chaos_fanout``: 2 or 3 items validated, held a seeded 0-400 ms each (a
local step, so the items reach their charge in a seeded order, not always their own) and
charged side by side, one branch each (``asyncio.gather``), then shipped; submitted as the
plain order would have been (every third by a blocking ``invoke``). No operator touches it.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from durable_core import (
    AlreadyResolvedError,
    Client,
    IllegalTransitionError,
    InvocationTimeoutError,
    Status,
    WorkflowFailedError,
)

from .operations import Operator
from .persist import persist

ORDER = "order_processing"
CANCELLABLE = "cancellable_order"
WAITS = "chaos_waits"
CARELESS = "careless_order"
RECKLESS = "reckless_order"
RETRY = "chaos_retry"
SIGNALS = "chaos_signals"
FANOUT = "chaos_fanout"

MIX: Mapping[str, float] = {
    "order": 0.45,
    "keyed": 0.20,
    "waits": 0.20,
    "careless": 0.10,
    "reckless": 0.05,
}
"""Share of each kind of invocation in the chaos run."""

ORDERS_ONLY: Mapping[str, float] = {"order": 1.0}

LIFECYCLE = 0.25
"""Share of the unkeyed, asynchronously submitted orders that are cancelled or paused."""

OPERATIONS = 0.4
"""Share of the other unkeyed orders retried, forked or signalled (half of it: keyed forks)."""

OPS: Mapping[str, float] = {"retry": 0.4, "signals": 0.35, "fork": 0.25}
"""Which operation, among those orders."""

RETRIED_FORKS = 0.3
"""Share of the retried invocations also forked (while FAILED)."""

FANOUTS = 0.3
"""Share of the orders left plain (no key, no operator) that become a ``chaos_fanout``."""

FANOUT_ITEMS = (2, 3)
"""How many items (branches) a ``chaos_fanout`` takes: drawn from these."""

FANOUT_HOLD_MS = 400
"""A ``chaos_fanout`` item's hold between its Validate and its Charge: 0 to this, by 50."""

SLEEPS_MS = (500, 1500, 2500, 4000)
"""chaos_waits sleeps: up to 2 s they wait in the processor, longer ones on a server timer."""


def invocation_id(i: int) -> str:
    return f"chaos-{i:05d}"


def awakeable_id(iid: str) -> str:
    """The id of chaos_waits' only awakeable (``awk.<invocation>.<n>``, n from 1)."""
    return f"awk.{iid}.1"


def approval(iid: str) -> dict[str, str]:
    """The payload the workload resolves an invocation's awakeable with."""
    return {"approved_by": "chaos-workload", "for": iid}


@dataclass(frozen=True, slots=True)
class Planned:
    """One invocation of the workload, decided before the run (from the seed alone)."""

    iid: str
    workflow: str
    args: dict[str, Any]
    key: str | None = None
    resolve_after: float | None = None  # seconds after acknowledgement (chaos_waits)
    waits: bool = False  # submitted with a blocking invoke (see the module's docstring)
    lifecycle: str = ""  # "cancel" or "pause" (then resumed), after ``act_after`` seconds
    act_after: float = 0.0  # (signals: seconds before each signal)
    pause_for: float = 0.0
    op: str = ""  # "retry", "signals" or "fork" (see operations.py)
    fork_from: int = 0  # forked from this step once it failed (retry) or completed (fork)
    again: int = -1  # the retry (0), or this signal, asked a second time on purpose


def plan(
    n: int,
    rng: random.Random,
    mix: Mapping[str, float] = MIX,
    lifecycle: float = 0.0,
    operations: float = 0.0,
    gate_dir: str = "",
    fanout: float = 0.0,
) -> list[Planned]:
    """``n`` invocations drawn from ``mix``; keyed ones spread over ``max(2, n // 25)`` keys;
    ``lifecycle``: the share of unkeyed orders cancelled or paused; ``operations``: the share
    of the other unkeyed orders retried (gates in ``gate_dir``), signalled or forked;
    ``fanout``: the share of the orders still plain that become a ``chaos_fanout``."""
    if operations and not gate_dir:
        raise ValueError("retries need a gate_dir")
    kinds, weights = zip(*mix.items(), strict=True)
    # Their own RNGs, seeded from the seed's (without drawing from it): the rest stays the same.
    life = random.Random(repr(rng.getstate()))
    ops = random.Random(repr(rng.getstate()) + "/operations")
    fan = random.Random(repr(rng.getstate()) + "/fanout")
    keys = [f"key-{k:03d}" for k in range(max(2, n // 25))]
    out = []
    for i in range(n):
        iid = invocation_id(i)
        args: dict[str, Any] = {"order_id": f"order-{i:05d}", "amount_cents": 100 + i}
        kind = rng.choices(kinds, weights)[0]
        if kind == "keyed":
            key = rng.choice(keys)
            if rng.random() < 0.25:
                args["sleep_ms"] = rng.choice(SLEEPS_MS)
                out.append(Planned(iid, WAITS, args, key, rng.uniform(0.0, 4.0)))
            else:
                fork = operations > 0 and ops.random() < operations / 2
                fork_from = ops.randint(1, 4) if fork else 0
                out.append(
                    Planned(iid, ORDER, args, key, op="fork" if fork else "", fork_from=fork_from)
                )
        elif kind == "waits":
            args["sleep_ms"] = rng.choice(SLEEPS_MS)
            out.append(Planned(iid, WAITS, args, None, rng.uniform(0.0, 4.0)))
        elif kind == "careless":
            out.append(Planned(iid, CARELESS, args, waits=i % 3 == 0))
        elif kind == "reckless":
            out.append(Planned(iid, RECKLESS, args, waits=i % 3 == 0))
        elif life.random() < lifecycle:
            act_after = life.uniform(0.0, 0.05) if life.random() < 0.5 else life.uniform(0.0, 1.5)
            waits = i % 3 == 0
            if life.random() < 0.5:
                out.append(
                    Planned(
                        iid, CANCELLABLE, args, waits=waits, lifecycle="cancel", act_after=act_after
                    )
                )
            else:
                pause_for = life.uniform(0.2, 3.0)
                out.append(
                    Planned(
                        iid,
                        ORDER,
                        args,
                        waits=waits,
                        lifecycle="pause",
                        act_after=act_after,
                        pause_for=pause_for,
                    )
                )
        elif operations > 0 and ops.random() < operations:
            out.append(_operated(iid, args, ops, gate_dir, waits=i % 3 == 0))
        elif fanout > 0 and fan.random() < fanout:
            items = fan.choice(FANOUT_ITEMS)
            holds = [fan.randrange(0, FANOUT_HOLD_MS + 1, 50) for _ in range(items)]
            args = {**args, "items": items, "hold_ms": holds}
            out.append(Planned(iid, FANOUT, args, waits=i % 3 == 0))
        else:
            out.append(Planned(iid, ORDER, args, waits=i % 3 == 0))
    return out


def _operated(
    iid: str, args: dict[str, Any], ops: random.Random, gate_dir: str, *, waits: bool
) -> Planned:
    op = ops.choices(list(OPS), list(OPS.values()))[0]
    if op == "retry":
        fork_from = ops.randint(1, 3) if ops.random() < RETRIED_FORKS else 0
        again = 0 if ops.random() < 0.3 else -1
        args = {**args, "gate_dir": gate_dir}
        return Planned(iid, RETRY, args, op=op, fork_from=fork_from, again=again)
    if op == "signals":
        count = ops.randint(1, 3)
        gap = ops.uniform(0.0, 1.5)
        again = ops.randrange(count) if ops.random() < 0.4 else -1
        args = {**args, "signals": count}
        return Planned(iid, SIGNALS, args, op=op, act_after=gap, again=again)
    return Planned(iid, ORDER, args, waits=waits, op=op, fork_from=ops.randint(1, 4))


class Workload:
    """Submits the planned invocations at ``rate`` per second and resolves their awakeables.

    Attributes:
        submitted: id -> args of each invocation the client saw acknowledged.
        workflows: id -> workflow of every planned invocation.
        unacknowledged: ids never acknowledged within ``give_up`` seconds of retries.
        key_order: partition key -> its acknowledged invocations in submission order.
        resolved: awakeable id -> the payload it was resolved with.
        unresolved: awakeable ids whose resolution never got through (with why).
        retries: submissions that needed more than one attempt.
        acked_at: id -> when its submission was acknowledged (wall clock, seconds).
        answers: id -> the output a blocking ``invoke`` returned (``Planned.waits``).
        lifecycle: id -> what each cancel, pause and resume got, in order (``"cancel:running"``,
            ``"pause:refused completed"``, ``"resume:gave up ..."``; see ``_lifecycle``).
        operator: the retries, forks and signals, and what each got (``operations.py``).
    """

    def __init__(
        self,
        client: Client,
        planned: list[Planned],
        rate: float,
        *,
        give_up: float = 150.0,
        log: Callable[[str], None] = print,
    ) -> None:
        self.client = client
        self.planned = planned
        self.n = len(planned)
        self.rate = rate
        self.give_up = give_up
        self.log = log
        self.submitted: dict[str, dict[str, Any]] = {}
        self.workflows = {p.iid: p.workflow for p in planned}
        self.unacknowledged: set[str] = set()
        self.key_order: dict[str, list[str]] = defaultdict(list)
        self.resolved: dict[str, Any] = {}
        self.unresolved: dict[str, str] = {}
        self.retries = 0
        self.acked_at: dict[str, float] = {}
        self.answers: dict[str, Any] = {}
        self.lifecycle: dict[str, list[str]] = defaultdict(list)
        self.started_at = 0.0
        self.offered_until = 0.0  # when the last submission was started
        self.offered = asyncio.Event()  # the last submission has started
        self.done = asyncio.Event()  # ... and every one has been answered (or given up)
        self._stop = asyncio.Event()
        self._key_turn: dict[str, asyncio.Future[None]] = {}
        self.operator = Operator(client, give_up, log, self._turn, self.key_order)

    @contextlib.asynccontextmanager
    async def _turn(self, key: str) -> AsyncIterator[None]:
        """The key's next turn: entered once the key's submission before it was answered (or
        given up); the next one waits until this one is left."""
        previous = self._key_turn.get(key)
        turn = asyncio.get_running_loop().create_future()
        self._key_turn[key] = turn
        try:
            if previous is not None:
                await asyncio.shield(previous)
            yield
        finally:
            turn.set_result(None)

    def stop(self) -> None:
        """Offer no more (the soak's end); what was submitted is still followed up."""
        self._stop.set()

    async def run(self) -> None:
        self.started_at = time.monotonic()
        tasks: list[asyncio.Task[None]] = []
        try:
            for i, p in enumerate(self.planned):
                delay = self.started_at + i / self.rate - time.monotonic()
                if delay > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stop.wait(), delay)
                if self._stop.is_set():
                    break
                tasks.append(asyncio.create_task(self._submit(p)))
                if len(tasks) > 2000:  # a long soak: keep only the unfinished
                    tasks = [t for t in tasks if not t.done()]
            self.offered_until = time.monotonic()
            self.offered.set()
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            self.offered.set()
            self.done.set()

    async def _submit(self, p: Planned) -> None:
        turn: asyncio.Future[None] | None = None
        if p.key is not None:
            previous = self._key_turn.get(p.key)
            turn = asyncio.get_running_loop().create_future()
            self._key_turn[p.key] = turn
            if previous is not None:
                await asyncio.shield(previous)  # its submission was answered (or given up)
        # A blocking invoke answers at the end: its operator acts while it waits, counted from
        # the submission (its start may not be stored yet: "not found", asked again; or be
        # stored with no state yet: found queued, see client._lifecycle.state_of).
        operator = asyncio.create_task(self._operate(p)) if p.lifecycle and p.waits else None
        try:
            if not await self._acknowledged(p):
                return
            if p.key is not None:
                self.key_order[p.key].append(p.iid)
        finally:
            if turn is not None:
                turn.set_result(None)
            if operator is not None:
                await operator
        if p.resolve_after is not None:
            await asyncio.sleep(p.resolve_after)
            await self._resolve(p.iid)
        if p.lifecycle and not p.waits:
            await self._operate(p)
        if p.op:
            await self.operator.operate(p)

    async def _operate(self, p: Planned) -> None:
        await asyncio.sleep(p.act_after)
        if p.lifecycle == "cancel":
            await self._lifecycle(p.iid, "cancel", self.client.cancel)
        elif await self._lifecycle(p.iid, "pause", self.client.pause):
            await asyncio.sleep(p.pause_for)
            await self._lifecycle(p.iid, "resume", self.client.resume)

    async def _acknowledged(self, p: Planned) -> bool:
        def submit() -> Awaitable[str]:
            # Queued whatever the registry says: under faults a read of it may find no
            # processor for a while; the workload checks durability, not intake.
            if p.waits:
                return self._invoked(p)
            return self.client.invoke_async(
                p.workflow, p.args, id=p.iid, partition_key=p.key, queue_unserved=True
            )

        def retried(attempt: int, _: Exception) -> None:
            if attempt == 1:
                self.retries += 1

        answer = await persist(submit, self.give_up, on_error=retried)
        if answer.error is not None:
            self.log(
                f"workload: giving up on {p.iid} after {answer.attempts} attempts: {answer.error!r}"
            )
            self.unacknowledged.add(p.iid)
            return False
        assert answer.value == p.iid, (answer.value, p.iid)
        self.submitted[p.iid] = p.args
        self.acked_at[p.iid] = time.time()
        return True

    async def _invoked(self, p: Planned) -> str:
        """Submit ``p`` with a blocking ``invoke``: acknowledged once it returns a result, or
        says the invocation failed or is still running (its start was stored either way). A
        retry with the same id and arguments is stored once and answers the same."""
        with contextlib.suppress(WorkflowFailedError, InvocationTimeoutError):
            result = await self.client.invoke(
                p.workflow, p.args, id=p.iid, timeout=30, queue_unserved=True
            )
            self.answers[p.iid] = result.output
        return p.iid

    async def _lifecycle(
        self, iid: str, verb: str, act: Callable[[str], Awaitable[Status]]
    ) -> bool:
        """Cancel, pause or resume ``iid``, retrying NATS errors (a repeated request is stored
        once: the client answers a second pause or cancel with the status, a second resume
        with "not paused"); True once it was taken. Records what it got."""
        answer = await persist(lambda: act(iid), self.give_up, final=(IllegalTransitionError,))
        if isinstance(answer.refused, IllegalTransitionError):
            # Finished (or, for a resume after a retry, already resumed): nothing to do.
            refused = f"refused {answer.refused.status} (attempt {answer.attempts})"
            self.lifecycle[iid].append(f"{verb}:{refused}")
            return False
        if answer.error is not None:
            self.log(f"workload: giving up on {verb} of {iid}: {answer.error!r}")
            self.lifecycle[iid].append(f"{verb}:gave up {answer.error!r}")
            return False
        assert answer.value is not None
        self.lifecycle[iid].append(f"{verb}:{answer.value.value}")
        return True

    async def _resolve(self, iid: str) -> None:
        """Resolve the invocation's awakeable, retrying until it is surely stored once."""
        aid, payload = awakeable_id(iid), approval(iid)
        answer = await persist(
            lambda: self.client.resolve_awakeable(aid, payload),
            self.give_up,
            final=(AlreadyResolvedError,),
        )
        if answer.refused is not None and answer.attempts == 1:
            # Nobody else resolves it: only our own earlier try could.
            self.unresolved[aid] = "already resolved at the first try"
        elif answer.error is not None:
            self.log(f"workload: giving up resolving {aid}: {answer.error!r}")
            self.unresolved[aid] = repr(answer.error)
        else:
            self.resolved[aid] = payload
