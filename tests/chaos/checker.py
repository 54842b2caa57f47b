"""The chaos checker: from the final state, the journals and the service's own records, decide
whether anything was lost, done twice, or executed again after it was journaled.

The pure part (:func:`check`, :func:`replay_all`) takes an :class:`Observation` and returns a
:class:`Report`; ``test_checker.py`` feeds it synthetic histories to show each rule can fail.
The collecting part (:func:`read_journals`, :func:`read_calls`, :func:`read_states`) reads the
real thing from NATS and from the OrderService's record file.

Ground truth, and why the timestamps compare:

* A **service record** (``ORDER_SERVICE_RECORD_FILE``, one JSON line per call, appended before the
  call does anything) is an execution of a step: ``ts`` is the service's ``time.time()`` when the
  call arrived.
* A **journal entry** is committed when the stream stores it; its stream timestamp
  (``Nats-Time-Stamp``) is stamped by the stream leader when it accepts the message, which is no
  later than the commit. Every process runs on this machine, so both clocks are the same clock.
* A call for key ``<id>:<step>`` that *arrives* after the entry of that step was stamped was
  made after the step's result was committed: a re-executed committed step. A legitimate call
  (the one whose result was journaled, or a retry of it in flight during a crash) always arrives
  before the entry is written, because the writer appends only after the call returned.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from durable_core import _codec
from durable_core._journal import FINAL_KINDS, STEP_KINDS
from durable_core._pb.durable.v1 import durable_pb2 as pb
from durable_core._transport import Transport
from durable_core.errors import NonDeterminismError
from durable_core.testing import replay_workflow
from durable_examples.order.v1 import order_pb2
from hello_service.order import charge_id_for, tracking_number_for
from order_processing import order_processing

ORDER_SERVICE = "/durable_examples.order.v1.OrderService/"
STEPS = {1: "Validate", 2: "Charge", 3: "Ship"}
"""order_processing's steps: step number -> OrderService method."""


# -- what was observed -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Entry:
    """A journal entry as stored: its stream sequence and the leader's timestamp (ns)."""

    seq: int
    ts_ns: int
    entry: pb.JournalEntry


@dataclass(frozen=True, slots=True)
class Call:
    """One call as the OrderService recorded it on arrival."""

    method: str
    key: str
    order_id: str
    ts_ns: int


@dataclass
class Observation:
    """Everything the checker looks at.

    Attributes:
        submitted: invocations whose submission the client saw acknowledged, with their args.
        states: the final state summary of each invocation in the bucket.
        journals: each invocation's journal, in stream order.
        calls: every call the service recorded, in any order.
        unacknowledged: ids whose submission never got an answer (may or may not exist).
        scheduled_prefix: ids starting with this were started by the scheduler, not by the
            client: they are checked like submitted ones (args from their state).
    """

    submitted: dict[str, dict[str, Any]]
    states: dict[str, pb.ExecutionState]
    journals: dict[str, list[Entry]]
    calls: list[Call]
    unacknowledged: set[str] = field(default_factory=set)
    scheduled_prefix: str = ""


@dataclass(frozen=True, slots=True)
class Reexecution:
    invocation_id: str
    step: int
    method: str
    call_ts_ns: int
    commit_ts_ns: int
    writer: str

    def __str__(self) -> str:
        late = (self.call_ts_ns - self.commit_ts_ns) / 1e6
        return (
            f"{self.invocation_id} step {self.step} ({self.method}) called {late:.3f} ms after "
            f"its entry was committed by {self.writer}"
        )


