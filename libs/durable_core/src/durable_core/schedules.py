"""Schedules: start a workflow on a cron expression or at a fixed interval.

The NATS server does the timekeeping. A schedule is a record in the ``<prefix>_schedules``
bucket plus one server-side schedule (JetStream message scheduling, ``Nats-Schedule`` with a
cron pattern or ``@every``) that publishes a *tick* to ``<prefix>.tick.<name>`` each time it
fires. The scheduler service consumes the ticks from one shared work-queue consumer, so each
tick reaches one scheduler replica however many run, and starts the invocation
``<name>-<tick time, UTC, YYYYmmddTHHMMSS>``: a tick handled twice starts it once.

```
create_schedule ──record (KV create)──► <prefix>_schedules
        └──arm: Nats-Schedule on <prefix>.sched.cron.<name>.spec ──► server fires ──►
            <prefix>.tick.<name> ──► scheduler (one replica per tick) ──► invocation
```

Pausing removes the server-side schedule (and keeps the record, ``paused=True``); resuming
arms it again; deleting removes both. Each schedule decides what happens when a run is still
going when the next tick comes (``overlap``: ``"skip"`` the tick, or ``"allow"`` a second run)
and how many missed ticks are made up after the schedulers were down (``catch_up``).

The record is written first and the server told after, so a caller that dies (or NATS failing
it) between the two, or a pause and a resume racing, can leave the server disagreeing with the
record. Pause and resume read the record again after acting and put right what a racing call
undid; :func:`reconcile_schedules`, which the scheduler service runs every ``schedule_sweep``,
arms every active schedule the server does not fire and disarms every paused one it fires.

The functions here take the engine's transport; ``Client`` exposes them as methods.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from durable_core import _codec
from durable_core._cron import CronExpr
from durable_core._naming import check_partition_key, check_workflow_name
from durable_core._transport import StateConflict, Transport
from durable_core.errors import (
    ConflictError,
    DurableError,
    InvalidInputError,
    NatsUnavailableError,
    NotFoundError,
)
from durable_core.plugins import workflow_signature

__all__ = [
    "MAX_CATCH_UP",
    "MIN_EVERY",
    "Overlap",
    "Repair",
    "Schedule",
    "check_schedule_name",
    "create_schedule",
    "delete_schedule",
    "find_schedule",
    "get_schedule",
    "list_schedules",
    "parse_duration",
    "pause_schedule",
    "reconcile_schedules",
    "resume_schedule",
    "save_schedule",
    "schedule_invocation_id",
]

Overlap = Literal["skip", "allow"]
Repair = Literal["armed", "disarmed"]

MIN_EVERY = timedelta(seconds=1)
# Longer intervals are a cron's job (or a mistake): the server refuses @every past 106,751
# days, and a record it refuses could never fire. Checked when a schedule is made, not when a
# stored one is read.
MAX_EVERY = timedelta(days=3650)
MAX_CATCH_UP = 1000
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_DURATION = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")
_RECORD_VERSION = 1
_ATTEMPTS = 20  # read-modify-write rounds before a busy record is reported as a conflict

log = logging.getLogger("durable_core.schedules")


def check_schedule_name(name: str) -> str:
    """Return the name if it is a valid schedule name, else InvalidInputError."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidInputError(
            f"invalid schedule name {name!r}: use 1-64 characters from A-Z a-z 0-9 _ -"
        )
    return name


def parse_duration(text: str) -> timedelta:
    """Parse ``90``, ``90s``, ``5m``, ``1h30m`` or ``2d`` (whole seconds) into a timedelta."""
    value = text.strip().lower() if isinstance(text, str) else ""
    if value.isdigit():
        value += "s"  # bare seconds
    m = _DURATION.fullmatch(value) if value else None  # every part is optional: "" matches
    if m is None:
        raise InvalidInputError(
            f"invalid duration {text!r}: use seconds (90) or units d, h, m, s (30s, 5m, 1h30m)"
        )
    try:
        days, hours, minutes, seconds = (int(g) if g else 0 for g in m.groups())
        return timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
    except (OverflowError, ValueError) as e:
        raise InvalidInputError(f"duration {text!r} is out of range") from e


