"""OrderService: an idempotent three-step order API that counts its calls.

Durable workflows call Validate, Charge and Ship as steps. Each call carries an
idempotency key in the gRPC metadata; the service answers the same key with
the same result and counts calls per (method, key), so tests can prove how
often a step really reached the service across retries and crashes. It also
keeps the highest ``durable-fence`` seen per key and refuses a call with a
lower one: a call from a run that another run has since taken over.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import grpc

from durable_examples.order.v1 import order_pb2, order_pb2_grpc

IDEMPOTENCY_KEY_METADATA = "idempotency-key"
"""gRPC metadata key carrying the caller's idempotency key."""

FENCE_METADATA = "durable-fence"
"""gRPC metadata key carrying the calling run's fence: it only grows as runs of an invocation
follow one another, so a call with a lower fence than one already seen for its key comes from a
run that has been superseded (e.g. its processor froze between deciding the step and sending
the call) and is refused without doing anything."""

RECORD_FILE_ENV = "ORDER_SERVICE_RECORD_FILE"
"""Environment variable naming the JSON-lines file calls are appended to."""

COUNTED_METHODS = ("Validate", "Charge", "Ship")
"""Methods that are counted, recorded and can be delayed."""

MAX_TALLIES = 100_000
"""(method, key) pairs whose counts are kept; the oldest are forgotten past it (a service
that runs for days would otherwise grow by one entry per call, ~0.3 GB a day at 10 calls/s)."""


def charge_id_for(key: str) -> str:
    """Returns the charge id Charge answers for an idempotency key."""
    return "ch_" + hashlib.sha256(key.encode()).hexdigest()[:12]


def tracking_number_for(key: str) -> str:
    """Returns the tracking number Ship answers for an idempotency key."""
    return "trk_" + hashlib.sha256(key.encode()).hexdigest()[:12]