@dataclass
class Report:
    submitted: int = 0
    scheduled: int = 0
    completed: int = 0
    lost: list[str] = field(default_factory=list)
    stuck: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    result_mismatches: list[str] = field(default_factory=list)
    reexecuted: list[Reexecution] = field(default_factory=list)
    unbacked: list[str] = field(default_factory=list)
    effect_violations: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    replay_failures: list[str] = field(default_factory=list)
    calls: int = 0
    retried_keys: int = 0  # keys the service saw more than once (its dedup answered the same)
    replayed: int = 0

    def violations(self) -> dict[str, list[str]]:
        found = {
            "lost": self.lost,
            "stuck": self.stuck,
            "failed": self.failed,
            "duplicates": self.duplicates,
            "result mismatches": self.result_mismatches,
            "re-executed committed steps": [str(r) for r in self.reexecuted],
            "journaled steps without a service call": self.unbacked,
            "service effects not once per idempotency key": self.effect_violations,
            "unexpected invocations": self.unexpected,
            "replay failures": self.replay_failures,
        }
        return {k: v for k, v in found.items() if v}

    @property
    def ok(self) -> bool:
        return not self.violations()

    def describe(self, limit: int = 10) -> str:
        lines = []
        for what, items in self.violations().items():
            lines.append(f"{what}: {len(items)}")
            lines += [f"  {item}" for item in items[:limit]]
            if len(items) > limit:
                lines.append(f"  ... and {len(items) - limit} more")
        return "\n".join(lines) or "no violations"


# -- the rules -------------------------------------------------------------------------------


def _step_entries(journal: Iterable[Entry]) -> list[Entry]:
    return [e for e in journal if e.entry.kind in STEP_KINDS]


def _finals(journal: Iterable[Entry]) -> list[Entry]:
    return [e for e in journal if e.entry.kind in FINAL_KINDS]


def _split_key(key: str) -> tuple[str, int] | None:
    invocation_id, sep, step = key.rpartition(":")
    if not sep or not step.isdigit():
        return None
    return invocation_id, int(step)


def expected_ids(obs: Observation) -> dict[str, dict[str, Any]]:
    """Submitted invocations plus those the scheduler started and those whose submission was
    never acknowledged but happened (args from their state): each is checked the same way."""
    ids = dict(obs.submitted)
    for iid in sorted(set(obs.states) | set(obs.journals)):
        scheduled = bool(obs.scheduled_prefix) and iid.startswith(obs.scheduled_prefix)
        if iid not in ids and (scheduled or iid in obs.unacknowledged):
            st = obs.states.get(iid)
            ids[iid] = _codec.decode(st.args) if st is not None and st.HasField("args") else {}
    return ids


def check(obs: Observation) -> Report:
    """Apply every rule except the replay (see :func:`replay_all`)."""
    expected = expected_ids(obs)
    scheduled = [i for i in expected if obs.scheduled_prefix and i.startswith(obs.scheduled_prefix)]
    report = Report(submitted=len(obs.submitted), scheduled=len(scheduled))

    # Nothing appears that nobody submitted.
    report.unexpected += sorted((set(obs.states) | set(obs.journals)) - set(expected))

    # Commit time of each journaled step: (id, step) -> entry. A step twice is a duplicate.
    committed: dict[tuple[str, int], Entry] = {}
    for iid in sorted(expected):
        journal = obs.journals.get(iid, [])
        state = obs.states.get(iid)
        finals = _finals(journal)
        steps = _step_entries(journal)
        if state is None and not journal:
            report.lost.append(iid)
            continue
        by_step = Counter(e.entry.step for e in steps)
        twice = sorted(step for step, n in by_step.items() if n > 1)
        if len(finals) > 1:
            kinds = [pb.EntryKind.Name(e.entry.kind) for e in finals]
            report.duplicates.append(f"{iid}: {len(finals)} final entries {kinds}")
        if twice:
            report.duplicates.append(f"{iid}: steps {twice} journaled more than once")
        for e in steps:
            committed.setdefault((iid, e.entry.step), e)
        if not finals:
            status = pb.Status.Name(state.status) if state is not None else "no state"
            report.stuck.append(f"{iid}: no final journal entry (state {status})")
            continue
        final = finals[0].entry
        if final.kind != pb.ENTRY_KIND_COMPLETED:
            report.failed.append(
                f"{iid}: {pb.EntryKind.Name(final.kind)} {final.failure.type}: "
                f"{final.failure.message}"
            )
            continue
        if state is None or state.status != pb.STATUS_COMPLETED:
            status = pb.Status.Name(state.status) if state is not None else "no state"
            report.result_mismatches.append(f"{iid}: journal completed, state {status}")
            continue
        if state.output != final.output:
            report.result_mismatches.append(f"{iid}: state output differs from the journal's")
            continue
        report.completed += 1
        _check_effects(iid, expected[iid], steps, final, report)

    # Executions: every service call against the journal.
    calls_by_key: dict[str, list[Call]] = defaultdict(list)
    for call in obs.calls:
        calls_by_key[call.key].append(call)
    report.calls = len(obs.calls)
    report.retried_keys = sum(1 for calls in calls_by_key.values() if len(calls) > 1)
    for key, calls in sorted(calls_by_key.items()):
        parsed = _split_key(key)
        if parsed is None or parsed[0] not in expected:
            report.effect_violations.append(
                f"key {key!r} ({calls[0].method}) belongs to no submitted invocation"
            )
            continue
        iid, step = parsed
        want_method = STEPS.get(step)
        args = expected[iid] if isinstance(expected[iid], Mapping) else {}
        for call in calls:
            if call.method != want_method:
                report.effect_violations.append(
                    f"{iid}: {call.method} called with the key of step {step} ({want_method})"
                )
            if "order_id" in args and call.order_id != str(args["order_id"]):
                report.effect_violations.append(
                    f"{iid}: {call.method} for order {call.order_id!r}, "
                    f"submitted {args['order_id']!r}"
                )
        entry = committed.get((iid, step))
        if entry is None:
            continue  # never journaled (a failed or unfinished invocation is reported above)
        for call in calls:
            if call.ts_ns > entry.ts_ns:
                report.reexecuted.append(
                    Reexecution(iid, step, call.method, call.ts_ns, entry.ts_ns, entry.entry.writer)
                )
    # Every journaled call step was executed by the service before it was committed.
    for (iid, step), entry in sorted(committed.items()):
        if entry.entry.kind != pb.ENTRY_KIND_CALL or entry.entry.HasField("failure"):
            continue
        before = [c for c in calls_by_key.get(f"{iid}:{step}", ()) if c.ts_ns <= entry.ts_ns]
        if not before:
            report.unbacked.append(f"{iid} step {step} ({entry.entry.name})")
    return report


