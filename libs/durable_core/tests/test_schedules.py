"""Schedules: cron validation (against the NATS server's own parser), records, operations, CLI."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import nats
import pytest
import pytest_asyncio
from hypothesis import given, settings
from hypothesis import strategies as st
from nats.js.api import RetentionPolicy, StreamConfig

from durable_core import (
    ConflictError,
    EngineConfig,
    InvalidInputError,
    NatsUnavailableError,
    NotFoundError,
)
from durable_core import schedules as sched
from durable_core._cron import CronExpr
from durable_core._naming import Names
from durable_core._transport import Transport
from durable_core.cli import main
from durable_core.config import NatsConfig
from durable_core.errors import DurableError
from durable_core.schedules import Schedule
from durable_core.testing import NatsServer

AMS = ZoneInfo("Europe/Amsterdam")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


# -- cron: parsing ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("*/5 * * * *", "0 */5 * * * *"),  # 5 fields: seconds 0
        ("  0   9 * * mon-fri ", "0 0 9 * * mon-fri"),  # whitespace normalised
        ("*/3 * * * * *", "*/3 * * * * *"),
        ("0 0 12 1,15 jan-jun/2 ?", "0 0 12 1,15 jan-jun/2 ?"),
        ("0 30 8 * * SUN", "0 30 8 * * SUN"),
        ("@hourly", "@hourly"),
        ("@daily", "@daily"),
        ("5/10 * * * * *", "5/10 * * * * *"),
    ],
)
def test_valid_cron_and_the_pattern_sent_to_the_server(text: str, pattern: str) -> None:
    assert CronExpr.parse(text).pattern == pattern


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "non-empty"),
        ("* * *", "it has 3 fields"),
        ("* * * * * * *", "it has 7 fields"),
        ("60 * * * *", "minute field: '60' is outside 0-59"),
        ("* 24 * * *", "hour field: '24' is outside 0-23"),
        ("* * 0 * *", "day of month field: '0' is outside 1-31"),
        ("* * * 13 *", "month field: '13' is outside 1-12"),
        ("* * * * 7", "day of week 7 is not accepted"),
        ("*/0 * * * *", "must be at least 1"),
        ("5-1 * * * *", "runs backwards"),
        ("1,,2 * * * *", "empty list item"),
        ("x * * * *", "'x' is not a number"),
        ("* * * foo *", "'foo' is not a number (or a name"),
        ("*/a * * * *", "step 'a'"),
        ("1-2-3 * * * *", "'2-3' is not a number"),
        ("0 0 0 30 2 *", "never fires"),
        ("@every 5s", "every=timedelta"),
        ("@fortnightly", "unknown macro"),
    ],
)
def test_invalid_cron_says_what_is_wrong(text: str, why: str) -> None:
    with pytest.raises(InvalidInputError, match="cron expression|non-empty") as e:
        CronExpr.parse(text)
    assert why in str(e.value)


def test_day_fields_match_either_when_both_are_restricted_and_both_when_one_is_a_star() -> None:
    either = CronExpr.parse("0 0 13 * 5")  # classic cron: the 13th OR a Friday
    both = CronExpr.parse("0 0 * * 5")  # every Friday
    start = utc(2026, 2, 1)
    fires_either = []
    t = start
    for _ in range(6):
        nxt = either.next_after(t, UTC)
        assert nxt is not None
        fires_either.append(nxt.date().isoformat())
        t = nxt
    assert fires_either == [
        "2026-02-06",
        "2026-02-13",  # a Friday the 13th: once
        "2026-02-20",
        "2026-02-27",
        "2026-03-06",
        "2026-03-13",
    ]
    assert both.next_after(utc(2026, 2, 14), UTC) == utc(2026, 2, 20)


# -- cron: fire times ------------------------------------------------------------------------


def test_next_and_last_fire_times_in_utc() -> None:
    c = CronExpr.parse("*/15 * * * *")
    assert c.next_after(utc(2026, 1, 1, 10, 7, 30), UTC) == utc(2026, 1, 1, 10, 15)
    assert c.next_after(utc(2026, 1, 1, 10, 15), UTC) == utc(2026, 1, 1, 10, 30)  # strictly after
    assert c.last_before(utc(2026, 1, 1, 10, 15), UTC) == utc(2026, 1, 1, 10, 0)  # strictly before
    assert c.next_after(utc(2026, 12, 31, 23, 59, 59), UTC) == utc(2027, 1, 1)


def test_fire_times_follow_the_time_zone_across_daylight_saving() -> None:
    c = CronExpr.parse("0 9 * * *")  # 09:00 in Amsterdam
    # Winter: UTC+1; summer: UTC+2 (the change is on 2026-03-29).
    assert c.next_after(utc(2026, 3, 27, 12), AMS) == utc(2026, 3, 28, 8)
    assert c.next_after(utc(2026, 3, 28, 12), AMS) == utc(2026, 3, 29, 7)
    assert c.last_before(utc(2026, 3, 29, 7), AMS) == utc(2026, 3, 28, 8)


def test_a_leap_day_schedule_is_found_years_ahead() -> None:
    c = CronExpr.parse("0 0 29 2 *")
    assert c.next_after(utc(2026, 3, 1), UTC) == utc(2028, 2, 29)
    assert c.last_before(utc(2026, 3, 1), UTC) == utc(2024, 2, 29)


_FIELD = st.one_of(
    st.just("*"),
    st.builds(lambda a: f"*/{a}", st.integers(1, 20)),
    st.builds(lambda a, b: f"{min(a, b)}-{max(a, b)}", st.integers(0, 6), st.integers(0, 6)),
    st.builds(lambda a, b: f"{a},{b}", st.integers(0, 6), st.integers(0, 6)),
)


@settings(max_examples=60, deadline=None)
@given(
    second=_FIELD,
    minute=_FIELD,
    hour=_FIELD,
    moment=st.datetimes(
        min_value=datetime(2020, 1, 1), max_value=datetime(2035, 1, 1), timezones=st.just(UTC)
    ),
)
def test_next_and_last_are_consistent(
    second: str, minute: str, hour: str, moment: datetime
) -> None:
    c = CronExpr.parse(f"{second} {minute} {hour} * * *")
    nxt = c.next_after(moment, AMS)
    prev = c.last_before(moment, AMS)
    assert nxt is not None and prev is not None
    assert prev < moment < nxt
    # Nothing fires between `prev` and `moment`, nor between `moment` and `nxt`.
    before_next = c.last_before(nxt, AMS)
    after_prev = c.next_after(prev, AMS)
    assert before_next is not None and prev <= before_next <= moment
    assert after_prev is not None and moment <= after_prev <= nxt


# -- cron: agreement with the server -----------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "*/5 * * * *",
        "0 9 * * mon-fri",
        "*/3 * * * * *",
        "0 0 12 1,15 jan-jun/2 ?",
        "@hourly",
        "@weekly",
        "59 59 23 31 12 6",
        "0 0 29 2 *",
        "0 0 0 30 2 *",
        "* * * * 7",
        "60 * * * *",
        "* * *",
        "5-1 * * * *",
        "*/0 * * * *",
        "@fortnightly",
    ],
)
async def test_local_validation_agrees_with_the_server(server: NatsServer, text: str) -> None:
    """What we refuse, the server refuses too, and what we accept, it accepts."""
    try:
        pattern: str | None = CronExpr.parse(text).pattern
    except InvalidInputError:
        pattern = None
    nc = await nats.connect(server.url)
    try:
        js = nc.jetstream()
        stream = "CRONCHECK"
        await js.add_stream(
            StreamConfig(
                name=stream,
                subjects=["cc.>"],
                retention=RetentionPolicy.WORK_QUEUE,
                allow_msg_schedules=True,
            )
        )
        headers = {"Nats-Schedule": pattern or text, "Nats-Schedule-Target": "cc.tick"}
        try:
            await js.publish("cc.sched", b"", headers=headers)
            server_accepts = True
        except nats.js.errors.BadRequestError as e:
            assert e.err_code == 10189
            server_accepts = False
        await js.purge_stream(stream)
    finally:
        await nc.close()
    assert server_accepts == (pattern is not None), (text, pattern)


# -- records -----------------------------------------------------------------------------------


def test_a_schedule_needs_exactly_one_of_cron_and_every() -> None:
    with pytest.raises(InvalidInputError, match="exactly one of cron"):
        Schedule("s", "wf")
    with pytest.raises(InvalidInputError, match="exactly one of cron"):
        Schedule("s", "wf", cron="* * * * *", every=timedelta(seconds=5))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": "has space"}, "invalid schedule name"),
        ({"name": "x" * 65}, "invalid schedule name"),
        ({"name": ""}, "invalid schedule name"),
        ({"workflow": "1bad"}, "invalid workflow name"),
        ({"every": timedelta(milliseconds=500)}, "at least 1 s"),
        ({"every": timedelta(seconds=1.5)}, "whole number of seconds"),
        ({"every": timedelta(seconds=5), "timezone": "UTC"}, "cron schedules only"),
        ({"cron": "0 * * * *", "timezone": "Mars/Olympus"}, "unknown time zone"),
        ({"overlap": "queue"}, "overlap must be"),
        ({"catch_up": -1}, "catch_up must be"),
        ({"catch_up": 1001}, "catch_up must be"),
        ({"catch_up": True}, "catch_up must be"),
        ({"args": {"when": datetime.now()}}, "args must be a JSON value"),
        ({"args": float("nan")}, "args must be a JSON value"),
        ({"partition_key": "k" * 2000}, "partition key"),
    ],
)
def test_invalid_schedules_are_refused(kwargs: dict[str, object], match: str) -> None:
    fields: dict[str, object] = {"name": "s", "workflow": "wf"}
    if "cron" not in kwargs:
        fields["every"] = timedelta(seconds=5)
    fields.update(kwargs)
    with pytest.raises(InvalidInputError, match=match):
        Schedule(**fields)  # type: ignore[arg-type]


def test_record_round_trip() -> None:
    s = Schedule(
        "nightly-report",
        "hello_workflow",
        {"name": "Ada", "n": [1, 2]},
        cron="30 2 * * *",
        timezone="Europe/Amsterdam",
        overlap="allow",
        catch_up=3,
        partition_key="reports",
        paused=True,
        last_invocation_id="nightly-report-20260101T013000",
        last_fired_at=utc(2026, 1, 1, 1, 30, 1),
        created_at=utc(2025, 12, 24),
        catch_up_runs=2,
        last_tick_at=utc(2026, 1, 1, 1, 30),
    )
    back = Schedule.from_json(s.to_json(), revision=7)
    assert back == s and back.revision == 7
    assert back.pattern == "0 30 2 * * *"
    assert back.when == "cron 30 2 * * * (Europe/Amsterdam)"
    d = s.to_dict()
    assert d["every_seconds"] is None and d["last_fired_at"] == "2026-01-01T01:30:01+00:00"
    assert d["last_tick_at"] == "2026-01-01T01:30:00+00:00"
    json.dumps(d)  # JSON-ready
    every = Schedule("tick", "wf", every=timedelta(hours=1, minutes=30))
    assert Schedule.from_json(every.to_json()) == every
    assert every.pattern == "@every 5400s" and every.when == "every 1h30m"


def test_unreadable_records_raise_a_durable_error() -> None:
    with pytest.raises(DurableError, match="unreadable schedule record"):
        Schedule.from_json(b'{"name": "x"}')
    with pytest.raises(DurableError, match="unreadable schedule record"):
        Schedule.from_json(b"not json")


def test_fire_time_before_the_next_one() -> None:
    every = Schedule("e", "wf", every=timedelta(seconds=2))
    assert every.fire_time_before(utc(2026, 1, 1, 0, 0, 10)) == utc(2026, 1, 1, 0, 0, 8)
    cron = Schedule("c", "wf", cron="0 9 * * *", timezone="Europe/Amsterdam")
    # A tick whose next fire is 09:00 CET on Jan 2 stands for 09:00 CET on Jan 1.
    assert cron.fire_time_before(utc(2026, 1, 2, 8)) == utc(2026, 1, 1, 8)
    assert cron.next_fire_after(utc(2026, 1, 1, 8)) == utc(2026, 1, 2, 8)
    assert every.next_fire_after(utc(2026, 1, 1)) is None


def test_invocation_ids_name_the_schedule_and_the_tick_in_utc() -> None:
    at = datetime(2026, 3, 29, 9, 0, 5, tzinfo=AMS)
    assert sched.schedule_invocation_id("report", at) == "report-20260329T070005"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90), ("90s", 90), ("5m", 300), ("1h30m", 5400), ("2d", 172800), (" 1H ", 3600)],
)
def test_parse_duration(text: str, seconds: int) -> None:
    assert sched.parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "s", "1.5s", "5 minutes", "-3s", "1m1h", "1h30", "\u00b2"])
def test_parse_duration_refuses_other_forms(text: str) -> None:
    with pytest.raises(InvalidInputError, match="invalid duration"):
        sched.parse_duration(text)


@pytest.mark.parametrize("text", ["99999999999d", "999999999999999999999999d", "9" * 30])
def test_parse_duration_refuses_what_no_timedelta_holds(text: str) -> None:
    """It raised OverflowError: a traceback from `durable schedule create --every`."""
    with pytest.raises(InvalidInputError, match="out of range"):
        sched.parse_duration(text)


def test_names_of_schedule_subjects_never_meet_timer_subjects() -> None:
    n = Names("durable")
    assert n.schedules_bucket == "durable_schedules"
    assert n.tick_subject("nightly") == "durable.tick.nightly"
    assert n.tick_subjects == "durable.tick.>"
    # Timers are <prefix>.sched.<invocation id>.<suffix>: three tokens after the prefix.
    assert n.cron_subject("start") == "durable.sched.cron.start.spec"
    assert n.cron_subject("start") != n.schedule_subject("cron.start")


# -- operations on a real server -------------------------------------------------------------


@pytest_asyncio.fixture
async def transport(server: NatsServer) -> AsyncIterator[Transport]:
    engine = EngineConfig(prefix="s" + uuid.uuid4().hex[:8], max_payload=4096)
    t = await Transport.connect(NatsConfig.from_url(server.url), engine, create=True)
    try:
        yield t
    finally:
        await t.close()


async def test_create_get_list_pause_resume_delete(transport: Transport) -> None:
    t = transport
    created = await sched.create_schedule(
        t, "every-2s", "hello_workflow", {"name": "Ada"}, every=timedelta(seconds=2)
    )
    assert created.revision > 0 and created.created_at is not None
    assert await t.schedule_armed("every-2s")
    await sched.create_schedule(t, "nightly", "hello_workflow", cron="0 3 * * *", paused=True)
    assert not await t.schedule_armed("nightly")

    assert [s.name for s in await sched.list_schedules(t)] == ["every-2s", "nightly"]
    got = await sched.get_schedule(t, "every-2s")
    assert got == created and got.args == {"name": "Ada"}

    paused = await sched.pause_schedule(t, "every-2s")
    assert paused.paused and (await sched.get_schedule(t, "every-2s")).paused
    assert not await t.schedule_armed("every-2s")
    assert (await sched.pause_schedule(t, "every-2s")).paused  # twice is fine

    resumed = await sched.resume_schedule(t, "every-2s")
    assert not resumed.paused and await t.schedule_armed("every-2s")

    await sched.delete_schedule(t, "every-2s")
    assert await sched.find_schedule(t, "every-2s") is None
    assert not await t.schedule_armed("every-2s")
    assert [s.name for s in await sched.list_schedules(t)] == ["nightly"]


async def test_the_server_fires_an_armed_schedule(transport: Transport) -> None:
    t = transport
    await sched.create_schedule(t, "fast", "hello_workflow", cron="* * * * * *")
    deadline = asyncio.get_running_loop().time() + 5
    while True:  # the tick is stored in the command stream (no core-NATS publish): poll it
        try:
            msg = await t.js.get_last_msg(t.names.command_stream, t.names.tick_subject("fast"))
            break
        except nats.js.errors.NotFoundError:
            assert asyncio.get_running_loop().time() < deadline, "no tick within 5 s"
            await asyncio.sleep(0.1)
    assert msg.headers is not None
    assert msg.headers["Nats-Scheduler"] == t.names.cron_subject("fast")
    next_fire = datetime.fromisoformat(msg.headers["Nats-Schedule-Next"])
    assert abs(next_fire - datetime.now(UTC)) < timedelta(seconds=3)


async def test_unknown_names_and_duplicates(transport: Transport) -> None:
    t = transport
    for op in (sched.get_schedule, sched.pause_schedule, sched.resume_schedule):
        with pytest.raises(NotFoundError, match="no schedule named 'ghost'"):
            await op(t, "ghost")
    with pytest.raises(NotFoundError):
        await sched.delete_schedule(t, "ghost")
    await sched.create_schedule(t, "once", "hello_workflow", every=timedelta(minutes=1))
    with pytest.raises(ConflictError, match="already exists"):
        await sched.create_schedule(t, "once", "other_workflow", every=timedelta(minutes=5))
    assert (await sched.get_schedule(t, "once")).workflow == "hello_workflow"


async def test_refused_schedules_leave_nothing_behind(transport: Transport) -> None:
    t = transport
    with pytest.raises(InvalidInputError, match="invalid cron expression"):
        await sched.create_schedule(t, "bad", "hello_workflow", cron="61 * * * *")
    with pytest.raises(InvalidInputError, match="4096 bytes"):
        await sched.create_schedule(
            t, "big", "hello_workflow", {"blob": "x" * 5000}, every=timedelta(seconds=5)
        )
    assert await sched.list_schedules(t) == []
    assert not await t.schedule_armed("bad")


@pytest.mark.parametrize("paused", [False, True])
async def test_an_interval_over_ten_years_is_refused(transport: Transport, paused: bool) -> None:
    """A paused one was recorded, and its resume refused by the server (past 106,751 days)."""
    t = transport
    longest = sched.MAX_EVERY
    with pytest.raises(InvalidInputError, match="at most 3650 days"):
        await sched.create_schedule(
            t, "long", "hello_workflow", every=longest + timedelta(seconds=1), paused=paused
        )
    assert await sched.list_schedules(t) == []
    made = await sched.create_schedule(t, "long", "hello_workflow", every=longest, paused=paused)
    assert made.every == longest


async def test_a_resume_the_server_refuses_leaves_the_schedule_paused(
    transport: Transport,
) -> None:
    """A paused record of an interval the server refuses (as a version before the limit
    recorded): the resume raised, and left the record active with nothing armed, which the
    scheduler's sweeps then failed to arm, warning for good."""
    t = transport
    made = await sched.create_schedule(t, "huge", "hello_workflow", every=timedelta(1), paused=True)
    await sched.save_schedule(t, replace(made, every=timedelta(days=1_000_000)))
    with pytest.raises(InvalidInputError, match="refused"):
        await sched.resume_schedule(t, "huge")
    assert (await sched.get_schedule(t, "huge")).paused
    assert not await t.schedule_armed("huge")


