"""The checker on synthetic histories: a clean one passes, and each kind of violation is caught.

Times are nanoseconds on one clock; a history is: the service's records of calls (arrival
times), the journal entries with the times the stream stored them, and the final states.
"""

from __future__ import annotations

import copy
import hashlib
from typing import Any

import pytest

from chaos_workflows import item_order_id
from durable_core import _codec
from durable_core._pb.durable.v1 import durable_pb2 as pb
from durable_core.testing import call_entry, failed_entry, run_entry
from durable_examples.order.v1 import order_pb2
from hello_service.order import charge_id_for, tracking_number_for
from order_processing import orders

from .checker import (
    ORDER_SERVICE,
    Call,
    Entry,
    Observation,
    Recovery,
    check,
    child_id,
    parse_nats_time,
    replay_all,
    service_recovery,
    step_key,
)
from .operation_checks import GateRun
from .operations import signal_payload
from .workload import approval, awakeable_id

MS = 1_000_000
T0 = 1_700_000_000_000_000_000


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


def test_a_late_call_the_service_refused_by_its_fence_executed_nothing() -> None:
    obs = clean("a")
    committed = entry_of(obs, "a", 2).ts_ns
    # A superseded run's call, sent after the step was committed, refused by the service.
    obs.calls.append(Call("Charge", "a:2", "order-a", committed + 1, refused=True))
    report = check(obs)
    assert report.ok, report.describe()
    assert (report.refused, report.retried_keys) == (1, 0)


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


def test_an_answer_of_invoke_other_than_the_journals_output_is_a_mismatch() -> None:
    obs = clean("a", "b")
    obs.answers["a"] = output_of("a")  # what the journal holds: fine
    obs.answers["b"] = {**output_of("b"), "charge_id": "ch_other"}
    report = check(obs)
    assert report.result_mismatches == [
        f"b: invoke answered {obs.answers['b']!r}, the journal holds {output_of('b')!r}"
    ]
    assert report.completed == 1


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


# -- the widened workload: keys, waits, children, careless workflows -------------------------

SEC = 1_000_000_000


def waits_history(obs: Observation, iid: str, t0: int) -> None:
    """A clean chaos_waits run and its child's into ``obs``: Validate, a sleep of 1 s, the
    awakeable (resolved by the workload), the child's Charge, Ship."""
    a = args_of(iid)
    child = f"{iid}-4"
    aid = awakeable_id(iid)
    payload = approval(iid)
    obs.submitted[iid] = {**a, "sleep_ms": 1000}
    obs.workflows[iid] = "chaos_waits"
    obs.awakeables[aid] = payload
    t0_ms = t0 // MS

    def at(ms: int, entry: pb.JournalEntry, seq: int) -> Entry:
        entry.writer = entry.writer or "p1/abcd"
        return Entry(seq, t0 + ms * MS, entry)

    validate = call_entry(orders.Validate, order_pb2.ValidateResponse(valid=True), step=1)
    sleep = pb.JournalEntry(kind=pb.ENTRY_KIND_SLEEP, step=2, name="sleep")
    sleep.timestamp_ms, sleep.wake_at_ms = t0_ms + 200, t0_ms + 1200
    wait = pb.JournalEntry(kind=pb.ENTRY_KIND_AWAKEABLE, step=3, name=aid)
    resolved = pb.JournalEntry(kind=pb.ENTRY_KIND_AWAKEABLE_RESULT, name=aid, writer="client")
    resolved.output.CopyFrom(_codec.encode(payload))
    started = pb.JournalEntry(kind=pb.ENTRY_KIND_CHILD, step=4, name="chaos_charge")
    started.output.CopyFrom(_codec.encode(child))
    child_out = {"charge_id": charge_id_for(f"{child}:1")}
    child_done = pb.JournalEntry(kind=pb.ENTRY_KIND_CHILD_RESULT, name=child, writer="p2/beef")
    child_done.output.CopyFrom(_codec.encode(child_out))
    tracking = tracking_number_for(f"{iid}:5")
    ship = call_entry(orders.Ship, order_pb2.ShipResponse(tracking_number=tracking), step=5)
    out = {
        "order_id": a["order_id"],
        "approval": payload,
        "charge_id": child_out["charge_id"],
        "tracking_number": tracking,
    }
    done = pb.JournalEntry(kind=pb.ENTRY_KIND_COMPLETED)
    done.output.CopyFrom(_codec.encode(out))
    obs.journals[iid] = [
        at(100, validate, 1),
        at(200, sleep, 2),
        at(1300, wait, 3),
        at(1400, resolved, 4),
        at(1500, started, 5),
        at(2500, child_done, 8),
        at(2700, ship, 9),
        at(2800, done, 10),
    ]
    charge = call_entry(
        orders.Charge, order_pb2.ChargeResponse(charge_id=child_out["charge_id"]), step=1
    )
    child_final = pb.JournalEntry(kind=pb.ENTRY_KIND_COMPLETED)
    child_final.output.CopyFrom(_codec.encode(child_out))
    obs.journals[child] = [at(2000, charge, 6), at(2100, child_final, 7)]
    obs.calls += [
        Call("Validate", f"{iid}:1", a["order_id"], t0 + 50 * MS),
        Call("Charge", f"{child}:1", a["order_id"], t0 + 1900 * MS),
        Call("Ship", f"{iid}:5", a["order_id"], t0 + 2600 * MS),
    ]
    for name, wf, output in ((iid, "chaos_waits", out), (child, "chaos_charge", child_out)):
        st = pb.ExecutionState(invocation_id=name, workflow=wf, status=pb.STATUS_COMPLETED)
        st.args.CopyFrom(_codec.encode(obs.submitted[iid] if name == iid else a))
        st.output.CopyFrom(_codec.encode(output))
        obs.states[name] = st


def widened() -> Observation:
    """Two orders in one partition key, a chaos_waits with its child, a careless order."""
    obs = clean("k1", "k2", "c")
    obs.workflows["c"] = "careless_order"
    careless = {**output_of("c"), "caught": []}
    obs.journals["c"][-1].entry.output.CopyFrom(_codec.encode(careless))
    obs.states["c"].output.CopyFrom(_codec.encode(careless))
    obs.states["c"].workflow = "careless_order"
    for iid in ("k1", "k2"):
        obs.states[iid].partition_key = "key-000"
    obs.key_order["key-000"] = ["k1", "k2"]  # k2's history starts 1 s after k1's
    waits_history(obs, "w", t0=1_700_000_100_000_000_000)
    return obs