def _check_effects(
    iid: str, args: Any, steps: list[Entry], final: pb.JournalEntry, report: Report
) -> None:
    """The completed order used exactly the effects of its own keys, step by step.

    The OrderService deduplicates by idempotency key: the same key always gets the same charge
    id and tracking number. So the effect applied for a step is the one of the key it was
    called with; one effect per key means the journaled answers and the output are those of
    ``<id>:2`` and ``<id>:3``, and the journal holds exactly steps 1, 2, 3 in that order.
    """
    names = [(e.entry.step, e.entry.name) for e in steps]
    want = [(step, ORDER_SERVICE + method) for step, method in STEPS.items()]
    if names != want:
        report.effect_violations.append(f"{iid}: journaled steps {names}, expected {want}")
        return
    charge = _codec.decode(steps[1].entry.output, order_pb2.ChargeResponse)
    ship = _codec.decode(steps[2].entry.output, order_pb2.ShipResponse)
    output = _codec.decode(final.output)
    expected = {
        "order_id": str(args.get("order_id", "")) if isinstance(args, Mapping) else "",
        "charge_id": charge_id_for(f"{iid}:2"),
        "tracking_number": tracking_number_for(f"{iid}:3"),
    }
    if charge.charge_id != expected["charge_id"]:
        report.effect_violations.append(f"{iid}: journaled charge {charge.charge_id}")
    if ship.tracking_number != expected["tracking_number"]:
        report.effect_violations.append(f"{iid}: journaled shipment {ship.tracking_number}")
    if output != expected:
        report.effect_violations.append(f"{iid}: output {output} != {expected}")


