"""The execution index: filters, sorting, cursor pages, stats, updates, deletes, snapshots."""

from __future__ import annotations

import base64
import random
from datetime import timedelta

import pytest

from durable_core import Failure, InvalidInputError, Status
from durable_inspector.index import ExecutionIndex, Query, decode_cursor

from ._fakes import T0, deleted, summary


def ids(index: ExecutionIndex, **query: object) -> list[str]:
    return [e.id for e in index.query(Query(**query)).items]  # type: ignore[arg-type]


def all_pages(index: ExecutionIndex, **query: object) -> list[str]:
    """Every match, page by page, following next_cursor."""
    out: list[str] = []
    cursor = None
    for _ in range(10_000):
        page = index.query(Query(cursor=cursor, **query))  # type: ignore[arg-type]
        out += [e.id for e in page.items]
        cursor = page.next_cursor
        if cursor is None:
            return out
    raise AssertionError("pages never ended")


@pytest.fixture
def index() -> ExecutionIndex:
    idx = ExecutionIndex()
    idx.begin_snapshot()
    rows = [
        ("a", "orders", Status.RUNNING, 1, 50, "k1"),
        ("b", "orders", Status.COMPLETED, 2, 10, "k1"),
        ("c", "hello", Status.COMPLETED, 3, 30, "k2"),
        ("d", "hello", Status.FAILED, 4, 20, "k2"),
        ("e", "orders", Status.PENDING, 5, 5, "k3"),
    ]
    for ident, wf, status, created, updated, key in rows:
        idx.apply(
            summary(ident, workflow=wf, status=status, created=created, updated=updated, key=key)
        )
    assert idx.end_snapshot() == []
    return idx


def test_default_listing_is_newest_created_first(index: ExecutionIndex) -> None:
    assert ids(index) == ["e", "d", "c", "b", "a"]
    assert ids(index, order="asc") == ["a", "b", "c", "d", "e"]


def test_sorting_by_updated_at(index: ExecutionIndex) -> None:
    assert ids(index, sort="updated_at") == ["a", "c", "d", "b", "e"]
    assert ids(index, sort="updated_at", order="asc") == ["e", "b", "d", "c", "a"]


def test_filters_by_status_workflow_and_partition_key(index: ExecutionIndex) -> None:
    assert ids(index, statuses=frozenset({Status.COMPLETED})) == ["c", "b"]
    assert ids(index, statuses=frozenset({Status.COMPLETED, Status.FAILED})) == ["d", "c", "b"]
    assert ids(index, workflow="orders") == ["e", "b", "a"]
    assert ids(index, partition_key="k2") == ["d", "c"]
    assert ids(index, workflow="orders", statuses=frozenset({Status.COMPLETED})) == ["b"]
    assert ids(index, workflow="nope") == []
    assert ids(index, statuses=frozenset({Status.CANCELLED})) == []


def test_created_range_is_after_inclusive_before_exclusive(index: ExecutionIndex) -> None:
    after, before = T0 + timedelta(seconds=2), T0 + timedelta(seconds=4)
    assert ids(index, created_after=after, created_before=before) == ["c", "b"]
    assert ids(index, created_after=after, created_before=before, sort="updated_at") == ["c", "b"]
    assert ids(index, created_after=after, workflow="orders") == ["e", "b"]
    page = index.query(Query(created_after=after, created_before=before))
    assert page.total == 2


def test_pages_follow_the_cursor_without_gaps_or_repeats(index: ExecutionIndex) -> None:
    first = index.query(Query(limit=2))
    assert [e.id for e in first.items] == ["e", "d"] and first.total == 5
    assert first.next_cursor is not None
    assert all_pages(index, limit=2) == ["e", "d", "c", "b", "a"]
    assert all_pages(index, limit=2, order="asc", sort="updated_at") == ["e", "b", "d", "c", "a"]
    last = index.query(Query(limit=5))
    assert last.next_cursor is None


