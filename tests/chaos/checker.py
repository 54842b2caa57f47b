"""The chaos checker: from the final state, the journals and the service's own records, decide
whether anything was lost, done twice, executed again after it was journaled, or run out of
its key's order.

The pure part (:func:`check`, :func:`replay_all`, :func:`service_recovery`) takes an
:class:`Observation` and returns a :class:`Report`; ``test_checker.py`` feeds it synthetic
histories to show each rule can fail. The collecting part (:func:`read_journals`,
:func:`read_calls`, :func:`read_states`) reads the real thing from NATS and from the
OrderService's record file.

Ground truth, and why the timestamps compare:

* A **service record** (``ORDER_SERVICE_RECORD_FILE``, one JSON line per call, appended before the
  call does anything) is an execution of a step: ``ts`` is the service's ``time.time()`` when the
  call arrived.
* A **journal entry** is committed when the stream stores it; its stream timestamp
  (``Nats-Time-Stamp``) is stamped by the stream leader when it accepts the message, which is no
  later than the commit. Every process runs on this machine, so both clocks are the same clock.
* A step's idempotency key is derived from its journal entry, as the engine derives it:
  ``<id>:<n>`` for the n-th step of the workflow's own task (``branch`` "", n its
  ``branch_step``; in a workflow without branches, its step number), ``<id>:<branch>/<n>``
  for a branch's n-th step; ``<id>:<step>`` in a journal with a step written before entries
  named their branch (``by_number``). A call is held to the journaled step that took its key.
* A call with a step's key that *arrives* after the entry of that step was stamped was
  made after the step's result was committed: a re-executed committed step. A legitimate call
  (the one whose result was journaled, or a retry of it in flight during a crash) always arrives
  before the entry is written, because the writer appends only after the call returned.
* A call the service *refused* by its fence (``"refused": true``: a lower ``durable-fence`` than
  one already seen for its key, i.e. from a run another run has taken over) executed nothing:
  it is counted, not checked as an execution.
* Invocations of one partition key run one at a time in submission order: the first thing a
  run of the next one does (a service call, a journal entry of a processor) comes after the
  previous one's final entry was stamped.

Each workflow of the mix has a :class:`Plan`: the steps its journal must hold, which
OrderService method each call step is, its children, and the output it must return.

A workflow whose branches take steps side by side (``chaos_fanout``) has no fixed step numbers:
they are given in the order steps are first asked for, which depends on which branch's step
finished first. Its plan names each branch's steps instead (``Plan.branches``), and the checker
matches journal entries by (branch, step in the branch): the journal must hold exactly those,
each once (one (branch, step) under two numbers is a step executed twice); every call must be
the method, and carry the order id, of the step that took its key (``<id>:2/3``: branch 2's
third step, whatever its number; a key no step of a completed invocation took, such as one by
number, is an effect under no step's key; an unfinished one's call is held to the step its
key names); the journaled answers and the output must be those of the steps' keys.

A retried invocation's journal is read as the replay reads it (``operation_checks.standing``):
its FAILED final and failed steps, forgotten by the retry request after them, are neither
duplicates nor its end. A fork's copied steps carry its source's outputs (the effects of the
source's keys). The rules for the workload's retries, forks and signals are in
``operation_checks.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from chaos_workflows import (
    SIGNAL,
    careless_order,
    chaos_charge,
    chaos_fanout,
    chaos_retry,
    chaos_signals,
    chaos_waits,
    item_order_id,
    reckless_order,
)
from durable_core import _codec
from durable_core._journal import (
    EXTERNAL_KINDS,
    PROCESSOR_KINDS,
    STEP_KINDS,
    copied_by_fork,
    copy_source,
)
from durable_core._pb.durable.v1 import durable_pb2 as pb
from durable_core._transport import Transport
from durable_core.errors import NonDeterminismError
from durable_core.testing import replay_workflow
from durable_examples.order.v1 import order_pb2
from hello_service.order import charge_id_for, tracking_number_for
from order_processing import cancellable_order, order_processing

from .operation_checks import GateRun, check_operations, is_copy, standing
from .workload import awakeable_id

ORDER_SERVICE = "/durable_examples.order.v1.OrderService/"
CALL, SLEEP, AWAKEABLE, CHILD, RUN, SIGNAL_WAIT = (
    pb.ENTRY_KIND_CALL,
    pb.ENTRY_KIND_SLEEP,
    pb.ENTRY_KIND_AWAKEABLE,
    pb.ENTRY_KIND_CHILD,
    pb.ENTRY_KIND_RUN,
    pb.ENTRY_KIND_SIGNAL_WAIT,
)

Steps = tuple[tuple[int, int, str], ...]
# step -> the idempotency key its effect was applied under (a ``Keys``: from the step's
# journal entry)
Key = Callable[[int], str]
# branch ("" the workflow's own task, "1" the first it started, ...) -> (kind, name) of its
# steps, in its order (the first is its step 1)
Shape = Mapping[str, tuple[tuple[int, str], ...]]
BranchKey = Callable[[str, int], str]  # (branch, its step) -> the key its effect was applied under


# -- what each workflow must do ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Plan:
    """What a finished invocation of one workflow must show.

    Attributes:
        fn: the workflow function (its journal is replayed against it).
        steps: ``(step, kind, name)`` of every journaled step, in order; ``{id}`` in a name
            stands for the invocation id; or, when they depend on the arguments, a function
            of them that returns those.
        children: step -> the workflow of the child started there (its id by the step's
            entry, ``<id>-<n>``: see ``child_id``).
        output: ``(invocation id, args, awakeable payloads, key)`` -> the output it must
            return; ``key(step)`` is the idempotency key the step's effect was applied under,
            by its journal entry (``<id>:<n>`` for the root's n-th step, ``<id>:<branch>/<n>``
            for a branch's, ``<id>:<step>`` in a journal keyed by number; a fork's copied
            steps' that of its source), ``key.child(step)`` the id of the child started there;
            for a plan with ``branches``, ``key(branch, step in the branch)``.
        branches: for a workflow whose branches take steps side by side (``steps`` unused):
            args -> each branch's steps (see ``Shape``); their numbers are whatever the
            journal gave them.
        order_of: (args, branch) -> the order id that branch's calls carry (None: unknown;
            without it, every call carries ``args["order_id"]``).
    """

    fn: Callable[..., Awaitable[Any]]
    steps: Steps | Callable[[Mapping[str, Any]], Steps]
    output: Callable[[str, Mapping[str, Any], Mapping[str, Any], Any], Any]
    children: Mapping[int, str] = field(default_factory=dict)
    branches: Callable[[Mapping[str, Any]], Shape] | None = None
    order_of: Callable[[Mapping[str, Any], str], str | None] | None = None

    def steps_of(self, args: Mapping[str, Any]) -> Steps:
        return self.steps(args) if callable(self.steps) else self.steps

    def calls_of(self, args: Mapping[str, Any]) -> dict[int, str]:
        """Step -> the OrderService method each call step calls (a plan without branches)."""
        return {
            step: name.removeprefix(ORDER_SERVICE)
            for step, kind, name in self.steps_of(args)
            if kind == CALL
        }

    def call_steps(
        self, args: Mapping[str, Any], journaled: Iterable[Entry]
    ) -> dict[int, tuple[str, str | None, str]]:
        """Step -> (the OrderService method, the order id, where in the plan: "" or
        ``branch 2's step 1``) of each call step: by the plan's numbers, or, for a plan with
        branches, by the numbers the ``journaled`` step entries took."""
        if self.branches is None:
            order = str(args["order_id"]) if "order_id" in args else None
            return {step: (method, order, "") for step, method in self.calls_of(args).items()}
        out: dict[int, tuple[str, str | None, str]] = {}
        for e in journaled:
            if e.entry.kind == CALL:
                branch, n = e.entry.branch, e.entry.branch_step
                order = self.order_of(args, branch) if self.order_of is not None else None
                out[e.entry.step] = (
                    e.entry.name.removeprefix(ORDER_SERVICE),
                    order,
                    where(branch, n),
                )
        return out

    def place_call(
        self, args: Mapping[str, Any], branch: str, n: int
    ) -> tuple[str | None, str | None, str]:
        """(the OrderService method, the order id, where) of the call step the plan puts at
        ``branch``'s step ``n`` (a plan with branches), (None, None, where) if no call step
        is there."""
        at = where(branch, n)
        place = self.branches(args).get(branch, ()) if self.branches is not None else ()
        if not 0 < n <= len(place) or place[n - 1][0] != CALL:
            return None, None, at
        order = self.order_of(args, branch) if self.order_of is not None else None
        return place[n - 1][1].removeprefix(ORDER_SERVICE), order, at


def where(branch: str, n: int) -> str:
    """A step by its branch and its place there, for messages."""
    return f"branch {branch}'s step {n}" if branch else f"the root's step {n}"


def _order_steps(*methods: str) -> Steps:
    return tuple((n, CALL, ORDER_SERVICE + m) for n, m in enumerate(methods, start=1))


def _order_output(
    _: str, args: Mapping[str, Any], __: Mapping[str, Any], key: Key
) -> dict[str, Any]:
    return {
        "order_id": str(args.get("order_id", "")),
        "charge_id": charge_id_for(key(2)),
        "tracking_number": tracking_number_for(key(3)),
    }


def _careless_output(
    iid: str, args: Mapping[str, Any], aw: Mapping[str, Any], key: Key
) -> dict[str, Any]:
    return {**_order_output(iid, args, aw, key), "caught": []}


def _waits_output(
    iid: str, args: Mapping[str, Any], aw: Mapping[str, Any], key: Keys
) -> dict[str, Any]:
    return {
        "order_id": str(args.get("order_id", "")),
        "approval": aw.get(awakeable_id(iid)),
        # the child's Charge, its first step
        "charge_id": charge_id_for(f"{key.child(4)}:1"),
        "tracking_number": tracking_number_for(key(5)),
    }


def _charge_output(_: str, __: Mapping[str, Any], ___: Mapping[str, Any], key: Key) -> Any:
    return {"charge_id": charge_id_for(key(1))}


def _cancellable_output(_: str, __: Mapping[str, Any], ___: Mapping[str, Any], key: Key) -> Any:
    return {
        "charge_id": charge_id_for(key(1)),
        "tracking_number": tracking_number_for(key(2)),
    }


def _retry_output(
    _: str, args: Mapping[str, Any], __: Mapping[str, Any], key: Key
) -> dict[str, Any]:
    return {
        "order_id": str(args.get("order_id", "")),
        "charge_id": charge_id_for(key(2)),
        "tracking_number": tracking_number_for(key(4)),
    }


def _signal_count(args: Mapping[str, Any]) -> int:
    return int(args.get("signals", 1))


def _signals_steps(args: Mapping[str, Any]) -> Steps:
    n = _signal_count(args)
    waits = tuple((step, SIGNAL_WAIT, SIGNAL) for step in range(2, n + 2))
    return ((1, CALL, ORDER_SERVICE + "Validate"), *waits, (n + 2, CALL, ORDER_SERVICE + "Ship"))


def _signals_output(
    _: str, args: Mapping[str, Any], __: Mapping[str, Any], key: Key
) -> dict[str, Any]:
    n = _signal_count(args)
    return {
        "order_id": str(args.get("order_id", "")),
        "received": list(range(n)),
        "tracking_number": tracking_number_for(key(n + 2)),
    }


def _fanout_items(args: Mapping[str, Any]) -> int:
    return int(args.get("items", 2))


def _fanout_branches(args: Mapping[str, Any]) -> Shape:
    item = ((CALL, ORDER_SERVICE + "Validate"), (RUN, "hold"), (CALL, ORDER_SERVICE + "Charge"))
    branches = {str(n): item for n in range(1, _fanout_items(args) + 1)}
    return {"": ((CALL, ORDER_SERVICE + "Ship"),), **branches}


def _fanout_order(args: Mapping[str, Any], branch: str) -> str | None:
    """Item n's calls (branch "n") carry its own order id, the root's Ship the order's."""
    order_id = str(args.get("order_id", ""))
    if not branch:
        return order_id
    return item_order_id(order_id, int(branch)) if branch.isdigit() else None


def _fanout_output(
    _: str, args: Mapping[str, Any], __: Mapping[str, Any], key: BranchKey
) -> dict[str, Any]:
    return {
        "order_id": str(args.get("order_id", "")),
        "charge_ids": [charge_id_for(key(str(n), 3)) for n in range(1, _fanout_items(args) + 1)],
        "tracking_number": tracking_number_for(key("", 1)),
    }


ORDER_STEPS = _order_steps("Validate", "Charge", "Ship")
PLANS: dict[str, Plan] = {
    "order_processing": Plan(order_processing, ORDER_STEPS, _order_output),
    "careless_order": Plan(careless_order, ORDER_STEPS, _careless_output),
    "reckless_order": Plan(reckless_order, ORDER_STEPS, _careless_output),
    "chaos_waits": Plan(
        chaos_waits,
        (
            (1, CALL, ORDER_SERVICE + "Validate"),
            (2, SLEEP, "sleep"),
            (3, AWAKEABLE, "awk.{id}.1"),
            (4, CHILD, "chaos_charge"),
            (5, CALL, ORDER_SERVICE + "Ship"),
        ),
        _waits_output,
        children={4: "chaos_charge"},
    ),
    "chaos_charge": Plan(chaos_charge, _order_steps("Charge"), _charge_output),
    # Completed when the cancel came too late (see _check_cancelled for a cancelled one).
    "cancellable_order": Plan(
        cancellable_order, _order_steps("Charge", "Ship"), _cancellable_output
    ),
    "chaos_retry": Plan(
        chaos_retry,
        (*_order_steps("Validate", "Charge"), (3, RUN, "gate"), (4, CALL, ORDER_SERVICE + "Ship")),
        _retry_output,
    ),
    "chaos_signals": Plan(chaos_signals, _signals_steps, _signals_output),
    "chaos_fanout": Plan(
        chaos_fanout, (), _fanout_output, branches=_fanout_branches, order_of=_fanout_order
    ),
}
DEFAULT_WORKFLOW = "order_processing"


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
    # Refused by the service's fence check (a superseded run's call, e.g. sent late by a
    # processor that froze between deciding the step and sending it): nothing was executed.
    refused: bool = False


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
        workflows: id -> workflow of each planned invocation (order_processing if absent).
        key_order: partition key -> its invocations in submission order (each submitted only
            after the one before it was acknowledged).
        awakeables: awakeable id -> the payload the workload resolved it with.
        answers: id -> the output a blocking ``invoke`` returned for it (the client's result
            notice): it must be the output the journal and the state hold.
        lifecycle: id -> what the workload's cancels, pauses and resumes of it got (see
            ``Workload.lifecycle``): only these may end cancelled.
        forks: fork id -> (source, from_step) of each fork a fork call returned.
        fork_from: source -> the step it was to be forked from, for each acknowledged source
            the workload forks: an invocation whose state says ``forked_from`` one of these,
            not in ``forks``, was made by a fork call that raised (checked as a fork).
        gate_runs: chaos_retry's record of its gate step's executions.
        operations: id -> what the workload's retries, forks and signals of it got.
    """

    submitted: dict[str, dict[str, Any]]
    states: dict[str, pb.ExecutionState]
    journals: dict[str, list[Entry]]
    calls: list[Call]
    unacknowledged: set[str] = field(default_factory=set)
    scheduled_prefix: str = ""
    workflows: dict[str, str] = field(default_factory=dict)
    key_order: dict[str, list[str]] = field(default_factory=dict)
    awakeables: dict[str, Any] = field(default_factory=dict)
    answers: dict[str, Any] = field(default_factory=dict)
    lifecycle: dict[str, list[str]] = field(default_factory=dict)
    forks: dict[str, tuple[str, int]] = field(default_factory=dict)
    fork_from: dict[str, int] = field(default_factory=dict)
    gate_runs: list[GateRun] = field(default_factory=list)
    operations: dict[str, list[str]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Expected:
    """An invocation the checker expects, with what it was started with (a fork: whose
    steps before ``from_step`` it copied; ``orphan``: made by a fork call that raised)."""

    workflow: str
    args: Any
    parent: str = ""
    forked_from: str = ""
    from_step: int = 0
    orphan: bool = False

    def key_of(self, iid: str, journal: Iterable[Entry]) -> Keys:
        """Step -> the idempotency key its effect was applied under, by its entry in
        ``journal`` (a fork's copied steps keep their source's keys: the copies keep the
        source's branch fields)."""
        journal = list(journal)
        entries: dict[int, pb.JournalEntry] = {}
        for e in _keyed_entries(journal):
            if e.entry.kind in STEP_KINDS:
                entries.setdefault(e.entry.step, e.entry)
        return Keys(iid, entries, by_number(journal), self.forked_from, self.from_step)


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
    children: int = 0
    completed: int = 0
    cancelled: int = 0  # by the workload's cancel, as the rules for it say
    paused: int = 0  # paused by the workload, resumed, and completed
    by_workflow: Counter[str] = field(default_factory=Counter)
    lost: list[str] = field(default_factory=list)
    stuck: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    result_mismatches: list[str] = field(default_factory=list)
    reexecuted: list[Reexecution] = field(default_factory=list)
    unbacked: list[str] = field(default_factory=list)
    effect_violations: list[str] = field(default_factory=list)
    swallowed: list[str] = field(default_factory=list)
    early_wakeups: list[str] = field(default_factory=list)
    out_of_order: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    replay_failures: list[str] = field(default_factory=list)
    lifecycle: list[str] = field(default_factory=list)
    retry_violations: list[str] = field(default_factory=list)
    fork_violations: list[str] = field(default_factory=list)
    signal_violations: list[str] = field(default_factory=list)
    retried: int = 0  # failed, retried once, completed, nothing before the failure again
    forked: int = 0  # forks completed without running a copied step
    forked_keyed: int = 0  # of those, forks of keyed invocations
    orphan_forks: int = 0  # of those, made by a fork call that raised (the workload retried)
    abandoned_forks: int = 0  # journals of copied steps a fork call left with no state
    orphan_keys: int = 0  # keys not checked: a fork the workload never heard of joined them
    signalled: int = 0  # signal workflows that got each signal once and completed
    signals: int = 0  # their signals
    fanouts: int = 0  # workflows with branches that completed with every step as planned
    fanout_branches: int = 0  # their branches (the root not counted)
    fanout_interleaved: int = 0  # of those, whose branches' last steps were numbered out of
    # branch order (a later branch's step asked for first: the numbers depended on timing)
    calls: int = 0
    retried_keys: int = 0  # keys the service saw more than once (its dedup answered the same)
    refused: int = 0  # stale calls the service refused by their fence (executed nothing)
    replayed: int = 0
    keys_checked: int = 0  # partition keys whose order was checked
    key_pairs: int = 0  # consecutive pairs of one key checked

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
            "errors that reached a careless workflow": self.swallowed,
            "sleeps that ended before their time": self.early_wakeups,
            "runs out of their partition key's order": self.out_of_order,
            "unexpected invocations": self.unexpected,
            "replay failures": self.replay_failures,
            "cancels and pauses not honoured": self.lifecycle,
            "retries not honoured": self.retry_violations,
            "forks not honoured": self.fork_violations,
            "signals not delivered exactly once": self.signal_violations,
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
    """The final entries that stand (a retried FAILED one does not)."""
    return standing(journal).finals


def _again_in_branch(steps: Iterable[Entry]) -> str:
    """The steps of a branch that stand under more than one number ("" if none): a step
    that was executed again (another number, another key) after it was journaled. Entries
    written before steps named their branch (``branch_step`` 0) have no such identity."""
    numbers: dict[tuple[str, int], list[int]] = defaultdict(list)
    for e in steps:
        if e.entry.branch_step > 0:
            numbers[(e.entry.branch, e.entry.branch_step)].append(e.entry.step)
    again = [
        f"{where(branch, n)} journaled as steps {sorted(nums)}"
        for (branch, n), nums in sorted(numbers.items())
        if len(nums) > 1
    ]
    return "; ".join(again)


# -- idempotency keys and child ids, from the journal ------------------------------------------

_PLACE = re.compile(r"^(?:(\d+(?:\.\d+)*)/)?(\d+)$")


@dataclass(frozen=True, slots=True)
class KeyName:
    """An idempotency key taken apart: ``<invocation>:<n>`` (``branch`` ""), or
    ``<invocation>:<branch>/<n>``."""

    invocation_id: str
    branch: str
    n: int


def _split_key(key: str) -> KeyName | None:
    invocation_id, sep, place = key.rpartition(":")
    m = _PLACE.match(place) if sep else None
    if m is None:
        return None
    return KeyName(invocation_id, m.group(1) or "", int(m.group(2)))


def by_number(journal: Iterable[Entry]) -> bool:
    """Whether the journal's steps are keyed by their number (as the engine's
    ``ReplayMachine.by_number``): it holds a step, or a failed attempt of one, written before
    entries named their branch (``branch_step`` 0)."""
    return any(
        (e.entry.kind in STEP_KINDS or e.entry.kind == pb.ENTRY_KIND_ATTEMPT_FAILED)
        and e.entry.branch_step <= 0
        for e in journal
    )


def step_key(owner: str, entry: pb.JournalEntry, numbered: bool) -> str:
    """The idempotency key of the step of ``entry`` in a journal of ``owner`` (as the engine's
    ``StepMachine.step_key``): ``<owner>:<n>`` for the n-th step of the workflow's own task,
    ``<owner>:<branch>/<n>`` for a branch's n-th step; ``<owner>:<step>`` in a journal keyed
    by number."""
    if numbered or entry.branch_step <= 0:
        return f"{owner}:{entry.step}"
    if entry.branch:
        return f"{owner}:{entry.branch}/{entry.branch_step}"
    return f"{owner}:{entry.branch_step}"


def child_id(parent: str, entry: pb.JournalEntry, numbered: bool) -> str:
    """The id of the child started by the step of ``entry`` (as the engine's
    ``StepMachine.child_id``): ``<parent>-<n>``, ``<parent>-<branch, dots as _>_<n>`` in a
    branch, ``<parent>-<step>`` in a journal keyed by number; hashed if too long."""
    if numbered or entry.branch_step <= 0:
        suffix = str(entry.step)
    elif entry.branch:
        suffix = f"{entry.branch.replace('.', '_')}_{entry.branch_step}"
    else:
        suffix = str(entry.branch_step)
    candidate = f"{parent}-{suffix}"
    if len(candidate) <= 128:
        return candidate
    return f"{hashlib.sha256(parent.encode()).hexdigest()[:40]}-{suffix}"


def _keyed_entries(journal: Iterable[Entry]) -> list[Entry]:
    """The entries that name a step's key: its step entries (also those a retry forgot, run
    again under the same key) and its failed attempts (a step between attempts)."""
    return [
        e
        for e in journal
        if e.entry.step > 0
        and (e.entry.kind in STEP_KINDS or e.entry.kind == pb.ENTRY_KIND_ATTEMPT_FAILED)
    ]


@dataclass(frozen=True, slots=True)
class Keys:
    """Step -> the idempotency key its effect was applied under, from its journal entry (a
    fork's copied steps, numbered below ``before``, keep their source's keys; a step not
    journaled: ``<id>:<step>``); ``child(step)``: the id of the child started there."""

    iid: str
    entries: Mapping[int, pb.JournalEntry]
    numbered: bool
    source: str = ""
    before: int = 0

    def _owner(self, step: int) -> str:
        return self.source if step < self.before else self.iid

    def __call__(self, step: int) -> str:
        entry = self.entries.get(step)
        if entry is None:
            return f"{self._owner(step)}:{step}"
        return step_key(self._owner(step), entry, self.numbered)

    def child(self, step: int) -> str:
        entry = self.entries.get(step)
        if entry is None:
            return f"{self._owner(step)}-{step}"
        return child_id(self._owner(step), entry, self.numbered)


@dataclass(frozen=True, slots=True)
class KeyIndex:
    """An invocation's own keys (under its own id, also for a fork's copied steps: a call
    with one executed a copied step) -> the numbers of the journaled steps that took them
    (more than one: a step journaled again under another number)."""

    iid: str
    numbered: bool
    branched: bool  # its plan has branches: a key's number is no step number
    steps_of: Mapping[str, list[int]]

    @classmethod
    def of(cls, iid: str, journal: Iterable[Entry], plan: Plan | None) -> KeyIndex:
        journal = list(journal)
        numbered = by_number(journal)
        steps_of: dict[str, set[int]] = defaultdict(set)
        for e in _keyed_entries(journal):
            steps_of[step_key(iid, e.entry, numbered)].add(e.entry.step)
        branched = plan is not None and plan.branches is not None
        return cls(iid, numbered, branched, {k: sorted(v) for k, v in steps_of.items()})

    def steps(self, key: str) -> list[int]:
        return list(self.steps_of.get(key, ()))

    def step_of(self, key: str) -> int | None:
        """The step a call with ``key`` was made for: the first journaled step that took the
        key; for a key none took, ``<id>:<n>`` is step n in a journal keyed by number or of a
        workflow without branches (its n-th step is step n); else unknown (None)."""
        taken = self.steps_of.get(key)
        if taken:
            return taken[0]
        name = _split_key(key)
        if name is None or name.branch or (self.branched and not self.numbered):
            return None
        return name.n


def _args_of(st: pb.ExecutionState | None) -> Any:
    return _codec.decode(st.args) if st is not None and st.HasField("args") else {}


def expected_ids(obs: Observation) -> dict[str, Expected]:
    """Submitted invocations, those the scheduler started, those whose submission was never
    acknowledged but happened (args from their state), and the children their journals
    started: each is checked the same way."""
    ids = {
        iid: Expected(obs.workflows.get(iid, DEFAULT_WORKFLOW), args)
        for iid, args in obs.submitted.items()
    }
    for iid in sorted(set(obs.states) | set(obs.journals)):
        scheduled = bool(obs.scheduled_prefix) and iid.startswith(obs.scheduled_prefix)
        if iid not in ids and (scheduled or iid in obs.unacknowledged):
            st = obs.states.get(iid)
            workflow = obs.workflows.get(iid) or (st.workflow if st is not None else "")
            ids[iid] = Expected(workflow or DEFAULT_WORKFLOW, _args_of(st))
    for iid, exp in list(ids.items()):
        plan = PLANS.get(exp.workflow)
        if plan is None or not plan.children:
            continue
        journal = obs.journals.get(iid, [])
        numbered = by_number(journal)
        # The child's id by its step's entry (its place in its branch), as the engine names it.
        started = {
            e.entry.step: child_id(iid, e.entry, numbered) for e in journal if e.entry.kind == CHILD
        }
        for step, workflow in plan.children.items():
            if step in started:
                args = exp.args if isinstance(exp.args, Mapping) else {}
                child = {
                    "order_id": args.get("order_id", ""),
                    "amount_cents": args.get("amount_cents", 0),
                }
                ids[started[step]] = Expected(workflow, child, parent=iid)
    for fork, (source, from_step) in obs.forks.items():
        src = ids.get(source) or Expected(obs.workflows.get(source, DEFAULT_WORKFLOW), {})
        ids[fork] = Expected(src.workflow, src.args, forked_from=source, from_step=from_step)
    for iid, st in sorted(obs.states.items()):
        source = st.forked_from
        if iid not in ids and source in obs.fork_from and source in ids:
            src = ids[source]
            ids[iid] = Expected(
                src.workflow,
                src.args,
                forked_from=source,
                from_step=obs.fork_from[source],
                orphan=True,
            )
    return ids


def _abandoned_forks(obs: Observation, expected: Mapping[str, Expected]) -> set[str]:
    """Journals of nothing but a fork's copies (its FORKED entry, steps copied from a forked
    source), with no state: a fork call that raised before it submitted its fork (nothing
    runs them; the caller got an error)."""
    return {
        iid
        for iid, journal in obs.journals.items()
        if iid not in expected
        and iid not in obs.states
        and journal
        and all(copied_by_fork(e.entry) and copy_source(e.entry) in obs.fork_from for e in journal)
    }


def check(obs: Observation) -> Report:
    """Apply every rule except the replay (see :func:`replay_all`)."""
    expected = expected_ids(obs)
    scheduled = [i for i in expected if obs.scheduled_prefix and i.startswith(obs.scheduled_prefix)]
    report = Report(
        submitted=len(obs.submitted),
        scheduled=len(scheduled),
        children=sum(1 for e in expected.values() if e.parent),
    )

    # Nothing appears that nobody submitted.
    abandoned = _abandoned_forks(obs, expected)
    report.abandoned_forks = len(abandoned)
    report.unexpected += sorted((set(obs.states) | set(obs.journals)) - set(expected) - abandoned)

    # Commit time of each journaled step: (id, step) -> entry. A step twice is a duplicate.
    committed: dict[tuple[str, int], Entry] = {}
    standing_steps: dict[str, list[Entry]] = {}  # id -> its step entries that stand
    finished: set[str] = set()  # ids whose journal completed
    for iid in sorted(expected):
        exp = expected[iid]
        journal = obs.journals.get(iid, [])
        state = obs.states.get(iid)
        standing_ = standing(journal)
        finals, steps, twice = standing_.finals, standing_.steps, standing_.twice
        if state is None and not journal:
            report.lost.append(iid)
            continue
        if len(finals) > 1:
            kinds = [pb.EntryKind.Name(e.entry.kind) for e in finals]
            report.duplicates.append(f"{iid}: {len(finals)} final entries {kinds}")
        if twice:
            report.duplicates.append(f"{iid}: steps {twice} journaled more than once")
        again = _again_in_branch(steps)
        if again:
            report.duplicates.append(f"{iid}: {again} (executed again under another number)")
        standing_steps[iid] = steps
        for e in steps:
            committed.setdefault((iid, e.entry.step), e)
        if not finals:
            status = pb.Status.Name(state.status) if state is not None else "no state"
            report.stuck.append(f"{iid}: no final journal entry (state {status})")
            continue
        final = finals[0].entry
        if final.kind == pb.ENTRY_KIND_COMPLETED:
            finished.add(iid)
        if final.kind == pb.ENTRY_KIND_CANCELLED and iid in obs.lifecycle:
            problem = _check_cancelled(iid, journal, state)
            if not problem and obs.answers.get(iid) is not None:
                problem = f"{iid}: ended cancelled, yet invoke answered {obs.answers[iid]!r}"
            if problem:
                report.lifecycle.append(problem)
            else:
                report.cancelled += 1
            continue
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
        if iid in obs.answers and obs.answers[iid] != _codec.decode(final.output):
            report.result_mismatches.append(
                f"{iid}: invoke answered {obs.answers[iid]!r}, the journal holds "
                f"{_codec.decode(final.output)!r}"
            )
            continue
        report.completed += 1
        report.by_workflow[exp.workflow] += 1
        _check_effects(iid, exp, journal, steps, final, report, obs.awakeables)

    # Executions: every service call against the journal (a refused one executed nothing).
    calls_by_key: dict[str, list[Call]] = defaultdict(list)
    executed = [c for c in obs.calls if not c.refused]
    for call in executed:
        calls_by_key[call.key].append(call)
    report.calls = len(executed)
    report.refused = len(obs.calls) - len(executed)
    report.retried_keys = sum(1 for calls in calls_by_key.values() if len(calls) > 1)
    # Each invocation's keys, from its journal: a call is held to the step that took its key.
    indexes = {
        iid: KeyIndex.of(iid, obs.journals.get(iid, []), PLANS.get(exp.workflow))
        for iid, exp in expected.items()
    }
    for key, calls in sorted(calls_by_key.items()):
        parsed = _split_key(key)
        if parsed is None or parsed.invocation_id not in expected:
            report.effect_violations.append(
                f"key {key!r} ({calls[0].method}) belongs to no submitted invocation"
            )
            continue
        iid = parsed.invocation_id
        index = indexes[iid]
        plan = PLANS.get(expected[iid].workflow)
        args = expected[iid].args if isinstance(expected[iid].args, Mapping) else {}
        layout = plan.call_steps(args, standing_steps.get(iid, ())) if plan is not None else {}
        taken = index.steps(key)  # the journaled steps that took the key
        step = index.step_of(key)
        what = f"step {step}" if step is not None else repr(key)
        if taken:
            want_method, want_order, at = layout.get(taken[0], (None, None, ""))
            judged = True
        elif iid in finished:
            # Every step of a completed invocation is journaled: a key none of them took is
            # an effect under a key of no step (a step run again under another key, or the
            # key of another numbering).
            report.effect_violations += [
                f"{iid}: {c.method} called with the key {key!r}, which no step of it took"
                for c in calls
            ]
            continue
        elif plan is not None and plan.branches is not None:
            # Not journaled yet: the key names its step's place (not in a journal keyed by
            # number, where it names a number no step took yet).
            want_method, want_order, at = (
                plan.place_call(args, parsed.branch, parsed.n)
                if not index.numbered
                else (None, None, "")
            )
            judged = not index.numbered
        else:
            # A workflow without branches: its n-th step is step n (a branch key is none).
            want_method, want_order, at = (
                layout.get(step, (None, None, "")) if step is not None else (None, None, "")
            )
            judged = True
        for call in calls if judged else ():
            if call.method != want_method:
                report.effect_violations.append(
                    f"{iid}: {call.method} called with the key of {what} "
                    f"({want_method}{', ' + at if at else ''})"
                )
            if want_order is not None and call.order_id != want_order:
                report.effect_violations.append(
                    f"{iid}: {call.method} for order {call.order_id!r}, submitted {want_order!r}"
                    if not at
                    else f"{iid}: {call.method} for order {call.order_id!r} with the key of "
                    f"{what}, {at} for order {want_order!r}"
                )
        # The first commit of a step that took the key: a call after it executed it again.
        entries = [committed[(iid, n)] for n in taken if (iid, n) in committed]
        if not entries:
            continue  # never journaled (a failed or unfinished invocation is reported above)
        entry = min(entries, key=lambda e: e.ts_ns)
        for call in calls:
            if call.ts_ns > entry.ts_ns:
                report.reexecuted.append(
                    Reexecution(
                        iid,
                        entry.entry.step,
                        call.method,
                        call.ts_ns,
                        entry.ts_ns,
                        entry.entry.writer,
                    )
                )
    # Every journaled call step was executed by the service before it was committed (under
    # the key of its entry).
    for (iid, step), entry in sorted(committed.items()):
        if entry.entry.kind != CALL or entry.entry.HasField("failure") or is_copy(entry):
            continue  # a fork's copy was executed (and checked) as its source's step
        key = step_key(iid, entry.entry, indexes[iid].numbered)
        before = [c for c in calls_by_key.get(key, ()) if c.ts_ns <= entry.ts_ns]
        if not before:
            report.unbacked.append(f"{iid} step {step} ({entry.entry.name})")
    # A fork the workload never heard of took a place in its key's queue: no known order.
    orphan_keys = {
        st.partition_key
        for iid, exp in expected.items()
        if exp.orphan and (st := obs.states.get(iid)) is not None and st.partition_key != iid
    }
    report.orphan_keys = len(orphan_keys & set(obs.key_order))
    _check_key_order(obs, calls_by_key, report, skip=orphan_keys)
    by_invocation = _calls_by_invocation(calls_by_key, indexes)
    _check_pauses(obs, by_invocation, report)
    _check_pending_cancels(obs, by_invocation, report)
    check_operations(obs, expected, by_invocation, report)
    return report


# invocation id -> (step, call) of every call made with one of its keys: the step that took
# the key in its journal (None: unknown, see ``KeyIndex.step_of``)
CallsOf = Mapping[str, list[tuple[int | None, Call]]]


def _calls_by_invocation(
    calls_by_key: Mapping[str, list[Call]], indexes: Mapping[str, KeyIndex]
) -> CallsOf:
    """The calls of the invocations ``indexes`` holds, read once from every key, each with
    the step its key names in the invocation's journal."""
    out: dict[str, list[tuple[int | None, Call]]] = defaultdict(list)
    for key, calls in calls_by_key.items():
        parsed = _split_key(key)
        index = indexes.get(parsed.invocation_id) if parsed is not None else None
        if index is not None:
            step = index.step_of(key)
            out[index.iid] += [(step, c) for c in calls]
    return out


def _check_pending_cancels(obs: Observation, calls_of: CallsOf, report: Report) -> None:
    """A cancel answered "pending" came before any run started: the invocation ends
    cancelled, and no call of it arrives after the request was stored."""
    for iid, outcomes in sorted(obs.lifecycle.items()):
        if "cancel:pending" not in outcomes:
            continue
        journal = obs.journals.get(iid, [])
        asked = next(
            (e.ts_ns for e in journal if e.entry.kind == pb.ENTRY_KIND_CANCEL_REQUEST), None
        )
        if asked is None:
            report.lifecycle.append(f"{iid}: cancel answered pending, no request in the journal")
            continue
        finals = _finals(journal)
        if finals and finals[0].entry.kind != pb.ENTRY_KIND_CANCELLED:
            kind = pb.EntryKind.Name(finals[0].entry.kind)
            report.lifecycle.append(f"{iid}: cancel answered pending, yet it ended {kind}")
        late = sorted(
            (c for _, c in calls_of.get(iid, ()) if c.ts_ns > asked), key=lambda c: c.ts_ns
        )
        if late:
            report.lifecycle.append(
                f"{iid}: cancel answered pending, yet {late[0].method} ({late[0].key}) was "
                f"called {(late[0].ts_ns - asked) / 1e6:.1f} ms after the request was stored"
            )


def _check_cancelled(iid: str, journal: list[Entry], state: pb.ExecutionState | None) -> str:
    """A cancelled ``cancellable_order`` (what is wrong with it, or ""): its journal holds the
    request before the end; the call in flight, if any, was journaled as cancelled; it took
    the charge at most, and refunded it if it did (a charge interrupted in flight is
    journaled cancelled, so the workflow refunds nothing); no shipment was journaled (the
    cancellation came before Ship returned, or it would have completed); its state says
    cancelled."""
    final_seq = _finals(journal)[0].seq
    if not any(e.entry.kind == pb.ENTRY_KIND_CANCEL_REQUEST and e.seq < final_seq for e in journal):
        return f"{iid}: cancelled, but no cancel request came before its end"
    if state is None or state.status != pb.STATUS_CANCELLED:
        status = pb.Status.Name(state.status) if state is not None else "no state"
        return f"{iid}: journal cancelled, state {status}"
    steps = _step_entries(journal)
    calls = [e for e in steps if e.entry.kind == CALL]
    done = [
        (e.entry.step, e.entry.name.removeprefix(ORDER_SERVICE))
        for e in calls
        if not e.entry.HasField("failure")
    ]
    interrupted = [e for e in calls if e.entry.HasField("failure")]
    refunds = [e for e in steps if e.entry.kind == pb.ENTRY_KIND_RUN and e.entry.name == "refund"]
    if done not in ([], [(1, "Charge")]):
        return f"{iid}: cancelled after the journaled calls {done} (at most the charge)"
    if len(interrupted) > 1 or any(
        e.entry.failure.type != "InvocationCancelledError" for e in interrupted
    ):
        failures = [(e.entry.step, e.entry.failure.type) for e in interrupted]
        return f"{iid}: cancelled with failed calls {failures} (one cancelled at most)"
    if len(steps) != len(calls) + len(refunds):
        return f"{iid}: cancelled with other steps {[e.entry.name for e in steps]}"
    if not done:
        return f"{iid}: refunded a charge it never journaled" if refunds else ""
    if len(refunds) != 1:
        return f"{iid}: charged, cancelled and refunded {len(refunds)} times (once expected)"
    charge = _codec.decode(calls[0].entry.output, order_pb2.ChargeResponse).charge_id
    refunded = _codec.decode(refunds[0].entry.output)
    key = step_key(iid, calls[0].entry, by_number(journal))
    if charge != charge_id_for(key) or refunded != {"refunded": charge}:
        return f"{iid}: charged {charge}, refunded {refunded}"
    return ""


def _check_pauses(obs: Observation, calls_of: CallsOf, report: Report) -> None:
    """Paused runs stop at a step boundary. A pause stored at P (until the resume stored at R)
    lets the step after the last one journaled before P finish (it may be in flight, or just
    decided), and no step after it begins before R: a call for a later step that arrives
    between P and R ran past the pause."""
    for iid in sorted(obs.lifecycle):
        journal = obs.journals.get(iid, [])
        requests = [
            e
            for e in journal
            if e.entry.kind in (pb.ENTRY_KIND_PAUSE_REQUEST, pb.ENTRY_KIND_RESUME_REQUEST)
        ]
        for i, e in enumerate(requests):
            if e.entry.kind != pb.ENTRY_KIND_PAUSE_REQUEST:
                continue
            resumed = next(
                (
                    r.ts_ns
                    for r in requests[i + 1 :]
                    if r.entry.kind == pb.ENTRY_KIND_RESUME_REQUEST
                ),
                None,
            )
            until = resumed if resumed is not None else float("inf")
            passed = max(
                (s.entry.step for s in _step_entries(journal) if s.ts_ns < e.ts_ns), default=0
            )
            first: dict[int, Call] = {}  # step -> its first call while paused
            for step, c in sorted(calls_of.get(iid, ()), key=lambda sc: sc[1].ts_ns):
                # (a step not known by number: a key no step of it took, in a branch)
                if step is not None and step > passed + 1 and e.ts_ns < c.ts_ns < until:
                    first.setdefault(step, c)
            for step, c in sorted(first.items()):
                report.lifecycle.append(
                    f"{iid}: step {step} ({c.method}) called {(c.ts_ns - e.ts_ns) / 1e6:.1f} ms "
                    f"after the pause was stored, before the resume; step {passed} was the last "
                    "journaled before the pause"
                )
        finals = _finals(journal)
        paused = any(e.entry.kind == pb.ENTRY_KIND_PAUSE_REQUEST for e in requests)
        if paused and finals and finals[0].entry.kind == pb.ENTRY_KIND_COMPLETED:
            report.paused += 1


def _check_effects(
    iid: str,
    exp: Expected,
    journal: list[Entry],
    steps: list[Entry],
    final: pb.JournalEntry,
    report: Report,
    awakeables: Mapping[str, Any],
) -> None:
    """The completed invocation took exactly its plan's steps and used the effects of its own
    keys, step by step.

    The OrderService deduplicates by idempotency key: the same key always gets the same charge
    id and tracking number. So the effect applied for a step is the one of the key it was
    called with; one effect per key means the journaled answers and the output are those of
    the invocation's own keys (each step's by its entry: ``<id>:<n>`` for the root's n-th
    step, ``<id>:<branch>/<n>`` for a branch's; a child's ``<child id>:1``).
    """
    plan = PLANS.get(exp.workflow)
    if plan is None:
        report.effect_violations.append(f"{iid}: no plan for workflow {exp.workflow!r}")
        return
    args = exp.args if isinstance(exp.args, Mapping) else {}
    key_of = exp.key_of(iid, journal)
    output_key: Key | BranchKey = key_of
    number: dict[tuple[str, int], int] = {}  # (branch, its step) -> the step's number
    found = len(report.effect_violations)
    if plan.branches is not None:
        # No fixed numbers: each branch's steps, matched by their place in the branch.
        shape = plan.branches(args)
        want_b = sorted(
            (b, n, k, name) for b, seq in shape.items() for n, (k, name) in enumerate(seq, 1)
        )
        got_b = sorted(
            (e.entry.branch, e.entry.branch_step, e.entry.kind, e.entry.name) for e in steps
        )
        if got_b != want_b:
            show_b = [
                (
                    b,
                    n,
                    pb.EntryKind.Name(k).removeprefix("ENTRY_KIND_"),
                    name.removeprefix(ORDER_SERVICE),
                )
                for b, n, k, name in got_b
            ]
            report.effect_violations.append(
                f"{iid}: journaled (branch, step, kind, name) {show_b}, expected "
                f"{[(b, n, name.removeprefix(ORDER_SERVICE)) for b, n, _, name in want_b]}"
            )
            return
        number = {(e.entry.branch, e.entry.branch_step): e.entry.step for e in steps}
        output_key = _by_branch(key_of, number)
    else:
        got = [(e.entry.step, e.entry.kind, e.entry.name) for e in steps]
        want = [(s, k, name.replace("{id}", iid)) for s, k, name in plan.steps_of(args)]
        if got != want:
            show = [(s, pb.EntryKind.Name(k).removeprefix("ENTRY_KIND_"), n) for s, k, n in got]
            report.effect_violations.append(f"{iid}: journaled steps {show}, expected {want}")
            return
    for e in steps:
        key = key_of(e.entry.step)
        if e.entry.name == ORDER_SERVICE + "Charge":
            charge = _codec.decode(e.entry.output, order_pb2.ChargeResponse)
            if charge.charge_id != charge_id_for(key):
                report.effect_violations.append(f"{iid}: journaled charge {charge.charge_id}")
        elif e.entry.name == ORDER_SERVICE + "Ship":
            ship = _codec.decode(e.entry.output, order_pb2.ShipResponse)
            if ship.tracking_number != tracking_number_for(key):
                report.effect_violations.append(f"{iid}: journaled shipment {ship.tracking_number}")
    for before, after in zip(steps, steps[1:], strict=False):
        wake = before.entry.wake_at_ms
        if before.entry.kind == SLEEP and after.ts_ns < wake * 1_000_000:
            early = (wake * 1_000_000 - after.ts_ns) / 1e6
            report.early_wakeups.append(
                f"{iid}: step {after.entry.step} journaled {early:.0f} ms before the sleep of "
                f"step {before.entry.step} was due"
            )
    output = _codec.decode(final.output)
    if isinstance(output, dict) and output.get("caught"):
        report.swallowed.append(f"{iid} ({exp.workflow}) caught {output['caught']}")
    want_output = plan.output(iid, args, awakeables, output_key)
    if output != want_output and not (isinstance(output, dict) and output.get("caught")):
        report.effect_violations.append(f"{iid}: output {output} != {want_output}")
    if plan.branches is not None and len(report.effect_violations) == found:
        report.fanouts += 1
        report.fanout_branches += len(plan.branches(args)) - 1
        # The branches' last steps numbered out of branch order: timing decided the numbers.
        last = [number[(b, len(seq))] for b, seq in sorted(plan.branches(args).items()) if b]
        report.fanout_interleaved += last != sorted(last)


def _by_branch(key_of: Key, number: Mapping[tuple[str, int], int]) -> BranchKey:
    """(branch, its step) -> the key of that step's entry (found by the number the journal
    gave it: ``<id>:<branch>/<n>``, a fork's copied step its source's)."""
    return lambda branch, n: key_of(number[(branch, n)])


def _check_key_order(
    obs: Observation,
    calls_by_key: Mapping[str, list[Call]],
    report: Report,
    skip: Iterable[str] = (),
) -> None:
    """Each key's invocations (forks too) ran one at a time, in submission order; not the keys
    in ``skip``."""

    def started(iid: str) -> int | None:
        # A fork's copied steps are written by the fork call, not by a run of the fork.
        times = [
            e.ts_ns
            for e in obs.journals.get(iid, [])
            if e.entry.kind in PROCESSOR_KINDS and not is_copy(e)
        ]
        times += [
            c.ts_ns
            for key, calls in calls_by_key.items()
            if key.rpartition(":")[0] == iid
            for c in calls
        ]
        return min(times, default=None)

    def ended(iid: str) -> int | None:
        finals = _finals(obs.journals.get(iid, []))
        return finals[0].ts_ns if finals else None

    skipped = set(skip)
    for key, ids in sorted(obs.key_order.items()):
        if key in skipped:
            continue
        report.keys_checked += 1
        for iid in ids:
            st = obs.states.get(iid)
            if st is not None and st.partition_key != key:
                report.out_of_order.append(
                    f"{key}: {iid} has partition key {st.partition_key!r} in its state"
                )
        for first, then in zip(ids, ids[1:], strict=False):
            report.key_pairs += 1
            began, done = started(then), ended(first)
            if began is None:
                continue  # never ran (reported as stuck or lost if it should have)
            if done is None:
                report.out_of_order.append(
                    f"{key}: {then} ran while {first}, submitted before it, never finished"
                )
            elif began < done:
                report.out_of_order.append(
                    f"{key}: {then} ran {(done - began) / 1e6:.1f} ms before {first}, "
                    "submitted before it, had finished"
                )


async def replay_all(obs: Observation, report: Report) -> None:
    """Replay every finished journal against the workflow's code: no non-determinism, no step
    executed (a replay of a complete journal only reads it), the same output."""
    made: list[str] = []

    def fake(method: str) -> Any:
        def call(request: Any) -> Any:
            made.append(method)
            return getattr(order_pb2, f"{method}Response")()

        return call

    calls = {method: fake(method) for method in ("Validate", "Charge", "Ship")}
    replayable = STEP_KINDS | EXTERNAL_KINDS
    expected = expected_ids(obs)
    for iid in sorted(expected):
        journal = obs.journals.get(iid, [])
        finals = _finals(journal)
        plan = PLANS.get(expected[iid].workflow)
        if plan is None or not finals or finals[0].entry.kind != pb.ENTRY_KIND_COMPLETED:
            continue
        made.clear()
        state = obs.states.get(iid)
        start = (
            datetime.fromtimestamp(state.created_at_ms / 1000, UTC)
            if state is not None and state.created_at_ms
            else None
        )
        # A retry forgot its failed steps (they ran again under the same numbers); the test
        # replayer takes one entry per step, so it gets the journal as the retry left it.
        forgotten = {e.seq for e in standing(journal).forgotten}
        run = await replay_workflow(
            plan.fn,
            expected[iid].args,
            journal=[
                e.entry for e in journal if e.entry.kind in replayable and e.seq not in forgotten
            ],
            calls=calls,
            invocation_id=iid,
            workflow=expected[iid].workflow,
            start_time=start,
            raise_on_error=False,
        )
        report.replayed += 1
        if isinstance(run.error, NonDeterminismError):
            report.replay_failures.append(f"{iid}: {run.error}")
        elif run.error is not None:
            report.replay_failures.append(f"{iid}: {type(run.error).__name__}: {run.error}")
        elif run.executed_steps or made or run.suspended:
            executed = made or run.executed_steps or list(run.waiting_for)
            report.replay_failures.append(f"{iid}: the replay executed {executed}")
        elif _codec.encode(run.output) != finals[0].entry.output:
            report.replay_failures.append(f"{iid}: the replay returned {run.output}")


@dataclass(frozen=True, slots=True)
class Recovery:
    """One processor after a service restart: seconds from the moment the service listened
    again to its last call attempt that failed UNAVAILABLE (None: none failed after it) and
    to its first journaled successful call (None: none within the horizon)."""

    last_refused: float | None
    first_success: float | None

    def __str__(self) -> str:
        def show(v: float | None) -> str:
            return "-" if v is None else f"{v:.2f}s"

        return f"refused until {show(self.last_refused)}, ok from {show(self.first_success)}"


def service_recovery(
    journals: Mapping[str, list[Entry]], back_ms: float, horizon_ms: float = 60_000
) -> dict[str, Recovery]:
    """After the service came back (wall ms), per processor (the writer's name before the
    ``/``): how long its calls still failed UNAVAILABLE (journaled failed attempts), and when
    it journaled a successful call. A processor cut off from NATS at the time journals
    neither, so a slow NATS recovery is not taken for a slow gRPC reconnection."""
    refused: dict[str, float] = {}
    ok: dict[str, float] = {}
    writers: set[str] = set()
    for journal in journals.values():
        for e in journal:
            entry = e.entry
            if entry.kind not in (CALL, pb.ENTRY_KIND_ATTEMPT_FAILED) or is_copy(e):
                continue  # a fork's copy is no call of a processor
            proc = entry.writer.partition("/")[0]
            writers.add(proc)
            t = entry.timestamp_ms
            if not back_ms <= t <= back_ms + horizon_ms:
                continue
            if entry.kind == pb.ENTRY_KIND_ATTEMPT_FAILED or entry.HasField("failure"):
                if entry.failure.code == "UNAVAILABLE":
                    refused[proc] = max(refused.get(proc, t), t)
            else:
                ok[proc] = min(ok.get(proc, t), t)

    def after(table: dict[str, float], proc: str) -> float | None:
        return (table[proc] - back_ms) / 1000 if proc in table else None

    return {p: Recovery(after(refused, p), after(ok, p)) for p in sorted(writers)}


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
    """Every journal entry of the prefix, with its stream timestamp, in one pass over each
    journal stream (one per shard).

    Batched direct gets over the wildcard subject; the caller waits until every replica of the
    journal streams is current first, as any replica may answer.
    """
    out: dict[str, list[Entry]] = defaultdict(list)
    for stream in t.names.journal_streams:
        await _read_journal_stream(t, stream, out)
    return dict(out)


async def _read_journal_stream(t: Transport, stream: str, out: dict[str, list[Entry]]) -> None:
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
                seq = int(headers["Nats-Sequence"])
                # The id is the subject's last token (ids hold no dots), whatever the shard.
                invocation_id = headers["Nats-Subject"].rsplit(".", 1)[-1]
                out[invocation_id].append(
                    Entry(seq, parse_nats_time(headers["Nats-Time-Stamp"]), entry)
                )
                got += 1
        finally:
            await sub.unsubscribe()
        if status == "404" or got == 0:
            return
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
                refused=bool(rec.get("refused", False)),
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
                    "branch": e.entry.branch,
                    "branch_step": e.entry.branch_step,
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
                {"method": c.method, "key": c.key, "arrived_ns": c.ts_ns, "refused": c.refused}
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