async def replay_all(obs: Observation, report: Report) -> None:
    """Replay every finished journal against the workflow's code: no non-determinism, no step
    executed (a replay of a complete journal only reads it), the same output."""
    made: list[str] = []

    def fake(method: str) -> Any:
        def call(request: Any) -> Any:
            made.append(method)
            return getattr(order_pb2, f"{method}Response")()

        return call

    calls = {method: fake(method) for method in STEPS.values()}
    expected = expected_ids(obs)
    for iid in sorted(expected):
        journal = obs.journals.get(iid, [])
        finals = _finals(journal)
        if not finals or finals[0].entry.kind != pb.ENTRY_KIND_COMPLETED:
            continue
        made.clear()
        state = obs.states.get(iid)
        start = (
            datetime.fromtimestamp(state.created_at_ms / 1000, UTC)
            if state is not None and state.created_at_ms
            else None
        )
        run = await replay_workflow(
            order_processing,
            expected[iid],
            journal=[e.entry for e in _step_entries(journal)],
            calls=calls,
            invocation_id=iid,
            start_time=start,
            raise_on_error=False,
        )
        report.replayed += 1
        if isinstance(run.error, NonDeterminismError):
            report.replay_failures.append(f"{iid}: {run.error}")
        elif run.error is not None:
            report.replay_failures.append(f"{iid}: {type(run.error).__name__}: {run.error}")
        elif run.executed_steps or made:
            executed = made or run.executed_steps
            report.replay_failures.append(f"{iid}: the replay executed {executed}")
        elif _codec.encode(run.output) != finals[0].entry.output:
            report.replay_failures.append(f"{iid}: the replay returned {run.output}")


# -- reading the real thing ------------------------------------------------------------------


def parse_nats_time(stamp: str) -> int:
    """``Nats-Time-Stamp`` (RFC 3339 with up to nanoseconds, UTC) to ns since the epoch."""
    stamp = stamp.strip()
    if stamp.endswith("Z"):
        stamp = stamp[:-1]
    whole, _, fraction = stamp.partition(".")
    seconds = datetime.strptime(whole, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC).timestamp()
    return int(seconds) * 1_000_000_000 + int((fraction + "000000000")[:9] or 0)


async def read_journals(t: Transport) -> dict[str, list[Entry]]:
    """Every journal entry of the prefix, with its stream timestamp, in one pass over the stream.

    Batched direct gets over the wildcard subject; the caller waits until every replica of the
    journal stream is current first, as any replica may answer.
    """
    stream, prefix = t.names.journal_stream, t.names.journal_subject("")
    out: dict[str, list[Entry]] = defaultdict(list)
    seq = 1
    while True:
        inbox = t.nc.new_inbox()
        sub = await t.nc.subscribe(inbox)
        got = 0
        try:
            req = {"seq": seq, "next_by_subj": t.names.journal_subjects, "batch": 512}
            await t.nc.publish(f"$JS.API.DIRECT.GET.{stream}", json.dumps(req).encode(), inbox)
            while True:
                msg = await sub.next_msg(timeout=10.0)
                headers = msg.headers or {}
                status = headers.get("Status")
                if status in ("404", "204"):
                    break
                if status:
                    raise RuntimeError(f"direct get on {stream}: {status} {headers}")
                entry = pb.JournalEntry()
                entry.ParseFromString(msg.data)
                subject = headers["Nats-Subject"]
                seq = int(headers["Nats-Sequence"])
                out[subject.removeprefix(prefix)].append(
                    Entry(seq, parse_nats_time(headers["Nats-Time-Stamp"]), entry)
                )
                got += 1
        finally:
            await sub.unsubscribe()
        if status == "404" or got == 0:
            return dict(out)
        seq += 1


def read_calls(path: Path) -> list[Call]:
    """The OrderService's record file (a torn last line from a SIGKILL is skipped)."""
    calls = []
    if not path.exists():
        return calls
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        calls.append(
            Call(
                method=rec["method"],
                key=rec["idempotency_key"],
                order_id=rec.get("order_id", ""),
                ts_ns=round(float(rec["ts"]) * 1e9),
            )
        )
    return calls


async def read_states(t: Transport, ids: Iterable[str]) -> dict[str, pb.ExecutionState]:
    """The state of each id (and of any other invocation in the bucket)."""
    out = {st.invocation_id: st for st in await t.list_states()}
    missing = [i for i in ids if i not in out]
    for iid in missing:  # keys() can miss one written a moment ago; ask for it by name
        rec = await t.get_state(iid)
        if rec is not None:
            out[iid] = rec.state
    return out