async def test_a_clean_widened_history_passes() -> None:
    obs = widened()
    report = check(obs)
    await replay_all(obs, report)
    assert report.ok, report.describe()
    assert (report.completed, report.children, report.replayed) == (5, 1, 5)
    assert report.by_workflow == {
        "order_processing": 2,
        "careless_order": 1,
        "chaos_waits": 1,
        "chaos_charge": 1,
    }
    assert (report.keys_checked, report.key_pairs) == (1, 1)


def test_a_run_that_starts_before_its_keys_predecessor_finished_is_out_of_order() -> None:
    obs = widened()
    # k2's Validate arrives 1 ms before k1's final entry was stored.
    k1_done = obs.journals["k1"][-1].ts_ns
    obs.calls.append(Call("Validate", "k2:1", "order-k2", k1_done - MS))
    report = check(obs)
    assert report.out_of_order == [
        "key-000: k2 ran 1.0 ms before k1, submitted before it, had finished"
    ]

    # Submitted the other way round: k2's whole run came before k1's.
    obs = widened()
    obs.key_order["key-000"] = ["k2", "k1"]
    assert len(check(obs).out_of_order) == 1

    # k1 never finished, and k2 ran anyway.
    obs = widened()
    obs.journals["k1"].pop()
    obs.states["k1"].status = pb.STATUS_RUNNING
    report = check(obs)
    assert report.out_of_order == ["key-000: k2 ran while k1, submitted before it, never finished"]
    assert report.stuck == ["k1: no final journal entry (state STATUS_RUNNING)"]

    # A state under another key than the one it was submitted with.
    obs = widened()
    obs.states["k2"].partition_key = "key-001"
    assert check(obs).out_of_order == ["key-000: k2 has partition key 'key-001' in its state"]


def test_an_error_that_reached_a_careless_workflow_is_caught() -> None:
    obs = widened()
    careless = {**output_of("c"), "caught": ["Charge: _LostClaim: moved on"]}
    obs.journals["c"][-1].entry.output.CopyFrom(_codec.encode(careless))
    obs.states["c"].output.CopyFrom(_codec.encode(careless))
    report = check(obs)
    assert report.swallowed == ["c (careless_order) caught ['Charge: _LostClaim: moved on']"]
    assert not report.effect_violations


def test_a_step_journaled_before_the_sleep_was_due_is_an_early_wakeup() -> None:
    obs = widened()
    sleep = next(e for e in obs.journals["w"] if e.entry.kind == pb.ENTRY_KIND_SLEEP)
    sleep.entry.wake_at_ms += 500  # due 1.7 s after t0; the awakeable step came at 1.3 s
    report = check(obs)
    assert report.early_wakeups == ["w: step 3 journaled 400 ms before the sleep of step 2 was due"]


def test_waits_with_another_payload_a_lost_child_or_missing_steps_are_caught() -> None:
    obs = widened()
    obs.awakeables[awakeable_id("w")] = {"approved_by": "someone else"}
    report = check(obs)
    assert len(report.effect_violations) == 1
    assert report.effect_violations[0].startswith("w: output ")

    obs = widened()
    del obs.journals["w-4"], obs.states["w-4"]  # the journal says it was started
    report = check(obs)
    assert report.lost == ["w-4"]

    obs = widened()
    obs.journals["w"] = [e for e in obs.journals["w"] if e.entry.kind != pb.ENTRY_KIND_SLEEP]
    report = check(obs)
    assert len(report.effect_violations) == 1
    assert "journaled steps" in report.effect_violations[0]


async def test_a_waits_journal_that_does_not_replay_is_caught() -> None:
    obs = widened()
    # The awakeable's result is missing: the replay would wait for it.
    obs.journals["w"] = [
        e for e in obs.journals["w"] if e.entry.kind != pb.ENTRY_KIND_AWAKEABLE_RESULT
    ]
    report = check(obs)
    await replay_all(obs, report)
    assert report.replay_failures == ["w: the replay executed ['awakeable awk.w.1']"]


def test_service_recovery_is_measured_per_processor() -> None:
    obs = clean("a", "b")
    back_ms = 1_700_000_000_000
    # p1 journals a's steps 1.0, 1.2 and 1.4 s after the service is back. p2's call of b's
    # step 1 failed UNAVAILABLE at 0.5 s (a failed attempt) and at 2.0 s (failed for good),
    # its next calls succeeded 2.2 and 2.4 s after.
    for iid, writer, after_ms in (("a", "p1/x", 1_000), ("b", "p2/y", 2_000)):
        for k, e in enumerate(obs.journals[iid][:3]):
            e.entry.writer = writer
            e.entry.timestamp_ms = back_ms + after_ms + 200 * k
    refused = pb.Failure(type="AioRpcError", message="UNAVAILABLE: refused", code="UNAVAILABLE")
    obs.journals["b"][0].entry.failure.CopyFrom(refused)
    attempt = pb.JournalEntry(kind=pb.ENTRY_KIND_ATTEMPT_FAILED, step=1, writer="p2/y")
    attempt.failure.CopyFrom(refused)
    attempt.timestamp_ms = back_ms + 500
    obs.journals["b"].insert(0, Entry(0, 0, attempt))
    got = service_recovery(obs.journals, back_ms)
    assert got == {"p1": Recovery(None, 1.0), "p2": Recovery(2.0, 2.2)}
    assert str(got["p2"]) == "refused until 2.00s, ok from 2.20s"
    assert service_recovery(obs.journals, back_ms + 5_000) == {
        "p1": Recovery(None, None),
        "p2": Recovery(None, None),
    }


# -- cancels and pauses from outside -------------------------------------------------------


