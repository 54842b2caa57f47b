"""Prometheus metrics of the processor: an interceptor, and a poller of the command consumer.

| metric | type | labels |
|---|---|---|
| ``durable_invocations_started_total`` | counter | workflow |
| ``durable_invocations_completed_total`` | counter | workflow |
| ``durable_invocations_failed_total`` | counter | workflow |
| ``durable_invocations_cancelled_total`` | counter | workflow |
| ``durable_invocations_suspended_total`` | counter | workflow |
| ``durable_step_duration_seconds`` | histogram | kind, workflow |
| ``durable_executions_in_flight`` | gauge | |
| ``durable_consumer_pending_messages`` | gauge | |
| ``durable_consumer_ack_pending_messages`` | gauge | |
| ``durable_consumer_redelivered_messages`` | gauge | |

Counts are per processor; sum them over processors. "Started" counts first runs only (a
wake-up or a redelivery continues an invocation); "suspended" counts runs that stopped to wait.
"Cancelled" stays at zero until the engine can cancel invocations (lifecycle requests).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Protocol

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
)

from durable_core import Interceptor, StepInput, WorkflowInput
from durable_core.interceptors import StepNext, WorkflowNext, outcome_of

__all__ = ["ConsumerStats", "MetricsInterceptor", "ProcessorMetrics", "poll_consumer"]

log = logging.getLogger(__name__)

STEP_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
)


class ProcessorMetrics:
    """The processor's metrics, in their own registry (plus the process and GC collectors).

    Args:
        registry: where to register; a new one by default (tests make their own).
        runtime_collectors: also expose process CPU/memory, GC and platform metrics.
    """

    def __init__(
        self, registry: CollectorRegistry | None = None, *, runtime_collectors: bool = True
    ) -> None:
        r = self.registry = registry or CollectorRegistry()
        if runtime_collectors:
            for collector in (PROCESS_COLLECTOR, GC_COLLECTOR, PLATFORM_COLLECTOR):
                r.register(collector)
        wf = ("workflow",)
        self.started = Counter(
            "durable_invocations_started", "Invocations whose first run began here.", wf, registry=r
        )
        self.completed = Counter(
            "durable_invocations_completed", "Invocations that completed here.", wf, registry=r
        )
        self.failed = Counter(
            "durable_invocations_failed", "Invocations that failed here.", wf, registry=r
        )
        self.cancelled = Counter(
            "durable_invocations_cancelled", "Invocations cancelled here.", wf, registry=r
        )
        self.suspended = Counter(
            "durable_invocations_suspended",
            "Runs that stopped to wait (sleep, awakeable, signal, child); the slot was freed.",
            wf,
            registry=r,
        )
        self.step_seconds = Histogram(
            "durable_step_duration_seconds",
            "Duration of each executed step attempt (for waits and submissions: journaling them).",
            ("kind", "workflow"),
            buckets=STEP_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "durable_executions_in_flight", "Workflow runs executing now.", registry=r
        )
        self.consumer_pending = Gauge(
            "durable_consumer_pending_messages",
            "Commands waiting in the stream for a processor (all processors).",
            registry=r,
        )
        self.consumer_ack_pending = Gauge(
            "durable_consumer_ack_pending_messages",
            "Commands delivered and not yet acknowledged (all processors).",
            registry=r,
        )
        self.consumer_redelivered = Gauge(
            "durable_consumer_redelivered_messages",
            "Unacknowledged commands that were delivered more than once (all processors).",
            registry=r,
        )


class MetricsInterceptor(Interceptor):
    """Counts workflow runs by outcome and times every executed step."""

    def __init__(self, metrics: ProcessorMetrics) -> None:
        self.metrics = metrics

    async def intercept_workflow(self, inp: WorkflowInput, nxt: WorkflowNext) -> Any:
        m = self.metrics
        if not inp.resumed:
            m.started.labels(inp.workflow).inc()
        m.in_flight.inc()
        try:
            result = await nxt(inp)
        except BaseException as e:
            outcome = outcome_of(e)
            if outcome == "failed":
                m.failed.labels(inp.workflow).inc()
            elif outcome == "suspended":
                m.suspended.labels(inp.workflow).inc()
            raise
        finally:
            m.in_flight.dec()
        m.completed.labels(inp.workflow).inc()
        return result

    async def intercept_step(self, inp: StepInput, nxt: StepNext) -> Any:
        started = time.perf_counter()
        try:
            return await nxt(inp)
        finally:
            self.metrics.step_seconds.labels(inp.kind, inp.workflow).observe(
                time.perf_counter() - started
            )


class ConsumerStats(Protocol):
    """What the poller needs of the transport (``durable_core._transport.Transport``)."""

    async def consumer_stats(self, consumer: str) -> tuple[int, int, int]: ...


async def poll_consumer(
    transport: ConsumerStats, consumer: str, metrics: ProcessorMetrics, interval: float = 5.0
) -> None:
    """Copy the command consumer's pending and redelivery counts into gauges every ``interval``
    seconds, until cancelled. NATS trouble is logged (once per streak) and retried."""
    failing = False
    while True:
        await asyncio.sleep(interval)  # first after one interval: the worker creates the consumer
        try:
            pending, ack_pending, redelivered = await transport.consumer_stats(consumer)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - metrics must never stop the processor
            if not failing:
                log.warning("consumer stats unavailable: %s: %s", type(e).__name__, e)
            failing = True
        else:
            failing = False
            metrics.consumer_pending.set(pending)
            metrics.consumer_ack_pending.set(ack_pending)
            metrics.consumer_redelivered.set(redelivered)
