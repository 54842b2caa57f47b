"""The step machine: every decision a workflow's context makes, without NATS, asyncio or grpc.

Each test builds a journal by hand and asks the machine; they run in microseconds.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from durable_core import _codec
from durable_core._code import CodeIdentity
from durable_core._journal import (
    CANCELLED,
    Branch,
    DeliverCancel,
    Due,
    Execute,
    GiveUp,
    Park,
    Replay,
    ReplayMachine,
    RetryAt,
    SleepFor,
    StepMachine,
    Wait,
    pin_for,
    stamp,
    started_on,
)
from durable_core._pb.durable.v1 import durable_pb2 as pb
from durable_core.errors import (
    AwakeableRejectedError,
    ChildWorkflowError,
    InvocationCancelledError,
    NonDeterminismError,
    StepFailedError,
)
from durable_core.retry import RetryPolicy

START = 1_700_000_000_000
RUN = pb.ENTRY_KIND_RUN


def machine(*entries: pb.JournalEntry, invocation_id: str = "inv-1") -> StepMachine:
    return StepMachine(invocation_id, ReplayMachine(invocation_id, entries), START)


def run_entry(step: int, name: str, value: object = None, at: int = START) -> pb.JournalEntry:
    return pb.JournalEntry(
        kind=RUN, step=step, name=name, output=_codec.encode(value), timestamp_ms=at
    )


# -- replay or execute ---------------------------------------------------------------------------


def test_recorded_steps_replay_and_move_the_clock_new_ones_execute() -> None:
    m = machine(run_entry(1, "a", 41, at=START + 5_000))
    assert m.is_replaying
    decision = m.begin(RUN, "a", b"")
    assert isinstance(decision, Replay)
    assert _codec.decode(m.replayed(decision.entry)) == 41
    assert m.now() == datetime.fromtimestamp((START + 5_000) / 1000, tz=UTC)
    assert m.begin(RUN, "b", b"") == Execute(2)
    assert not m.is_replaying


def test_another_step_than_recorded_is_nondeterminism_kept_even_if_caught() -> None:
    m = machine(run_entry(1, "charge"))
    with pytest.raises(NonDeterminismError):
        m.begin(RUN, "refund", b"")
    assert m.nondeterminism is not None and m.nondeterminism.step == 1


def test_a_replayed_failure_raises_it_again() -> None:
    failed = run_entry(1, "a")
    failed.failure.CopyFrom(pb.Failure(type="TerminalError", message="no", code="X"))
    m = machine(failed)
    decision = m.begin(RUN, "a", b"")
    assert isinstance(decision, Replay)
    with pytest.raises(StepFailedError) as info:
        m.replayed(decision.entry)
    assert (info.value.step, info.value.error_type, info.value.code) == (1, "TerminalError", "X")


# -- cancellation and pause at a step boundary ---------------------------------------------------


def test_a_requested_cancellation_is_delivered_once_at_the_next_new_step() -> None:
    m = machine(pb.JournalEntry(kind=pb.ENTRY_KIND_CANCEL_REQUEST))
    decision = m.before_executing(RUN, 1, "a", b"h", now_ms=START + 1)
    assert isinstance(decision, DeliverCancel)
    assert (decision.entry.step, decision.entry.failure.type) == (1, CANCELLED)
    assert m.cancel_delivered
    assert m.before_executing(RUN, 2, "b", b"", now_ms=START + 2) is None  # once


def test_a_step_cancelled_in_an_earlier_run_is_cancelled_again_on_replay() -> None:
    cancelled = run_entry(1, "a")
    cancelled.failure.CopyFrom(pb.Failure(type=CANCELLED, message="cancelled"))
    m = machine(cancelled)
    with pytest.raises(InvocationCancelledError):
        m.begin(RUN, "a", b"")
    assert m.cancel_delivered


def test_a_branch_that_never_saw_the_cancellation_takes_no_new_step_whenever_it_asks() -> None:
    """An earlier run delivered the cancellation at branch 1's step, then crashed with branch
    2's step in flight and unjournaled: whichever replays first, branch 2's step ends
    cancelled; the root, which catches it, and a branch it starts after, compensate."""
    cancelled = run_entry(1, "a")
    cancelled.branch, cancelled.branch_step = "1", 1
    cancelled.failure.CopyFrom(pb.Failure(type=CANCELLED, message="cancelled"))
    for branch_2_first in (False, True):
        asking: list[Branch] = []
        m = StepMachine(
            "inv-1",
            ReplayMachine("inv-1", [pb.JournalEntry(kind=pb.ENTRY_KIND_CANCEL_REQUEST), cancelled]),
            START,
            branch=lambda asking=asking: asking[-1],
        )
        one, two = m.root.child(), m.root.child()
        order = [two, one] if branch_2_first else [one, two]
        for branch in order:
            asking.append(branch)
            if branch is one:
                with pytest.raises(InvocationCancelledError):
                    m.begin(RUN, "a", b"")
                continue
            step = m.begin(RUN, "charge", b"")
            assert isinstance(step, Execute)
            assert isinstance(
                m.before_executing(RUN, step.step, "charge", b"", START), DeliverCancel
            )
        asking.append(m.root)
        try:
            raise InvocationCancelledError("inv-1")  # as the root's gather would
        except InvocationCancelledError:
            undo = m.begin(RUN, "undo", b"")
            assert isinstance(undo, Execute)
            assert m.before_executing(RUN, undo.step, "undo", b"", START) is None
            asking.append(m.root.child())
        later = m.begin(RUN, "undo-more", b"")  # a task the handler started
        assert isinstance(later, Execute)
        assert m.before_executing(RUN, later.step, "undo-more", b"", START) is None


def test_a_cancellation_raised_in_a_started_task_is_not_seen_by_the_task_that_started_it() -> None:
    """Only a branch the cancellation was raised in, or one handling it, compensates: the
    workflow's own task, in its own code while the task it started took the cancellation,
    asks for its next step (the charge) outside any handler."""
    cancelled = run_entry(1, "notify")
    cancelled.branch, cancelled.branch_step = "1", 1
    cancelled.failure.CopyFrom(pb.Failure(type=CANCELLED, message="cancelled"))
    asking: list[Branch] = []
    m = StepMachine(
        "inv-1",
        ReplayMachine("inv-1", [pb.JournalEntry(kind=pb.ENTRY_KIND_CANCEL_REQUEST), cancelled]),
        START,
        branch=lambda: asking[-1],
    )
    asking.append(m.root.child())
    with pytest.raises(InvocationCancelledError):
        m.begin(RUN, "notify", b"")
    asking.append(m.root)
    charge = m.begin(RUN, "charge", b"")
    assert isinstance(charge, Execute)
    assert isinstance(m.before_executing(RUN, charge.step, "charge", b"", START), DeliverCancel)


def test_a_paused_invocation_parks_at_the_next_new_step() -> None:
    m = machine(pb.JournalEntry(kind=pb.ENTRY_KIND_PAUSE_REQUEST))
    assert m.before_executing(RUN, 1, "a", b"", now_ms=START) == Park(
        Wait("paused (resume to continue)", 1)
    )


# -- attempts ------------------------------------------------------------------------------------


def test_a_failed_attempt_is_retried_at_the_policys_time_or_given_up() -> None:
    m = machine()
    policy = RetryPolicy(maximum_attempts=2, initial_interval=timedelta(seconds=3), jitter=0.0)
    failure = pb.Failure(type="RuntimeError", message="flaky", step=1)
    decision = m.attempt_failed(
        1, "a", b"h", failure, retryable=True, attempt=1, policy=policy, now_ms=START
    )
    assert isinstance(decision, RetryAt) and decision.wake_at_ms == START + 3_000
    assert decision.entry.kind == pb.ENTRY_KIND_ATTEMPT_FAILED
    assert (decision.entry.attempts, decision.entry.wake_at_ms) == (1, START + 3_000)
    assert m.attempt_failed(
        1, "a", b"h", failure, retryable=True, attempt=2, policy=policy, now_ms=START
    ) == GiveUp(failure)  # the policy's attempts are used up
    assert m.attempt_failed(
        1, "a", b"h", failure, retryable=False, attempt=1, policy=policy, now_ms=START
    ) == GiveUp(failure)


def test_earlier_failed_attempts_count_and_an_executed_failure_raises() -> None:
    attempt = pb.JournalEntry(kind=pb.ENTRY_KIND_ATTEMPT_FAILED, step=1, name="a", wake_at_ms=9)
    other = pb.JournalEntry(kind=pb.ENTRY_KIND_ATTEMPT_FAILED, step=1, name="b")
    m = machine(attempt, other)
    assert m.earlier_attempts(1, "a") == [attempt]
    done = run_entry(1, "a", at=START + 7)
    done.failure.CopyFrom(pb.Failure(type="ValueError", message="bad"))
    with pytest.raises(StepFailedError):
        m.executed(done)
    assert m.now_ms == START + 7


@pytest.mark.parametrize("ident", [("", 1), ("", 0)], ids=["by-branch", "by-number"])
def test_a_step_whose_failed_attempts_were_of_another_step_diverges(
    ident: tuple[str, int],
) -> None:
    """Version 2 named step 1 `r_new`; its attempts failed and it waited for the next one.
    Version 1 took the wake-up and ran its own `r_old` at step 1, unchecked: both versions'
    effects under one idempotency key, and neither's attempts counted right."""
    attempt = pb.JournalEntry(
        kind=pb.ENTRY_KIND_ATTEMPT_FAILED,
        step=1,
        name="r_new",
        input_hash=b"h",
        branch=ident[0],
        branch_step=ident[1],
    )
    with pytest.raises(NonDeterminismError, match="failed attempts of 'r_new'"):
        ReplayMachine("inv-1", [attempt]).next_step(RUN, "r_old", b"h", ident)
    with pytest.raises(NonDeterminismError, match="input hash"):
        ReplayMachine("inv-1", [attempt]).next_step(RUN, "r_new", b"other", ident)
    assert ReplayMachine("inv-1", [attempt]).next_step(RUN, "r_new", b"h", ident) == Execute(1)