def cancelled(iid: str, t0: int, *, charged: bool = True, refunds: int = 1) -> Observation:
    """A cancellable_order cancelled while Ship was in flight: the charge journaled, the Ship
    call journaled cancelled, the charge refunded (``refunds`` times), CANCELLED."""
    a = args_of(iid)
    charge = charge_id_for(f"{iid}:1")
    calls = [Call("Charge", f"{iid}:1", a["order_id"], t0 + 100 * MS)]
    journal: list[Entry] = []

    def add(entry: pb.JournalEntry, ms: int) -> None:
        entry.writer = entry.writer or "p1/abcd"
        journal.append(Entry(len(journal) + 1, t0 + ms * MS, entry))

    if charged:
        add(
            call_entry(
                orders.Charge,
                order_pb2.ChargeResponse(charge_id=charge),
                request=order_pb2.ChargeRequest(order_id=a["order_id"]),
                step=1,
            ),
            200,
        )
        calls.append(Call("Ship", f"{iid}:2", a["order_id"], t0 + 300 * MS))
    add(pb.JournalEntry(kind=pb.ENTRY_KIND_CANCEL_REQUEST, writer="client"), 350)
    interrupted = pb.JournalEntry(
        kind=pb.ENTRY_KIND_CALL,
        step=2 if charged else 1,
        name=ORDER_SERVICE + ("Ship" if charged else "Charge"),
    )
    interrupted.failure.type = "InvocationCancelledError"
    add(interrupted, 400)
    for _ in range(refunds if charged else 0):
        refund = pb.JournalEntry(kind=pb.ENTRY_KIND_RUN, step=3, name="refund")
        refund.output.CopyFrom(_codec.encode({"refunded": charge}))
        add(refund, 450)
    add(pb.JournalEntry(kind=pb.ENTRY_KIND_CANCELLED), 500)
    state = pb.ExecutionState(
        invocation_id=iid, workflow="cancellable_order", status=pb.STATUS_CANCELLED
    )
    return Observation(
        submitted={iid: a},
        states={iid: state},
        journals={iid: journal},
        calls=calls,
        workflows={iid: "cancellable_order"},
        lifecycle={iid: ["cancel:running"]},
    )


@pytest.mark.parametrize("charged", [True, False])
def test_a_cancelled_order_that_refunded_what_it_charged_passes(charged: bool) -> None:
    report = check(cancelled("c", T0, charged=charged))
    assert report.ok, report.describe()
    assert (report.cancelled, report.completed) == (1, 0)


def test_a_cancellation_nobody_asked_for_is_a_failure() -> None:
    obs = cancelled("c", T0)
    obs.lifecycle.clear()
    assert "failed" in check(obs).violations()
    obs = cancelled("c", T0)
    obs.journals["c"] = [
        e for e in obs.journals["c"] if e.entry.kind != pb.ENTRY_KIND_CANCEL_REQUEST
    ]
    assert "no cancel request" in " ".join(check(obs).lifecycle)


def test_a_blocking_invoke_that_answered_an_output_for_a_cancelled_order_is_caught() -> None:
    obs = cancelled("c", T0)
    obs.answers["c"] = None  # what a cancelled invocation's invoke returns as output
    assert check(obs).ok
    obs.answers["c"] = {"order_id": "o"}
    assert check(obs).lifecycle == ["c: ended cancelled, yet invoke answered {'order_id': 'o'}"]


@pytest.mark.parametrize("refunds", [0, 2])
def test_a_charge_not_refunded_once_is_caught(refunds: int) -> None:
    report = check(cancelled("c", T0, refunds=refunds))
    assert [f"c: charged, cancelled and refunded {refunds} times (once expected)"] == (
        report.lifecycle
    )


def test_a_cancellation_after_the_shipment_was_journaled_is_caught() -> None:
    obs = cancelled("c", T0)
    ship = obs.journals["c"][2].entry
    ship.ClearField("failure")
    ship.output.CopyFrom(
        _codec.encode(order_pb2.ShipResponse(tracking_number=tracking_number_for("c:2")))
    )
    report = check(obs)
    assert "cancelled after the journaled calls [(1, 'Charge'), (2, 'Ship')]" in report.lifecycle[0]


def paused(journaled_before: int) -> Observation:
    """A clean order_processing paused after ``journaled_before`` of its steps were journaled
    (the pause stored 1 ms after that step's entry) and resumed 5 s later."""
    obs = clean("p")
    journal = obs.journals["p"]
    at = journal[journaled_before - 1].ts_ns + MS
    resume_at = at + 5 * 10**9
    requests = [
        Entry(0, at, pb.JournalEntry(kind=pb.ENTRY_KIND_PAUSE_REQUEST, writer="client")),
        Entry(0, resume_at, pb.JournalEntry(kind=pb.ENTRY_KIND_RESUME_REQUEST, writer="client")),
    ]
    # The steps after the one in flight ran after the resume: move them (calls and entries).
    later = 6 * 10**9

    def moved(e: Entry) -> bool:
        return e.entry.step > journaled_before + 1 or e.entry.kind == pb.ENTRY_KIND_COMPLETED

    journal = [Entry(e.seq, e.ts_ns + later if moved(e) else e.ts_ns, e.entry) for e in journal]
    obs.calls = [
        Call(c.method, c.key, c.order_id, c.ts_ns + later)
        if int(c.key.rsplit(":", 1)[1]) > journaled_before + 1
        else c
        for c in obs.calls
    ]
    merged = sorted(journal + requests, key=lambda e: e.ts_ns)
    obs.journals["p"] = [Entry(i, e.ts_ns, e.entry) for i, e in enumerate(merged, start=1)]
    obs.lifecycle = {"p": ["pause:running", "resume:paused"]}
    return obs


def test_a_run_that_stops_at_the_boundary_after_a_pause_passes() -> None:
    report = check(paused(1))
    assert report.ok, report.describe()
    assert (report.paused, report.completed) == (1, 1)


def test_a_step_begun_past_the_pause_is_caught() -> None:
    obs = paused(1)
    # Step 3 (Ship) called while paused: step 2 finished after the pause, then went on.
    ship = next(c for c in obs.calls if c.key == "p:3")
    obs.calls.remove(ship)
    pause_at = next(
        e.ts_ns for e in obs.journals["p"] if e.entry.kind == pb.ENTRY_KIND_PAUSE_REQUEST
    )
    obs.calls.append(Call(ship.method, ship.key, ship.order_id, pause_at + 500 * MS))
    report = check(obs)
    assert len(report.lifecycle) == 1 and "p: step 3 (Ship) called" in report.lifecycle[0]


def test_a_step_called_after_a_cancel_answered_pending_is_caught() -> None:
    obs = cancelled("c", T0, charged=False)
    obs.lifecycle["c"] = ["cancel:pending"]
    assert check(obs).ok
    asked = obs.journals["c"][0].ts_ns  # the request, before the charge was called
    obs.calls = [Call("Charge", "c:1", "order-c", asked + 5 * MS)]
    report = check(obs)
    assert report.lifecycle == [
        "c: cancel answered pending, yet Charge (c:1) was called 5.0 ms after the request "
        "was stored"
    ]


# -- retries, forks and signals -----------------------------------------------------------------

GATES = "/gates"


def at(journal: list[Entry], ms: int, entry: pb.JournalEntry, t0: int = T0) -> None:
    entry.writer = entry.writer or "p1/abcd"
    journal.append(Entry(len(journal) + 1, t0 + ms * MS, entry))


