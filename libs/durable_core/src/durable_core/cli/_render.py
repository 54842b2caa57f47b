"""Human output of the CLI with rich: colour on a terminal, plain text in a pipe, tables with
headers. Imported only by commands that print something for people (rich takes a while to
import, and ``durable --help`` should not wait for it)."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.console import Group as RichGroup
from rich.markup import escape
from rich.table import Table

from durable_core.views import InvocationView, StepState, format_duration, format_time

if TYPE_CHECKING:
    from durable_core.client import ExecutionSummary
    from durable_core.fleet import FleetView
    from durable_core.schedules import Schedule

STATUS_STYLE = {
    "pending": "grey50",
    "running": "blue",
    "paused": "yellow",
    "suspended": "cyan",
    "blocked": "bold yellow",
    "completed": "green",
    "failed": "red",
    "cancelled": "magenta",
}
STEP_STYLE = {
    StepState.COMPLETED: "green",
    StepState.FAILED: "red",
    StepState.RETRYING: "yellow",
    StepState.WAITING: "cyan",
    StepState.CANCELLED: "magenta",
    StepState.ABANDONED: "grey50",
}


def console(*, err: bool = False) -> Console:
    """A console on stdout (or stderr); off a terminal it never wraps (a pipe gets whole lines)."""
    stream = sys.stderr if err else sys.stdout
    wide = None if stream.isatty() else 100_000
    return Console(file=stream, width=wide, highlight=False, soft_wrap=not stream.isatty())


def emit(*renderables: Any) -> None:
    """Print to stdout; off a terminal without the padding rich adds to table cells."""
    out = console()
    if sys.stdout.isatty():
        out.print(*renderables)
        return
    with out.capture() as captured:
        out.print(*renderables)
    sys.stdout.write("\n".join(line.rstrip() for line in captured.get().splitlines()) + "\n")


def status(value: str) -> str:
    return f"[{STATUS_STYLE.get(value, 'default')}]{escape(value)}[/]"


def _json(value: Any) -> str:
    return escape(json.dumps(value, ensure_ascii=False))


def view(v: InvocationView) -> None:
    """``durable status``: the invocation, its lineage, its steps and its history."""
    parts: list[Any] = []
    parts.append(f"invocation [bold]{escape(v.invocation_id)}[/]")
    rows: list[tuple[str, str]] = [
        ("workflow", escape(v.workflow)),
        ("status", status(v.status)),
        ("arguments", _json(v.args)),
        ("created", format_time(v.created_at)),
        ("updated", format_time(v.updated_at)),
    ]
    if v.duration_ms is not None:
        rows.append(("took", format_duration(v.duration_ms)))
    if v.partition_key != v.invocation_id:
        rows.append(("partition key", escape(v.partition_key)))
    if v.waiting_for:
        rows.append(("waiting for", escape(v.waiting_for)))
    if v.blocked_reason:
        rows.append(("blocked", f"[yellow]{escape(v.blocked_reason)}[/]"))
    if v.started_on is not None:
        code = v.started_on
        rows.append(("started on", escape(f"{code['plugin']} {code['version']}")))
    if len(v.ran_on) > 1:
        ran = ", ".join(f"{c['plugin']} {c['version']}" for c in v.ran_on)
        rows.append(("ran on", escape(ran)))
    if v.pinned_version:
        rows.append(("pinned to", escape(v.pinned_version)))
    if v.parent_id:
        rows.append(("parent", escape(v.parent_id)))
    if v.forked_from:
        copied = f"steps 1-{v.fork_from_step - 1} copied" if v.fork_from_step > 1 else "no steps"
        rows.append(("forked from", f"{escape(v.forked_from)} ({copied})"))
    if v.rerun_of:
        rows.append(("rerun of", escape(v.rerun_of)))
    if v.trace_id:
        rows.append(("trace id", escape(v.trace_id)))
    if v.child_ids:
        rows.append(("children", escape(", ".join(v.child_ids))))
    if v.failure is not None:
        f = v.failure
        where = f" at step {f['step']}" if f["step"] else ""
        rows.append(("failure", f"[red]{escape(f['type'])}{where}: {escape(f['message'])}[/]"))
    if v.output is not None:
        rows.append(("output", _json(v.output)))
    for label, value in rows:
        parts.append(f"  {label:<14}{value}")
    for r in v.retries:
        parts.append(
            f"  [yellow]retried[/]       failed {format_time(r.failed_at)} "
            f"({escape(r.error_type)}: {escape(r.message)}), retry at {format_time(r.retried_at)}"
        )
    if v.steps:
        parts.append(steps_table(v))
    if v.history:
        parts.append("  history")
        for t in v.history:
            note = f" [dim]({escape(t.note)})[/]" if t.note else ""
            parts.append(f"    {format_time(t.at):<26}{status(t.status)}{note}")
    for s in v.waits:
        hint = _resolve_hint(v, s.kind, s.detail)
        if hint:
            parts.append(f"  [dim]{escape(hint)}[/]")
    emit(RichGroup(*parts))


def _resolve_hint(v: InvocationView, kind: str, detail: dict[str, Any]) -> str:
    if kind == "awakeable":
        return f"resolve: durable awakeable resolve {detail['awakeable_id']} --payload JSON"
    if kind == "signal":
        return f"send: durable signal {v.invocation_id} {detail['signal']} --payload JSON"
    return ""


def steps_table(v: InvocationView) -> Table:
    t = _table("STEP", "KIND", "WHAT", "STATE", "TOOK", "RESULT")
    for s in v.steps:
        style = STEP_STYLE.get(s.state, "default")
        if s.failure is not None:
            result = f"[red]{escape(s.failure['type'])}: {escape(s.failure['message'])}[/]"
        elif s.state in (StepState.WAITING, StepState.RETRYING):
            result = "[dim]pending[/]"
        else:
            result = _json(s.output)
        what = escape(s.what())
        if s.copied_from:
            what += f" [dim](copied from {escape(s.copied_from)})[/]"
        for a in s.failed_attempts:
            what += (
                f"\n[yellow]attempt {a.attempt} failed {format_time(a.at)}: "
                f"{escape(a.error_type)}: {escape(a.message)}[/]"
            )
        if s.state == StepState.RETRYING:
            what += f"\n[yellow]next attempt {format_time(s.detail.get('next_attempt_at'))}[/]"
        took = format_duration(s.duration_ms) if s.duration_ms is not None else "-"
        t.add_row(str(s.step), escape(s.kind), what, f"[{style}]{s.state.value}[/]", took, result)
    return t


def _table(*columns: str) -> Table:
    t = Table(box=None, pad_edge=False, show_edge=False, padding=(0, 2, 0, 0))
    for name in columns:
        t.add_column(name, overflow="fold", no_wrap=name not in ("WHAT", "RESULT", "FAILURE"))
    return t


def executions(found: Sequence[ExecutionSummary]) -> None:
    """``durable list``: one row per execution, with a header."""
    t = _table("INVOCATION", "WORKFLOW", "STATUS", "CREATED", "UPDATED", "FAILURE")
    for e in found:
        failure = f"{e.failure.type}: {e.failure.message}" if e.failure else ""
        t.add_row(
            escape(e.invocation_id),
            escape(e.workflow),
            status(e.status.value),
            format_time(e.created_at),
            format_time(e.updated_at),
            escape(failure),
        )
    emit(t)


def schedules(found: Sequence[Schedule], next_fires: Sequence[str]) -> None:
    """``durable schedule list``."""
    t = _table("NAME", "WORKFLOW", "WHEN", "OVERLAP", "STATE", "NEXT FIRE", "LAST RUN")
    for s, nxt in zip(found, next_fires, strict=True):
        state = "[yellow]paused[/]" if s.paused else "[green]active[/]"
        t.add_row(
            escape(s.name),
            escape(s.workflow),
            escape(s.when),
            s.overlap,
            state,
            nxt,
            escape(s.last_invocation_id or "-"),
        )
    emit(t)


def fleet(view: FleetView) -> None:
    """``durable plugins --fleet``: workflows with the processors serving them, then the
    processors with their workflows."""
    if not view.processors:
        console().print("no live processor is registered", markup=False)
        return
    t = _table("WORKFLOW", "PROCESSOR", "PACKAGE", "VERSION", "FINGERPRINT")
    for name, served in view.by_workflow().items():
        for p, w in served:
            t.add_row(
                escape(name),
                escape(p.processor),
                escape(w.package),
                escape(w.version),
                escape(w.fingerprint[:12]),
            )
    p_table = _table("PROCESSOR", "HOST", "PID", "DURABLE_CORE", "WORKFLOWS")
    for p in view.processors:
        p_table.add_row(
            escape(p.processor),
            escape(p.host),
            str(p.pid),
            escape(p.core_version),
            escape(", ".join(w.name for w in p.workflows) or "-"),
        )
    emit(t, "", p_table)
