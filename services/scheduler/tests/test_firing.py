"""The scheduler's decisions for one tick (pure: no NATS)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from durable_core.client import Status
from durable_core.schedules import Schedule
from durable_scheduler.firing import (
    Tick,
    Verdict,
    claim,
    first_look,
    first_missed,
    is_late,
    parse_tick,
    passed,
    start_may_be_lost,
    still_running,
    tick_time,
)

T0 = datetime(2026, 11, 28, 17, 10, 53, tzinfo=UTC)
EVERY = Schedule("greet", "hello_workflow", every=timedelta(seconds=2))


def tick(next_fire: datetime | None, stored_at: datetime, redelivered: bool = False) -> Tick:
    return Tick("greet", next_fire, stored_at, redelivered)


def test_parse_tick_reads_the_subject_and_the_servers_headers() -> None:
    t = parse_tick(
        "durable.tick.greet",
        {
            "Nats-Scheduler": "durable.sched.cron.greet.spec",
            "Nats-Schedule-Next": "2026-11-28T18:10:57+01:00",
        },
        T0,
        num_delivered=2,
    )
    assert t == Tick("greet", datetime(2026, 11, 28, 17, 10, 57, tzinfo=UTC), T0, True)
    no_header = parse_tick("durable.tick.greet", {}, T0.replace(tzinfo=None), 1)
    assert no_header.next_fire is None and no_header.stored_at == T0
    assert parse_tick("durable.tick.x", {"Nats-Schedule-Next": "garbage"}, T0, 1).next_fire is None
    with pytest.raises(ValueError, match="not a tick subject"):
        parse_tick("greet", {}, T0, 1)


def test_tick_time_is_the_fire_before_the_next_one_so_redeliveries_agree() -> None:
    stored = T0 + timedelta(milliseconds=620)  # the server stores a tick just after it fires
    assert tick_time(EVERY, tick(T0 + timedelta(seconds=2), stored)) == T0
    # The same message delivered again much later stands for the same time.
    late = tick(T0 + timedelta(seconds=2), stored, redelivered=True)
    assert tick_time(EVERY, late) == T0
    cron = Schedule("c", "wf", cron="*/3 * * * * *", timezone="Europe/Amsterdam")
    assert tick_time(cron, tick(datetime(2026, 11, 28, 17, 10, 57, tzinfo=UTC), stored)) == (
        datetime(2026, 11, 28, 17, 10, 54, tzinfo=UTC)
    )


def test_tick_time_falls_back_to_when_the_tick_was_stored() -> None:
    stored = T0 + timedelta(milliseconds=620)
    assert tick_time(EVERY, tick(None, stored)) == T0
    # A next fire time that cannot belong to this tick (it would have fired in the future).
    assert tick_time(EVERY, tick(T0 + timedelta(seconds=30), stored)) == T0


def test_a_tick_is_late_once_the_next_one_is_due() -> None:
    t = tick(T0 + timedelta(seconds=2), T0)
    assert not is_late(t, T0 + timedelta(seconds=0.1))
    assert not is_late(t, T0 + timedelta(seconds=2.9))  # within the grace
    assert is_late(t, T0 + timedelta(seconds=3.1))
    assert not is_late(tick(None, T0), T0 + timedelta(hours=1))


def test_first_look_drops_ticks_of_deleted_and_paused_schedules() -> None:
    t = tick(T0 + timedelta(seconds=2), T0)
    assert first_look(None, t, T0)[0] is Verdict.DELETED
    assert first_look(replace(EVERY, paused=True), t, T0)[0] is Verdict.PAUSED


def test_first_look_restarts_a_tick_the_record_already_names() -> None:
    t = tick(T0 + timedelta(seconds=2), T0, redelivered=True)
    claimed = replace(EVERY, last_invocation_id="greet-20261128T171053")
    assert first_look(claimed, t, T0 + timedelta(minutes=5)) == (
        Verdict.RESTART,
        "greet-20261128T171053",
        False,
    )


def test_first_look_limits_catch_up_runs() -> None:
    late_tick = tick(T0 + timedelta(seconds=2), T0)
    later = T0 + timedelta(minutes=10)
    assert first_look(EVERY, late_tick, later) == (Verdict.CANDIDATE, "greet-20261128T171053", True)
    used_up = replace(EVERY, catch_up_runs=1)
    assert first_look(used_up, late_tick, later)[0] is Verdict.CATCH_UP_SKIP
    assert first_look(replace(EVERY, catch_up=0), late_tick, later)[0] is Verdict.CATCH_UP_SKIP
    # An on-time tick is always a candidate, however many late runs came before.
    assert first_look(used_up, late_tick, T0 + timedelta(seconds=1))[0] is Verdict.CANDIDATE


def test_a_redelivered_late_tick_is_held_to_the_catch_up_limit() -> None:
    """Ticks come back after any failed handling (a NAK, a lost ack after a catch-up skip), not
    only from a replica that died holding them: a redelivery of a late tick that was never
    claimed counted as on time, so after downtime every late tick handled twice ran, even with
    ``catch_up=0``, and its claim reset the count of late runs."""
    redelivered = tick(T0 + timedelta(seconds=2), T0, redelivered=True)
    later = T0 + timedelta(minutes=10)
    assert first_look(replace(EVERY, catch_up=0), redelivered, later) == (
        Verdict.CATCH_UP_SKIP,
        "greet-20261128T171053",
        True,
    )
    assert first_look(EVERY, redelivered, later) == (
        Verdict.CANDIDATE,
        "greet-20261128T171053",
        True,  # its claim counts a late run
    )


def test_a_tick_claimed_before_a_pause_is_still_started() -> None:
    """Its claim came first: a start that failed after it must not be dropped by the pause
    (the invocation would stay PENDING with no start, and block ``overlap="skip"``)."""
    t = tick(T0 + timedelta(seconds=2), T0, redelivered=True)
    claimed = replace(EVERY, last_invocation_id="greet-20261128T171053", paused=True)
    assert first_look(claimed, t, T0 + timedelta(seconds=3))[0] is Verdict.RESTART
    assert first_look(replace(claimed, last_invocation_id="greet-x"), t, T0)[0] is Verdict.PAUSED


def test_a_start_may_be_lost_only_for_a_pending_run_claimed_long_ago() -> None:
    claimed = replace(EVERY, last_invocation_id="greet-x", last_fired_at=T0)
    stale = timedelta(minutes=1)
    later = T0 + timedelta(minutes=2)
    assert start_may_be_lost(Status.PENDING, claimed, later, stale)
    assert not start_may_be_lost(Status.PENDING, claimed, T0 + timedelta(seconds=5), stale)
    for status in (None, Status.RUNNING, Status.SUSPENDED, Status.COMPLETED):
        assert not start_may_be_lost(status, claimed, later, stale)
    assert not start_may_be_lost(Status.PENDING, EVERY, later, stale)  # never fired


@pytest.mark.parametrize(
    ("status", "running"),
    [
        (Status.PENDING, True),
        (Status.RUNNING, True),
        (Status.SUSPENDED, True),
        (Status.PAUSED, True),
        (Status.COMPLETED, False),
        (Status.FAILED, False),
        (Status.CANCELLED, False),
    ],
)
def test_still_running_by_status(status: Status, running: bool) -> None:
    assert still_running(status, EVERY, T0, timedelta(minutes=1)) is running


def test_a_claim_without_state_blocks_until_it_is_stale() -> None:
    claimed = replace(EVERY, last_invocation_id="greet-x", last_fired_at=T0)
    stale = timedelta(minutes=1)
    assert still_running(None, claimed, T0 + timedelta(seconds=5), stale)
    assert not still_running(None, claimed, T0 + timedelta(minutes=2), stale)
    assert not still_running(None, EVERY, T0, stale)  # never fired


def test_claim_counts_late_runs_and_an_on_time_run_resets_them() -> None:
    now = T0 + timedelta(microseconds=1234)
    late = claim(EVERY, "greet-a", now, late=True, fired=T0)
    assert (late.last_invocation_id, late.last_fired_at, late.catch_up_runs) == ("greet-a", T0, 1)
    assert late.last_tick_at == T0
    assert claim(late, "greet-b", now, late=True, fired=T0).catch_up_runs == 2
    assert claim(late, "greet-c", now, late=False, fired=T0).catch_up_runs == 0
    # An older tick handled late never moves the last tick back.
    assert claim(late, "greet-d", now, late=True, fired=T0 - EVERY_S).last_tick_at == T0


EVERY_S = timedelta(seconds=2)


def test_a_fire_time_the_server_skipped_is_found_from_the_next_tick() -> None:
    handled = replace(EVERY, last_tick_at=T0)
    assert first_missed(handled, T0 + EVERY_S) is None  # the next tick, on time
    assert first_missed(handled, T0) is None and first_missed(handled, T0 - EVERY_S) is None
    assert first_missed(EVERY, T0 + 10 * EVERY_S) is None  # no last tick known: none
    # A leader change: the new leader fired 7 s after the last tick, on its own grid: the
    # times 2 s and 4 s after it were never fired (6 s is the new tick's, 1 s late); the
    # first is found, then the next, then none.
    assert first_missed(handled, T0 + timedelta(seconds=7)) == T0 + EVERY_S
    two = replace(EVERY, last_tick_at=T0 + EVERY_S)
    assert first_missed(two, T0 + timedelta(seconds=7)) == T0 + 2 * EVERY_S
    three = replace(EVERY, last_tick_at=T0 + 2 * EVERY_S)
    assert first_missed(three, T0 + timedelta(seconds=7)) is None
    # A grid shifted by up to half an interval stands for the planned time: nothing missed.
    assert first_missed(handled, T0 + timedelta(seconds=3)) is None
    minute = replace(Schedule("m", "wf", every=timedelta(minutes=1)), last_tick_at=T0)
    assert first_missed(minute, T0 + timedelta(seconds=90)) is None
    assert first_missed(minute, T0 + timedelta(seconds=91)) == T0 + timedelta(minutes=1)
    # Cron times are the same on every leader: any time strictly in between was missed.
    cron = Schedule("c", "wf", cron="*/3 * * * * *")
    at = datetime(2026, 11, 28, 17, 10, 54, tzinfo=UTC)
    assert first_missed(replace(cron, last_tick_at=at), at + timedelta(seconds=3)) is None
    assert first_missed(replace(cron, last_tick_at=at), at + timedelta(seconds=9)) == (
        at + timedelta(seconds=3)
    )
    assert passed(handled, T0 + EVERY_S).last_tick_at == T0 + EVERY_S
    assert passed(handled, T0 - EVERY_S).last_tick_at == T0
    assert passed(EVERY, T0).last_tick_at == T0
