"""The figures, their ratios to the floor, the targets, the table and the JSON document."""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import platform
import subprocess
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from durable_core.testing import find_nats_server_binary

from .measure import Setup
from .options import ROOT, Options

# Every figure of a NATS setup, in table order: (key, label, unit). The smoke test checks them.
FIGURES: tuple[tuple[str, str, str], ...] = (
    ("floor_publish_p50_ms", "floor: publish+ack p50", "ms"),
    ("floor_publish_p99_ms", "floor: publish+ack p99", "ms"),
    ("floor_pipelined_per_s", "floor: pipelined publishes", "/s"),
    # the hello's and the 3-step's messages with no engine (bench/_bench/bare.py)
    ("bare_hello_p50_ms", "bare path: hello p50", "ms"),
    ("bare_order_p50_ms", "bare path: 3-step p50", "ms"),
    ("bare_hello_per_s", "bare path: hello", "/s"),
    ("bare_order_per_s", "bare path: 3-step", "/s"),
    ("bare_hello_cpu_python_ms", "bare path: hello Python CPU/inv", "ms"),
    ("bare_order_cpu_python_ms", "bare path: 3-step Python CPU/inv", "ms"),
    ("hello_seq_p50_ms", "hello sequential p50", "ms"),
    ("hello_seq_p99_ms", "hello sequential p99", "ms"),
    ("hello_per_s", "hello throughput", "/s"),
    ("order_seq_p50_ms", "3-step sequential p50", "ms"),
    ("order_seq_p99_ms", "3-step sequential p99", "ms"),
    ("order_per_s", "3-step throughput", "/s"),
    ("order_per_step_ms", "3-step: per step (p50/3)", "ms"),
    ("many_steps_per_step_ms", "many-step: per step", "ms"),
    ("rss_idle_mb", "processor RSS idle", "MB"),
    ("rss_inflight_mb", "processor RSS, in flight", "MB"),
    ("rss_sleeping_mb", "processor RSS, sleepers", "MB"),
    ("rss_sleeping_inflight_mb", "RSS sleepers + in flight", "MB"),
    ("floor_object_mb_per_s", "floor: object store put+get", "MB/s"),
    ("payload_mb_per_s", "large value round trip", "MB/s"),
    # CPU per invocation (ms of CPU, summed over processes): Python = client + processors
    ("hello_cpu_python_ms", "hello: Python CPU/inv", "ms"),
    ("order_cpu_python_ms", "3-step: Python CPU/inv", "ms"),
    # --rate only: the same work at the same pace on both sides of an A/B
    ("hello_at_rate_p50_ms", "hello p50", "ms"),
    ("hello_at_rate_cpu_python_ms", "hello: Python CPU/inv", "ms"),
    ("hello_at_rate_cpu_nats_ms", "hello: NATS CPU/inv", "ms"),
    ("hello_at_rate_cpu_all_ms", "hello: all CPU/inv", "ms"),
    ("order_at_rate_p50_ms", "3-step p50", "ms"),
    ("order_at_rate_cpu_python_ms", "3-step: Python CPU/inv", "ms"),
    ("order_at_rate_cpu_nats_ms", "3-step: NATS CPU/inv", "ms"),
    ("order_at_rate_cpu_all_ms", "3-step: all CPU/inv", "ms"),
)


def ratio(setup: Setup, key: str) -> float | None:
    """A latency over publish+ack (p50 over p50, p99 over p99); a rate as floor rate over it."""
    value = setup.fig(key).median
    if not value or key.startswith(("floor", "rss")) or "_cpu_" in key:
        return None
    if key == "payload_mb_per_s":  # a share of the object store's own rate
        floor = setup.fig("floor_object_mb_per_s").median
        return value / floor if floor else None
    if key.endswith("_per_s"):
        floor = setup.fig("floor_pipelined_per_s").median
        return floor / value if floor else None
    base = "floor_publish_p99_ms" if key.endswith("p99_ms") else "floor_publish_p50_ms"
    floor = setup.fig(base).median
    return value / floor if floor else None


def targets(setup: Setup) -> list[dict[str, Any]]:
    """The targets on this setup, met or not, from this run's medians: issue 19's latency
    ratios (it moved hello from issue 7's 6x to 8x), issue 7's R3 rates and the rest."""
    out: list[dict[str, Any]] = []

    def add(name: str, value: float | None, limit: float, at_most: bool, shown: str) -> None:
        met = None if value is None else (value <= limit if at_most else value >= limit)
        out.append({"target": name, "value": value, "shown": shown, "met": met})

    for what, key, limit in (("hello", "hello_seq_p50_ms", 8), ("3-step", "order_seq_p50_ms", 10)):
        r = ratio(setup, key)
        add(f"{what} sequential p50 <= {limit}x publish+ack p50", r, limit, True, _x(r))
    if setup.replicas == 3:
        h, o = setup.fig("hello_per_s").median, setup.fig("order_per_s").median
        add("R3 hello throughput >= 1,000/s", h, 1000, False, _n(h, "/s"))
        add("R3 3-step throughput >= 400/s", o, 400, False, _n(o, "/s"))
    many = setup.fig("many_steps_per_step_ms").median
    three = setup.fig("order_per_step_ms").median
    steps = many / three if many is not None and three else None
    add(f"{setup.opts.steps}-step per-step cost <= 1.2x 3-step's", steps, 1.2, True, _x(steps))
    payload = ratio(setup, "payload_mb_per_s")
    add("large value round trip >= 0.7x object store put+get", payload, 0.7, False, _x(payload))
    rss = setup.fig("rss_sleeping_inflight_mb")
    shown = "skipped" if rss.note else _n(rss.median, " MB")
    add("processor RSS <= 200 MB (sleepers + in flight)", rss.median, 200, True, shown)
    return out


