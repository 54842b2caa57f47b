"""Prometheus metrics of the processor: an interceptor, and a poller of the command consumer.

| metric | type | labels | what |
|---|---|---|---|
| ``durable_invocations_started_total`` | counter | workflow | first runs begun here |
| ``durable_invocations_completed_total`` | counter | workflow | final status journaled here |
| ``durable_invocations_failed_total`` | counter | workflow | final status journaled here |
| ``durable_invocations_cancelled_total`` | counter | workflow | final status journaled here |
| ``durable_invocations_suspended_total`` | counter | workflow | runs that stopped to wait |
| ``durable_invocations_blocked_total`` | counter | workflow | runs whose replay diverged from the journal (the invocation waits for its pinned version) |
| ``durable_invocation_duration_seconds`` | histogram | workflow, status | end to end: due (created, or delayed start) to the final entry |
| ``durable_invocation_schedule_to_start_seconds`` | histogram | workflow | due to the first run's start (waiting in the stream, for a key or a slot) |
| ``durable_step_duration_seconds`` | histogram | kind, workflow | each executed step attempt |
| ``durable_step_attempts_failed_total`` | counter | kind, workflow | step attempts that raised |
| ``durable_step_attempts_retried_total`` | counter | kind, workflow | attempts after the first (retries begun) |
| ``durable_journal_append_seconds`` | histogram | entry | each journal append (fenced write, acknowledged) |
| ``durable_commands_redelivered_total`` | counter | workflow | commands received again (delivery count > 1) |
| ``durable_executions_in_flight`` | gauge | | runs executing now |
| ``durable_consumer_pending_messages`` | gauge | | commands waiting (all processors) |
| ``durable_consumer_ack_pending_messages`` | gauge | | delivered, not acknowledged (all) |
| ``durable_consumer_redelivered_messages`` | gauge | | unacknowledged and delivered more than once (all) |

Counts are per processor; sum them over processors. "Started" counts first runs only (a
wake-up or a redelivery continues an invocation). Completed, failed and cancelled count the
final statuses the engine journals (engine events, ``Interceptor.observe``), so a workflow that
catches its cancellation and returns counts as cancelled, and one failed before it ran (an
unknown workflow, a deadline) as failed.
"""  # noqa: E501 - a table

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
from durable_core.interceptors import EngineEvent, StepNext, WorkflowNext, outcome_of

__all__ = ["ConsumerStats", "MetricsInterceptor", "ProcessorMetrics", "poll_consumer"]

log = logging.getLogger(__name__)

# End to end and schedule-to-start: from milliseconds to hours (sleeps and delays included).
LONG_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    300,
    1800,
    3600,
    21600,
    86400,
)
APPEND_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 30)
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
        self.blocked = Counter(
            "durable_invocations_blocked",
            "Runs whose replay diverged from the journal: the invocation is blocked, pinned to "
            "the version it ran on.",
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
        self.attempts_failed = Counter(
            "durable_step_attempts_failed",
            "Step attempts that raised (each is retried or fails the step).",
            ("kind", "workflow"),
            registry=r,
        )
        self.attempts_retried = Counter(
            "durable_step_attempts_retried",
            "Step attempts after the first: retries begun.",
            ("kind", "workflow"),
            registry=r,
        )
        self.duration = Histogram(
            "durable_invocation_duration_seconds",
            "End to end: from when an invocation was due to its final journal entry.",
            ("workflow", "status"),
            buckets=LONG_BUCKETS,
            registry=r,
        )
        self.schedule_to_start = Histogram(
            "durable_invocation_schedule_to_start_seconds",
            "From when an invocation was due to the start of its first run.",
            wf,
            buckets=LONG_BUCKETS,
            registry=r,
        )
        self.append_seconds = Histogram(
            "durable_journal_append_seconds",
            "Journal appends: a fenced write until JetStream acknowledged it.",
            ("entry",),
            buckets=APPEND_BUCKETS,
            registry=r,
        )
        self.redelivered = Counter(
            "durable_commands_redelivered",
            "Commands received again (delivery count above 1).",
            wf,
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
        """Run the workflow, counting and timing it by workflow and outcome."""
        m = self.metrics
        if not inp.resumed:
            m.started.labels(inp.workflow).inc()
        m.in_flight.inc()
        try:
            return await nxt(inp)
        except BaseException as e:
            if outcome_of(e) == "suspended":
                m.suspended.labels(inp.workflow).inc()
            raise
        finally:
            m.in_flight.dec()

    async def intercept_step(self, inp: StepInput, nxt: StepNext) -> Any:
        """Run one attempt of a step, counting and timing it by kind and outcome."""
        m = self.metrics
        if inp.attempt > 1:
            m.attempts_retried.labels(inp.kind, inp.workflow).inc()
        started = time.perf_counter()
        try:
            return await nxt(inp)
        except Exception:
            m.attempts_failed.labels(inp.kind, inp.workflow).inc()
            raise
        finally:
            m.step_seconds.labels(inp.kind, inp.workflow).observe(time.perf_counter() - started)

    def observe(self, event: EngineEvent) -> None:
        """Count or time an engine event (schedule-to-start, appends, redeliveries)."""
        m = self.metrics
        if event.kind == "finished":
            counter = {"completed": m.completed, "failed": m.failed, "cancelled": m.cancelled}
            counter[event.status].labels(event.workflow).inc()
            m.duration.labels(event.workflow, event.status).observe(event.seconds)
        elif event.kind == "started":
            m.schedule_to_start.labels(event.workflow).observe(event.seconds)
        elif event.kind == "appended":
            m.append_seconds.labels(event.entry).observe(event.seconds)
        elif event.kind == "blocked":
            m.blocked.labels(event.workflow).inc()
        elif event.kind == "delivered" and event.attempt > 1:
            m.redelivered.labels(event.workflow).inc()


class ConsumerStats(Protocol):
    """What the poller needs of the engine (``durable_core.admin.Engine``)."""

    async def consumer_stats(self, consumer: str) -> tuple[int, int, int]:
        """The command consumer's pending, ack-pending and redelivered counts."""


async def poll_consumer(
    engine: ConsumerStats, consumer: str, metrics: ProcessorMetrics, interval: float = 5.0
) -> None:
    """Copy the command consumer's pending and redelivery counts into gauges every ``interval``
    seconds, until cancelled. NATS trouble is logged (once per streak) and retried."""
    failing = False
    while True:
        await asyncio.sleep(interval)  # first after one interval: the worker creates the consumer
        try:
            pending, ack_pending, redelivered = await engine.consumer_stats(consumer)
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
