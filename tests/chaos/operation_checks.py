"""The checker's rules for the workload's retries, forks and signals (``operations.py``), and
how a journal reads once retried (``standing``), which the other rules use too.

* **retry** (a ``chaos_retry`` the workload retried): its journal holds one FAILED final and
  then one retry request, and the retried run completed; the step that failed is the gate, and
  it was journaled again, successfully, after the request; no step completed before the
  failure was journaled again or called again (a service call with its key) after the request;
  the gate's own record (``gate-runs.jsonl``) shows it ran closed before the failure, never
  between the failure and the request, open after the request, and never after its retried
  entry was committed.
* **fork** (every fork the workload made, and any fork of its sources it did not hear of: a
  fork call that raised may have made one): its journal starts with copies of its source's
  steps before ``from_step`` (written by ``fork:<source>``) and holds no other entry of those
  steps; no service call was made with a copied step's key (copied steps are not executed
  again). Its own steps are checked as any invocation's: journaled once, never called after
  their commit, and the effects of its own keys (those of the copied steps are its source's).
* **signals** (a ``chaos_signals``): its journal holds each of the signals the workload sent,
  once, in the order sent, whatever the retries and the second sends of one id.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chaos_workflows import GATE_RUNS, SIGNAL
from durable_core import _codec
from durable_core._journal import FINAL_KINDS, STEP_KINDS
from durable_core._pb.durable.v1 import durable_pb2 as pb

if TYPE_CHECKING:
    from .checker import Call, Entry, Expected, Observation, Report

RETRY_WORKFLOW = "chaos_retry"
SIGNALS_WORKFLOW = "chaos_signals"
GATE_STEP = 3  # chaos_retry's gate (Validate 1, Charge 2, gate 3, Ship 4)


@dataclass(frozen=True, slots=True)
class GateRun:
    """One execution of ``chaos_retry``'s gate step, as it recorded itself on entry."""

    invocation_id: str
    order_id: str
    ts_ns: int
    open: bool


def read_gate_runs(gate_dir: Path) -> list[GateRun]:
    """The gate's record (a torn last line from a SIGKILL is skipped)."""
    path = gate_dir / GATE_RUNS
    runs: list[GateRun] = []
    if not path.exists():
        return runs
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        runs.append(
            GateRun(
                rec["invocation_id"],
                rec["order_id"],
                round(float(rec["ts"]) * 1e9),
                bool(rec["open"]),
            )
        )
    return runs


@dataclass
class Standing:
    """A journal as the replay takes it: a retry request after a FAILED final forgets that
    final and every failed step (they run again, same numbers and keys).

    Attributes:
        steps: the step entries that stand, in journal order (the first of each step).
        finals: the final entries that stand (more than one: a duplicate).
        twice: steps journaled again while their entry stood.
        retries: (the FAILED final, the retry request that forgot it), in order.
        forgotten: the failed step entries those retries forgot.
        idle_retries: retry requests with no failure before them (the replay ignores them).
    """

    steps: list[Entry] = field(default_factory=list)
    finals: list[Entry] = field(default_factory=list)
    twice: list[int] = field(default_factory=list)
    retries: list[tuple[Entry, Entry]] = field(default_factory=list)
    forgotten: list[Entry] = field(default_factory=list)
    idle_retries: list[Entry] = field(default_factory=list)


def standing(journal: Iterable[Entry]) -> Standing:
    out = Standing()
    steps: dict[int, Entry] = {}
    for e in journal:
        kind = e.entry.kind
        if kind in STEP_KINDS:
            if e.entry.step in steps:
                out.twice.append(e.entry.step)
            else:
                steps[e.entry.step] = e
        elif kind in FINAL_KINDS:
            out.finals.append(e)
        elif kind == pb.ENTRY_KIND_RETRY_REQUEST:
            if out.finals and out.finals[-1].entry.kind == pb.ENTRY_KIND_FAILED:
                out.retries.append((out.finals.pop(), e))
                out.forgotten += [s for s in steps.values() if s.entry.HasField("failure")]
                steps = {n: s for n, s in steps.items() if not s.entry.HasField("failure")}
            else:
                out.idle_retries.append(e)
    out.steps = list(steps.values())
    out.twice = sorted(set(out.twice))
    return out


