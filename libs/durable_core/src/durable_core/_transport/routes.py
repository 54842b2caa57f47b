"""A processor's command consumers: one per workflow it serves and route, fetched together.

Commands are routed by subject (``<prefix>.cmd.<workflow>.<route>.<key>``) and each processor
binds only the consumers of the workflows it has, so it is never delivered a command it cannot
run. ``CommandConsumers`` keeps one pull request open per consumer and shares the free slots
among them: a consumer whose last request brought nothing asks for one command, the others
split the rest, and the order in which they ask rotates, so a busy workflow cannot starve
another. The requests together never ask for more than the free slots; with fewer slots than
consumers, the requests are short (``_SHORT_POLL``) so the slots go round quickly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence

from durable_core._transport.delivery import Arrival, CommandConsumer, Delivery
from durable_core._transport.inbox import Queue

__all__ = ["CommandConsumers"]

log = logging.getLogger("durable_core.transport")

_MAX_BATCH = 256
_SHORT_POLL = 0.05  # seconds a request stays open while the slots go round the consumers


class CommandConsumers:
    """Fetches command deliveries from every consumer of one processor."""

    def __init__(self, queue: Queue[Arrival], consumers: Sequence[CommandConsumer]) -> None:
        self._queue = queue
        self.consumers = list(consumers)
        self._turn = 0  # which consumer asks first next time
        self._started = time.monotonic()

    @property
    def expires(self) -> float:
        """How long one pull request stays open."""
        return max((c.expires for c in self.consumers), default=1.0)

    @property
    def answered_at(self) -> float:
        """When any consumer last answered (a delivery or an expired request)."""
        return max((c.answered_at for c in self.consumers), default=time.monotonic())

    @property
    def trouble(self) -> str:
        """The last abnormal end of a pull request, of any consumer."""
        return next((f"{c.label}: {c.trouble}" for c in self.consumers if c.trouble), "")

    async def fetch(self, batch: int, timeout: float) -> list[Delivery]:
        """Up to ``batch`` deliveries from any consumer; an empty list if none arrived within
        ``timeout``."""
        out = self._take(batch)
        deadline = time.monotonic() + timeout
        while not out:
            now = time.monotonic()
            if now >= deadline:
                break
            await self._ask(batch, now)
            wake = min([deadline, *(c.until for c in self.consumers if c.outstanding(now))])
            try:
                consumer, n, msg = await self._queue.get(max(wake - time.monotonic(), 0.005))
            except TimeoutError:
                continue
            status = msg.headers.get("Status") if msg.headers else None
            if status:
                # 408: the request expired; 409: the server ended it (leadership change,
                # too many waiting requests, ...). Either way it is over.
                consumer.ended(n, msg)
                if status != "408":
                    log.debug("pull request ended: %s %s", status, msg.headers)
                    await asyncio.sleep(min(0.1, max(deadline - time.monotonic(), 0)))
                continue
            out = [consumer.delivered(n, msg), *self._take(batch - 1)]
        for c in self.consumers:
            await c.unsubscribe_done()
        return out

    def _take(self, batch: int) -> list[Delivery]:
        out: list[Delivery] = []
        while len(out) < batch and (item := self._queue.take()) is not None:
            consumer, n, msg = item
            if msg.headers and msg.headers.get("Status"):
                consumer.ended(n, msg)
                continue
            out.append(consumer.delivered(n, msg))
        return out

    async def _ask(self, free: int, now: float) -> None:
        """Open a request on each consumer that has none, within the free slots.

        Enough slots: those that found nothing last time ask for one, the others share what
        is left evenly. Fewer slots than consumers without a request: the next ones in turn
        ask for one each, briefly (``_SHORT_POLL``), and the turn moves on past them.
        """
        k = len(self.consumers)
        if not k:
            return
        room = free - sum(c.outstanding(now) for c in self.consumers)
        order = [(self._turn + i) % k for i in range(k)]
        needing = [i for i in order if not self.consumers[i].outstanding(now)]
        if room <= 0 or not needing:
            return
        if room < len(needing):
            chosen = needing[:room]
            self._turn = (chosen[-1] + 1) % k
            for i in chosen:
                await self.consumers[i].request(1, _SHORT_POLL)
            return
        self._turn = (self._turn + 1) % k
        idle = [i for i in needing if self.consumers[i].idle]
        busy = [i for i in needing if not self.consumers[i].idle]
        room -= len(idle)
        for i in idle:
            await self.consumers[i].request(1)
        for n, i in enumerate(busy):
            share = max(1, min(room // (len(busy) - n), _MAX_BATCH))
            room -= share
            await self.consumers[i].request(share)

    async def close(self) -> None:
        """Stop taking commands; those delivered but never fetched go back at once."""
        await asyncio.gather(*(c.close() for c in self.consumers), return_exceptions=True)
        while (item := self._queue.take()) is not None:
            consumer, n, msg = item
            if not (msg.headers and msg.headers.get("Status")):
                with contextlib.suppress(Exception):
                    await consumer.delivered(n, msg).nak()  # its request's bound still applies