def schedule_invocation_id(name: str, fired_at: datetime) -> str:
    """The invocation a schedule starts for the tick that fired at ``fired_at``."""
    return f"{name}-{fired_at.astimezone(UTC).strftime('%Y%m%dT%H%M%S')}"


def _every_text(every: timedelta) -> str:
    seconds = int(every.total_seconds())
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return "".join(parts) or "0s"


def _time(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat() if value is not None else None


def _parse_time(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


@dataclass(frozen=True, slots=True)
class Schedule:
    """A schedule: which workflow to start, when, and what it last did.

    Construction validates every field (InvalidInputError says which and why).

    Attributes:
        name: 1-64 characters from ``A-Z a-z 0-9 _ -``; part of each invocation id.
        workflow: the workflow to start.
        args: its input, a JSON value.
        cron: a cron expression (5 fields, 6 with seconds first, or ``@daily`` etc.);
            exactly one of ``cron`` and ``every``.
        every: a fixed interval, whole seconds, at least 1 s.
        timezone: IANA zone the cron fields are read in (default UTC); cron only.
        overlap: ``"skip"`` a tick while the previous run has not finished, or ``"allow"`` it.
        catch_up: how many late ticks (those that arrive after the next one was due, as after
            the schedulers were down) may still start a run before the next on-time tick;
            later ones are dropped. 0 drops every late tick.
        partition_key: partition key of the invocations (per-key ordering), if any.
        paused: the server does not fire it.
        last_invocation_id: the invocation the last tick started ("" before the first).
        last_fired_at: when the scheduler started it.
        created_at: when the schedule was created.
        catch_up_runs: late ticks run since the last on-time one (the scheduler's count).
        last_tick_at: the fire time of the last tick the scheduler handled (started, skipped
            or dropped); at a create or resume, its time (a second later for ``every``: the
            paused time is not made up); None in records from before it was kept. A tick
            that comes after a fire time the server never fired (while the command stream's
            leader moved) is preceded by that missed time, run as a late tick.
        revision: the record's revision when read (0 for one not stored yet).
    """

    name: str
    workflow: str
    args: Any = None
    cron: str | None = None
    every: timedelta | None = None
    timezone: str | None = None
    overlap: Overlap = "skip"
    catch_up: int = 1
    partition_key: str | None = None
    paused: bool = False
    last_invocation_id: str = ""
    last_fired_at: datetime | None = None
    created_at: datetime | None = None
    catch_up_runs: int = 0
    last_tick_at: datetime | None = None
    revision: int = field(default=0, compare=False)
    _cron: CronExpr | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_schedule_name(self.name)
        check_workflow_name(self.workflow)
        if (self.cron is None) == (self.every is None):
            raise InvalidInputError(
                f"schedule {self.name}: give exactly one of cron (an expression) or every "
                "(a timedelta)"
            )
        if self.every is not None:
            if not isinstance(self.every, timedelta):
                raise InvalidInputError(f"schedule {self.name}: every must be a timedelta")
            if self.every < MIN_EVERY or self.every.microseconds:
                raise InvalidInputError(
                    f"schedule {self.name}: every must be a whole number of seconds, at least "
                    f"1 s (got {self.every.total_seconds():g} s)"
                )
            if self.timezone is not None:
                raise InvalidInputError(
                    f"schedule {self.name}: a time zone applies to cron schedules only"
                )
        else:
            object.__setattr__(self, "_cron", CronExpr.parse(str(self.cron)))
        if self.timezone is not None:
            try:
                ZoneInfo(self.timezone)
            except (ZoneInfoNotFoundError, ValueError, TypeError) as e:
                raise InvalidInputError(
                    f"schedule {self.name}: unknown time zone {self.timezone!r} (use an IANA "
                    "name such as Europe/Amsterdam or UTC)"
                ) from e
        if self.overlap not in ("skip", "allow"):
            raise InvalidInputError(
                f"schedule {self.name}: overlap must be 'skip' or 'allow', not {self.overlap!r}"
            )
        if (
            not isinstance(self.catch_up, int)
            or isinstance(self.catch_up, bool)
            or not 0 <= self.catch_up <= MAX_CATCH_UP
        ):
            raise InvalidInputError(
                f"schedule {self.name}: catch_up must be a whole number from 0 to "
                f"{MAX_CATCH_UP}, not {self.catch_up!r}"
            )
        if self.partition_key is not None:
            check_partition_key(self.partition_key)
        try:
            json.dumps(self.args, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise InvalidInputError(
                f"schedule {self.name}: args must be a JSON value (dict, list, str, number, "
                f"bool or None): {e}"
            ) from e

    # -- timing ----------------------------------------------------------------------------

    @property
    def pattern(self) -> str:
        """What the server is given in ``Nats-Schedule``."""
        if self._cron is not None:
            return self._cron.pattern
        assert self.every is not None
        return f"@every {int(self.every.total_seconds())}s"

    @property
    def when(self) -> str:
        """A short description: ``every 2s`` or ``cron */5 * * * * (Europe/Amsterdam)``."""
        if self.every is not None:
            return f"every {_every_text(self.every)}"
        zone = f" ({self.timezone})" if self.timezone else ""
        return f"cron {self.cron}{zone}"

    def _zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone or "UTC")

    def next_fire_after(self, moment: datetime) -> datetime | None:
        """The next cron fire time after ``moment`` (UTC); None for ``every`` schedules, whose
        phase the server sets when it is armed."""
        if self._cron is None:
            return None
        return self._cron.next_after(moment, self._zone())

    def next_fire(self, now: datetime) -> datetime | None:
        """When it fires next, for people: None while paused. An ``every`` schedule's phase is
        the server's (set when it was armed), so its time is reckoned from the last run, or
        from its creation, and may be off by up to one interval after a resume."""
        if self.paused:
            return None
        if self.every is None:
            return self.next_fire_after(now)
        anchor = self.last_fired_at or self.created_at
        if anchor is None:
            return None
        periods = max(0, math.ceil((now - anchor) / self.every))
        return anchor + periods * self.every

    def fire_time_after(self, fired: datetime) -> datetime | None:
        """The fire time that comes just after a tick that stands for ``fired`` (UTC): the
        interval later, or the cron expression's next time."""
        if self.every is not None:
            return fired.astimezone(UTC) + self.every
        return self.next_fire_after(fired)

    def fire_time_before(self, next_fire: datetime) -> datetime | None:
        """The fire time that comes just before ``next_fire`` (UTC).

        A tick carries the time the schedule fires next (``Nats-Schedule-Next``); the one
        before it is the time the tick stands for, the same on every redelivery.
        """
        if self.every is not None:
            return next_fire.astimezone(UTC) - self.every
        assert self._cron is not None
        return self._cron.last_before(next_fire, self._zone())

    # -- records ---------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view (``durable schedule list --json``, the inspector)."""
        return {
            "name": self.name,
            "workflow": self.workflow,
            "args": self.args,
            "cron": self.cron,
            "every_seconds": int(self.every.total_seconds()) if self.every else None,
            "timezone": self.timezone,
            "overlap": self.overlap,
            "catch_up": self.catch_up,
            "partition_key": self.partition_key,
            "paused": self.paused,
            "last_invocation_id": self.last_invocation_id,
            "last_fired_at": _time(self.last_fired_at),
            "created_at": _time(self.created_at),
            "catch_up_runs": self.catch_up_runs,
            "last_tick_at": _time(self.last_tick_at),
        }

    def to_json(self) -> bytes:
        """The stored record."""
        return json.dumps({"v": _RECORD_VERSION, **self.to_dict()}, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes, revision: int = 0) -> Schedule:
        """Read a stored record.

        Raises:
            DurableError: the record is not a schedule this version can read.
        """
        try:
            d = json.loads(data)
            every = d.get("every_seconds")
            return cls(
                name=d["name"],
                workflow=d["workflow"],
                args=d.get("args"),
                cron=d.get("cron"),
                every=timedelta(seconds=every) if every is not None else None,
                timezone=d.get("timezone"),
                overlap=d.get("overlap", "skip"),
                catch_up=d.get("catch_up", 1),
                partition_key=d.get("partition_key") or None,  # "" (stored before): none
                paused=bool(d.get("paused", False)),
                last_invocation_id=d.get("last_invocation_id") or "",
                last_fired_at=_parse_time(d.get("last_fired_at")),
                created_at=_parse_time(d.get("created_at")),
                catch_up_runs=int(d.get("catch_up_runs", 0)),
                last_tick_at=_parse_time(d.get("last_tick_at")),
                revision=revision,
            )
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise DurableError(f"unreadable schedule record: {e}") from e


# -- operations -----------------------------------------------------------------------------


async def find_schedule(transport: Transport, name: str) -> Schedule | None:
    """The schedule called ``name``, or None."""
    check_schedule_name(name)
    data, revision = await transport.schedule_record(name)
    return None if data is None else Schedule.from_json(data, revision)


async def get_schedule(transport: Transport, name: str) -> Schedule:
    """The schedule called ``name``.

    Raises:
        NotFoundError: there is none.
    """
    schedule = await find_schedule(transport, name)
    if schedule is None:
        raise NotFoundError(f"no schedule named {name!r}")
    return schedule


async def list_schedules(transport: Transport) -> list[Schedule]:
    """Every schedule, by name."""
    out = []
    for name in sorted(await transport.schedule_names()):
        schedule = await find_schedule(transport, name)
        if schedule is not None:  # deleted since the listing
            out.append(schedule)
    return out


async def create_schedule(
    transport: Transport,
    name: str,
    workflow: str | Callable[..., Any],
    args: Any = None,
    *,
    cron: str | None = None,
    every: timedelta | None = None,
    timezone: str | None = None,
    overlap: Overlap = "skip",
    catch_up: int = 1,
    partition_key: str | None = None,
    paused: bool = False,
    check: Callable[[str], Awaitable[None]] | None = None,
) -> Schedule:
    """Create a schedule and (unless ``paused``) arm it on the server.

    Args:
        workflow: a workflow name, or the workflow function (its input is then checked
            against the function's type hints now, not at the first tick).
        check: awaited with the workflow's name once the schedule is valid, before anything
            is written (the client's refusal of a workflow nobody serves).

    Raises:
        InvalidInputError: a bad name, workflow, cron expression, interval, time zone,
            option or argument (also: arguments over the payload limit).
        ConflictError: a schedule with this name exists.
    """
    if callable(workflow):
        workflow_name = getattr(workflow, "__durable_workflow__", None) or workflow.__name__
        _, input_type, _ = workflow_signature(workflow)
        if input_type is not None:
            try:
                _codec.convert(_codec.to_jsonable(args), input_type)
            except InvalidInputError as e:
                raise InvalidInputError(
                    f"args of schedule {name} do not match the input of {workflow_name}: {e}"
                ) from e
    else:
        workflow_name = workflow
    schedule = Schedule(
        name=name,
        workflow=workflow_name,
        args=_codec.to_jsonable(args),
        cron=cron,
        every=every,
        timezone=timezone,
        overlap=overlap,
        catch_up=catch_up,
        partition_key=partition_key,
        paused=paused,
        created_at=datetime.now(UTC).replace(microsecond=0),
    )
    if every is not None and every > MAX_EVERY:
        raise InvalidInputError(
            f"schedule {name}: every must be at most {MAX_EVERY.days} days (10 years; a longer "
            f"interval is a cron's job), got {every.total_seconds():g} s"
        )
    schedule = replace(schedule, last_tick_at=_armed_from(schedule))
    size = len(_codec.encode(schedule.args).data)
    if size > transport.engine.max_payload:
        raise InvalidInputError(
            f"args of schedule {name} are {size} bytes; the limit is "
            f"{transport.engine.max_payload} bytes (EngineConfig.max_payload)"
        )
    if check is not None:
        await check(workflow_name)
    try:
        revision = await transport.put_schedule_record(name, schedule.to_json(), 0)
    except StateConflict as e:
        raise ConflictError(f"a schedule named {name!r} already exists") from e
    schedule = replace(schedule, revision=revision)
    if not paused:
        try:
            await _arm(transport, schedule)
        except Exception:
            # Not armed: leave no record behind, so the same create can simply be retried.
            await transport.delete_schedule_record(name, revision)
            # The arm may have reached the server anyway (an answer lost), or a sweep's arm
            # came between the record write and this one: make the server agree with what
            # is recorded now (the sweep would, later).
            with contextlib.suppress(DurableError):
                await _settle(transport, name)
            raise
    return schedule


async def _arm(transport: Transport, schedule: Schedule) -> None:
    await transport.arm_schedule(
        schedule.name,
        schedule.pattern,
        timezone=schedule.timezone,
        body=json.dumps({"schedule": schedule.name}).encode(),
    )


async def save_schedule(transport: Transport, schedule: Schedule) -> Schedule:
    """Store a changed schedule if its record is still at ``schedule.revision``.

    Returns it with its new revision.

    Raises:
        ConflictError: the record changed since it was read (read it again and retry).
    """
    try:
        revision = await transport.put_schedule_record(
            schedule.name, schedule.to_json(), schedule.revision
        )
    except StateConflict as e:
        raise ConflictError(f"schedule {schedule.name} changed meanwhile; read it again") from e
    return replace(schedule, revision=revision)


async def _update(
    transport: Transport, name: str, change: Callable[[Schedule], Schedule]
) -> Schedule:
    for _ in range(_ATTEMPTS):
        current = await get_schedule(transport, name)
        changed = change(current)
        if changed == current:
            return current
        try:
            return await save_schedule(transport, changed)
        except ConflictError:
            continue  # the scheduler recorded a run meanwhile: apply the change to that
    raise ConflictError(f"schedule {name} kept changing; try again")


async def pause_schedule(transport: Transport, name: str) -> Schedule:
    """Stop firing a schedule; its record stays (``paused=True``). Pausing twice is fine.

    Raises:
        NotFoundError: no such schedule.
    """
    schedule = await _update(transport, name, lambda s: replace(s, paused=True))
    # Record first: a tick that slips through before the disarm finds it paused and is dropped.
    await transport.disarm_schedule(name)
    # A resume that wrote its record after ours and armed before our disarm: arm it again.
    await _settle(transport, name, did=None)
    return schedule


def _armed_from(schedule: Schedule) -> datetime:
    """Where a created or resumed schedule's fire times start to count (``last_tick_at``):
    now, and a second later for an ``every`` schedule (the server is armed just after the
    record is written, and its grid starts there, on whole seconds; cron times are fixed). A
    time the server skips after it (a leader change before the first tick) is made up; none
    before it (the paused time) is. The caller's clock is taken: one more than a second
    behind the server's could have a paused time made up."""
    margin = timedelta(seconds=1) if schedule.every is not None else timedelta(0)
    return datetime.now(UTC).replace(microsecond=0) + margin


async def resume_schedule(transport: Transport, name: str) -> Schedule:
    """Fire a paused schedule again (from the next fire time on; the ticks of the paused time
    are not made up). Resuming a running schedule arms it again, which is harmless.

    Raises:
        NotFoundError: no such schedule.
        InvalidInputError: the server refused the schedule (it stays paused).
    """
    schedule = await _update(
        transport,
        name,
        lambda s: replace(s, paused=False, catch_up_runs=0, last_tick_at=_armed_from(s)),
    )
    try:
        await _arm(transport, schedule)
    except InvalidInputError:
        # The server refused it (an interval past what it takes, recorded before that was
        # checked): it stays paused, not recorded active with nothing to fire it.
        await _update(transport, name, lambda s: replace(s, paused=True))
        with contextlib.suppress(DurableError):
            await _settle(transport, name)
        raise
    # A pause that wrote its record before ours and disarmed after our arm: arm it again (or
    # one that wrote after ours: make sure it is disarmed).
    await _settle(transport, name, did=_arming(schedule))
    return schedule


async def delete_schedule(transport: Transport, name: str) -> None:
    """Stop a schedule and remove it. Invocations it started are not touched.

    Raises:
        NotFoundError: no such schedule.
    """
    for _ in range(_ATTEMPTS):
        schedule = await get_schedule(transport, name)
        await transport.disarm_schedule(name)
        try:
            await transport.delete_schedule_record(name, schedule.revision)
            return
        except StateConflict:
            continue
    raise ConflictError(f"schedule {name} kept changing; try again")


# -- the server agrees with the records ----------------------------------------------------

_Arming = tuple[str, str | None]  # what the server is given: pattern, time zone


class _Unknown:
    """The caller has not armed or disarmed anything yet (a sweep)."""


_UNKNOWN = _Unknown()


def _arming(schedule: Schedule | None) -> _Arming | None:
    """What the server should hold for a record: its pattern and zone, or None (nothing)."""
    if schedule is None or schedule.paused:
        return None
    return schedule.pattern, schedule.timezone


async def _settle(
    transport: Transport, name: str, *, did: _Arming | None | _Unknown = _UNKNOWN
) -> list[Repair]:
    """Make the server hold what the record of ``name`` asks for, as the record is now.

    Each action is taken on a fresh read of the record and followed by another read: a record
    paused, resumed, deleted or re-created between a read and the action it led to is put
    right by this call, not left to the next sweep. Every caller that arms or disarms checks
    again so, whoever acts last, the server ends up agreeing with the last record.

    Args:
        did: what the caller last did to the server: armed it with this ``_Arming``, disarmed
            it (None), or nothing yet.

    Returns:
        What it did, in order (empty if the server already agreed).
    """
    done: list[Repair] = []
    for _ in range(_ATTEMPTS):
        schedule = await find_schedule(transport, name)
        want = _arming(schedule)
        armed = await transport.schedule_armed(name)
        if want is None:
            if not armed:
                return done
            await transport.disarm_schedule(name)
            done.append("disarmed")
        else:
            # Armed, but perhaps by our own stale arm of an older record of the same name (one
            # deleted and created again meanwhile): then arm it again with the current one.
            if armed and (isinstance(did, _Unknown) or did is None or did == want):
                return done
            assert schedule is not None
            await _arm(transport, schedule)
            done.append("armed")
        did = want
    return done  # still changing: the next sweep looks again


async def reconcile_schedules(transport: Transport) -> list[tuple[str, Repair]]:
    """Make the server fire exactly the active schedules: arm each active (not paused)
    schedule the server does not fire, with its record's pattern and time zone, and disarm each
    paused one it still fires.

    An active schedule is left unarmed when its create or resume died (or NATS failed it)
    between the record write and the arm; a paused one stays armed when its pause died before
    the disarm. Safe to run at any time, from any number of processes at once, alongside
    create, pause, resume and delete: arming replaces the one schedule of a name, and a record
    that changes between the read and the act is read again and put right (a schedule deleted
    meanwhile is disarmed). A server schedule with no record is disarmed too: a sweep's arm
    that came between a create's record write and that create's own failed arm (which then
    deleted the record) left the server firing ticks for nothing, for good.

    Returns:
        ``(name, "armed" | "disarmed")`` for each change, by name (both for one that changed
        while it was being put right).

    Raises:
        NatsUnavailableError: NATS did not answer (what was done until then stays done).
    """
    changes: list[tuple[str, Repair]] = []
    names = {*await transport.schedule_names(), *await transport.armed_schedule_names()}
    for name in sorted(names):
        try:
            done = await _settle(transport, name)
        except NatsUnavailableError:
            raise
        except DurableError as e:
            # The server refuses the record's pattern or zone, or the record is unreadable:
            # another try will not help; the other schedules are still put right.
            log.warning("schedule %s: cannot make the server agree with it: %s", name, e)
            continue
        changes.extend((name, action) for action in done)
    return changes