def is_copy(e: Entry, source: str = "") -> bool:
    """Written by ``client.fork`` (of ``source``, if given) into a fork's journal."""
    writer = e.entry.writer
    return writer == f"fork:{source}" if source else writer.startswith("fork:")


def check_operations(
    obs: Observation,
    expected: Mapping[str, Expected],
    calls_of: Mapping[str, list[tuple[int | None, Call]]],
    report: Report,
) -> None:
    """Every rule of this module (see its docstring). ``calls_of``: id -> (the step that took
    the call's key in its journal, None if unknown; the call)."""
    runs: dict[str, list[GateRun]] = {}
    for run in obs.gate_runs:
        runs.setdefault(run.invocation_id, []).append(run)
    for iid in sorted(expected):
        exp = expected[iid]
        journal = obs.journals.get(iid, [])
        if not journal:
            continue  # lost (reported as such)
        if exp.forked_from:
            _check_fork(iid, exp, obs, calls_of, report)
        elif exp.workflow == RETRY_WORKFLOW and iid in obs.submitted:
            _check_retry(iid, journal, obs, calls_of.get(iid, []), runs.get(iid, []), report)
        if exp.workflow == SIGNALS_WORKFLOW and not exp.forked_from:
            _check_signals(iid, exp, journal, obs, report)


def _completed(s: Standing) -> bool:
    return len(s.finals) == 1 and s.finals[0].entry.kind == pb.ENTRY_KIND_COMPLETED


def _ms(ns: int) -> str:
    return f"{ns / 1e6:.1f} ms"


def _check_retry(
    iid: str,
    journal: list[Entry],
    obs: Observation,
    calls: list[tuple[int | None, Call]],
    runs: list[GateRun],
    report: Report,
) -> None:
    s = standing(journal)
    outcomes = obs.operations.get(iid, [])
    problems: list[str] = []
    if s.idle_retries:
        problems.append(f"{iid}: {len(s.idle_retries)} retry requests with no failure before")
    if len(s.retries) != 1:
        problems.append(
            f"{iid}: {len(s.retries)} retried failures in the journal, one expected "
            f"(the workload's retry got {outcomes or 'nothing'})"
        )
        report.retry_violations += problems
        return
    failed, request = s.retries[0]
    forgotten = sorted({e.entry.step for e in s.forgotten})
    if forgotten != [GATE_STEP]:
        problems.append(f"{iid}: the retry forgot the failed steps {forgotten}, not the gate's")
    again = {e.entry.step: e for e in s.steps if e.seq > request.seq}
    for e in journal:
        if e.entry.kind in STEP_KINDS and e.entry.step < GATE_STEP and e.seq > request.seq:
            problems.append(
                f"{iid}: step {e.entry.step} ({e.entry.name}), completed before the failure, "
                "journaled again after the retry"
            )
    late = sorted(
        (
            c
            for step, c in calls
            if step is not None and step < GATE_STEP and c.ts_ns > request.ts_ns
        ),
        key=lambda c: c.ts_ns,
    )
    for c in late[:1]:
        problems.append(
            f"{iid}: {c.method} ({c.key}), completed before the failure, called "
            f"{_ms(c.ts_ns - request.ts_ns)} after the retry request was stored"
        )
    gate = again.get(GATE_STEP)
    if _completed(s) and (gate is None or gate.entry.HasField("failure")):
        problems.append(f"{iid}: completed without the gate journaled again after the retry")
    closed = [r for r in runs if r.ts_ns < failed.ts_ns]
    between = [r for r in runs if failed.ts_ns <= r.ts_ns < request.ts_ns]
    after = [r for r in runs if r.ts_ns >= request.ts_ns]
    if not closed or any(r.open for r in closed):
        problems.append(
            f"{iid}: gate runs before the failure {[r.open for r in closed]} (closed expected)"
        )
    if between:
        problems.append(
            f"{iid}: the gate step ran {_ms(between[0].ts_ns - failed.ts_ns)} after the failure "
            "was journaled, before the retry request"
        )
    if gate is not None and not gate.entry.HasField("failure"):
        if not any(r.open and r.ts_ns <= gate.ts_ns for r in after):
            problems.append(f"{iid}: the gate's retried entry has no open run after the retry")
        past = [r for r in after if r.ts_ns > gate.ts_ns]
        if past:
            problems.append(
                f"{iid}: the gate step ran {_ms(past[0].ts_ns - gate.ts_ns)} after its retried "
                "entry was committed"
            )
    if problems:
        report.retry_violations += problems
    elif _completed(s):
        report.retried += 1


