"""Cron expressions as the NATS server reads them, validated and evaluated locally (pure).

The server fires schedules itself (JetStream message scheduling, ``Nats-Schedule``); it takes a
6-field cron expression with seconds first (``sec min hour day-of-month month day-of-week``) or
a macro (``@hourly``, ``@daily``, ...), and refuses the message when the pattern is invalid or
never fires. This module accepts what the server accepts, plus the usual 5-field form (seconds
0), so a bad expression is refused at intake with a message that says what is wrong, and it
computes fire times for the scheduler (which tick a message stands for) and for listings.

Field syntax, as in the server (robfig/cron): a comma-separated list of ``*`` or ``?`` (any),
``N``, ``N-M``, each with an optional ``/STEP``; ``N/STEP`` means ``N-max/STEP``. Months take
``jan``-``dec``, days of the week ``sun``-``sat`` (0-6; 7 is not accepted). When both day fields
are restricted, a day matches either (classic cron); when one is ``*``, both must match.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo

from durable_core.errors import InvalidInputError

__all__ = ["MACROS", "CronExpr"]

# The server's macros and what they stand for.
MACROS = {
    "@yearly": "0 0 0 1 1 *",
    "@annually": "0 0 0 1 1 *",
    "@monthly": "0 0 0 1 * *",
    "@weekly": "0 0 0 * * 0",
    "@daily": "0 0 0 * * *",
    "@midnight": "0 0 0 * * *",
    "@hourly": "0 0 * * * *",
}

_MONTHS = {
    name: number
    for number, name in enumerate(
        ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"),
        start=1,
    )
}
_WEEKDAYS = {
    name: number for number, name in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))
}

# (name, min, max, names) of the six fields, seconds first.
_FIELDS: tuple[tuple[str, int, int, dict[str, int] | None], ...] = (
    ("second", 0, 59, None),
    ("minute", 0, 59, None),
    ("hour", 0, 23, None),
    ("day of month", 1, 31, None),
    ("month", 1, 12, _MONTHS),
    ("day of week", 0, 6, _WEEKDAYS),
)
_NUMBER = re.compile(r"[0-9]{1,4}")
# The server gives up looking for the next fire time after five years; so do we.
_SEARCH_DAYS = 5 * 366 + 1


def _bad(text: str, why: str) -> InvalidInputError:
    return InvalidInputError(
        f"invalid cron expression {text!r}: {why} (use 5 fields: minute hour day-of-month "
        "month day-of-week, or 6 with seconds first, or @hourly, @daily, ...; '*/5 * * * *' "
        "is every 5 minutes)"
    )


def _value(text: str, token: str, field: str, names: dict[str, int] | None) -> int:
    if names is not None and token.lower() in names:
        return names[token.lower()]
    if not _NUMBER.fullmatch(token):
        hint = f" (or a name: {', '.join(names)})" if names else ""
        raise _bad(text, f"{field} field: {token!r} is not a number{hint}")
    return int(token)


def _parse_field(
    text: str, spec: str, field: str, low: int, high: int, names: dict[str, int] | None
) -> tuple[frozenset[int], bool]:
    """The values a field allows, and whether it was ``*``/``?`` without a step (the 'star')."""
    values: set[int] = set()
    star = False
    for part in spec.split(","):
        if not part:
            raise _bad(text, f"{field} field {spec!r} has an empty list item")
        range_text, slash, step_text = part.partition("/")
        if slash and not _NUMBER.fullmatch(step_text):
            raise _bad(text, f"{field} field: step {step_text!r} in {part!r} is not a number")
        step = int(step_text) if slash else 1
        if step == 0:
            raise _bad(text, f"{field} field: the step in {part!r} must be at least 1")
        if range_text in ("*", "?"):
            start, end = low, high
            star = star or step == 1
        else:
            first, dash, last = range_text.partition("-")
            start = _value(text, first, field, names)
            end = _value(text, last, field, names) if dash else (high if slash else start)
            if field == "day of week" and 7 in (start, end):
                raise _bad(text, "day of week 7 is not accepted: use 0 or sun for Sunday")
            if start < low or end > high:
                raise _bad(text, f"{field} field: {part!r} is outside {low}-{high}")
            if start > end:
                raise _bad(text, f"{field} field: range {part!r} runs backwards")
        values.update(range(start, end + 1, step))
    return frozenset(values), star


@dataclass(frozen=True, slots=True)
class CronExpr:
    """A parsed cron expression. Build it with :meth:`parse`.

    Attributes:
        text: the expression as given.
        pattern: what the server is sent (6 fields with seconds, or the macro).
    """

    text: str
    pattern: str
    seconds: frozenset[int]
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    days_star: bool
    weekdays_star: bool

    @classmethod
    def parse(cls, text: str) -> CronExpr:
        """Parse and validate; InvalidInputError says what is wrong."""
        if not isinstance(text, str) or not text.strip():
            raise InvalidInputError("a cron expression is a non-empty string, e.g. '0 * * * *'")
        stripped = text.strip()
        if stripped.startswith("@"):
            if stripped.startswith("@every"):
                raise _bad(text, "for a fixed interval give every=timedelta (--every 30s)")
            if stripped not in MACROS:
                raise _bad(text, f"unknown macro {stripped!r}")
            fields = MACROS[stripped].split()
            pattern = stripped
        else:
            fields = stripped.split()
            if len(fields) == 5:
                fields = ["0", *fields]
            elif len(fields) != 6:
                raise _bad(text, f"it has {len(fields)} fields")
            pattern = " ".join(fields)
        parsed = [
            _parse_field(text, spec, name, low, high, names)
            for spec, (name, low, high, names) in zip(fields, _FIELDS, strict=True)
        ]
        expr = cls(
            text=text,
            pattern=pattern,
            seconds=parsed[0][0],
            minutes=parsed[1][0],
            hours=parsed[2][0],
            days=parsed[3][0],
            months=parsed[4][0],
            weekdays=parsed[5][0],
            days_star=parsed[3][1],
            weekdays_star=parsed[5][1],
        )
        if expr.next_after(datetime.now(UTC), UTC) is None:
            raise _bad(text, "it never fires (no matching date in the next five years)")
        return expr

    def _day_matches(self, d: date) -> bool:
        if d.month not in self.months:
            return False
        in_month = d.day in self.days
        in_week = (d.isoweekday() % 7) in self.weekdays  # cron: 0 = Sunday
        if self.days_star or self.weekdays_star:
            return in_month and in_week
        return in_month or in_week

    def _times(self, bound: time, reverse: bool) -> Iterator[time]:
        """Matching times of day from ``bound`` on (or back), nearest first."""
        b = (bound.hour, bound.minute, bound.second)
        for h in sorted(self.hours, reverse=reverse):
            if (h < b[0]) if not reverse else (h > b[0]):
                continue
            for m in sorted(self.minutes, reverse=reverse):
                if h == b[0] and ((m < b[1]) if not reverse else (m > b[1])):
                    continue
                for s in sorted(self.seconds, reverse=reverse):
                    if (h, m) == b[:2] and ((s < b[2]) if not reverse else (s > b[2])):
                        continue
                    yield time(h, m, s)

    def next_after(self, moment: datetime, tz: tzinfo) -> datetime | None:
        """The first fire time strictly after ``moment`` (aware, UTC), or None within 5 years.

        ``tz`` is the zone the fields are read in. A local time that a daylight-saving change
        skips or repeats is read as zoneinfo reads it (fold 0); a result is always later than
        ``moment``.
        """
        local = moment.astimezone(tz).replace(tzinfo=None, microsecond=0)
        day, bound = local.date(), local.time()
        for _ in range(_SEARCH_DAYS):
            if self._day_matches(day):
                for t in self._times(bound, reverse=False):
                    candidate = datetime.combine(day, t).replace(tzinfo=tz).astimezone(UTC)
                    if candidate > moment:
                        return candidate
            day, bound = day + timedelta(days=1), time(0, 0, 0)
        return None

    def last_before(self, moment: datetime, tz: tzinfo) -> datetime | None:
        """The last fire time strictly before ``moment`` (aware, UTC), or None within 5 years."""
        local = moment.astimezone(tz).replace(tzinfo=None, microsecond=0)
        day, bound = local.date(), local.time()
        for _ in range(_SEARCH_DAYS):
            if self._day_matches(day):
                for t in self._times(bound, reverse=True):
                    candidate = datetime.combine(day, t).replace(tzinfo=tz).astimezone(UTC)
                    if candidate < moment:
                        return candidate
            day, bound = day - timedelta(days=1), time(23, 59, 59)
        return None
