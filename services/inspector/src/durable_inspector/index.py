"""The in-memory index of executions, kept up to date by the state bucket's watch.

Pure bookkeeping (no asyncio, no NATS), so it is unit-tested with synthetic summaries and
benchmarked on its own. Every change costs O(log n) plus a list insertion (a memmove; microseconds
at 100,000 entries); a listing walks only as far as the page it returns:

* ``_by_status``, ``_by_workflow``, ``_by_key``: sets of ids per status, workflow and partition
  key, so filters intersect small sets instead of testing every execution;
* ``_order[sort]``: ``(milliseconds, id)`` tuples kept sorted for ``created_at`` and
  ``updated_at``; pages start at a bisected position (keyset pagination: the cursor is the last
  row's sort key, so pages stay stable while executions are added). The first snapshot appends
  and sorts once (insertion one by one would be O(n^2) memmove at 100,000 executions);
* ``_counts``: executions per ``(workflow, status)``, for the stats.
"""

from __future__ import annotations

import base64
import binascii
import json
from bisect import bisect_left, bisect_right, insort
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from durable_core import ExecutionSummary, InvalidInputError, Status

__all__ = [
    "Change",
    "Entry",
    "ExecutionIndex",
    "Page",
    "Query",
    "SortKey",
    "Transition",
]

SortKey = Literal["created_at", "updated_at"]
SORT_KEYS: tuple[SortKey, ...] = ("created_at", "updated_at")
MAX_HISTORY = 100  # status transitions kept per execution
MAX_LIMIT = 500
# A cursor is base64 of [sort, ms, id] (an id is at most 128 characters): far below this.
MAX_CURSOR = 1024


def _ms(value: datetime | None) -> int:
    return int(value.timestamp() * 1000) if value is not None else 0


@dataclass(frozen=True, slots=True)
class Transition:
    """A status the watch saw an execution take, and when (the state's ``updated_at``)."""

    status: Status
    at: datetime | None


@dataclass(slots=True)
class Entry:
    """One execution in the index: its latest summary and the statuses it went through.

    ``rendered`` is free for the views to cache the entry's JSON in; every change clears it.
    """

    summary: ExecutionSummary
    history: list[Transition] = field(default_factory=list)
    rendered: bytes | None = None

    @property
    def id(self) -> str:
        """The execution's invocation id."""
        return self.summary.invocation_id

    def key(self, sort: SortKey) -> tuple[int, str]:
        """The entry's position in a listing sorted by ``sort`` (time, then id)."""
        s = self.summary
        return (_ms(s.created_at if sort == "created_at" else s.updated_at), s.invocation_id)


@dataclass(frozen=True, slots=True)
class Change:
    """What one applied summary changed: ``upsert`` (with the entry) or ``deleted``."""

    kind: Literal["upsert", "deleted"]
    invocation_id: str
    entry: Entry | None = None
    previous_status: Status | None = None