def _x(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}x"


def _n(v: float | None, unit: str = "") -> str:
    if v is None:
        return "-"
    return f"{v:,.0f}{unit}" if abs(v) >= 100 else f"{v:.2f}{unit}"


def _label(key: str, label: str, opts: Options) -> str:
    if key == "many_steps_per_step_ms":
        return f"{opts.steps}-step: per step"
    if key == "rss_inflight_mb":
        return f"processor RSS, {opts.memory_inflight} in flight"
    if key == "rss_sleeping_mb":
        return f"processor RSS, {opts.sleepers:,} sleepers"
    if key.endswith("mb_per_s"):
        return f"{label}, {opts.payload_mb} MB"
    if key.endswith("_per_s") and not key.startswith("floor"):
        return f"{label}, {opts.inflight} in flight"
    if "_at_rate_" in key:
        return f"{label} @{opts.rate if key.startswith('hello') else opts.rate / 2:g}/s"
    if "_cpu_" in key:
        return f"{label} (x{opts.inflight})"
    return label


def table(setup: Setup) -> Iterator[str]:
    """The setup's figures (median, every run, ratio to the floor) and its targets."""
    opts = setup.opts
    nodes = "1 node, R1" if setup.replicas == 1 else "3 nodes, R3"
    yield (
        f"== {setup.name}: {nodes}; {opts.processors} processor(s); "
        + (f"{opts.shards} shards; " if opts.shards > 1 else "")
        + f"median of {opts.repeat}, {opts.seconds:g} s windows =="
    )
    yield f"{'figure':<32} {'median':>12}   {'runs':<26} {'vs floor':>8}"
    for key, label, unit in FIGURES:
        fig = setup.fig(key)
        name = _label(key, label, opts)
        if fig.median is None:
            if "_at_rate_" not in key:  # those are only measured with --rate
                yield f"{name:<32} {fig.note or 'not measured'}"
            continue
        runs = " ".join(_n(v) for v in fig.runs)
        r = ratio(setup, key)
        yield f"{name:<32} {_n(fig.median, ' ' + unit):>12}   {runs:<26} {_x(r) if r else '':>8}"
    yield "targets:"
    for t in targets(setup):
        mark = {True: "met", False: "NOT MET", None: "-"}[t["met"]]
        yield f"  {t['target']:<50} {t['shown']:>10}  {mark}"
    for what, key in (("hello", "hello"), ("3-step", "order")):
        pairs = (("p50", "seq_p50_ms", "p50_ms"), ("rate", "per_s", "per_s"))
        pairs += (("Python CPU", "cpu_python_ms", "cpu_python_ms"),)
        ratios = [
            f"{label} {engine / bare:.2f}x"
            for label, ours, theirs in pairs
            if (engine := setup.fig(f"{key}_{ours}").median)
            and (bare := setup.fig(f"bare_{key}_{theirs}").median)
        ]
        if ratios:
            yield f"  {what}, engine over its bare path: {', '.join(ratios)}"
    for err in setup.errors:
        yield f"ERROR {err}"
    for what, n in setup.invoke_errors.most_common():
        yield f"WARNING {n} invocation(s) failed: {what}"


def machine_info() -> dict[str, Any]:
    def run(*cmd: str) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=10, cwd=ROOT).stdout
        except (OSError, subprocess.SubprocessError):
            return ""

    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.partition(":")[2].strip()
                break
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "nats_server": run(find_nats_server_binary(), "--version").strip(),
        "nats_py": importlib.metadata.version("nats-py"),
        "git_commit": run("git", "rev-parse", "HEAD").strip(),
        "git_dirty": bool(run("git", "status", "--porcelain").strip()),
    }


def write_json(
    opts: Options,
    setups: list[Setup],
    started: datetime,
    elapsed: float,
    load_at_start: tuple[float, float, float],
) -> Path:
    """Write ``<results_dir>/<UTC timestamp>.json`` and return its path.

    The load averages at start and end tell whether something else shared the machine.
    """
    doc = {
        "started_at": started.isoformat(),
        "elapsed_s": round(elapsed, 1),
        "options": opts.to_json(),
        "machine": {
            **machine_info(),
            "loadavg_at_start": load_at_start,
            "loadavg_at_end": os.getloadavg(),
        },
        "setups": {
            s.name: {
                "replicas": s.replicas,
                "figures": {
                    key: {
                        "median": s.fig(key).median,
                        "runs": s.fig(key).runs,
                        "unit": unit,
                        "vs_floor": ratio(s, key),
                        **({"note": s.fig(key).note} if s.fig(key).note else {}),
                    }
                    for key, _, unit in FIGURES
                },
                "targets": targets(s),
                "errors": s.errors,
                "invoke_errors": dict(s.invoke_errors),
                "details": s.details,
            }
            for s in setups
        },
    }
    opts.results_dir.mkdir(parents=True, exist_ok=True)
    path = opts.results_dir / f"{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path