def retried(iid: str = "r", t0: int = T0) -> Observation:
    """A chaos_retry that failed at its closed gate (step 3), was retried 1.5 s later (its gate
    opened) and completed: the gate and Ship ran after the retry request, nothing before."""
    a = {**args_of(iid), "gate_dir": GATES}
    order = a["order_id"]
    charge = charge_id_for(f"{iid}:2")
    tracking = tracking_number_for(f"{iid}:4")
    journal: list[Entry] = []
    at(journal, 200, call_entry(orders.Validate, order_pb2.ValidateResponse(valid=True), step=1))
    at(journal, 400, call_entry(orders.Charge, order_pb2.ChargeResponse(charge_id=charge), step=2))
    at(journal, 500, failed_entry("gate", f"the gate of order {order} is closed", step=3))
    at(journal, 550, pb.JournalEntry(kind=pb.ENTRY_KIND_FAILED, failure=pb.Failure(type="X")))
    at(journal, 2000, pb.JournalEntry(kind=pb.ENTRY_KIND_RETRY_REQUEST, writer="client"))
    at(journal, 2200, run_entry("gate", {"passed": order}, step=3))
    ship = call_entry(orders.Ship, order_pb2.ShipResponse(tracking_number=tracking), step=4)
    at(journal, 2400, ship)
    out = {"order_id": order, "charge_id": charge, "tracking_number": tracking}
    done = pb.JournalEntry(kind=pb.ENTRY_KIND_COMPLETED)
    done.output.CopyFrom(_codec.encode(out))
    at(journal, 2500, done)
    state = pb.ExecutionState(invocation_id=iid, workflow="chaos_retry", status=pb.STATUS_COMPLETED)
    state.args.CopyFrom(_codec.encode(a))
    state.output.CopyFrom(done.output)
    return Observation(
        submitted={iid: a},
        states={iid: state},
        journals={iid: journal},
        calls=[
            Call("Validate", f"{iid}:1", order, t0 + 100 * MS),
            Call("Charge", f"{iid}:2", order, t0 + 300 * MS),
            Call("Ship", f"{iid}:4", order, t0 + 2300 * MS),
        ],
        workflows={iid: "chaos_retry"},
        gate_runs=[
            GateRun(iid, order, t0 + 450 * MS, False),
            GateRun(iid, order, t0 + 2100 * MS, True),
        ],
        operations={iid: ["wait:failed", "retry:pending"]},
    )


async def test_a_failed_invocation_retried_once_that_completed_passes() -> None:
    obs = retried()
    report = check(obs)
    await replay_all(obs, report)
    assert report.ok, report.describe()
    assert (report.completed, report.retried, report.replayed) == (1, 1, 1)
    assert not report.duplicates  # the FAILED final and the failed gate were retried, not twice


def test_a_step_completed_before_the_failure_that_runs_again_after_the_retry_is_caught() -> None:
    obs = retried()
    obs.calls.append(Call("Charge", "r:2", "order-r", T0 + 2050 * MS))  # after the request
    report = check(obs)
    assert report.retry_violations == [
        "r: Charge (r:2), completed before the failure, called 50.0 ms after the retry request "
        "was stored"
    ]
    assert len(report.reexecuted) == 1

    obs = retried()  # Validate journaled again by the retried run
    validate = copy.deepcopy(obs.journals["r"][0].entry)
    obs.journals["r"].insert(5, Entry(6, T0 + 2100 * MS, validate))
    report = check(obs)
    assert report.retry_violations == [
        "r: step 1 (/durable_examples.order.v1.OrderService/Validate), completed before the "
        "failure, journaled again after the retry"
    ]


def test_a_retry_not_in_the_journal_once_after_the_failure_is_caught() -> None:
    obs = retried()  # the retry never taken: the FAILED final stands
    obs.journals["r"] = obs.journals["r"][:4]
    obs.states["r"].status = pb.STATUS_FAILED
    obs.operations["r"] = ["wait:failed", "retry:refused failed (attempt 1)"]
    report = check(obs)
    assert report.retry_violations == [
        "r: 0 retried failures in the journal, one expected (the workload's retry got "
        "['wait:failed', 'retry:refused failed (attempt 1)'])"
    ]
    assert report.failed and not report.retried

    obs = retried()  # a second retry request, with no failure before it
    request = copy.deepcopy(obs.journals["r"][4].entry)
    obs.journals["r"].insert(5, Entry(5, T0 + 2010 * MS, request))
    report = check(obs)
    assert report.retry_violations == ["r: 1 retry requests with no failure before"]


def test_a_gate_run_between_the_failure_and_the_retry_or_after_its_commit_is_caught() -> None:
    obs = retried()
    obs.gate_runs.append(GateRun("r", "order-r", T0 + 1000 * MS, True))
    assert check(obs).retry_violations == [
        "r: the gate step ran 450.0 ms after the failure was journaled, before the retry request"
    ]
    obs = retried()
    obs.gate_runs.append(GateRun("r", "order-r", T0 + 2250 * MS, True))
    assert check(obs).retry_violations == [
        "r: the gate step ran 50.0 ms after its retried entry was committed"
    ]
    obs = retried()  # the first run passed the gate: the failure was not the gate's doing
    obs.gate_runs[0] = GateRun("r", "order-r", T0 + 450 * MS, True)
    assert check(obs).retry_violations == [
        "r: gate runs before the failure [True] (closed expected)"
    ]


def forked(from_step: int, *, key: str = "") -> Observation:
    """Order ``s`` completed; ``f`` forked from it at ``from_step``: steps before it copied
    (writer ``fork:s``, stored 1 s after s ended), the rest run by p2 with f's own keys."""
    obs = clean("s")
    t0 = T0 + 2 * SEC
    journal: list[Entry] = []
    for e in obs.journals["s"]:
        if e.entry.kind == pb.ENTRY_KIND_CALL and e.entry.step < from_step:
            entry = copy.deepcopy(e.entry)
            entry.writer = "fork:s"
            at(journal, 0, entry, t0)
    a = args_of("s")
    responses = {
        1: ("Validate", orders.Validate, order_pb2.ValidateResponse(valid=True)),
        2: ("Charge", orders.Charge, order_pb2.ChargeResponse(charge_id=charge_id_for("f:2"))),
        3: (
            "Ship",
            orders.Ship,
            order_pb2.ShipResponse(tracking_number=tracking_number_for("f:3")),
        ),
    }
    for step in range(from_step, 4):
        name, method, response = responses[step]
        obs.calls.append(Call(name, f"f:{step}", a["order_id"], t0 + (200 * step - 100) * MS))
        at(journal, 200 * step, call_entry(method, response, step=step), t0)
        journal[-1].entry.writer = "p2/beef"
    owner = {s: f"{'s' if s < from_step else 'f'}:{s}" for s in (2, 3)}
    out = {
        "order_id": a["order_id"],
        "charge_id": charge_id_for(owner[2]),
        "tracking_number": tracking_number_for(owner[3]),
    }
    done = pb.JournalEntry(kind=pb.ENTRY_KIND_COMPLETED, writer="p2/beef")
    done.output.CopyFrom(_codec.encode(out))
    at(journal, 900, done, t0)
    state = pb.ExecutionState(
        invocation_id="f", workflow="order_processing", status=pb.STATUS_COMPLETED, forked_from="s"
    )
    state.args.CopyFrom(_codec.encode(a))
    state.output.CopyFrom(done.output)
    obs.journals["f"], obs.states["f"] = journal, state
    obs.forks["f"] = ("s", from_step)
    obs.fork_from["s"] = from_step
    if key:
        for iid in ("s", "f"):
            obs.states[iid].partition_key = key
        obs.key_order[key] = ["s", "f"]
    return obs