def test_a_cursor_stays_valid_while_executions_arrive(index: ExecutionIndex) -> None:
    first = index.query(Query(limit=2))  # e, d
    index.apply(summary("z", created=100))  # newer than everything: lands before the cursor
    second = index.query(Query(limit=2, cursor=first.next_cursor))
    assert [e.id for e in second.items] == ["c", "b"]


def test_bad_cursor_and_limit_are_invalid_input(index: ExecutionIndex) -> None:
    with pytest.raises(InvalidInputError, match="malformed"):
        index.query(Query(cursor="not-a-cursor"))
    cursor = index.query(Query(limit=1)).next_cursor
    with pytest.raises(InvalidInputError, match="sort=created_at"):
        index.query(Query(cursor=cursor, sort="updated_at"))
    with pytest.raises(InvalidInputError, match="limit"):
        index.query(Query(limit=0))


def test_an_update_moves_the_execution_and_records_its_history(index: ExecutionIndex) -> None:
    change = index.apply(
        summary("a", workflow="orders", status=Status.COMPLETED, created=1, updated=60, revision=2)
    )
    assert change is not None and change.previous_status == Status.RUNNING
    assert ids(index, statuses=frozenset({Status.RUNNING})) == []
    assert ids(index, statuses=frozenset({Status.COMPLETED}), sort="updated_at") == ["a", "c", "b"]
    entry = index.get("a")
    assert entry is not None
    assert [t.status for t in entry.history] == [Status.RUNNING, Status.COMPLETED]
    assert entry.history[-1].at == T0 + timedelta(seconds=60)


def test_stale_or_repeated_revisions_change_nothing(index: ExecutionIndex) -> None:
    index.apply(summary("a", status=Status.COMPLETED, created=1, revision=5))
    assert index.apply(summary("a", status=Status.RUNNING, created=1, revision=4)) is None
    assert index.apply(summary("a", status=Status.COMPLETED, created=1, revision=5)) is None
    entry = index.get("a")
    assert entry is not None and entry.summary.status == Status.COMPLETED


def test_delete_removes_it_everywhere(index: ExecutionIndex) -> None:
    change = index.apply(deleted("b"))
    assert change is not None and change.kind == "deleted"
    assert "b" not in index and len(index) == 4
    assert ids(index, workflow="orders") == ["e", "a"]
    assert ids(index, sort="updated_at") == ["a", "c", "d", "e"]
    assert index.stats()["by_status"]["completed"] == 1
    assert index.apply(deleted("b")) is None  # already gone


def test_a_new_snapshot_drops_executions_deleted_meanwhile(index: ExecutionIndex) -> None:
    index.begin_snapshot()
    for ident in ("a", "c", "d", "e"):
        index.apply(summary(ident, created=1, revision=1))
    assert sorted(index.end_snapshot()) == ["b"]
    assert "b" not in index and len(index) == 4


def test_queries_during_the_first_snapshot_see_a_sorted_order() -> None:
    idx = ExecutionIndex()
    idx.begin_snapshot()
    for ident, created in (("m", 5), ("n", 1), ("o", 3)):
        idx.apply(summary(ident, created=created))
    assert ids(idx, order="asc") == ["n", "o", "m"]  # sorted on first use
    idx.apply(summary("p", created=2))
    idx.apply(deleted("o"))
    assert idx.end_snapshot() == []
    assert ids(idx, order="asc") == ["n", "p", "m"]
    assert ids(idx, sort="updated_at") == ["m", "p", "n"]


def test_stats_by_status_and_workflow(index: ExecutionIndex) -> None:
    stats = index.stats()
    assert stats["total"] == 5
    expected = {"pending": 1, "running": 1, "completed": 2, "failed": 1}
    assert stats["by_status"] == {s.value: expected.get(s.value, 0) for s in Status}
    assert stats["by_workflow"] == {
        "hello": {"total": 2, "by_status": {"completed": 1, "failed": 1}},
        "orders": {"total": 3, "by_status": {"completed": 1, "pending": 1, "running": 1}},
    }


