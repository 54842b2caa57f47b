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

from .checker import (
    ORDER_SERVICE,
    Call,
    Entry,
    Observation,
    Recovery,
    check,
    parse_nats_time,
    replay_all,
    service_recovery,
)
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