def test_an_interrupt_is_a_cancellation_only_while_one_is_being_delivered() -> None:
    m = machine()
    assert m.interrupted(1, cancelling=False) is None  # the run ends: stop
    failure = m.interrupted(1, cancelling=True)
    assert failure is not None and failure.type == CANCELLED and m.cancel_delivered
    assert m.interrupted(2, cancelling=True) is None  # delivered already


# -- timers --------------------------------------------------------------------------------------


def test_a_timer_is_due_near_or_far() -> None:
    m = machine()
    wait = Wait("timer", 1, START + 10_000)
    assert m.timer(wait, START + 10_000) == Due()
    assert m.timer(wait, START + 9_000) == SleepFor(1.0)  # within LOCAL_TIMER: in process
    assert m.timer(wait, START) == Park(wait)
    decision = m.attempt_timer(1, "a", START + 60_000, 2, START)
    assert isinstance(decision, Park) and decision.wait.tag == "a2"


def test_a_sleep_that_ended_moves_the_clock_to_its_wake_time() -> None:
    sleep = pb.JournalEntry(
        kind=pb.ENTRY_KIND_SLEEP, step=1, timestamp_ms=START, wake_at_ms=START + 60_000
    )
    m = machine(sleep)
    assert isinstance(m.sleep_timer(sleep, START + 1_000), Park)
    assert m.sleep_timer(sleep, START + 61_000) == Due()
    assert m.now_ms == START + 60_000