def test_failure_and_trace_are_kept() -> None:
    idx = ExecutionIndex()
    f = Failure("TerminalError", "boom", 2)
    idx.apply(summary("x", status=Status.FAILED, failure=f, trace_id="abc"))
    entry = idx.get("x")
    assert entry is not None
    assert entry.summary.failure == f and entry.summary.trace_id == "abc"


def test_random_queries_match_a_brute_force_answer() -> None:
    """Both listing strategies (sorting a small candidate set, walking the sorted order) and
    every filter combination agree with filtering and sorting the whole list by hand."""
    rng = random.Random(7)
    idx = ExecutionIndex()
    idx.begin_snapshot()  # the first 300 arrive as the snapshot (bulk load), the rest live
    statuses = [Status.PENDING, Status.RUNNING, Status.COMPLETED, Status.FAILED]
    for i in range(600):
        if i == 300:
            idx.end_snapshot()
        idx.apply(
            summary(
                f"id{i:04d}",
                workflow=rng.choice(["w1", "w2", "w3"]),
                status=rng.choice(statuses),
                created=rng.randrange(200),  # many equal times: ties break by id
                updated=rng.randrange(400),
                key=rng.choice(["p1", "p2", "p3", "p4"]),
                revision=1,
            )
        )
    for i in rng.sample(range(600), 100):  # updates and deletes after the fact
        if i % 3:
            idx.apply(summary(f"id{i:04d}", status=Status.CANCELLED, created=i % 200, revision=2))
        else:
            idx.apply(deleted(f"id{i:04d}"))
    everything = [e for e in (idx.get(f"id{i:04d}") for i in range(600)) if e is not None]
    for _ in range(300):
        q: dict[str, object] = {
            "sort": rng.choice(["created_at", "updated_at"]),
            "order": rng.choice(["asc", "desc"]),
            "limit": rng.choice([1, 7, 50, 500]),
        }
        if rng.random() < 0.5:
            q["statuses"] = frozenset(rng.sample([*statuses, Status.CANCELLED], rng.randint(1, 2)))
        if rng.random() < 0.4:
            q["workflow"] = rng.choice(["w1", "w2", "w3"])
        if rng.random() < 0.3:
            q["partition_key"] = rng.choice(["p1", "p2", "p3", "p4"])
        if rng.random() < 0.4:
            q["created_after"] = T0 + timedelta(seconds=rng.randrange(100))
        if rng.random() < 0.4:
            q["created_before"] = T0 + timedelta(seconds=rng.randrange(100, 220))

        def match(e: object, q: dict[str, object] = q) -> bool:
            s = e.summary  # type: ignore[attr-defined]
            return (
                ("statuses" not in q or s.status in q["statuses"])  # type: ignore[operator]
                and ("workflow" not in q or s.workflow == q["workflow"])
                and ("partition_key" not in q or s.partition_key == q["partition_key"])
                and ("created_after" not in q or s.created_at >= q["created_after"])
                and ("created_before" not in q or s.created_at < q["created_before"])
            )

        expected = sorted(
            (e for e in everything if match(e)),
            key=lambda e: e.key(q["sort"]),  # type: ignore[arg-type]
            reverse=q["order"] == "desc",
        )
        assert all_pages(idx, **q) == [e.id for e in expected], q
        assert idx.query(Query(**q)).total == len(expected), q  # type: ignore[arg-type]


@pytest.mark.parametrize("cursor_text", ["[" * 5000, "1" * 5000])
def test_hostile_cursors_are_invalid_input(cursor_text: str) -> None:
    cursor = base64.urlsafe_b64encode(cursor_text.encode()).decode().rstrip("=")
    with pytest.raises(InvalidInputError, match="malformed") as info:
        decode_cursor(cursor, "created_at")
    assert len(str(info.value)) < 300  # the cursor is not echoed whole
