"""The checker on synthetic histories: a clean one passes, and each kind of violation is caught.

Times are nanoseconds on one clock; a history is: the service's records of calls (arrival
times), the journal entries with the times the stream stored them, and the final states.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from durable_core import _codec
from durable_core._pb.durable.v1 import durable_pb2 as pb
from durable_core.testing import call_entry
from durable_examples.order.v1 import order_pb2
from hello_service.order import charge_id_for, tracking_number_for
from order_processing import orders

from .checker import Call, Entry, Observation, check, parse_nats_time, replay_all

MS = 1_000_000


def args_of(iid: str) -> dict[str, Any]:
    return {"order_id": f"order-{iid}", "amount_cents": 500}


def output_of(iid: str) -> dict[str, Any]:
    return {
        "order_id": f"order-{iid}",
        "charge_id": charge_id_for(f"{iid}:2"),
        "tracking_number": tracking_number_for(f"{iid}:3"),
    }


def history(iid: str, t0: int) -> tuple[list[Call], list[Entry], pb.ExecutionState]:
    """One clean run: each call arrives 100 ms before its entry is stored."""
    a = args_of(iid)
    steps = [
        (
            "Validate",
            orders.Validate,
            order_pb2.ValidateResponse(valid=True),
            order_pb2.ValidateRequest(order_id=a["order_id"], amount_cents=a["amount_cents"]),
        ),
        (
            "Charge",
            orders.Charge,
            order_pb2.ChargeResponse(charge_id=charge_id_for(f"{iid}:2")),
            order_pb2.ChargeRequest(order_id=a["order_id"], amount_cents=a["amount_cents"]),
        ),
        (
            "Ship",
            orders.Ship,
            order_pb2.ShipResponse(tracking_number=tracking_number_for(f"{iid}:3")),
            order_pb2.ShipRequest(order_id=a["order_id"]),
        ),
    ]
    calls, journal = [], []
    seq = 0
    for step, (name, method, response, request) in enumerate(steps, start=1):
        calls.append(Call(name, f"{iid}:{step}", a["order_id"], t0 + (2 * step - 1) * 100 * MS))
        entry = call_entry(method, response, request=request, step=step)
        entry.index = step
        entry.writer = "p1/abcd"
        seq += 1
        journal.append(Entry(seq, t0 + 2 * step * 100 * MS, entry))
    done = pb.JournalEntry(kind=pb.ENTRY_KIND_COMPLETED, index=4, writer="p1/abcd")
    done.output.CopyFrom(_codec.encode(output_of(iid)))
    journal.append(Entry(seq + 1, t0 + 700 * MS, done))
    state = pb.ExecutionState(
        invocation_id=iid, workflow="order_processing", status=pb.STATUS_COMPLETED
    )
    state.args.CopyFrom(_codec.encode(a))
    state.output.CopyFrom(done.output)
    return calls, journal, state


def clean(*ids: str) -> Observation:
    obs = Observation(submitted={}, states={}, journals={}, calls=[])
    for k, iid in enumerate(ids):
        calls, journal, state = history(iid, t0=1_700_000_000_000_000_000 + k * 10**9)
        obs.submitted[iid] = args_of(iid)
        obs.calls += calls
        obs.journals[iid] = journal
        obs.states[iid] = state
    return obs


def entry_of(obs: Observation, iid: str, step: int) -> Entry:
    return next(e for e in obs.journals[iid] if e.entry.step == step)


async def test_a_clean_history_passes() -> None:
    obs = clean("a", "b")
    report = check(obs)
    await replay_all(obs, report)
    assert report.ok, report.describe()
    assert (report.submitted, report.completed, report.replayed, report.calls) == (2, 2, 2, 6)


def test_a_call_that_arrives_after_the_step_was_committed_is_a_reexecution() -> None:
    obs = clean("a", "b")
    committed = entry_of(obs, "a", 2).ts_ns
    obs.calls.append(Call("Charge", "a:2", "order-a", committed + 1))
    report = check(obs)
    assert [(r.invocation_id, r.step, r.method) for r in report.reexecuted] == [("a", 2, "Charge")]
    assert "re-executed committed steps" in report.violations()
    assert not report.ok


def test_retries_before_the_commit_are_not_reexecutions() -> None:
    obs = clean("a")
    committed = entry_of(obs, "a", 2).ts_ns
    # The step in flight during a crash, retried by the next holder: both arrive before the
    # entry is stored (the last one 1 ns before), with the same key.
    obs.calls.append(Call("Charge", "a:2", "order-a", committed - 1))
    report = check(obs)
    assert report.ok, report.describe()
    assert report.retried_keys == 1


def test_two_final_entries_or_a_step_journaled_twice_are_duplicates() -> None:
    obs = clean("a", "b")
    last = obs.journals["a"][-1]
    obs.journals["a"].append(Entry(last.seq + 1, last.ts_ns + MS, copy.deepcopy(last.entry)))
    step = entry_of(obs, "b", 3)
    obs.journals["b"].insert(3, Entry(step.seq, step.ts_ns + MS, copy.deepcopy(step.entry)))
    report = check(obs)
    assert len(report.duplicates) == 2
    assert report.duplicates[0].startswith("a: 2 final entries")
    assert report.duplicates[1].startswith("b: steps [3]")


def test_lost_stuck_and_failed_invocations() -> None:
    obs = clean("a", "b", "c", "d")
    del obs.states["a"], obs.journals["a"]  # acknowledged, then gone
    obs.journals["b"].pop()  # never finished
    obs.states["b"].status = pb.STATUS_RUNNING
    failed = pb.JournalEntry(kind=pb.ENTRY_KIND_FAILED, failure=pb.Failure(type="X", message="m"))
    obs.journals["c"][-1] = Entry(obs.journals["c"][-1].seq, obs.journals["c"][-1].ts_ns, failed)
    obs.states["d"].status = pb.STATUS_RUNNING  # the journal finished, the state did not
    report = check(obs)
    assert report.lost == ["a"]
    assert report.stuck == ["b: no final journal entry (state STATUS_RUNNING)"]
    assert report.failed == ["c: ENTRY_KIND_FAILED X: m"]
    assert report.result_mismatches == ["d: journal completed, state STATUS_RUNNING"]
    assert report.completed == 0


def test_an_effect_under_another_key_is_caught() -> None:
    obs = clean("a", "b", "c")
    # A re-run that numbered its steps differently would charge again under a new key.
    obs.calls.append(Call("Charge", "a:3", "order-a", 1))
    # A key nobody submitted.
    obs.calls.append(Call("Ship", "zzz:3", "order-zzz", 1))
    # The journal of b holds the charge of another key (a second charge was applied).
    step = entry_of(obs, "b", 2).entry
    step.output.CopyFrom(_codec.encode(order_pb2.ChargeResponse(charge_id=charge_id_for("x:2"))))
    # The service was called for c with another order.
    obs.calls.append(Call("Validate", "c:1", "order-other", 1))
    report = check(obs)
    assert report.effect_violations == [
        "b: journaled charge " + charge_id_for("x:2"),
        "a: Charge called with the key of step 3 (Ship)",
        "c: Validate for order 'order-other', submitted 'order-c'",
        "key 'zzz:3' (Ship) belongs to no submitted invocation",
    ]


def test_a_journaled_step_without_a_service_call_is_caught() -> None:
    # Guards against a vacuous pass: with no records at all, nothing could be re-executed.
    obs = clean("a")
    obs.calls = [c for c in obs.calls if c.key != "a:2"]
    report = check(obs)
    assert report.unbacked == ["a step 2 (/durable_examples.order.v1.OrderService/Charge)"]
    obs.calls = []
    assert len(check(obs).unbacked) == 3


def test_an_invocation_nobody_submitted_is_unexpected_unless_scheduled() -> None:
    obs = clean("a", "chaostick-20260101T000000")
    del obs.submitted["chaostick-20260101T000000"]
    assert check(obs).unexpected == ["chaostick-20260101T000000"]
    obs.scheduled_prefix = "chaostick-"
    report = check(obs)
    assert report.ok, report.describe()
    assert (report.submitted, report.scheduled) == (1, 1)
    obs.unacknowledged = {"chaostick-20260101T000000"}
    obs.scheduled_prefix = ""
    report = check(obs)  # a submission whose answer was lost may exist: checked all the same
    assert report.ok, report.describe()
    assert report.completed == 2


async def test_a_journal_that_does_not_replay_is_caught() -> None:
    obs = clean("a", "b", "c")
    # a: step 1 recorded as another method (the code changed under the journal).
    obs.journals["a"][0].entry.name = "/durable_examples.order.v1.OrderService/Charge"
    # b: step 2 recorded with another request (a different amount).
    other = order_pb2.ChargeRequest(order_id="order-b", amount_cents=999)
    hashed = call_entry(orders.Charge, order_pb2.ChargeResponse(), request=other)
    entry_of(obs, "b", 2).entry.input_hash = hashed.input_hash
    # c: step 3 missing from the journal: the replay would call the service.
    obs.journals["c"] = [e for e in obs.journals["c"] if e.entry.step != 3]
    report = check(obs)
    await replay_all(obs, report)
    assert len(report.replay_failures) == 3, report.replay_failures
    assert report.replay_failures[0].startswith("a: ")
    assert "non-determinism" in report.replay_failures[0]
    assert "OrderService/Charge" in report.replay_failures[0]
    assert report.replay_failures[1].startswith("b: ") and "input hash" in report.replay_failures[1]
    assert report.replay_failures[2] == "c: the replay executed ['Ship']"


@pytest.mark.parametrize(
    ("stamp", "ns"),
    [
        ("2026-01-02T03:04:05.123456789Z", 1767323045_123456789),
        ("2026-01-02T03:04:05.5Z", 1767323045_500000000),
        ("2026-01-02T03:04:05Z", 1767323045_000000000),
    ],
)
def test_parse_nats_time(stamp: str, ns: int) -> None:
    assert parse_nats_time(stamp) == ns