async def test_a_revision_checked_save_refuses_a_stale_record(transport: Transport) -> None:
    t = transport
    s = await sched.create_schedule(t, "rev", "hello_workflow", every=timedelta(minutes=1))
    await sched.save_schedule(t, Schedule.from_json(s.to_json(), s.revision))
    with pytest.raises(ConflictError, match="changed meanwhile"):
        await sched.save_schedule(t, s)  # still at the old revision


async def test_create_checks_args_against_a_typed_workflow(transport: Transport) -> None:
    async def typed(ctx: object, inp: int) -> int:
        return inp

    with pytest.raises(InvalidInputError, match="do not match the input of typed"):
        await sched.create_schedule(t := transport, "typed", typed, "x", every=timedelta(hours=1))
    s = await sched.create_schedule(t, "typed", typed, 5, every=timedelta(hours=1))
    assert s.workflow == "typed" and s.args == 5


# -- the server agrees with the records ------------------------------------------------------

HOURLY = timedelta(hours=1)


async def test_reconcile_arms_active_schedules_left_disarmed_and_disarms_paused_ones(
    transport: Transport,
) -> None:
    t = transport
    await sched.create_schedule(t, "lost", "hello_workflow", every=HOURLY)
    await sched.create_schedule(t, "fine", "hello_workflow", cron="0 3 * * *", timezone="UTC")
    await sched.create_schedule(t, "idle", "hello_workflow", every=HOURLY, paused=True)
    # As a crash between the record write and the arm leaves it (create or resume) ...
    await t.disarm_schedule("lost")
    # ... and a pause whose disarm never happened.
    await t.arm_schedule("idle", "@every 3600s")

    assert await sched.reconcile_schedules(t) == [("idle", "disarmed"), ("lost", "armed")]
    assert await t.schedule_armed("lost") and await t.schedule_armed("fine")
    assert not await t.schedule_armed("idle")
    assert await sched.reconcile_schedules(t) == []  # in agreement: nothing to do


