"""What to do with one tick: the scheduler's decisions, as pure functions (no I/O).

A tick is the message the NATS server publishes when a schedule fires. It carries the time the
schedule fires next (``Nats-Schedule-Next``); the fire time before that one is the time the tick
stands for, which names the invocation it starts (``<schedule>-<YYYYmmddTHHMMSS>``, UTC). The
message is the same on every redelivery, so the name is too.

The order of the checks:

1. the schedule is gone: drop the tick;
2. the record already names this tick's invocation (a replica claimed it and then died, or
   its ack was lost): start it again, which is idempotent, and ack; even if the schedule was
   paused since, as the claim came before the pause;
3. the schedule is paused: drop the tick;
4. the tick is late (the next one was already due when it arrived, as after the schedulers
   were down) and the schedule's catch-up runs are used up: drop it;
5. ``overlap="skip"`` and the previous invocation has not finished: skip;
6. claim the tick in the record (revision-checked: of two replicas only one wins, the other
   reads again and decides again), then start the invocation.

Claiming before starting is what keeps ``overlap="skip"`` true with several replicas: a second
tick handled at the same moment elsewhere sees the claim and skips, instead of both starting.

Ticks the server never fired: the server keeps a schedule on the command stream's leader, and
a new leader fires on from its own clock, skipping the fire times that fell in the failover
(2-3 ticks of an every-2s schedule per leader kill, measured). The record keeps the fire time
of the last tick handled (``last_tick_at``); a tick that comes after a fire time in between
(:func:`first_missed`) is preceded by that time, as a late tick: the same catch-up limit and
overlap check, its own invocation named by its time. A create or a resume sets the last tick
to its own time (a second later for ``every``, whose grid the server starts when armed): the
paused time is not made up, a time skipped before the first tick is.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from durable_core.client import Status
from durable_core.schedules import Schedule, schedule_invocation_id

__all__ = [
    "LATE_GRACE",
    "Tick",
    "Verdict",
    "claim",
    "first_look",
    "first_missed",
    "is_late",
    "parse_tick",
    "passed",
    "start_may_be_lost",
    "still_running",
    "tick_time",
]

# A tick is late once the next one has been due for this long.
LATE_GRACE = timedelta(seconds=1)


class Verdict(enum.StrEnum):
    """The outcome of the checks that need only the record."""

    DELETED = "deleted"
    PAUSED = "paused"
    RESTART = "restart"  # the record names this tick's invocation already: start it again
    CATCH_UP_SKIP = "catch_up_skip"
    CANDIDATE = "candidate"  # may start, after the overlap check


@dataclass(frozen=True, slots=True)
class Tick:
    """One tick delivery, as far as the decisions need it.

    Attributes:
        schedule: the schedule's name (the last token of the tick subject).
        next_fire: when the schedule fires next (None if the header was missing).
        stored_at: when the server stored the tick (it fired then).
        redelivered: an earlier delivery was not acknowledged (a replica died holding it).
    """

    schedule: str
    next_fire: datetime | None
    stored_at: datetime
    redelivered: bool = False


def parse_tick(
    subject: str, headers: dict[str, str], stored_at: datetime, num_delivered: int
) -> Tick:
    """Read a tick message (subject ``<prefix>.tick.<name>``).

    Raises:
        ValueError: the subject names no schedule.
    """
    name = subject.rsplit(".", 1)[-1] if subject.count(".") >= 2 else ""
    if not name:
        raise ValueError(f"not a tick subject: {subject!r}")
    next_fire: datetime | None = None
    raw = headers.get("Nats-Schedule-Next", "")
    if raw and raw != "purge":
        try:
            next_fire = datetime.fromisoformat(raw).astimezone(UTC)
        except ValueError:
            next_fire = None
    if stored_at.tzinfo is None:
        stored_at = stored_at.replace(tzinfo=UTC)
    return Tick(name, next_fire, stored_at.astimezone(UTC), num_delivered > 1)


def tick_time(schedule: Schedule, tick: Tick) -> datetime:
    """The fire time a tick stands for (UTC, whole seconds)."""
    floor = tick.stored_at.replace(microsecond=0)
    if tick.next_fire is not None:
        fired = schedule.fire_time_before(tick.next_fire)
        # The server stores a tick when (or just after) it fires, never before.
        if fired is not None and fired <= tick.stored_at + LATE_GRACE:
            return fired.replace(microsecond=0)
    return floor


def is_late(tick: Tick, now: datetime) -> bool:
    """The tick arrived after the next one was due: the schedulers were behind or down."""
    return tick.next_fire is not None and now > tick.next_fire + LATE_GRACE


def first_look(schedule: Schedule | None, tick: Tick, now: datetime) -> tuple[Verdict, str, bool]:
    """Checks 1-4: ``(verdict, invocation id, late)``.

    A redelivered tick is held to the catch-up limit like any other: ticks come back after
    any failed handling, and one a replica claimed before it failed is a RESTART (check 2).
    """
    if schedule is None:
        return Verdict.DELETED, "", False
    invocation_id = schedule_invocation_id(schedule.name, tick_time(schedule, tick))
    if schedule.last_invocation_id == invocation_id:
        return Verdict.RESTART, invocation_id, False
    if schedule.paused:
        return Verdict.PAUSED, "", False
    late = is_late(tick, now)
    if late and schedule.catch_up_runs >= schedule.catch_up:
        return Verdict.CATCH_UP_SKIP, invocation_id, True
    return Verdict.CANDIDATE, invocation_id, late


def first_missed(schedule: Schedule, fired: datetime) -> datetime | None:
    """The first fire time between the last tick handled and this one (which stands for
    ``fired``) that no tick came for: the server skipped it. None if there is none, or no last
    tick is known (a record from before the last tick was kept).

    An ``every`` schedule's new leader fires on a grid of its own, up to an interval off the
    old one: a time counts as missed only if it is more than half an interval before this
    tick (the tick stands for the planned time nearest to it, so each planned time gets one
    run); cron times are the same on every leader.
    """
    last = schedule.last_tick_at
    if last is None or fired <= last:
        return None
    after = schedule.fire_time_after(last)
    if after is None:
        return None
    slack = schedule.every / 2 if schedule.every is not None else timedelta(0)
    return after if after + slack < fired else None


def passed(schedule: Schedule, fired: datetime) -> Schedule:
    """The record after a tick (standing for ``fired``) was skipped or dropped: handled."""
    last = schedule.last_tick_at
    return replace(schedule, last_tick_at=fired if last is None or fired > last else last)


def still_running(
    status: Status | None, schedule: Schedule, now: datetime, stale_after: timedelta
) -> bool:
    """Whether the schedule's last invocation blocks a new one (``overlap="skip"``).

    ``status`` is None when the invocation has no state: either the replica that claimed it
    has not started it yet (it will, or the tick is redelivered and started again), or its
    state is gone (retention). A claim older than ``stale_after`` counts as finished.
    """
    if status is None:
        fired = schedule.last_fired_at
        return fired is not None and now - fired < stale_after
    return not status.is_terminal


def start_may_be_lost(
    status: Status | None, schedule: Schedule, now: datetime, stale_after: timedelta
) -> bool:
    """Whether the schedule's last invocation may never have had its start stored.

    Claiming, creating the PENDING state and publishing the start are three writes; a
    replica that fails between the last two sends the tick back to start it again, but a
    pause drops that tick, and nothing else would. An invocation still PENDING
    ``stale_after`` after its claim is such a one unless its start is queued (the caller
    looks), and would block ``overlap="skip"`` for good.
    """
    fired = schedule.last_fired_at
    return status is Status.PENDING and fired is not None and now - fired >= stale_after


def claim(
    schedule: Schedule, invocation_id: str, now: datetime, late: bool, fired: datetime
) -> Schedule:
    """The record naming this tick's invocation (it stands for ``fired``) as the last run."""
    return replace(
        passed(schedule, fired),
        last_invocation_id=invocation_id,
        last_fired_at=now.replace(microsecond=0),
        catch_up_runs=schedule.catch_up_runs + 1 if late else 0,
    )