# -- waits ---------------------------------------------------------------------------------------


def test_signals_are_taken_in_the_order_they_arrived() -> None:
    signals = [
        pb.JournalEntry(kind=pb.ENTRY_KIND_SIGNAL, name="go", output=_codec.encode(n))
        for n in (1, 2)
    ]
    m = machine(*signals)
    first, second, third = (m.signal_index("go") for _ in range(3))
    assert _codec.decode(m.signal(5, "go", first)) == 1  # type: ignore[arg-type]
    assert _codec.decode(m.signal(6, "go", second)) == 2  # type: ignore[arg-type]
    assert m.signal(7, "go", third) == Wait("signal 'go'", 7)


def test_awakeables_and_children_resolve_or_raise_what_happened_outside() -> None:
    rejected = pb.JournalEntry(
        kind=pb.ENTRY_KIND_AWAKEABLE_RESULT, name="awk.inv-1.1", failure=pb.Failure(message="no")
    )
    child = pb.JournalEntry(
        kind=pb.ENTRY_KIND_CHILD_RESULT,
        name="inv-1-2",
        failure=pb.Failure(type="ValueError", message="boom"),
    )
    m = machine(rejected, child)
    with pytest.raises(AwakeableRejectedError, match="no"):
        m.awakeable(1, "awk.inv-1.1")
    assert m.awakeable(1, "awk.inv-1.2") == Wait("awakeable awk.inv-1.2", 1)
    with pytest.raises(ChildWorkflowError, match="boom"):
        m.child(2, "inv-1-2")


def test_parking_suspends_once_nothing_executes_and_a_cancellation_unparks() -> None:
    m = machine()
    wait = Wait("signal 'go'", 1)
    m.executing = 1
    assert m.park(wait, START) == Park(wait)
    assert m.suspension() is None  # a step still runs
    m.executing = 0
    assert m.suspension() == (wait,)
    assert m.unpark(wait, cancelling=False, now_ms=START) is None  # the run ends: parked stays
    cancel = m.unpark(wait, cancelling=True, now_ms=START + 3)
    assert isinstance(cancel, DeliverCancel)
    assert (cancel.entry.kind, cancel.entry.step) == (pb.ENTRY_KIND_CANCEL_DELIVERED, 1)
    assert m.parked == []