@pytest.mark.parametrize("from_step", [1, 2, 3, 4])
async def test_a_fork_that_runs_only_its_own_steps_passes(from_step: int) -> None:
    obs = forked(from_step, key="key-001")
    report = check(obs)
    await replay_all(obs, report)
    assert report.ok, report.describe()
    assert (report.completed, report.forked, report.forked_keyed, report.replayed) == (2, 1, 1, 2)
    assert report.key_pairs == 1  # s, then f (its copies and its run after s ended)


def test_a_fork_that_executes_or_journals_again_a_copied_step_is_caught() -> None:
    obs = forked(3)
    obs.calls.append(Call("Charge", "f:2", "order-s", T0 + 2 * SEC + 50 * MS))
    report = check(obs)
    assert report.fork_violations == ["f: copied step 2 executed: Charge called (f:2)"]
    assert report.forked == 0

    obs = forked(3)
    again = copy.deepcopy(obs.journals["f"][1].entry)
    again.writer = "p2/beef"
    obs.journals["f"].insert(2, Entry(3, T0 + 2 * SEC + 100 * MS, again))
    report = check(obs)
    assert report.fork_violations == [
        "f: copied step 2 (/durable_examples.order.v1.OrderService/Charge) journaled again by "
        "p2/beef"
    ]

    obs = forked(3)  # a copy of another charge than its source's
    obs.journals["f"][1].entry.output.CopyFrom(
        _codec.encode(order_pb2.ChargeResponse(charge_id="ch_other"))
    )
    assert check(obs).fork_violations == [
        "f: fork of s from step 3 holds the copied steps [1, 2], its source's steps [1, 2]"
    ]


def test_a_keyed_fork_that_runs_before_its_keys_predecessor_finished_is_out_of_order() -> None:
    obs = forked(2, key="key-001")
    # f's copies are stored before s ended (they are no run of f); its Charge is not.
    obs.journals["f"][0] = Entry(1, T0 + 100 * MS, obs.journals["f"][0].entry)
    assert check(obs).ok
    obs.calls.append(Call("Charge", "f:2", "order-s", T0 + 600 * MS))  # s ended at 700 ms
    report = check(obs)
    assert report.out_of_order == [
        "key-001: f ran 100.0 ms before s, submitted before it, had finished"
    ]


def test_a_fork_nobody_heard_of_is_checked_and_its_key_left_unchecked() -> None:
    obs = forked(2, key="key-001")
    del obs.forks["f"]  # made by a fork call that raised; f2 by the next attempt
    obs.key_order["key-001"] = ["s"]
    report = check(obs)
    assert report.ok, report.describe()
    assert (report.forked, report.orphan_forks, report.orphan_keys) == (1, 1, 1)
    assert report.keys_checked == 0

    # A fork call that raised after copying, before submitting: copies with no state.
    forked_entry = pb.JournalEntry(kind=pb.ENTRY_KIND_FORKED, name="s", writer="fork-outcome:s")
    obs.journals["g"] = [
        Entry(1, T0, forked_entry),
        Entry(2, T0, copy.deepcopy(obs.journals["f"][0].entry)),
    ]
    report = check(obs)
    assert (report.unexpected, report.abandoned_forks) == ([], 1)
    obs.fork_from.clear()  # not a source the workload forked: unexpected
    assert "g" in check(obs).unexpected


def signalled(count: int = 2, iid: str = "g") -> Observation:
    """A chaos_signals that got its ``count`` signals, each once."""
    a = {**args_of(iid), "signals": count}
    journal: list[Entry] = []
    at(journal, 100, call_entry(orders.Validate, order_pb2.ValidateResponse(valid=True), step=1))
    for n in range(count):
        at(
            journal,
            200 + 200 * n,
            pb.JournalEntry(kind=pb.ENTRY_KIND_SIGNAL_WAIT, step=2 + n, name="chaos"),
        )
        sig = pb.JournalEntry(kind=pb.ENTRY_KIND_SIGNAL, name="chaos", writer="client")
        sig.output.CopyFrom(_codec.encode(signal_payload(iid, n)))
        at(journal, 250 + 200 * n, sig)
    tracking = tracking_number_for(f"{iid}:{count + 2}")
    ship = call_entry(orders.Ship, order_pb2.ShipResponse(tracking_number=tracking), step=count + 2)
    at(journal, 1000, ship)
    out = {"order_id": a["order_id"], "received": list(range(count)), "tracking_number": tracking}
    done = pb.JournalEntry(kind=pb.ENTRY_KIND_COMPLETED)
    done.output.CopyFrom(_codec.encode(out))
    at(journal, 1100, done)
    state = pb.ExecutionState(
        invocation_id=iid, workflow="chaos_signals", status=pb.STATUS_COMPLETED
    )
    state.args.CopyFrom(_codec.encode(a))
    state.output.CopyFrom(done.output)
    return Observation(
        submitted={iid: a},
        states={iid: state},
        journals={iid: journal},
        calls=[
            Call("Validate", f"{iid}:1", a["order_id"], T0 + 50 * MS),
            Call("Ship", f"{iid}:{count + 2}", a["order_id"], T0 + 900 * MS),
        ],
        workflows={iid: "chaos_signals"},
        operations={iid: ["signal 0:sent", "signal again 0:sent", "signal 1:sent (attempt 2)"]},
    )


async def test_signals_each_delivered_once_pass() -> None:
    obs = signalled()
    report = check(obs)
    await replay_all(obs, report)
    assert report.ok, report.describe()
    assert (report.signalled, report.signals, report.replayed) == (1, 2, 1)


