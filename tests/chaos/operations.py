"""The workload's retries, forks and signals: an operator's hand on invocations that failed,
finished or wait, under the same faults as everything else (see ``workload.plan``).

* **retry** (``chaos_retry``): wait until the invocation is FAILED (its gate step failed for
  good: the gate is closed), open its gate (a file), then ``client.retry`` it. A retry that
  raised may have been stored: asking again answers a status (retried, nothing followed yet:
  that retry is finished; or what it is now) or, once it runs again, "not failed"
  (``IllegalTransitionError``); both are taken. Some (``Planned.again`` >= 0) are asked a second
  time on purpose, after the first answered.
* **fork**: wait until the source is FAILED (a ``chaos_retry``, forked after its gate was opened
  and before its retry, from a step up to the failed one) or COMPLETED (an
  ``order_processing``, keyed or not, from a step up to one past its last), then
  ``client.fork``. A keyed fork takes its key's turn as a submission does: it is made only
  once the key's previous submission was acknowledged, and joins the key's order. A fork has
  no id of its own to send again: a fork call that raised may have made one, which the next
  attempt cannot know (the checker finds such forks by their state's ``forked_from``).
* **signals** (``chaos_signals``): send the ``n``-th of its signals (``signal_id``
  ``<id>.<n>``) once the one before was acknowledged, retrying errors with the same id; one
  (``Planned.again``: its ``n``) sent a second time on purpose with the same id, right after
  the first send was answered (the workflow may still wait for later ones).

What each got is recorded per invocation in ``Operator.outcomes`` (``"retry:pending"``,
``"fork:<fork id>"``, ``"signal 0:sent (attempt 2)"``, ``"wait:gave up"``, ...).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from durable_core import Client, IllegalTransitionError, InvocationFinishedError, Status

from .persist import Answer, persist

if TYPE_CHECKING:
    from .workload import Planned

SIGNAL = "chaos"  # the name chaos_signals waits for (chaos_workflows.SIGNAL)

Turn = Callable[[str], contextlib.AbstractAsyncContextManager[None]]


def signal_id(iid: str, n: int) -> str:
    return f"{iid}.{n}"


def signal_payload(iid: str, n: int) -> dict[str, Any]:
    return {"n": n, "for": iid}


def open_gate(gate_dir: str, order_id: str) -> None:
    """Open ``chaos_retry``'s gate for the order (its next gate step passes)."""
    (Path(gate_dir) / order_id).touch()