def _check_fork(
    iid: str,
    exp: Expected,
    obs: Observation,
    calls_of: Mapping[str, list[tuple[int | None, Call]]],
    report: Report,
) -> None:
    source, from_step = exp.forked_from, exp.from_step
    journal = obs.journals.get(iid, [])
    problems: list[str] = []
    copies = [e for e in journal if is_copy(e, source)]
    want: dict[int, Entry] = {}
    for e in obs.journals.get(source, []):
        ok = e.entry.kind in STEP_KINDS and not e.entry.HasField("failure")
        if ok and e.entry.step < from_step:
            want.setdefault(e.entry.step, e)

    def shown(entries: Iterable[Entry]) -> list[tuple[int, str, bytes]]:
        return [
            (e.entry.step, e.entry.name, e.entry.output.SerializeToString(deterministic=True))
            for e in sorted(entries, key=lambda e: e.entry.step)
        ]

    if shown(copies) != shown(want.values()):
        problems.append(
            f"{iid}: fork of {source} from step {from_step} holds the copied steps "
            f"{[e.entry.step for e in copies]}, its source's steps {sorted(want)}"
        )
    for e in journal:
        if e.entry.kind in STEP_KINDS and e.entry.step < from_step and not is_copy(e):
            problems.append(
                f"{iid}: copied step {e.entry.step} ({e.entry.name}) journaled again by "
                f"{e.entry.writer}"
            )
    # A call with the key a copied step has under the fork's id (it keeps its source's).
    for step, c in sorted(calls_of.get(iid, []), key=lambda sc: sc[1].ts_ns):
        if step is not None and step < from_step:
            problems.append(f"{iid}: copied step {step} executed: {c.method} called ({c.key})")
    if problems:
        report.fork_violations += problems
        return
    s = standing(journal)
    if _completed(s):
        report.forked += 1
        st = obs.states.get(iid)
        report.forked_keyed += bool(st is not None and st.partition_key not in ("", iid))
        report.orphan_forks += exp.orphan


def _check_signals(
    iid: str, exp: Expected, journal: list[Entry], obs: Observation, report: Report
) -> None:
    args = exp.args if isinstance(exp.args, Mapping) else {}
    sent = list(range(int(args.get("signals", 1))))
    got: list[Any] = []
    for e in journal:
        if e.entry.kind == pb.ENTRY_KIND_SIGNAL and e.entry.name == SIGNAL:
            payload = _codec.decode(e.entry.output)
            got.append(payload.get("n") if isinstance(payload, dict) else payload)
    if got != sent:
        twice = sorted(n for n, k in Counter(got).items() if k > 1)
        report.signal_violations.append(
            f"{iid}: the journal holds the signals {got}, {sent} were sent (each once, in order)"
            + (f"; {twice} delivered more than once" if twice else "")
            + f" (the workload got {obs.operations.get(iid, [])})"
        )
        return
    if _completed(standing(journal)):
        report.signalled += 1
        report.signals += len(sent)