def test_a_signal_delivered_twice_is_caught() -> None:
    obs = signalled(1)
    twice = copy.deepcopy(obs.journals["g"][2])  # the signal, again (the workflow took one)
    obs.journals["g"].insert(3, Entry(twice.seq, twice.ts_ns + MS, twice.entry))
    report = check(obs)
    assert len(report.signal_violations) == 1
    assert report.signal_violations[0].startswith(
        "g: the journal holds the signals [0, 0], [0] were sent (each once, in order); [0] "
        "delivered more than once"
    )

    obs = signalled(2)  # the duplicate reached the workflow in place of signal 1
    sig = obs.journals["g"][4].entry
    sig.output.CopyFrom(_codec.encode(signal_payload("g", 0)))
    out = {**_codec.decode(obs.journals["g"][-1].entry.output), "received": [0, 0]}
    obs.journals["g"][-1].entry.output.CopyFrom(_codec.encode(out))
    obs.states["g"].output.CopyFrom(obs.journals["g"][-1].entry.output)
    report = check(obs)
    assert len(report.signal_violations) == 1
    assert report.effect_violations[0].startswith("g: output ")


def test_a_forks_copied_calls_are_no_processors_recovery() -> None:
    obs = forked(3)
    back_ms = 1_700_000_000_000
    for e in obs.journals["f"]:
        e.entry.timestamp_ms = back_ms + 1_000
    got = service_recovery(obs.journals, back_ms)
    assert "fork:s" not in got
    assert got["p2"] == Recovery(None, 1.0)


# -- branches side by side (chaos_fanout) ------------------------------------------------------


def fanout(iid: str = "x", items: int = 2) -> Observation:
    """A chaos_fanout of ``items`` items whose first item's Validate was slow: steps 1..items
    are the Validates (asked for at once, in branch order), then the other items' holds and
    charges, item 1's hold and charge, and the root's Ship (2 items: Validates 1 and 2, item
    2's hold 3 and charge 4, item 1's hold 5 and charge 6, Ship 7); each entry stored 50 ms
    after the one numbered before it (item 1's Validate just before its hold), each call
    arriving 40 ms before its entry (the Validates' all at once at the start). Each call's key
    is its step's place, whatever its number: item n's ``x:n/1`` and ``x:n/3``, Ship ``x:1``
    (the root's first step)."""
    a = {**args_of(iid), "items": items, "hold_ms": [0] * items}
    order = a["order_id"]

    def item(n: int) -> tuple[str, int]:
        return item_order_id(order, n), a["amount_cents"] + n

    # (branch, step in it, entry), in the order the numbers were given
    plan: list[tuple[str, int, pb.JournalEntry]] = []
    # step -> (method, order id, idempotency key) of its call
    requests: dict[int, tuple[str, str, str]] = {}
    for n in range(1, items + 1):
        oid, cents = item(n)
        req = order_pb2.ValidateRequest(order_id=oid, amount_cents=cents)
        resp = order_pb2.ValidateResponse(valid=True)
        requests[len(plan) + 1] = ("Validate", oid, f"{iid}:{n}/1")
        plan.append((str(n), 1, call_entry(orders.Validate, resp, request=req)))
    for n in [*range(2, items + 1), 1]:
        oid, cents = item(n)
        plan.append((str(n), 2, run_entry("hold", 0, args=(0,))))
        req = order_pb2.ChargeRequest(order_id=oid, amount_cents=cents)
        resp = order_pb2.ChargeResponse(charge_id=charge_id_for(f"{iid}:{n}/3"))
        requests[len(plan) + 1] = ("Charge", oid, f"{iid}:{n}/3")
        plan.append((str(n), 3, call_entry(orders.Charge, resp, request=req)))
    tracking = tracking_number_for(f"{iid}:1")
    resp = order_pb2.ShipResponse(tracking_number=tracking)
    requests[len(plan) + 1] = ("Ship", order, f"{iid}:1")
    plan.append(
        ("", 1, call_entry(orders.Ship, resp, request=order_pb2.ShipRequest(order_id=order)))
    )
    stored = {step: 100 + 50 * step for step in range(1, len(plan) + 1)}
    hold1 = next(k for k, (b, n, _) in enumerate(plan, start=1) if (b, n) == ("1", 2))
    stored[1] = stored[hold1] - 25
    journal: list[Entry] = []
    for step, (branch, n, entry) in sorted(enumerate(plan, start=1), key=lambda p: stored[p[0]]):
        entry.step, entry.branch, entry.branch_step = step, branch, n
        at(journal, stored[step], entry)
    calls = [
        Call(method, key, oid, T0 + (10 * step if method == "Validate" else stored[step] - 40) * MS)
        for step, (method, oid, key) in requests.items()
    ]
    charges = {
        b: _codec.decode(e.output, order_pb2.ChargeResponse).charge_id for b, n, e in plan if n == 3
    }
    out = {
        "order_id": order,
        "charge_ids": [charges[str(n)] for n in range(1, items + 1)],
        "tracking_number": tracking,
    }
    done = pb.JournalEntry(kind=pb.ENTRY_KIND_COMPLETED)
    done.output.CopyFrom(_codec.encode(out))
    at(journal, max(stored.values()) + 100, done)
    state = pb.ExecutionState(
        invocation_id=iid, workflow="chaos_fanout", status=pb.STATUS_COMPLETED
    )
    state.args.CopyFrom(_codec.encode(a))
    state.output.CopyFrom(done.output)
    return Observation(
        submitted={iid: a},
        states={iid: state},
        journals={iid: journal},
        calls=calls,
        workflows={iid: "chaos_fanout"},
    )


def fanout_entry(obs: Observation, step: int, iid: str = "x") -> Entry:
    return next(e for e in obs.journals[iid] if e.entry.step == step)


@pytest.mark.parametrize("items", [2, 3])
async def test_a_clean_fanout_history_passes(items: int) -> None:
    obs = fanout(items=items)
    # The numbers are not in branch order: item 1's charge took the last number but Ship's.
    charge1 = next(
        e.entry.step for e in obs.journals["x"] if (e.entry.branch, e.entry.branch_step) == ("1", 3)
    )
    assert charge1 == 3 * items
    report = check(obs)
    await replay_all(obs, report)
    assert report.ok, report.describe()
    assert report.by_workflow == {"chaos_fanout": 1}
    assert (report.fanouts, report.fanout_branches, report.fanout_interleaved) == (1, items, 1)
    assert (report.replayed, report.calls) == (1, 2 * items + 1)


