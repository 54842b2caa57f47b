"""Prometheus metrics of the scheduler.

| metric | type | labels | counts |
|---|---|---|---|
| ``durable_scheduler_ticks_total`` | counter | schedule | ticks received |
| ``durable_scheduler_invocations_started_total`` | counter | schedule | invocations started |
| ``durable_scheduler_overlap_skipped_total`` | counter | schedule | ticks skipped: run not over |
| ``durable_scheduler_catch_up_skipped_total`` | counter | schedule | late ticks past ``catch_up`` |
| ``durable_scheduler_missed_fire_times_total`` | counter | schedule | fire times never fired |
| ``durable_scheduler_ticks_dropped_total`` | counter | schedule, reason | paused or deleted |
| ``durable_scheduler_leases_expired_total`` | counter | | processor leases found lapsed |
| ``durable_scheduler_commands_redriven_total`` | counter | | commands handed back from them |
| ``durable_scheduler_executions_expired_total`` | counter | | finished executions removed |
| ``durable_scheduler_schedules_repaired_total`` | counter | schedule, action | armed, disarmed |
| ``durable_scheduler_tick_lag_seconds`` | histogram | schedule | fire time to the run's start |

Counts are per replica; sum them over replicas. The series of a deleted schedule are
dropped by the schedule sweep (``forget_schedules``): names come and go, and each kept its own
series for good.
"""

from __future__ import annotations

from collections.abc import Collection

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Histogram,
)

__all__ = ["SchedulerMetrics"]


class SchedulerMetrics:
    """The scheduler's metrics in their own registry (plus process and runtime metrics)."""

    def __init__(
        self, registry: CollectorRegistry | None = None, *, runtime_collectors: bool = True
    ) -> None:
        registry = self.registry = registry or CollectorRegistry()
        if runtime_collectors:
            for collector in (PROCESS_COLLECTOR, GC_COLLECTOR, PLATFORM_COLLECTOR):
                registry.register(collector)
        self.ticks = Counter(
            "durable_scheduler_ticks",
            "Schedule ticks received.",
            ["schedule"],
            registry=registry,
        )
        self.started = Counter(
            "durable_scheduler_invocations_started",
            "Invocations started by schedules.",
            ["schedule"],
            registry=registry,
        )
        self.overlap_skipped = Counter(
            "durable_scheduler_overlap_skipped",
            "Ticks skipped because the schedule's previous run had not finished (overlap=skip).",
            ["schedule"],
            registry=registry,
        )
        self.catch_up_skipped = Counter(
            "durable_scheduler_catch_up_skipped",
            "Late ticks dropped because the schedule's catch-up runs were used up.",
            ["schedule"],
            registry=registry,
        )
        self.missed = Counter(
            "durable_scheduler_missed_fire_times",
            "Fire times the server skipped (its command stream leader changed), found from the "
            "next tick and run as late ticks within catch_up.",
            ["schedule"],
            registry=registry,
        )
        self.dropped = Counter(
            "durable_scheduler_ticks_dropped",
            "Ticks dropped because their schedule is paused or deleted.",
            ["schedule", "reason"],
            registry=registry,
        )
        self.leases_expired = Counter(
            "durable_scheduler_leases_expired",
            "Processor leases that lapsed and were claimed by this replica.",
            registry=registry,
        )
        self.redriven = Counter(
            "durable_scheduler_commands_redriven",
            "Commands of dead processors handed back for immediate redelivery.",
            registry=registry,
        )
        self.rescued = Counter(
            "durable_scheduler_runs_rescued",
            "Invocations RUNNING under a command no processor held, given a new command.",
            registry=registry,
        )
        self.schedules_repaired = Counter(
            "durable_scheduler_schedules_repaired",
            "Schedules the sweep armed (active, the server did not fire them) or disarmed "
            "(paused or deleted, the server still fired them).",
            ["schedule", "action"],
            registry=registry,
        )
        self.tick_lag = Histogram(
            "durable_scheduler_tick_lag_seconds",
            "From the time a tick stands for to the start of its invocation.",
            ["schedule"],
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 3600),
            registry=registry,
        )
        self.expired = Counter(
            "durable_scheduler_executions_expired",
            "Finished executions removed after the retention period (state and journal).",
            registry=registry,
        )
        # The metrics with a series per schedule, and their labels in order.
        self._by_schedule: list[tuple[Counter | Histogram, tuple[str, ...]]] = [
            (self.ticks, ("schedule",)),
            (self.started, ("schedule",)),
            (self.overlap_skipped, ("schedule",)),
            (self.catch_up_skipped, ("schedule",)),
            (self.missed, ("schedule",)),
            (self.dropped, ("schedule", "reason")),
            (self.schedules_repaired, ("schedule", "action")),
            (self.tick_lag, ("schedule",)),
        ]

    def schedules_seen(self) -> set[str]:
        """The schedule names that have series."""
        return {values[0] for _, values in self._series()}

    def forget_schedules(self, names: Collection[str]) -> int:
        """Drop every series of the schedules ``names``; how many were dropped."""
        gone = [(metric, values) for metric, values in self._series() if values[0] in names]
        for metric, values in gone:
            metric.remove(*values)
        return len(gone)

    def _series(self) -> set[tuple[Counter | Histogram, tuple[str, ...]]]:
        out = set()
        for metric, labels in self._by_schedule:
            for family in metric.collect():
                for sample in family.samples:
                    out.add((metric, tuple(sample.labels.get(label, "") for label in labels)))
        return out