def test_a_wait_cancelled_in_an_earlier_run_is_cancelled_again() -> None:
    m = machine(pb.JournalEntry(kind=pb.ENTRY_KIND_CANCEL_DELIVERED, step=4))
    with pytest.raises(InvocationCancelledError):
        m.park(Wait("signal 'go'", 4), START)
    requested = machine(pb.JournalEntry(kind=pb.ENTRY_KIND_CANCEL_REQUEST))
    assert isinstance(requested.park(Wait("signal 'go'", 1), START), DeliverCancel)


def test_a_wake_up_journaled_after_the_cancellation_does_not_end_the_wait_it_came_for() -> None:
    """A suspended invocation parked on a signal: a cancel and the signal came at once. The
    replay took the signal whatever the order, so a workflow that returned right after it
    completed, its cancel (journaled first, answered "suspended") lost. The journal's order
    decides now."""
    signal = pb.JournalEntry(kind=pb.ENTRY_KIND_SIGNAL, name="go", output=_codec.encode(2))
    cancel = pb.JournalEntry(kind=pb.ENTRY_KIND_CANCEL_REQUEST, timestamp_ms=START + 10)
    cancelled_first = machine(cancel, signal)
    found = cancelled_first.signal(1, "go", cancelled_first.signal_index("go"))
    assert isinstance(found, Wait)
    assert isinstance(cancelled_first.park(found, START + 20), DeliverCancel)
    signalled_first = machine(signal, cancel)
    assert signalled_first.signal(1, "go", signalled_first.signal_index("go")) == signal.output
    for kind, name in (
        (pb.ENTRY_KIND_AWAKEABLE_RESULT, "awk.inv-1.1"),
        (pb.ENTRY_KIND_CHILD_RESULT, "inv-1-1"),
    ):
        late = pb.JournalEntry(kind=kind, name=name, output=_codec.encode(1))
        m = machine(cancel, late)
        got = m.awakeable(1, name) if kind == pb.ENTRY_KIND_AWAKEABLE_RESULT else m.child(1, name)
        assert isinstance(got, Wait)


def test_a_timer_due_after_the_cancellation_was_requested_is_cancelled_when_replayed_late() -> None:
    cancel = pb.JournalEntry(kind=pb.ENTRY_KIND_CANCEL_REQUEST, timestamp_ms=START + 10)
    late = machine(cancel)
    assert isinstance(late.timer(Wait("timer", 1, START + 50), START + 9_000), DeliverCancel)
    before = machine(cancel)
    assert before.timer(Wait("timer", 1, START + 5), START + 9_000) == Due()


# -- deterministic values ------------------------------------------------------------------------


def test_ids_and_random_numbers_are_the_same_on_every_replay() -> None:
    a, b = machine(), machine()
    assert [a.uuid(), a.uuid()] == [b.uuid(), b.uuid()]
    assert a.uuid().version == 4
    assert [a.random() for _ in range(3)] == [b.random() for _ in range(3)]
    assert machine(invocation_id="inv-2").random() != machine().random()
    assert [a.awakeable_id(), a.awakeable_id()] == ["awk.inv-1.1", "awk.inv-1.2"]
    assert a.child_id(3) == "inv-1-3"
    long = machine(invocation_id="x" * 128)
    assert len(long.child_id(3)) <= 128 and long.child_id(3).endswith("-3")


def test_replayed_children_are_remembered_and_state_is_kept() -> None:
    m = machine()
    entry = pb.JournalEntry(kind=pb.ENTRY_KIND_CHILD, output=_codec.encode("inv-1-1"))
    assert m.replayed_child(pb.ENTRY_KIND_CHILD, entry) == "inv-1-1"
    assert m.replayed_child(pb.ENTRY_KIND_SEND, entry) == "inv-1-1"
    assert m.children == ["inv-1-1"]
    m.put("k", _codec.encode(1))
    assert m.get("k") == _codec.encode(1)
    m.put("k", None)
    assert m.get("k") is None