async def test_reconcile_disarms_a_schedule_the_server_fires_with_no_record(
    transport: Transport,
) -> None:
    """A sweep's arm between a create's record write and its own failed arm (which then
    deleted the record), or an arm that timed out after the server took it: the server fired
    ticks for a name with no record, and the sweep, listing records only, never saw it."""
    t = transport
    await sched.create_schedule(t, "kept", "hello_workflow", every=HOURLY)
    await t.arm_schedule("orphan", "@every 3600s")
    assert await sched.reconcile_schedules(t) == [("orphan", "disarmed")]
    assert not await t.schedule_armed("orphan") and await t.schedule_armed("kept")
    assert await sched.reconcile_schedules(t) == []


async def test_a_create_whose_arm_answer_was_lost_leaves_nothing_armed(
    transport: Transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server took the arm but its answer never came: the create deleted its record and
    failed, and the server fired ticks for a name with no record (until a sweep)."""
    t = transport
    arm = t.arm_schedule

    async def arm_then_lose_the_answer(name: str, pattern: str, **kw: Any) -> None:
        await arm(name, pattern, **kw)
        raise NatsUnavailableError("no answer")

    monkeypatch.setattr(t, "arm_schedule", arm_then_lose_the_answer)
    with pytest.raises(NatsUnavailableError):
        await sched.create_schedule(t, "lost-answer", "hello_workflow", every=HOURLY)
    monkeypatch.undo()
    assert await sched.find_schedule(t, "lost-answer") is None
    assert not await t.schedule_armed("lost-answer")


async def test_reconcile_checks_again_after_a_change_between_its_read_and_its_act(
    transport: Transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    t = transport
    for name in ("paused-meanwhile", "deleted-meanwhile"):
        await sched.create_schedule(t, name, "hello_workflow", every=HOURLY)
        await t.disarm_schedule(name)
    arm, raced = t.arm_schedule, set[str]()

    async def arm_late(name: str, pattern: str, **kw: Any) -> None:
        if name not in raced:  # the record changes after the sweep read it, before it arms
            raced.add(name)
            if name == "paused-meanwhile":
                await sched.pause_schedule(t, name)
            else:
                await sched.delete_schedule(t, name)
        await arm(name, pattern, **kw)

    monkeypatch.setattr(t, "arm_schedule", arm_late)
    assert await sched.reconcile_schedules(t) == [
        ("deleted-meanwhile", "armed"),
        ("deleted-meanwhile", "disarmed"),
        ("paused-meanwhile", "armed"),
        ("paused-meanwhile", "disarmed"),
    ]
    assert not await t.schedule_armed("paused-meanwhile")
    assert not await t.schedule_armed("deleted-meanwhile")
    assert (await sched.get_schedule(t, "paused-meanwhile")).paused


async def test_resume_arms_again_when_a_racing_pause_disarms_after_it(
    transport: Transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    t = transport
    await sched.create_schedule(t, "race", "hello_workflow", every=HOURLY, paused=True)
    arm, disarms = t.arm_schedule, list[str]()

    async def arm_then_late_disarm(name: str, pattern: str, **kw: Any) -> None:
        await arm(name, pattern, **kw)
        if not disarms:  # the pause that wrote its record before the resume's lands its disarm
            disarms.append(name)
            await t.disarm_schedule(name)

    monkeypatch.setattr(t, "arm_schedule", arm_then_late_disarm)
    resumed = await sched.resume_schedule(t, "race")
    assert disarms == ["race"]
    assert not resumed.paused and not (await sched.get_schedule(t, "race")).paused
    assert await t.schedule_armed("race")


async def test_pause_arms_again_when_a_racing_resume_wrote_after_it(
    transport: Transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    t = transport
    await sched.create_schedule(t, "race", "hello_workflow", every=HOURLY)
    disarm, resumed = t.disarm_schedule, list[Schedule]()

    async def resume_then_disarm(name: str) -> None:
        if not resumed:  # after the pause's record write, a resume writes and arms ...
            resumed.append(await sched.resume_schedule(t, name))
        await disarm(name)  # ... and only then does the pause's disarm land

    monkeypatch.setattr(t, "disarm_schedule", resume_then_disarm)
    await sched.pause_schedule(t, "race")
    assert resumed and not (await sched.get_schedule(t, "race")).paused
    assert await t.schedule_armed("race")


async def test_racing_pauses_resumes_and_sweeps_leave_the_server_in_agreement(
    transport: Transport,
) -> None:
    t = transport
    await sched.create_schedule(t, "busy", "hello_workflow", every=HOURLY)
    for round_ in range(8):
        ops = [
            sched.pause_schedule(t, "busy"),
            sched.resume_schedule(t, "busy"),
            sched.reconcile_schedules(t),
            sched.pause_schedule(t, "busy"),
            sched.resume_schedule(t, "busy"),
        ]
        order = ops[round_ % 5 :] + ops[: round_ % 5]
        await asyncio.gather(*order)
        record = await sched.get_schedule(t, "busy")
        assert await t.schedule_armed("busy") == (not record.paused), round_


# -- CLI ---------------------------------------------------------------------------------------


def _cli(server: NatsServer, transport: Transport) -> Callable[..., Awaitable[int]]:
    """``durable schedule ARGV`` in-process (in a thread: it runs its own event loop)."""
    base = ["--nats-url", server.url, "--prefix", transport.engine.prefix, "schedule"]

    async def cli(*argv: str) -> int:
        return await asyncio.to_thread(main, [*base, *argv])

    return cli


async def test_cli_actions(
    transport: Transport, server: NatsServer, capsys: pytest.CaptureFixture[str]
) -> None:
    cli = _cli(server, transport)

    # No processor runs here: the schedules are created for one that will come (--queue).
    assert (
        await cli("create", "greet", "--workflow", "hello_workflow", "--every", "2s", "--queue")
        == 0
    )
    out = capsys.readouterr().out
    assert "schedule greet created (next fire 20" in out and "every 2s -> hello_workflow" in out

    assert (
        await cli(
            "create",
            "cron-job",
            "--workflow",
            "hello_workflow",
            "--cron",
            "*/5 * * * *",
            "--args",
            '{"name": "Ada"}',
            "--timezone",
            "Europe/Amsterdam",
            "--overlap",
            "allow",
            "--queue",
            "--catch-up",
            "0",
            "--partition-key",
            "k",
            "--json",
        )
        == 0
    )
    doc = json.loads(capsys.readouterr().out)
    assert doc["args"] == {"name": "Ada"} and doc["overlap"] == "allow" and doc["catch_up"] == 0

    assert await cli("list", "--json") == 0
    listed = json.loads(capsys.readouterr().out)["schedules"]
    assert [s["name"] for s in listed] == ["cron-job", "greet"]
    assert all(s["next_fire_at"] for s in listed)
    assert await cli("list") == 0
    header, *rows = capsys.readouterr().out.splitlines()
    assert header.split()[:3] == ["NAME", "WORKFLOW", "WHEN"] and "NEXT FIRE" in header
    table = "\n".join(rows)
    assert (
        "greet" in table and "every 2s" in table and "cron */5 * * * * (Europe/Amsterdam)" in table
    )

    assert await cli("pause", "greet") == 0
    assert (await sched.get_schedule(transport, "greet")).paused
    assert await cli("resume", "greet") == 0
    assert not (await sched.get_schedule(transport, "greet")).paused
    assert await cli("delete", "greet") == 0
    assert "schedule greet deleted" in capsys.readouterr().out
    assert await sched.find_schedule(transport, "greet") is None


async def test_cli_exit_codes(
    transport: Transport, server: NatsServer, capsys: pytest.CaptureFixture[str]
) -> None:
    cli = _cli(server, transport)

    assert await cli("create", "x", "--workflow", "wf", "--cron", "* * * 13 *") == 2
    assert "invalid cron expression '* * * 13 *': month field" in capsys.readouterr().err
    assert await cli("create", "x", "--workflow", "wf", "--every", "soon") == 2
    assert "invalid duration" in capsys.readouterr().err
    assert await cli("create", "x", "--workflow", "wf", "--every", "99999999999d") == 2
    assert "out of range" in capsys.readouterr().err
    assert await cli("create", "x", "--workflow", "wf", "--every", "3651d", "--queue") == 2
    assert "at most 3650 days" in capsys.readouterr().err
    assert await cli("create", "x", "--workflow", "wf", "--every", "1s", "--args", "{") == 2
    for action in ("pause", "resume", "delete"):
        assert await cli(action, "ghost") == 4
        assert "not found: no schedule named 'ghost'" in capsys.readouterr().err
    assert await cli("create", "dup", "--workflow", "wf", "--every", "1m") == 2  # nobody serves wf
    assert "no live processor serves workflow 'wf'" in capsys.readouterr().err
    assert await cli("create", "dup", "--workflow", "wf", "--every", "1m", "--queue") == 0
    assert await cli("create", "dup", "--workflow", "wf", "--every", "1m", "--queue") == 6
    assert "already exists" in capsys.readouterr().err
    assert await cli("create", "x", "--workflow", "wf") == 2  # one of --cron/--every
    assert "give exactly one of --cron and --every" in capsys.readouterr().err


def test_next_fire_for_people() -> None:
    every = Schedule("e", "wf", every=timedelta(seconds=10), created_at=utc(2026, 1, 1, 0, 0, 3))
    assert every.next_fire(utc(2026, 1, 1, 0, 0, 30)) == utc(2026, 1, 1, 0, 0, 33)
    ran = replace(every, last_fired_at=utc(2026, 1, 1, 0, 0, 25))
    assert ran.next_fire(utc(2026, 1, 1, 0, 0, 30)) == utc(2026, 1, 1, 0, 0, 35)
    cron = Schedule("c", "wf", cron="0 8 * * *")
    assert cron.next_fire(utc(2026, 1, 1, 9)) == utc(2026, 1, 2, 8)
    assert replace(cron, paused=True).next_fire(utc(2026, 1, 1, 9)) is None
