"""A processor's command consumers: one per workflow it serves and route, fetched together.

Commands are routed by subject (``<prefix>.cmd.<workflow>.<route>.<key>``) and each processor
binds only the consumers of the workflows it has, so it is never delivered a command it cannot
run. ``CommandConsumers`` keeps at most one pull request open per consumer and shares the free slots
among them, never asking for more than are free (``max_concurrent`` is what really runs):

- A quiet processor (no consumer brought work lately): each consumer holds a long request for
  one command; with fewer slots than consumers they take turns with short ones.
- Work flowing: the consumers that bring work share the slots, in batches, with long
  requests. The idle ones are only *probed*: a request for one, at most a quarter of the
  free slots (with one or two slots, every fourth ask), round them in turn. While a backlog
  waits (the server counts a busy consumer's pending commands at each delivery), a probe is
  short (``_SHORT_POLL``) and gives its slot back soon, so an idle consumer never keeps a
  slot from busy work for long (a long request would: ``max_concurrent=4`` with one idle
  route ran 3 at once), and a quiet workflow's command is still taken within a few turns: a
  busy workflow cannot starve another. Without a backlog nobody wants the probe's slot, and
  it stays open as long as any request (short probes asked every idle consumer again every
  50 ms: seven pull requests per invocation, one invocation at a time, with 24 routes).
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
_SHORT_POLL = 0.05  # seconds a probe (or a turn of a scarce slot) stays open
_PROBE_EVERY = 4  # with fewer than four free slots, every fourth ask probes an idle consumer

# How long a closing consumer waits for commands still arriving once its requests ran out.
_LATE_S = 0.3


class CommandConsumers:
    """Fetches command deliveries from every consumer of one processor."""

    def __init__(self, queue: Queue[Arrival], consumers: Sequence[CommandConsumer]) -> None:
        self._queue = queue
        self.consumers = list(consumers)
        self._turn = 0  # which consumer asks first next time
        self._since_probe = _PROBE_EVERY  # asks for busy consumers since an idle one's probe
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
        """Open a request on consumers that have none, within the free slots (see the
        module's docstring)."""
        k = len(self.consumers)
        if not k:
            return
        room = free - sum(c.outstanding(now) for c in self.consumers)
        order = [(self._turn + i) % k for i in range(k)]
        needing = [i for i in order if not self.consumers[i].outstanding(now)]
        if room <= 0 or not needing:
            return
        if all(c.idle for c in self.consumers):
            if room >= len(needing):
                for i in needing:
                    await self.consumers[i].request(1)
                self._turn = (self._turn + 1) % k
            else:
                await self._in_turn(needing[:room], k, _SHORT_POLL)
            return
        idle = [i for i in needing if self.consumers[i].idle]
        busy = [i for i in needing if not self.consumers[i].idle]
        # The idle ones' probes hold a quarter of the free slots at most, all of them
        # together: a quarter of the room at each ask let them pile up over successive asks
        # (the room shrank by a quarter each time): at 64 in flight with 40 routes, the
        # busy consumer asked for 1 to 26 with 50 slots free and commands waited in the
        # stream. Short while a backlog waits for a busy consumer (the server's pending
        # count at its last delivery), long otherwise (see the module's docstring).
        probing = sum(c.outstanding(now) for c in self.consumers if c.idle)
        probes = min(len(idle), room, max(free // 4 - probing, 0))
        if not probes and idle and not probing:
            self._since_probe += 1
            if self._since_probe >= _PROBE_EVERY:
                probes = 1
        if probes:
            self._since_probe = 0
            backlog = any(not c.idle and not c.drained for c in self.consumers)
            await self._in_turn(idle[:probes], k, _SHORT_POLL if backlog else None)
            room -= probes
        # The free slots shared evenly among the busy consumers that get a request (the
        # divisor counted those from the shrinking room: a ZeroDivisionError under load).
        takers = busy[:room]
        for n, i in enumerate(takers):
            share = max(1, min(room // (len(takers) - n), _MAX_BATCH))
            room -= share
            await self.consumers[i].request(share)
        if takers and len(takers) < len(busy):
            # Too few slots for every busy consumer: the next ask starts past the last one
            # served. Only probes moved the turn, always to the same place, and one busy
            # workflow (or shard) was given every slot while another's backlog waited.
            self._turn = (takers[-1] + 1) % k

    async def _in_turn(self, chosen: list[int], k: int, expires: float | None) -> None:
        """Requests for one command each, open ``expires`` (the consumer's own when None);
        the turn moves past them."""
        for i in chosen:
            await self.consumers[i].request(1, expires)
        self._turn = (chosen[-1] + 1) % k

    async def close(self) -> None:
        """Stop taking commands; those delivered but never fetched go back at once (with
        their requests still known: forgotten first, no bound was known, none was held for
        sure, and the NAK was left out: a graceful restart left each of them to its ack
        wait, 30 s)."""
        await asyncio.gather(*(c.close() for c in self.consumers), return_exceptions=True)
        await self._hand_back()
        # What the server sent as the requests ran out may still be on its way, or waiting
        # for its subscription's callback (a loaded machine: CI saw one wait its ack wait).
        await asyncio.sleep(_LATE_S)
        await self._hand_back()
        await asyncio.gather(*(c.forget() for c in self.consumers), return_exceptions=True)

    async def _hand_back(self) -> None:
        """NAK every command in the shared queue (none of them was started)."""
        while (item := self._queue.take()) is not None:
            consumer, n, msg = item
            if not (msg.headers and msg.headers.get("Status")):
                with contextlib.suppress(Exception):
                    await consumer.delivered(n, msg).nak()  # its request's bound applies