def idempotency_key(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    """Returns the call's idempotency key, or "" when it carries none."""
    return call_identity(context)[0]


MAX_FENCE = 2**64 - 1  # the engine's fences are journal sequences (unsigned 64-bit)


def call_identity(context: grpc.aio.ServicerContext[Any, Any]) -> tuple[str, int | None | str]:
    """Returns the call's idempotency key ("" if none) and its fence (None if none; the text
    itself if it is not a decimal number from 0 to 2**64-1), read in one pass over the
    metadata."""
    key: str = ""
    fence: int | None | str = None
    for name, value in context.invocation_metadata() or ():
        if name in (IDEMPOTENCY_KEY_METADATA, FENCE_METADATA):
            text = value.decode(errors="replace") if isinstance(value, bytes) else value
            if name == IDEMPOTENCY_KEY_METADATA:
                key = text
            elif len(text) <= 20 and text.isascii() and text.isdigit() and int(text) <= MAX_FENCE:
                fence = int(text)
            else:
                fence = text
    return key, fence


def _make_room(table: dict[Any, Any], key: Any, limit: int) -> None:
    """Drop the entry first added to ``table`` when adding ``key`` would exceed ``limit``."""
    if key not in table and len(table) >= limit:
        del table[next(iter(table))]


@dataclasses.dataclass(slots=True)
class _Tally:
    count: int = 0
    cancelled: int = 0


class OrderServicer(order_pb2_grpc.OrderServiceServicer):
    """Implements ``durable_examples.order.v1.OrderService``.

    State (counts, delays and the highest fence per key) lives in memory for the life of the
    servicer, counts for the last ``max_tallies`` (method, key) pairs first called; the
    optional record file outlives the process. A call whose fence is below the highest seen
    for its key is refused (FAILED_PRECONDITION), not counted, and recorded as refused.

    Args:
        record_file: JSON-lines file to append one line per counted call to
            (``{"method", "idempotency_key", "order_id", "ts", "fence"}``, and
            ``"refused": true`` for a refused stale call), or None.
        max_tallies: how many (method, key) pairs are counted before the oldest is dropped.
    """

    def __init__(
        self, record_file: str | os.PathLike[str] | None = None, *, max_tallies: int = MAX_TALLIES
    ) -> None:
        self._record_file = Path(record_file) if record_file else None
        self._max_tallies = max_tallies
        self._tallies: dict[tuple[str, str], _Tally] = {}
        self._fences: dict[str, int] = {}  # the highest fence seen per idempotency key
        self._delays: dict[str, float] = {}

    @classmethod
    def from_env(cls) -> OrderServicer:
        """Builds a servicer recording to ``$ORDER_SERVICE_RECORD_FILE`` if set."""
        return cls(record_file=os.environ.get(RECORD_FILE_ENV) or None)

    async def _enter(
        self, method: str, order_id: str, context: grpc.aio.ServicerContext[Any, Any]
    ) -> str:
        """Counts and records a call, then applies the method's delay.

        Returns:
            The call's idempotency key.
        """
        key, fence = call_identity(context)
        if isinstance(fence, str):  # meant as a fence, but malformed: never run unfenced
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{FENCE_METADATA} {fence[:40]!r} is not a decimal number from 0 to 2**64-1",
            )
        if key and fence is not None:
            highest = self._fences.get(key, -1)
            if fence < highest:
                self._record(method, key, order_id, fence=fence, refused=True)
                await context.abort(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"stale call for {key}: fence {fence}, but a later run of this step "
                    f"called with {highest}",
                )
            if fence > highest:
                _make_room(self._fences, key, self._max_tallies)  # the key first seen goes
                self._fences[key] = fence
        tally = self._tallies.get((method, key))
        if tally is None:
            _make_room(self._tallies, (method, key), self._max_tallies)  # the pair first called
            tally = self._tallies[(method, key)] = _Tally()
        tally.count += 1
        self._record(method, key, order_id, fence=fence)

        delay = self._delays.get(method, 0.0)
        if delay > 0:
            try:
                # asyncio.sleep so a cancelled RPC stops waiting right away.
                await asyncio.sleep(delay)
            except asyncio.CancelledError:
                # grpc.aio cancels the handler task when the client cancels or
                # its connection dies. (context.cancelled() in a done callback
                # does not report this, so count it here.)
                tally.cancelled += 1
                raise
        return key

    def _record(
        self, method: str, key: str, order_id: str, *, fence: int | None, refused: bool = False
    ) -> None:
        if self._record_file is None:
            return
        rec: dict[str, Any] = {
            "method": method,
            "idempotency_key": key,
            "order_id": order_id,
            "ts": time.time(),
        }
        if fence is not None:
            rec["fence"] = fence
        if refused:
            rec["refused"] = True  # a stale call: nothing was done
        line = json.dumps(rec, sort_keys=True)
        # Append mode with one write per line keeps lines whole even when
        # several processes share the file; the kernel keeps the data if we
        # are killed right after.
        with self._record_file.open("a", encoding="utf-8") as f:
            f.write(line + "\n")

    async def Validate(  # noqa: N802 - name fixed by the proto
        self, request: order_pb2.ValidateRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> order_pb2.ValidateResponse:
        """Accepts orders with a positive amount."""
        await self._enter("Validate", request.order_id, context)
        if request.amount_cents <= 0:
            return order_pb2.ValidateResponse(
                valid=False, reason=f"amount_cents must be positive, got {request.amount_cents}"
            )
        return order_pb2.ValidateResponse(valid=True)

    async def Charge(  # noqa: N802
        self, request: order_pb2.ChargeRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> order_pb2.ChargeResponse:
        """Charges the order; the same idempotency key gives the same charge id."""
        key = await self._enter("Charge", request.order_id, context)
        # Without a key the order id is the best stand-in for one.
        return order_pb2.ChargeResponse(charge_id=charge_id_for(key or request.order_id))

    async def Ship(  # noqa: N802
        self, request: order_pb2.ShipRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> order_pb2.ShipResponse:
        """Ships the order; the same idempotency key gives the same tracking number."""
        key = await self._enter("Ship", request.order_id, context)
        return order_pb2.ShipResponse(tracking_number=tracking_number_for(key or request.order_id))

    async def GetCallCounts(  # noqa: N802
        self, request: order_pb2.GetCallCountsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> order_pb2.GetCallCountsResponse:
        """Returns the counts per (method, idempotency key), sorted."""
        return order_pb2.GetCallCountsResponse(
            counts=[
                order_pb2.CallCount(
                    method=method, idempotency_key=key, count=t.count, cancelled=t.cancelled
                )
                for (method, key), t in sorted(self._tallies.items())
            ]
        )

    async def ResetCallCounts(  # noqa: N802
        self, request: order_pb2.ResetCallCountsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> order_pb2.ResetCallCountsResponse:
        """Forgets all counts (delays are kept; SetDelay 0 clears one)."""
        self._tallies.clear()
        return order_pb2.ResetCallCountsResponse()

    async def SetDelay(  # noqa: N802
        self, request: order_pb2.SetDelayRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> order_pb2.SetDelayResponse:
        """Makes later calls of ``request.method`` sleep ``delay_ms`` first."""
        # Accept "/pkg.Service/Charge" too: that is how the engine names call steps.
        method = request.method.rsplit("/", 1)[-1]
        if method not in COUNTED_METHODS:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"unknown method {request.method!r}; expected one of {', '.join(COUNTED_METHODS)}",
            )
        if request.delay_ms < 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "delay_ms must be >= 0")
        if request.delay_ms == 0:
            self._delays.pop(method, None)
        else:
            self._delays[method] = request.delay_ms / 1000
        return order_pb2.SetDelayResponse()