def test_a_fanout_step_called_under_another_steps_key_is_caught() -> None:
    # Item 1's charge sent with item 2's charge's key (branch 2's step 3, step 4): the branches
    # named wrongly; the service saw the key x:2/3 for both items' orders.
    obs = fanout()
    obs.calls.append(Call("Charge", "x:2/3", "order-x-1", fanout_entry(obs, 4).ts_ns - MS))
    report = check(obs)
    assert report.effect_violations == [
        "x: Charge for order 'order-x-1' with the key of step 4, branch 2's step 3 for order "
        "'order-x-2'"
    ]

    obs = fanout()  # a Validate sent with a Charge step's key
    obs.calls.append(Call("Validate", "x:2/3", "order-x-2", T0))
    assert check(obs).effect_violations == [
        "x: Validate called with the key of step 4 (Charge, branch 2's step 3)"
    ]

    obs = fanout()  # a key no step of the finished invocation took
    obs.calls.append(Call("Charge", "x:1/4", "order-x-1", T0))
    assert check(obs).effect_violations == [
        "x: Charge called with the key 'x:1/4', which no step of it took"
    ]


def test_a_fanout_call_in_flight_at_a_crash_resent_under_its_key_passes() -> None:
    # Both charges in flight when the processor died, item 1's asked for first (as step 4);
    # the next run asked for item 2's first and journaled it as step 4, item 1's as step 6:
    # each was resent under its step's place, so the service saw each charge's key twice.
    obs = fanout()
    obs.calls += [
        Call("Charge", "x:1/3", "order-x-1", T0 + 150 * MS),
        Call("Charge", "x:2/3", "order-x-2", T0 + 150 * MS),
    ]
    report = check(obs)
    assert report.ok, report.describe()
    assert report.retried_keys == 2


def test_a_fanout_branch_step_called_with_its_number_as_key_is_caught() -> None:
    # Item 1's charge (branch 1's step 3, step 6) called with the key of its number, as
    # before steps were keyed by their place: in a journal whose entries name their branch,
    # x:6 is the root's sixth step, which the fan-out never took.
    obs = fanout()
    charge = fanout_entry(obs, 6)
    assert (charge.entry.branch, charge.entry.branch_step) == ("1", 3)
    obs.calls.append(Call("Charge", "x:6", "order-x-1", charge.ts_ns - MS))
    report = check(obs)
    assert report.effect_violations == [
        "x: Charge called with the key 'x:6', which no step of it took"
    ]
    assert not report.reexecuted

    # The same by number instead of the step's key: step 6 is unbacked.
    obs = fanout()
    obs.calls = [
        Call(c.method, "x:6", c.order_id, c.ts_ns) if c.key == "x:1/3" else c for c in obs.calls
    ]
    report = check(obs)
    assert report.unbacked == ["x step 6 (/durable_examples.order.v1.OrderService/Charge)"]
    assert report.effect_violations == [
        "x: Charge called with the key 'x:6', which no step of it took"
    ]

    # Ship, the root's first step but step 7, called with its number: the same.
    obs = fanout()
    ship = next(c for c in obs.calls if c.method == "Ship")
    assert ship.key == "x:1"
    obs.calls = [c for c in obs.calls if c is not ship] + [
        Call("Ship", "x:7", ship.order_id, ship.ts_ns)
    ]
    report = check(obs)
    assert report.unbacked == ["x step 7 (/durable_examples.order.v1.OrderService/Ship)"]
    assert report.effect_violations == [
        "x: Ship called with the key 'x:7', which no step of it took"
    ]


def test_a_fanout_step_executed_twice_is_caught() -> None:
    # Item 1's journaled charge (step 6) ran again in a later run, as a new step 8 (under the
    # same key, x:1/3: the service answered with the same charge), and was journaled again.
    obs = fanout()
    again = copy.deepcopy(fanout_entry(obs, 6).entry)
    again.step = 8
    final = obs.journals["x"].pop()
    at(obs.journals["x"], 500, again)
    obs.journals["x"].append(Entry(len(obs.journals["x"]) + 1, final.ts_ns, final.entry))
    obs.calls.append(Call("Charge", "x:1/3", "order-x-1", T0 + 490 * MS))
    report = check(obs)
    assert report.duplicates == [
        "x: branch 1's step 3 journaled as steps [6, 8] (executed again under another number)"
    ]
    assert len(report.effect_violations) == 1
    assert report.effect_violations[0].startswith("x: journaled (branch, step, kind, name) ")
    assert not report.fanouts
    # The call of the second run came after the first commit of the step of its key.
    assert [(r.invocation_id, r.step, r.method) for r in report.reexecuted] == [("x", 6, "Charge")]

    obs = fanout()  # the same key called again after its entry was committed
    obs.calls.append(Call("Charge", "x:1/3", "order-x-1", fanout_entry(obs, 6).ts_ns + MS))
    report = check(obs)
    assert [(r.invocation_id, r.step, r.method) for r in report.reexecuted] == [("x", 6, "Charge")]


def test_a_fanout_with_a_wrong_output_or_answer_is_caught() -> None:
    obs = fanout()
    # The charge ids of each other's keys: not those of the items' steps.
    out = {**_codec.decode(obs.journals["x"][-1].entry.output)}
    assert out["charge_ids"] == [charge_id_for("x:1/3"), charge_id_for("x:2/3")]
    assert out["tracking_number"] == tracking_number_for("x:1")
    out["charge_ids"] = [charge_id_for("x:2/3"), charge_id_for("x:1/3")]
    obs.journals["x"][-1].entry.output.CopyFrom(_codec.encode(out))
    obs.states["x"].output.CopyFrom(obs.journals["x"][-1].entry.output)
    report = check(obs)
    assert len(report.effect_violations) == 1
    assert report.effect_violations[0].startswith("x: output ")
    assert not report.fanouts

    obs = fanout()  # the shipment of Ship's number's key, not of the root's first step's
    out = {**_codec.decode(obs.journals["x"][-1].entry.output)}
    out["tracking_number"] = tracking_number_for("x:7")
    obs.journals["x"][-1].entry.output.CopyFrom(_codec.encode(out))
    obs.states["x"].output.CopyFrom(obs.journals["x"][-1].entry.output)
    report = check(obs)
    assert len(report.effect_violations) == 1
    assert report.effect_violations[0].startswith("x: output ")

    obs = fanout()  # item 1's journaled charge is the one of another key
    other = order_pb2.ChargeResponse(charge_id=charge_id_for("x:2/3"))
    fanout_entry(obs, 6).entry.output.CopyFrom(_codec.encode(other))
    assert check(obs).effect_violations == ["x: journaled charge " + charge_id_for("x:2/3")]

    obs = fanout()  # ... or of its number's key
    other = order_pb2.ChargeResponse(charge_id=charge_id_for("x:6"))
    fanout_entry(obs, 6).entry.output.CopyFrom(_codec.encode(other))
    assert check(obs).effect_violations == ["x: journaled charge " + charge_id_for("x:6")]


