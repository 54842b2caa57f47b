"""deploy/grafana/durable.json: a well-formed dashboard that queries only metrics the services
export (a renamed metric would leave a panel silently empty)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from prometheus_client import CollectorRegistry

from durable_inspector.metrics import InspectorMetrics
from durable_processor.metrics import ProcessorMetrics
from durable_scheduler.metrics import SchedulerMetrics

DASHBOARD = Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "durable.json"


def exported() -> set[str]:
    """Metric family names the processor, the scheduler and the inspector register."""
    idle = SimpleNamespace(
        index=SimpleNamespace(stats=lambda: {"by_status": {}}), ready=False, feed=None
    )
    registries: list[CollectorRegistry] = [
        ProcessorMetrics(runtime_collectors=False).registry,
        SchedulerMetrics(runtime_collectors=False).registry,
        InspectorMetrics(lambda: idle, runtime_collectors=False).registry,
    ]
    return {family.name for r in registries for family in r.collect()}


def panels(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in doc["panels"] if p["type"] != "row"]


def test_the_dashboard_is_well_formed() -> None:
    doc = json.loads(DASHBOARD.read_text())
    assert doc["uid"] and doc["title"] and doc["schemaVersion"] >= 36
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {v["name"] for v in doc["templating"]["list"]}
    assert {"datasource", "workflow"} <= variables
    for p in panels(doc):
        assert p["title"] and p["targets"], p
        assert p["datasource"]["uid"] == "${datasource}"
        grid = p["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24 and grid["h"] > 0
        for t in p["targets"]:
            assert t["expr"].count("(") == t["expr"].count(")"), t["expr"]


def test_every_query_names_an_exported_metric() -> None:
    doc = json.loads(DASHBOARD.read_text())
    names = exported()
    used = set()
    for p in panels(doc):
        for t in p["targets"]:
            for metric in re.findall(r"\b(durable_[a-z_]+)", t["expr"]):
                used.add(re.sub(r"_(bucket|sum|count|total)$", "", metric))
    assert used, "no metric queried"
    assert used <= names, f"not exported: {sorted(used - names)}"
    # The metrics issue 17 asked for are on it.
    for wanted in (
        "durable_step_attempts_failed",
        "durable_step_attempts_retried",
        "durable_invocations_cancelled",
        "durable_commands_redelivered",
        "durable_invocation_duration_seconds",
        "durable_invocation_schedule_to_start_seconds",
        "durable_journal_append_seconds",
        "durable_scheduler_tick_lag_seconds",
    ):
        assert wanted in used, wanted
