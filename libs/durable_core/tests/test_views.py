"""durable_core.views: what operators see of an invocation, from synthetic journals (pure)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from durable_core import _codec
from durable_core._pb.durable.v1 import durable_pb2 as pb
from durable_core.views import StepState, describe, format_duration, legal_actions

T0 = 1_780_000_000_000  # ms
NOW = datetime.fromtimestamp((T0 + 10_000) / 1000, tz=UTC)


def state(status: int = pb.STATUS_SUSPENDED, **kw: object) -> pb.ExecutionState:
    st = pb.ExecutionState(
        invocation_id="inv-1",
        workflow="wf",
        status=status,  # type: ignore[arg-type]
        args=_codec.encode({"name": "Ada"}),
        partition_key="inv-1",
        created_at_ms=T0,
        updated_at_ms=T0 + 50,
    )
    for k, v in kw.items():
        if isinstance(v, pb.Payload):
            getattr(st, k).CopyFrom(v)
        else:
            setattr(st, k, v)
    return st


def entry(kind: int, ms: int, **kw: object) -> pb.JournalEntry:
    return pb.JournalEntry(kind=kind, timestamp_ms=T0 + ms, **kw)  # type: ignore[arg-type]


def test_arguments_and_pending_sleep_and_awakeable() -> None:
    journal = [
        entry(
            pb.ENTRY_KIND_RUN,
            20,
            step=1,
            name="prepare",
            duration_us=15_000,
            output=_codec.encode("ok"),
            attempts=1,
        ),
        entry(pb.ENTRY_KIND_SLEEP, 30, step=2, name="sleep", wake_at_ms=T0 + 3_030),
        entry(pb.ENTRY_KIND_SLEEP, 3_100, step=3, name="sleep", wake_at_ms=T0 + 60_000),
        entry(pb.ENTRY_KIND_AWAKEABLE, 3_100, step=4, name="awk.inv-1.1"),
        entry(pb.ENTRY_KIND_SUSPENDED, 3_101),
    ]
    v = describe(state(), journal, now=NOW)
    assert v.args == {"name": "Ada"}
    run, slept, sleeping, awk = v.steps
    assert run.started_at == datetime.fromtimestamp((T0 + 5) / 1000, tz=UTC)
    assert run.output == "ok" and run.state == StepState.COMPLETED
    # A finished 3 s sleep spans its wait (not a 0 ms sliver), with its wake time.
    assert slept.state == StepState.COMPLETED and slept.duration_ms == 3000
    assert slept.detail == {"duration_ms": 3000, "wake_at": "2026-05-28T20:26:43.030Z"}
    # A sleep and an awakeable not yet done are waiting, not "executed ... null".
    assert sleeping.state == StepState.WAITING and sleeping.finished_at is None
    assert "wakes 2026-05-28 20:27:40.000Z (waiting)" in sleeping.summary()
    assert awk.state == StepState.WAITING and awk.detail == {"awakeable_id": "awk.inv-1.1"}
    assert [s.step for s in v.waits] == [3, 4]
    assert [(t.status, t.note) for t in v.history] == [
        ("pending", ""),
        ("running", ""),
        ("suspended", ""),
    ]
    assert v.history[1].at == run.started_at
    assert v.actions == ("pause", "cancel")
    json.dumps(v.to_dict())  # JSON-ready


def test_resolutions_signals_and_children_show_their_payloads() -> None:
    journal = [
        entry(pb.ENTRY_KIND_AWAKEABLE, 10, step=1, name="awk.inv-1.1"),
        entry(pb.ENTRY_KIND_SIGNAL, 12, name="go", output=_codec.encode({"n": 1})),
        entry(pb.ENTRY_KIND_SUSPENDED, 11),
        entry(
            pb.ENTRY_KIND_AWAKEABLE_RESULT,
            500,
            name="awk.inv-1.1",
            output=_codec.encode({"approver": "ann"}),
        ),
        entry(pb.ENTRY_KIND_SIGNAL_WAIT, 600, step=2, name="go"),
        entry(pb.ENTRY_KIND_SIGNAL_WAIT, 601, step=3, name="go"),
        entry(pb.ENTRY_KIND_AWAKEABLE, 602, step=4, name="awk.inv-1.2"),
        entry(pb.ENTRY_KIND_CHILD, 603, step=5, name="child_wf", output=_codec.encode("inv-1-5")),
        entry(pb.ENTRY_KIND_SUSPENDED, 604),
        entry(
            pb.ENTRY_KIND_AWAKEABLE_RESULT,
            700,
            name="awk.inv-1.2",
            failure=pb.Failure(type="AwakeableRejectedError", message="no budget"),
        ),
        entry(pb.ENTRY_KIND_CHILD_RESULT, 800, name="inv-1-5", output=_codec.encode(7)),
    ]
    v = describe(state(), journal, now=NOW)
    awk, sig1, sig2, rejected, child = v.steps
    assert awk.output == {"approver": "ann"} and awk.duration_ms == 490
    assert sig1.output == {"n": 1} and sig1.detail["signal"] == "go"
    assert sig2.state == StepState.WAITING  # the second "go" has not arrived
    assert rejected.state == StepState.FAILED and rejected.detail["rejection"] == "no budget"
    assert "rejected: no budget" in rejected.summary()
    assert child.output == 7 and child.detail["child_id"] == "inv-1-5"


def test_failed_attempts_and_retries_of_the_body_are_shown() -> None:
    journal = [
        entry(
            pb.ENTRY_KIND_ATTEMPT_FAILED,
            100,
            step=1,
            name="charge",
            attempts=1,
            failure=pb.Failure(type="RuntimeError", message="flaky"),
            wake_at_ms=T0 + 300,
        ),
        entry(
            pb.ENTRY_KIND_RUN,
            400,
            step=1,
            name="charge",
            attempts=2,
            duration_us=1000,
            output=_codec.encode(1),
        ),
        entry(pb.ENTRY_KIND_FAILED, 500, failure=pb.Failure(type="ValueError", message="body")),
        entry(pb.ENTRY_KIND_RETRY_REQUEST, 2_000),
        entry(pb.ENTRY_KIND_COMPLETED, 2_100, output=_codec.encode("done")),
    ]
    st = state(pb.STATUS_COMPLETED, output=_codec.encode("done"))
    v = describe(st, journal, now=NOW)
    (charge,) = v.steps
    assert charge.attempts == 2
    (first,) = charge.failed_attempts
    assert first.message == "flaky" and first.next_attempt_at is not None
    (retry,) = v.retries
    assert retry.message == "body" and retry.retried_at is not None
    assert [(t.status, t.note) for t in v.history][-3:] == [
        ("failed", ""),
        ("pending", "retry requested"),
        ("completed", ""),
    ]
    assert v.output == "done" and v.actions == ("rerun", "fork")


def test_a_step_between_attempts_is_retrying() -> None:
    journal = [
        entry(
            pb.ENTRY_KIND_ATTEMPT_FAILED,
            100,
            step=1,
            name="/svc.S/M",
            attempts=3,
            failure=pb.Failure(type="AioRpcError", message="down", code="UNAVAILABLE"),
            wake_at_ms=T0 + 60_000,
        ),
        entry(pb.ENTRY_KIND_SUSPENDED, 101),
    ]
    (step,) = describe(state(), journal, now=NOW).steps
    assert step.state == StepState.RETRYING and step.name == "/svc.S/M"
    assert step.detail["next_attempt_at"] == "2026-05-28T20:27:40.000Z"


def test_fork_and_rerun_lineage() -> None:
    copied = entry(
        pb.ENTRY_KIND_RUN,
        5,
        step=1,
        name="a",
        duration_us=4000,
        writer="fork:orig-1",
        output=_codec.encode(1),
    )
    v = describe(state(pb.STATUS_RUNNING, forked_from="orig-1"), [copied], now=NOW)
    assert v.forked_from == "orig-1" and v.fork_from_step == 2
    assert v.steps[0].copied_from == "orig-1"
    assert [t.status for t in v.history] == ["pending"]  # a copied step is no run of this one
    v = describe(state(pb.STATUS_PENDING, rerun_of="orig-2"), [], now=NOW)
    assert v.to_dict()["rerun_of"] == "orig-2"


def test_a_final_entry_wins_over_a_lagging_state() -> None:
    journal = [entry(pb.ENTRY_KIND_COMPLETED, 50, output=_codec.encode({"x": 1}))]
    v = describe(state(pb.STATUS_RUNNING), journal, now=NOW)
    assert v.status == "completed" and v.output == {"x": 1}


def test_a_resumed_invocation_no_processor_has_taken_up_is_pending() -> None:
    """Resumed in the journal, its state still says paused until a processor takes the
    wake-up: with none running its workflow, `durable status` said paused for good."""
    pause, resume = pb.ENTRY_KIND_PAUSE_REQUEST, pb.ENTRY_KIND_RESUME_REQUEST
    paused = state(pb.STATUS_PAUSED)
    assert describe(paused, [entry(pause, 10)], now=NOW).status == "paused"
    assert describe(paused, [entry(pause, 10), entry(resume, 20)], now=NOW).status == "pending"
    again = [entry(pause, 10), entry(resume, 20), entry(pause, 30)]
    assert describe(paused, again, now=NOW).status == "paused"
    # Only a paused state: a run that has taken it up writes its own status.
    running = state(pb.STATUS_RUNNING)
    assert describe(running, [entry(pause, 10), entry(resume, 20)], now=NOW).status == "running"


def test_cancelled_while_waiting() -> None:
    journal = [
        entry(pb.ENTRY_KIND_AWAKEABLE, 10, step=1, name="awk.inv-1.1"),
        entry(pb.ENTRY_KIND_SUSPENDED, 11),
        entry(pb.ENTRY_KIND_CANCEL_REQUEST, 50),
        entry(pb.ENTRY_KIND_CANCEL_DELIVERED, 60, step=1),
        entry(pb.ENTRY_KIND_CANCELLED, 61),
    ]
    v = describe(state(pb.STATUS_CANCELLED), journal, now=NOW)
    assert v.steps[0].state == StepState.CANCELLED
    assert ("suspended", "cancel requested") in [(t.status, t.note) for t in v.history]


def test_legal_actions_and_durations() -> None:
    assert legal_actions("paused") == ("resume", "cancel")
    assert legal_actions("completed") == ("rerun", "fork")
    assert format_duration(3000) == "3.00 s" and format_duration(None) == "–"


def test_a_blocked_invocation_shows_why_its_pin_and_the_code_that_ran_it() -> None:
    diverged = pb.Failure(type="NonDeterminismError", message="replay diverged at step 2", step=2)
    journal = [
        entry(pb.ENTRY_KIND_RUN, 10, step=1, name="a", plugin="shop", plugin_version="1.0"),
        entry(pb.ENTRY_KIND_SLEEP, 20, step=2, name="sleep", wake_at_ms=T0 + 5_000),
        entry(pb.ENTRY_KIND_SUSPENDED, 30),
        entry(pb.ENTRY_KIND_CLAIM, 5_000, plugin="shop", plugin_version="2.0"),
        entry(pb.ENTRY_KIND_SUSPENDED, 5_010, failure=diverged),
    ]
    st = state(
        pb.STATUS_BLOCKED, blocked_reason="replay diverged at step 2 ...", pinned_version="v-1"
    )
    view = describe(st, journal, now=NOW).to_dict()
    assert view["status"] == "blocked"
    assert view["blocked_reason"] == "replay diverged at step 2 ..."
    assert view["pinned_version"] == "v-1"
    assert view["started_on"] == {"plugin": "shop", "version": "1.0", "fingerprint": ""}
    assert [c["version"] for c in view["ran_on"]] == ["1.0", "2.0"]
    assert [t["status"] for t in view["history"]] == [
        "pending",
        "running",
        "suspended",
        "running",
        "blocked",
    ]
    assert set(view["actions"]) == {"cancel", "fork"} == set(legal_actions("blocked"))
    # Once it moved on, the reason is gone (the pin stays: its commands keep the route).
    running = describe(state(pb.STATUS_RUNNING, pinned_version="v-1"), journal, now=NOW)
    assert running.to_dict()["blocked_reason"] is None
