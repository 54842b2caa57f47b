"""Test knobs of the example OrderService the workflow calls (served by ``hello_service``).

Tests slow a method down so a call is in flight when they strike, and read how often each
method ran per idempotency key to prove a step ran once.
"""

from __future__ import annotations

import grpc

from durable_examples.order.v1 import order_pb2
from durable_examples.order.v1.order_pb2_grpc import OrderServiceStub


class OrderServiceControl:
    """The OrderService's test RPCs (``SetDelay``, ``GetCallCounts``) over ``channel``.

    Args:
        channel: A channel to the service, e.g. ``ServiceProcess.channel`` from
            ``durable_core.testing``; its owner closes it.
    """

    def __init__(self, channel: grpc.Channel) -> None:
        self.stub = OrderServiceStub(channel)

    def counts(self) -> dict[tuple[str, str], int]:
        """Calls received, per (method, idempotency key)."""
        resp = self.stub.GetCallCounts(order_pb2.GetCallCountsRequest(), timeout=5)
        return {(c.method, c.idempotency_key): c.count for c in resp.counts}

    def method_counts(self, method: str) -> dict[str, int]:
        """Calls of ``method`` received, per idempotency key."""
        return {key: n for (m, key), n in self.counts().items() if m == method}

    def set_delay(self, method: str, ms: int) -> None:
        """Make ``method`` sleep ``ms`` milliseconds before it answers (0 removes the delay)."""
        self.stub.SetDelay(order_pb2.SetDelayRequest(method=method, delay_ms=ms), timeout=5)