@dataclass(frozen=True, slots=True)
class Query:
    """A listing request. Times bound ``created_at``: ``created_after <= t < created_before``."""

    statuses: frozenset[Status] | None = None
    workflow: str | None = None
    partition_key: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    sort: SortKey = "created_at"
    order: Literal["asc", "desc"] = "desc"
    limit: int = 50
    cursor: str | None = None


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a listing; ``total`` counts every match, ``next_cursor`` is None at the end."""

    items: list[Entry]
    total: int
    next_cursor: str | None


def encode_cursor(sort: SortKey, key: tuple[int, str]) -> str:
    raw = json.dumps([sort, key[0], key[1]], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, sort: SortKey) -> tuple[int, str]:
    """The sort key a cursor points after.

    Raises:
        InvalidInputError: the cursor is malformed or belongs to another sort order.
    """
    try:
        if len(cursor) > MAX_CURSOR:
            raise ValueError("cursor too long")
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        cur_sort, ms, ident = json.loads(raw)
        if not isinstance(ms, int) or not isinstance(ident, str):
            raise ValueError("bad cursor fields")
    # RecursionError: deep nesting ('[[[[...'); ValueError covers UnicodeDecodeError and
    # integers of too many digits.
    except (ValueError, TypeError, binascii.Error, RecursionError) as e:
        raise InvalidInputError(
            f"cursor {cursor[:100]!r}{'...' if len(cursor) > 100 else ''} is malformed; "
            "pass next_cursor as given"
        ) from e
    if cur_sort != sort:
        raise InvalidInputError(
            f"cursor was made for sort={cur_sort}, not sort={sort}; start again without cursor"
        )
    return ms, ident


class ExecutionIndex:
    """Executions by id, with the sets and sorted orders that listings and stats need."""

    def __init__(self) -> None:
        self._by_id: dict[str, Entry] = {}
        self._by_status: dict[Status, set[str]] = {s: set() for s in Status}
        self._by_workflow: dict[str, set[str]] = {}
        self._by_key: dict[str, set[str]] = {}
        self._order: dict[SortKey, list[tuple[int, str]]] = {k: [] for k in SORT_KEYS}
        self._counts: Counter[tuple[str, Status]] = Counter()
        self._seen: set[str] | None = None
        self._unsorted = False  # _order holds appended keys, sorted on first use
        self.ready = False  # True once a snapshot of the bucket has been applied

    def __len__(self) -> int:
        return len(self._by_id)

    def __contains__(self, invocation_id: object) -> bool:
        return invocation_id in self._by_id

    def get(self, invocation_id: str) -> Entry | None:
        """The entry of ``invocation_id``, or None."""
        return self._by_id.get(invocation_id)

    # -- feeding ---------------------------------------------------------------------------

    def begin_snapshot(self) -> None:
        """A (re)started watch replays every execution; note which ones it brings."""
        self._seen = set()
        if not self._by_id:
            self._unsorted = True

    def end_snapshot(self) -> list[str]:
        """The replay is complete: forget executions it did not bring (deleted meanwhile).

        Returns:
            The ids removed.
        """
        seen, self._seen = self._seen, None
        gone = [i for i in self._by_id if seen is not None and i not in seen]
        for invocation_id in gone:
            self._remove(invocation_id)
        self._sorted()
        self.ready = True
        return gone

    def apply(self, summary: ExecutionSummary) -> Change | None:
        """Apply one summary from the watch; None when it changes nothing (stale or repeated)."""
        invocation_id = summary.invocation_id
        if summary.deleted:
            if self._seen is not None:
                self._seen.discard(invocation_id)
            if invocation_id not in self._by_id:
                return None
            self._remove(invocation_id)
            return Change("deleted", invocation_id)
        if self._seen is not None:
            self._seen.add(invocation_id)
        old = self._by_id.get(invocation_id)
        if old is None:
            entry = Entry(summary, [Transition(summary.status, summary.updated_at)])
            self._add(entry)
            return Change("upsert", invocation_id, entry, None)
        prev = old.summary
        # A restarted watch replays what we have; revisions only grow (0 = unknown, synthetic).
        if summary.revision and prev.revision and summary.revision <= prev.revision:
            return None
        self._unlink(prev)
        old.summary = summary
        old.rendered = None
        if summary.status != prev.status:
            old.history.append(Transition(summary.status, summary.updated_at))
            del old.history[:-MAX_HISTORY]
        self._link(old)
        return Change("upsert", invocation_id, old, prev.status)

    def _add(self, entry: Entry) -> None:
        self._by_id[entry.id] = entry
        self._link(entry)

    def _remove(self, invocation_id: str) -> None:
        entry = self._by_id.pop(invocation_id)
        self._unlink(entry.summary)

    def _link(self, entry: Entry) -> None:
        s = entry.summary
        self._by_status[s.status].add(s.invocation_id)
        self._by_workflow.setdefault(s.workflow, set()).add(s.invocation_id)
        self._by_key.setdefault(s.partition_key, set()).add(s.invocation_id)
        self._counts[(s.workflow, s.status)] += 1
        for sort in SORT_KEYS:
            if self._unsorted:
                self._order[sort].append(entry.key(sort))
            else:
                insort(self._order[sort], entry.key(sort))

    def _unlink(self, s: ExecutionSummary) -> None:
        ident = s.invocation_id
        self._by_status[s.status].discard(ident)
        _discard(self._by_workflow, s.workflow, ident)
        _discard(self._by_key, s.partition_key, ident)
        self._counts[(s.workflow, s.status)] -= 1
        if self._counts[(s.workflow, s.status)] <= 0:
            del self._counts[(s.workflow, s.status)]
        self._sorted()
        probe = Entry(s)
        for sort in SORT_KEYS:
            keys = self._order[sort]
            key = probe.key(sort)
            i = bisect_left(keys, key)
            if i < len(keys) and keys[i] == key:
                del keys[i]

    # -- reading ---------------------------------------------------------------------------

    def workflows(self) -> list[str]:
        """The workflows with at least one execution, sorted."""
        return sorted(w for w, ids in self._by_workflow.items() if ids)

    def stats(self) -> dict[str, Any]:
        """Counts by status, and by workflow (total and by status)."""
        totals: Counter[str] = Counter()
        by_status: dict[str, dict[str, int]] = {}
        for (workflow, status), n in sorted(self._counts.items()):
            totals[workflow] += n
            by_status.setdefault(workflow, {})[status.value] = n
        return {
            "total": len(self._by_id),
            "by_status": {s.value: len(ids) for s, ids in self._by_status.items()},
            "by_workflow": {
                w: {"total": totals[w], "by_status": by_status[w]} for w in sorted(totals)
            },
        }

    def query(self, q: Query) -> Page:
        """The page of executions matching ``q``.

        Raises:
            InvalidInputError: bad limit or cursor.
        """
        if not 1 <= q.limit <= MAX_LIMIT:
            raise InvalidInputError(f"limit must be 1..{MAX_LIMIT}, not {q.limit}")
        self._sorted()
        after = decode_cursor(q.cursor, q.sort) if q.cursor else None
        lo = _ms(q.created_after) if q.created_after is not None else None
        hi = _ms(q.created_before) if q.created_before is not None else None
        candidates = self._candidates(q)
        ranged = lo is not None or hi is not None

        def in_range(ident: str) -> bool:
            ms = _ms(self._by_id[ident].summary.created_at)
            return (lo is None or ms >= lo) and (hi is None or ms < hi)

        def anything(_: str) -> bool:
            return True

        ok: Callable[[str], bool]
        if candidates is not None and _sort_candidates(len(candidates), len(self._by_id), q.limit):
            keys = sorted(
                self._by_id[i].key(q.sort) for i in candidates if not ranged or in_range(i)
            )
            total = len(keys)
            rows = _walk(keys, 0, len(keys), after, q.order, anything)
        else:
            keys = self._order[q.sort]
            start, stop = 0, len(keys)
            if q.sort == "created_at" and ranged:
                start, stop = self._created_bounds(lo, hi)  # the range is a slice of the order
                ok = anything if candidates is None else candidates.__contains__
            elif candidates is None:
                ok = in_range if ranged else anything
            elif ranged:
                members = candidates

                def ok(ident: str) -> bool:
                    return ident in members and in_range(ident)
            else:
                ok = candidates.__contains__
            total = self._total(candidates, lo, hi, in_range)
            rows = _walk(keys, start, stop, after, q.order, ok)
        page = [self._by_id[ident] for _, ident in _take(rows, q.limit + 1)]
        more = len(page) > q.limit
        del page[q.limit :]
        cursor = encode_cursor(q.sort, page[-1].key(q.sort)) if more else None
        return Page(page, total, cursor)

    def _sorted(self) -> None:
        if self._unsorted:
            for keys in self._order.values():
                keys.sort()
            self._unsorted = False

    def _candidates(self, q: Query) -> set[str] | None:
        """Ids allowed by the set-based filters (None: no such filter)."""
        sets: list[set[str]] = []
        if q.statuses is not None:
            chosen = [self._by_status[s] for s in q.statuses]
            sets.append(chosen[0] if len(chosen) == 1 else set().union(*chosen))
        if q.workflow is not None:
            sets.append(self._by_workflow.get(q.workflow, set()))
        if q.partition_key is not None:
            sets.append(self._by_key.get(q.partition_key, set()))
        if not sets:
            return None
        sets.sort(key=len)
        result = sets[0]
        for other in sets[1:]:
            result = result & other  # never mutates the index's own sets
        return result

    def _created_bounds(self, lo: int | None, hi: int | None) -> tuple[int, int]:
        keys = self._order["created_at"]
        start = bisect_left(keys, (lo, "")) if lo is not None else 0
        stop = bisect_left(keys, (hi, "")) if hi is not None else len(keys)
        return start, max(start, stop)

    def _total(
        self,
        candidates: set[str] | None,
        lo: int | None,
        hi: int | None,
        in_range: Callable[[str], bool],
    ) -> int:
        if candidates is None:
            if lo is None and hi is None:
                return len(self._by_id)
            start, stop = self._created_bounds(lo, hi)
            return stop - start
        if lo is None and hi is None:
            return len(candidates)
        return sum(1 for i in candidates if in_range(i))


def _sort_candidates(matches: int, everything: int, limit: int) -> bool:
    """Sort the filtered ids, or walk the sorted order and skip the others (about
    limit * everything / matches steps for a page)? Sorting costs ~16 walk steps per id (a key
    built in Python, then log n comparisons); measured with bench/inspector_list.py."""
    return 16 * matches * matches < limit * everything


def _discard(index: dict[str, set[str]], key: str, ident: str) -> None:
    ids = index.get(key)
    if ids is not None:
        ids.discard(ident)
        if not ids:
            del index[key]


def _walk(
    keys: list[tuple[int, str]],
    start: int,
    stop: int,
    after: tuple[int, str] | None,
    order: str,
    ok: Callable[[str], bool],
) -> Iterator[tuple[int, str]]:
    """Keys in ``keys[start:stop]`` past the cursor, in ``order``, that ``ok(id)`` accepts."""
    if order == "asc":
        if after is not None:
            start = max(start, bisect_right(keys, after))
        indices: Iterable[int] = range(start, stop)
    else:
        if after is not None:
            stop = min(stop, bisect_left(keys, after))
        indices = range(stop - 1, start - 1, -1)
    for i in indices:
        key = keys[i]
        if ok(key[1]):
            yield key


def _take(rows: Iterator[tuple[int, str]], n: int) -> list[tuple[int, str]]:
    out = []
    for row in rows:
        out.append(row)
        if len(out) >= n:
            break
    return out
