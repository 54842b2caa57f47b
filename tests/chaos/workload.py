"""The workload: N order_processing invocations offered at a steady rate.

Submission ``i`` starts at ``t0 + i / rate`` whatever happened to the ones before it (a stalled
submission does not delay the next), and is retried with the same invocation id until the
client sees it acknowledged: a retried submission is stored once (state create, message id
``start:<id>``), so retries can never start an order twice.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from durable_core import Client

WORKFLOW = "order_processing"


def invocation_id(i: int) -> str:
    return f"chaos-{i:05d}"


def order_args(i: int) -> dict[str, Any]:
    return {"order_id": f"order-{i:05d}", "amount_cents": 100 + i}


class Workload:
    """Submits ``n`` invocations at ``rate`` per second.

    Attributes:
        submitted: id -> args of each invocation the client saw acknowledged.
        unacknowledged: ids never acknowledged within ``give_up`` seconds of retries.
        retries: submissions that needed more than one attempt.
    """

    def __init__(
        self,
        client: Client,
        n: int,
        rate: float,
        *,
        give_up: float = 150.0,
        log: Callable[[str], None] = print,
    ) -> None:
        self.client = client
        self.n = n
        self.rate = rate
        self.give_up = give_up
        self.log = log
        self.submitted: dict[str, dict[str, Any]] = {}
        self.unacknowledged: set[str] = set()
        self.retries = 0
        self.started_at = 0.0
        self.offered_until = 0.0  # when the last submission was started
        self.offered = asyncio.Event()  # the last submission has started
        self.done = asyncio.Event()  # ... and every one has been answered (or given up)

    async def run(self) -> None:
        self.started_at = time.monotonic()
        tasks = []
        try:
            for i in range(self.n):
                delay = self.started_at + i / self.rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(self._submit(i)))
            self.offered_until = time.monotonic()
            self.offered.set()
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            self.offered.set()
            self.done.set()

    async def _submit(self, i: int) -> None:
        iid, args = invocation_id(i), order_args(i)
        deadline = time.monotonic() + self.give_up
        attempt = 0
        while True:
            attempt += 1
            try:
                got = await asyncio.wait_for(
                    self.client.invoke_async(WORKFLOW, args, id=iid), timeout=40
                )
            except Exception as e:  # noqa: BLE001 - NATS errors of every kind: retry
                if time.monotonic() > deadline:
                    self.log(f"workload: giving up on {iid} after {attempt} attempts: {e!r}")
                    self.unacknowledged.add(iid)
                    return
                if attempt == 1:
                    self.retries += 1
                await asyncio.sleep(min(0.2 * attempt, 2.0))
                continue
            assert got == iid, (got, iid)
            self.submitted[iid] = args
            return