class Operator:
    """Retries, forks and signals for the workload's planned invocations.

    Attributes:
        outcomes: id -> what each operation on it got, in order.
        forks: fork id -> (source, from_step) of every fork a call returned.
        retried: ids whose retry was taken (a status or, asked again, "not failed").
        signalled: id -> how many of its signals were acknowledged.
    """

    def __init__(
        self,
        client: Client,
        give_up: float,
        log: Callable[[str], None],
        turn: Turn,
        key_order: dict[str, list[str]],
    ) -> None:
        self.client = client
        self.give_up = give_up
        self.log = log
        self._turn = turn
        self._key_order = key_order
        self.outcomes: dict[str, list[str]] = defaultdict(list)
        self.forks: dict[str, tuple[str, int]] = {}
        self.retried: set[str] = set()
        self.signalled: dict[str, int] = {}

    async def operate(self, p: Planned) -> None:
        if p.op == "signals":
            await self._signals(p)
            return
        want = Status.FAILED if p.op == "retry" else Status.COMPLETED
        if not await self._reached(p.iid, want):
            return
        if p.op == "retry":
            open_gate(p.args["gate_dir"], p.args["order_id"])
        if p.fork_from:
            await self._fork(p)
        if p.op == "retry":
            await self._retry(p)

    async def _reached(self, iid: str, want: Status) -> bool:
        """Poll the state until it is terminal; True if it is ``want``."""
        deadline = time.monotonic() + self.give_up
        while time.monotonic() < deadline:
            try:
                summary = await asyncio.wait_for(self.client.get_summary(iid), timeout=20)
            except Exception:  # noqa: BLE001 - NATS errors of every kind: ask again
                await asyncio.sleep(1.0)
                continue
            if summary.status.is_terminal:
                self.outcomes[iid].append(f"wait:{summary.status.value}")
                return summary.status == want
            await asyncio.sleep(0.3)
        self.outcomes[iid].append(f"wait:gave up ({want.value} expected)")
        return False

    async def _retry(self, p: Planned) -> None:
        if not await self._ask(p.iid, "retry", self.client.retry):
            return
        self.retried.add(p.iid)
        if p.again >= 0:
            await self._ask(p.iid, "retry again", self.client.retry)

    async def _ask(self, iid: str, what: str, act: Callable[[str], Awaitable[Status]]) -> bool:
        """``act`` on ``iid``, retrying NATS errors; True once it was taken: a status, or
        "not failed" after an attempt that raised (that one was stored) or when asked again."""
        answer = await persist(lambda: act(iid), self.give_up, final=(IllegalTransitionError,))
        if isinstance(answer.refused, IllegalTransitionError):
            refused = f"refused {answer.refused.status} (attempt {answer.attempts})"
            self.outcomes[iid].append(f"{what}:{refused}")
            return answer.attempts > 1 or what != "retry"
        if not self._answered(answer, iid, what):
            return False
        assert answer.value is not None
        self._record(iid, f"{what}:{answer.value.value}", answer.attempts)
        return True

    def _answered(self, answer: Answer[Any], iid: str, what: str) -> bool:
        """False (logged and recorded) if ``persist`` gave up."""
        if answer.error is None:
            return True
        self.log(f"workload: giving up on {what} of {iid}: {answer.error!r}")
        self.outcomes[iid].append(f"{what}:gave up {answer.error!r}")
        return False

    def _record(self, iid: str, outcome: str, attempts: int) -> None:
        self.outcomes[iid].append(outcome + (f" (attempt {attempts})" if attempts > 1 else ""))

    async def _fork(self, p: Planned) -> None:
        async with self._maybe_turn(p.key):

            def failed(_: int, e: Exception) -> None:
                self.outcomes[p.iid].append(f"fork:error {type(e).__name__}")

            answer = await persist(
                lambda: self.client.fork(p.iid, from_step=p.fork_from),
                self.give_up,
                on_error=failed,
            )
            if answer.error is not None:
                self.log(f"workload: giving up on the fork of {p.iid}: {answer.error!r}")
                self.outcomes[p.iid].append(f"fork:gave up {answer.error!r}")
                return
            fork = answer.value
            assert fork is not None
            self.forks[fork] = (p.iid, p.fork_from)
            self.outcomes[p.iid].append(f"fork:{fork}")
            if p.key is not None:
                self._key_order[p.key].append(fork)

    @contextlib.asynccontextmanager
    async def _maybe_turn(self, key: str | None) -> AsyncIterator[None]:
        if key is None:
            yield
            return
        async with self._turn(key):
            yield

    async def _signals(self, p: Planned) -> None:
        count = int(p.args["signals"])
        for n in range(count):
            await asyncio.sleep(p.act_after)
            if not await self._signal(p.iid, n, "signal"):
                return
            self.signalled[p.iid] = n + 1
            if n == p.again:
                await self._signal(p.iid, n, "signal again")

    async def _signal(self, iid: str, n: int, what: str) -> bool:
        """Send signal ``n`` with its id, retrying errors (the same id is delivered once);
        True once acknowledged. "Finished" after an attempt that raised, or sent again, means
        an earlier send of the last signal reached it and it ran to its end."""
        label = f"{what} {n}"
        answer = await persist(
            lambda: self.client.signal(
                iid, SIGNAL, signal_payload(iid, n), signal_id=signal_id(iid, n)
            ),
            self.give_up,
            final=(InvocationFinishedError,),
        )
        if answer.refused is not None:
            self.outcomes[iid].append(f"{label}:finished (attempt {answer.attempts})")
            return answer.attempts > 1 or what != "signal"
        if not self._answered(answer, iid, label):
            return False
        self._record(iid, f"{label}:sent", answer.attempts)
        return True