async def wait_finished(
    t: Transport, ids: Iterable[str], timeout: float, poll: float = 0.5
) -> tuple[set[str], float]:
    """Poll states until every id is in a terminal status; return (unfinished, seconds)."""
    terminal = {pb.STATUS_COMPLETED, pb.STATUS_FAILED, pb.STATUS_CANCELLED}
    pending = set(ids)
    start = time.monotonic()
    sem = asyncio.Semaphore(32)

    async def done(iid: str) -> bool:
        async with sem:
            try:
                rec = await t.get_state(iid)
            except Exception:  # noqa: BLE001 - NATS still recovering: ask again later
                return False
            return rec is not None and rec.state.status in terminal

    while pending and time.monotonic() - start < timeout:
        ordered = sorted(pending)
        results = await asyncio.gather(*(done(i) for i in ordered))
        pending -= {i for i, ok in zip(ordered, results, strict=True) if ok}
        if pending:
            await asyncio.sleep(poll)
    return pending, time.monotonic() - start


# -- evidence, for a failed run ----------------------------------------------------------------

_ID = re.compile(r"^([A-Za-z0-9_.-]+?)(?::| step | \()")


def involved(report: Report) -> list[str]:
    """The invocation ids the report's violations name."""
    ids = {r.invocation_id for r in report.reexecuted}
    for items in report.violations().values():
        for item in items:
            m = _ID.match(item)
            if m:
                ids.add(m.group(1))
    return sorted(ids)


def evidence(
    obs: Observation,
    ids: Iterable[str],
    log_dir: Path,
    commands: Mapping[str, list[dict[str, Any]]] | None = None,
) -> dict[str, Any]:
    """Everything known about each id: state, journal (with writers and times), service calls,
    the commands published for it (as a core NATS subscriber saw them), and every process log
    line that names it; for the record of a failed run."""
    logs = {p.name: p.read_text(errors="replace").splitlines() for p in log_dir.glob("*.log")}
    out: dict[str, Any] = {}
    for iid in ids:
        st = obs.states.get(iid)
        out[iid] = {
            "state": None
            if st is None
            else {
                "status": pb.Status.Name(st.status),
                "failure": f"{st.failure.type}: {st.failure.message}" if st.failure.type else "",
                "processor": st.processor,
                "journal_length": st.journal_length,
                "updated_at_ms": st.updated_at_ms,
            },
            "journal": [
                {
                    "seq": e.seq,
                    "stored_ns": e.ts_ns,
                    "kind": pb.EntryKind.Name(e.entry.kind),
                    "step": e.entry.step,
                    "name": e.entry.name,
                    "writer": e.entry.writer,
                    "written_ms": e.entry.timestamp_ms,
                    "command_seq": e.entry.command_seq,
                    "failure": f"{e.entry.failure.type}: {e.entry.failure.message}"
                    if e.entry.failure.type
                    else "",
                }
                for e in obs.journals.get(iid, [])
            ],
            "calls": [
                {"method": c.method, "key": c.key, "arrived_ns": c.ts_ns}
                for c in sorted(obs.calls, key=lambda c: c.ts_ns)
                if c.key.rpartition(":")[0] == iid
            ],
            "commands": list((commands or {}).get(iid, [])),
            "logs": [
                f"{name}: {line}"
                for name, lines in sorted(logs.items())
                for line in lines
                if re.search(rf"\b{re.escape(iid)}\b", line)
            ],
        }
    return out


class CommandTap:
    """Records every command published on the engine's command subjects (core NATS), so a
    failed run can tell a second start message from a second delivery of the same one."""

    def __init__(self) -> None:
        self.seen: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self._sub: Any = None

    async def start(self, t: Transport) -> None:
        async def on_msg(msg: Any) -> None:
            cmd = pb.Command()
            try:
                cmd.ParseFromString(msg.data)
            except Exception:  # noqa: BLE001 - not ours to judge here
                return
            self.seen[cmd.invocation_id].append(
                {
                    "at_ns": time.time_ns(),
                    "subject": msg.subject,
                    "msg_id": (msg.headers or {}).get("Nats-Msg-Id", ""),
                    "kind": pb.CommandKind.Name(cmd.kind),
                }
            )

        self._sub = await t.nc.subscribe(t.names.command_subjects, cb=on_msg)

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