def test_an_executed_step_records_its_output_or_its_failure() -> None:
    m = machine()
    ok = m.outcome(
        RUN, 1, "a", b"h", attempts=2, output=_codec.encode(7), failure=None, now_ms=START + 9,
        duration_us=5,
    )  # fmt: skip
    assert (ok.step, ok.attempts, ok.timestamp_ms, ok.duration_us) == (1, 2, START + 9, 5)
    assert _codec.decode(ok.output) == 7 and not ok.HasField("failure")
    m.executed(ok)
    assert m.now() == datetime.fromtimestamp((START + 9) / 1000, tz=UTC)
    failed = pb.Failure(type="Boom", message="no", step=2)
    bad = m.outcome(
        RUN, 2, "b", b"", attempts=1, output=None, failure=failed, now_ms=START, duration_us=1
    )
    assert bad.failure == failed and not bad.HasField("output")
    with pytest.raises(StepFailedError):
        m.executed(bad)


# -- patches and the code that wrote the journal ---------------------------------------------------


def patch(before: int, change_id: str) -> pb.JournalEntry:
    return pb.JournalEntry(kind=pb.ENTRY_KIND_PATCH, step=before, name=change_id)


def test_patched_running_fresh_marks_the_step_after_it_and_takes_no_step_number() -> None:
    m = machine(run_entry(1, "a"))
    assert isinstance(m.begin(RUN, "a", b""), Replay)
    answer = m.patched("c1", now_ms=START + 7)
    assert answer.new_code and answer.marker is not None
    assert (answer.marker.kind, answer.marker.step, answer.marker.name) == (
        pb.ENTRY_KIND_PATCH,
        2,
        "c1",
    )
    assert m.patched("c1", now_ms=START + 8) == type(answer)(True)  # the same, no second marker
    assert m.begin(RUN, "b", b"") == Execute(2)  # the marker took no number


def test_patched_replaying_is_true_only_where_the_journal_holds_the_marker() -> None:
    recorded_new = machine(patch(1, "c1"), run_entry(1, "new"))
    assert recorded_new.patched("c1", now_ms=START) == type(recorded_new.patched("x", 0))(True)
    recorded_old = machine(run_entry(1, "old"))
    assert not recorded_old.patched("c1", now_ms=START).new_code
    assert recorded_old.patched("c1", now_ms=START).marker is None
    # A marker for another change, or at another step, is not this one's.
    elsewhere = machine(patch(2, "c1"), run_entry(1, "old"), run_entry(2, "x"))
    assert not elsewhere.patched("c1", now_ms=START).new_code
    assert not machine(patch(1, "c2"), run_entry(1, "old")).patched("c1", now_ms=START).new_code


def test_the_code_an_invocation_started_on_and_the_one_to_pin_a_diverged_replay_to() -> None:
    v1, v2, v3 = (CodeIdentity("shop", v, f"fp{v}") for v in ("1", "2", "3"))

    def stamped(entry: pb.JournalEntry, code: CodeIdentity, writer: str) -> pb.JournalEntry:
        stamp(entry, code)
        entry.writer = writer
        return entry

    def by(entry: pb.JournalEntry, writer: str) -> pb.JournalEntry:
        entry.writer = writer
        return entry

    # Started fresh on v1 (its first entry is stamped), suspended; v2 claimed it and diverged.
    journal = [
        stamped(run_entry(1, "a"), v1, "p1/a"),
        by(pb.JournalEntry(kind=pb.ENTRY_KIND_SLEEP, step=2, name="sleep"), "p1/a"),
        by(pb.JournalEntry(kind=pb.ENTRY_KIND_SUSPENDED), "p1/a"),
        stamped(pb.JournalEntry(kind=pb.ENTRY_KIND_CLAIM), v2, "p2/b"),
    ]
    assert started_on(journal) == v1
    assert pin_for(journal, this_run="p2/b") == v1
    # Carried on by v2 (a step and a marker after its claim), then v3 diverged: v2 replays it.
    journal[3:] = [
        stamped(pb.JournalEntry(kind=pb.ENTRY_KIND_CLAIM), v2, "p2/b"),
        by(patch(3, "c1"), "p2/b"),
        by(run_entry(3, "b"), "p2/b"),
        by(pb.JournalEntry(kind=pb.ENTRY_KIND_SUSPENDED), "p2/b"),
        stamped(pb.JournalEntry(kind=pb.ENTRY_KIND_CLAIM), v3, "p3/c"),
    ]
    assert started_on(journal) == v1
    assert pin_for(journal, this_run="p3/c") == v2
    # What the diverging run itself wrote never counts; unstamped journals name nothing.
    journal.append(by(run_entry(4, "gap"), "p3/c"))
    assert pin_for(journal, this_run="p3/c") == v2
    assert started_on([run_entry(1, "a")]) is None
    assert pin_for([run_entry(1, "a")], this_run="x") is None