async def test_a_fanout_missing_a_step_or_not_replaying_is_caught() -> None:
    obs = fanout()
    obs.journals["x"] = [e for e in obs.journals["x"] if e.entry.step != 2]
    report = check(obs)
    assert len(report.effect_violations) == 2
    assert report.effect_violations[0].startswith("x: journaled (branch, step, kind, name) ")
    # The call of the missing step: its key no journaled step took.
    assert report.effect_violations[1] == (
        "x: Validate called with the key 'x:2/1', which no step of it took"
    )
    await replay_all(obs, report)
    assert report.replay_failures == ["x: the replay executed ['Validate']"]

    obs = fanout()  # the two Validates journaled under each other's branch
    first, second = fanout_entry(obs, 1).entry, fanout_entry(obs, 2).entry
    first.branch, second.branch = "2", "1"
    report = check(obs)
    await replay_all(obs, report)
    assert len(report.replay_failures) == 1
    assert "input hash" in report.replay_failures[0]


def test_an_unfinished_fanouts_calls_of_steps_not_journaled_are_held_to_their_keys() -> None:
    def unfinished() -> Observation:
        obs = fanout()
        obs.journals["x"] = [e for e in obs.journals["x"] if 0 < e.entry.step <= 3]
        obs.calls = [c for c in obs.calls if c.method == "Validate"]
        obs.states["x"].status = pb.STATUS_RUNNING
        return obs

    obs = unfinished()
    obs.calls.append(Call("Charge", "x:2/3", "order-x-2", T0 + 260 * MS))  # in flight
    report = check(obs)
    assert report.stuck == ["x: no final journal entry (state STATUS_RUNNING)"]
    assert not report.effect_violations

    # Not journaled, yet its key names its place: item 2's charge, for item 2's order.
    obs = unfinished()
    obs.calls.append(Call("Charge", "x:2/3", "order-x-1", T0 + 260 * MS))
    obs.calls.append(Call("Validate", "x:1", "order-x", T0 + 260 * MS))
    assert check(obs).effect_violations == [
        "x: Validate called with the key of 'x:1' (Ship, the root's step 1)",
        "x: Charge for order 'order-x-1' with the key of 'x:2/3', branch 2's step 3 for order "
        "'order-x-2'",
    ]

    # Item 2's charge in flight with its number (4) as key: the root has no fourth step.
    obs = unfinished()
    obs.calls.append(Call("Charge", "x:4", "order-x-2", T0 + 260 * MS))
    assert check(obs).effect_violations == [
        "x: Charge called with the key of 'x:4' (None, the root's step 4)"
    ]


def test_a_sequential_journal_whose_entries_name_their_branch_keeps_its_keys() -> None:
    # Every journal the engine writes now names each step's branch: in a workflow without
    # branches, the root's n-th step is step n, and its key <id>:n as before.
    obs = clean("a")
    for e in obs.journals["a"]:
        if e.entry.step:
            e.entry.branch, e.entry.branch_step = "", e.entry.step
    report = check(obs)
    assert report.ok, report.describe()
    obs.calls.append(Call("Charge", "a:1/2", "order-a", T0))  # a branch key: no step of it
    assert check(obs).effect_violations == [
        "a: Charge called with the key 'a:1/2', which no step of it took"
    ]


def test_keys_and_child_ids_by_the_steps_entry() -> None:
    e = pb.JournalEntry(kind=pb.ENTRY_KIND_CALL, step=9, branch="2.1", branch_step=3)
    assert (step_key("x", e, False), child_id("x", e, False)) == ("x:2.1/3", "x-2_1_3")
    assert (step_key("x", e, True), child_id("x", e, True)) == ("x:9", "x-9")
    root = pb.JournalEntry(kind=pb.ENTRY_KIND_CHILD, step=10, branch="", branch_step=1)
    assert (step_key("x", root, False), child_id("x", root, False)) == ("x:1", "x-1")
    legacy = pb.JournalEntry(kind=pb.ENTRY_KIND_CALL, step=4)
    assert (step_key("x", legacy, False), child_id("x", legacy, False)) == ("x:4", "x-4")
    assert child_id("p" * 130, root, False) == f"{hashlib.sha256(b'p' * 130).hexdigest()[:40]}-1"


def name_branches(obs: Observation) -> Observation:
    """``obs`` as the engine now writes it: every step entry (and failed attempt) names its
    place in the workflow's own task (the workflows here have no branches: n = its number)."""
    for journal in obs.journals.values():
        for e in journal:
            if e.entry.step > 0 and e.entry.kind != pb.ENTRY_KIND_PATCH:
                e.entry.branch, e.entry.branch_step = "", e.entry.step
    return obs


@pytest.mark.parametrize(
    "history",
    [
        lambda: clean("a", "b"),
        widened,
        retried,
        lambda: forked(2, key="key-001"),
        lambda: forked(4),
        signalled,
        lambda: cancelled("c", T0),
        lambda: paused(1),
    ],
)
async def test_sequential_histories_whose_entries_name_their_branch_pass(history: Any) -> None:
    obs = name_branches(history())
    report = check(obs)
    await replay_all(obs, report)
    assert report.ok, report.describe()


def test_a_forks_copied_step_keeps_its_sources_key_and_is_not_run_again() -> None:
    obs = name_branches(forked(3))
    assert check(obs).ok
    # The fork's journaled charge (a copy) holds the source's charge, by the source's key.
    copied = next(e for e in obs.journals["f"] if e.entry.step == 2)
    assert _codec.decode(copied.entry.output, order_pb2.ChargeResponse).charge_id == (
        charge_id_for("s:2")
    )
    obs.calls.append(Call("Charge", "f:2", "order-s", T0 + 2 * SEC + 50 * MS))
    assert check(obs).fork_violations == ["f: copied step 2 executed: Charge called (f:2)"]

    obs = name_branches(forked(3))  # its output with the fork's own key for the copied charge
    out = {**_codec.decode(obs.journals["f"][-1].entry.output), "charge_id": charge_id_for("f:2")}
    obs.journals["f"][-1].entry.output.CopyFrom(_codec.encode(out))
    obs.states["f"].output.CopyFrom(obs.journals["f"][-1].entry.output)
    report = check(obs)
    assert len(report.effect_violations) == 1
    assert report.effect_violations[0].startswith("f: output ")
