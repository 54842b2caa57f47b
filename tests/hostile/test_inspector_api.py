"""Hostile requests to the inspector's JSON API (no NATS).

The app runs in Starlette's TestClient on a client whose execution watch gives a few awkward
summaries (as the inspector's own FakeClient does in its unit tests). The calls that take user input
(invoke, get_result, signal, resolve/reject awakeable) go to a real durable_core ``Client`` on an
in-memory transport, so the engine's own intake checks (ids, names, keys, payload limit) answer
them, as they would in production. Every answer must be 2xx or 4xx (501 where the Client has no
such method yet) with a JSON ``{"error", "detail"}`` body for errors: never 500, never a
traceback.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Iterator
from datetime import UTC
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from durable_core import Client, EngineConfig, ExecutionSummary, NatsConfig
from durable_core._naming import Names
from durable_core._pb.durable.v1 import durable_pb2 as pb
from durable_core._transport import JournalRecord, StateRecord
from durable_core.errors import NotFoundError
from durable_core.testing import assert_eventually
from durable_inspector.app import create_app
from durable_inspector.index import MAX_LIMIT
from durable_inspector.settings import InspectorSettings

API_SETTINGS = settings(max_examples=120, deadline=None)
ALLOWED_ERRORS = {400, 404, 405, 409, 501}
MAX_PAYLOAD = EngineConfig().max_payload


# -- the app on a fake watch and a real client over an in-memory transport ---------------------


def _state(invocation_id: str, **fields: Any) -> pb.ExecutionState:
    st_ = pb.ExecutionState(
        invocation_id=invocation_id,
        workflow="hello_workflow",
        status=pb.STATUS_COMPLETED,
        created_at_ms=1_795_867_200_000,
        updated_at_ms=1_795_867_201_000,
        journal_length=1,
    )
    for name, value in fields.items():
        if isinstance(value, pb.Payload):
            getattr(st_, name).CopyFrom(value)
        else:
            setattr(st_, name, value)
    return st_


def _run_step(output: pb.Payload) -> pb.JournalEntry:
    return pb.JournalEntry(
        index=1, kind=pb.ENTRY_KIND_RUN, step=1, name="step", output=output, timestamp_ms=1
    )


GOOD_JSON = pb.Payload(encoding=pb.ENCODING_JSON, data=b'{"ok":true}')
BAD_JSON = pb.Payload(encoding=pb.ENCODING_JSON, data=b"{\xff")


class MemoryTransport:
    """What Client needs from a Transport, in memory; submissions are recorded, not sent."""

    def __init__(self) -> None:
        self.engine = EngineConfig()
        self.names = Names(self.engine.prefix)
        self.payload_limit = self.engine.max_payload  # no server here to lower it
        # No object store here: every value stays inline, so the inline limit still refuses
        # what a real engine would store by reference (issue 18).
        self.payloads = None
        self.submitted: list[pb.Command] = []
        self.states: dict[str, pb.ExecutionState] = {
            "ok-1": _state("ok-1", output=GOOD_JSON),
            "corrupt-output": _state("corrupt-output", output=BAD_JSON),
            "corrupt-step": _state("corrupt-step", output=GOOD_JSON),
            "far-future": _state("far-future", created_at_ms=2**62, output=GOOD_JSON),
        }
        self.journals: dict[str, list[pb.JournalEntry]] = {
            "ok-1": [_run_step(GOOD_JSON)],
            "corrupt-output": [_run_step(GOOD_JSON)],
            "corrupt-step": [_run_step(BAD_JSON)],
            "far-future": [_run_step(GOOD_JSON)],
        }

    def payload_limit_text(self) -> str:
        return f"the limit is {self.payload_limit} bytes (EngineConfig.max_payload)"

    async def create_state(self, state: pb.ExecutionState) -> StateRecord:
        return StateRecord(state, 1)  # created; nothing is stored

    async def publish_command(self, cmd: pb.Command, *, msg_id: str) -> bool:
        self.submitted.append(cmd)
        return True

    async def get_state(self, invocation_id: str) -> StateRecord | None:
        st_ = self.states.get(invocation_id)
        return None if st_ is None else StateRecord(st_, 1)

    async def queued_start(self, invocation_id: str) -> pb.Command | None:
        return None  # no start waits for a processor here

    async def expiry_note(self, invocation_id: str) -> dict[str, Any] | None:
        return None  # nothing expires in memory

    async def missing(self, invocation_id: str) -> NotFoundError:
        return NotFoundError(f"no invocation with id {invocation_id}")

    async def processor_records(self) -> dict[str, bytes]:
        return {}  # no processor registered

    async def type_record(self, full_name: str) -> bytes | None:
        return None  # no descriptors stored

    async def read_journal(
        self,
        invocation_id: str,
        *,
        min_seq: int = 0,
        min_entries: int = 0,
        current: bool = False,
        start: int = 1,
        of: pb.ExecutionState | None = None,
    ) -> list[JournalRecord]:
        entries = self.journals.get(invocation_id, [])
        records = [JournalRecord(e, i, f"m{i}") for i, e in enumerate(entries, start=1)]
        return [r for r in records if r.seq >= start]


def _summary(invocation_id: str, *, created: float = 0, **fields: Any) -> ExecutionSummary:
    """A completed hello_workflow created ``created`` seconds after 2026-11-28 12:00 UTC,
    updated then, with ``fields`` set."""
    at_ms = int(1_795_867_200_000 + created * 1000)
    st_ = _state(
        invocation_id, created_at_ms=at_ms, updated_at_ms=at_ms, journal_length=0, **fields
    )
    return ExecutionSummary.from_pb(st_, 1)


class HostileClient:
    """A watch of a snapshot with awkward values; the real Client for user input."""

    SNAPSHOT = (
        _summary("a", workflow="wf ☃", partition_key="k\x00.*>", status=pb.STATUS_RUNNING),
        _summary("b", workflow="", partition_key="", status=pb.STATUS_FAILED, created=-1e9),
        _summary("c", partition_key="\u202e", status=pb.STATUS_RUNNING, created=1e9),
        _summary("ok-1", partition_key="ok-1"),
    )

    def __init__(self) -> None:
        self.transport = MemoryTransport()
        self.real = Client(self.transport)  # type: ignore[arg-type]

    async def watch_executions(self) -> AsyncIterator[ExecutionSummary | None]:
        for summary in self.SNAPSHOT:
            yield summary
        yield None  # caught up; no live changes follow
        await asyncio.Event().wait()

    async def close(self) -> None:
        return None  # no connection: the transport is in memory

    async def invoke_async(self, workflow: Any, args: Any = None, **kw: Any) -> str:
        # No processor serves anything in memory: queued, so the body's handling is what the
        # property tests see (the refusal of an unserved workflow has its own tests).
        kw["queue_unserved"] = True
        return await self.real.invoke_async(workflow, args, **kw)

    async def describe(self, invocation_id: str) -> Any:
        return await self.real.describe(invocation_id)

    async def signal(self, invocation_id: str, name: str, payload: Any = None) -> None:
        await self.real.signal(invocation_id, name, payload)

    async def resolve_awakeable(self, awakeable_id: str, payload: Any = None) -> None:
        await self.real.resolve_awakeable(awakeable_id, payload)

    async def reject_awakeable(self, awakeable_id: str, reason: str) -> None:
        await self.real.reject_awakeable(awakeable_id, reason)


@pytest.fixture(scope="module")
def api() -> Iterator[tuple[TestClient, HostileClient]]:
    client = HostileClient()
    inspector_settings = InspectorSettings(
        nats=NatsConfig(),
        engine=EngineConfig(),
        jaeger_url="http://jaeger.test:16686",
        load_plugins=False,
        allowed_hosts=("testserver",),  # TestClient's Host
    )
    app = create_app(inspector_settings, client=client)
    with TestClient(app, raise_server_exceptions=False) as tc:
        assert_eventually(
            lambda: tc.get("/healthz").status_code == 200,
            5,
            "the index to be ready",
            interval=0.01,
        )
        yield tc, client


def check(resp: Any, ok: set[int]) -> dict[str, Any]:
    """A well-formed answer: an expected status, JSON, no traceback; errors as {error, detail}."""
    assert "Traceback" not in resp.text
    assert resp.status_code in ok | ALLOWED_ERRORS, f"{resp.status_code}: {resp.text[:500]}"
    body = resp.json()
    if resp.status_code >= 400:
        assert set(body) == {"error", "detail"}, body
        assert isinstance(body["error"], str) and body["error"]
        assert isinstance(body["detail"], str) and body["detail"]
    return body  # type: ignore[no-any-return]


# -- strategies --------------------------------------------------------------------------------

nasty = st.text(
    st.sampled_from("\x00.*> \t\n\ufeff\u202e\u0301\U0001f600\u0663/\\%&=?#+")
    | st.characters(exclude_categories=["Cs"]),
    max_size=30,
)
json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


cursors = st.one_of(
    st.tuples(
        st.sampled_from(["created_at", "updated_at", "x"]), st.integers(), st.text(max_size=8)
    ).map(lambda t: _b64(json.dumps(list(t)).encode())),
    json_values.map(lambda v: _b64(json.dumps(v).encode())),
    st.binary(max_size=40).map(_b64),
    nasty,
)
times = st.one_of(
    st.datetimes(timezones=st.none() | st.just(UTC)).map(lambda d: d.isoformat()),
    st.integers(-(10**20), 10**20).map(str),
    st.sampled_from(["2026-11-28T12:00:00Z", "2026-11-28 12:00", "-0", "+5", "١٢٣", "²", "1e3"]),
    nasty,
)
param_values = st.one_of(
    nasty,
    st.integers().map(str),
    st.floats().map(str),
    st.sampled_from(
        [
            "running",
            "completed,failed",
            "RUNNING",
            " , ",
            "asc",
            "DESC",
            "updated_at",
            "0",
            "501",
            str(MAX_LIMIT),
            "1_0",
            "٥",
        ]
    ),
    times,
    cursors,
)
param_names = st.sampled_from(
    [
        "status",
        "sort",
        "order",
        "limit",
        "created_after",
        "created_before",
        "cursor",
        "workflow",
        "partition_key",
    ]
) | st.text(max_size=8)
queries = st.lists(st.tuples(param_names, param_values), max_size=6)
# One path segment: an empty one or a dot segment would name another route.
segments = nasty.filter(lambda s: s not in ("", ".", "..")) | st.from_regex(
    r"[A-Za-z0-9_-]{1,20}", fullmatch=True
)


# -- reading -----------------------------------------------------------------------------------


@API_SETTINGS
@given(params=queries)
@example(params=[("limit", "99999999999999999999999")])
@example(params=[("created_after", "9" * 5000)])
@example(params=[("created_after", "1" * 400)])
@example(params=[("cursor", _b64(b'{"a":1,"b":2,"c":3}'))])
@example(params=[("cursor", _b64(b'"abc"'))])
@example(params=[("cursor", _b64(b'["created_at", 1e999, "x"]'))])
@example(params=[("status", ",,,")])
def test_listing_answers_200_or_400_for_any_query(api: Any, params: list[tuple[str, str]]) -> None:
    tc, _ = api
    resp = tc.get("/api/executions", params=params)
    body = check(resp, {200})
    if resp.status_code == 200:
        assert isinstance(body["items"], list) and body["total"] >= len(body["items"])
    else:
        assert resp.status_code == 400 and body["error"] == "invalid_input"


def test_deeply_nested_cursor_is_400(api: Any) -> None:
    tc, _ = api
    resp = tc.get("/api/executions", params={"cursor": _b64(b"[" * 5_000)})
    assert resp.status_code == 400 and resp.json()["error"] == "invalid_input", resp.text[:300]


@API_SETTINGS
@given(invocation_id=segments | st.from_regex(r"[A-Za-z0-9_-]{1,140}", fullmatch=True))
@example(invocation_id="ok-1")
@example(invocation_id="x" * 129)
@example(invocation_id=" ")
@example(invocation_id="/")  # decodes to /api/executions//: the list answered, after a 307
def test_detail_answers_for_any_id(api: Any, invocation_id: str) -> None:
    tc, _ = api
    resp = tc.get("/api/executions/" + quote(invocation_id, safe=""))
    body = check(resp, {200})
    if invocation_id == "ok-1":
        assert resp.status_code == 200 and body["invocation_id"] == "ok-1"
    if resp.status_code == 200:
        assert body["invocation_id"] == invocation_id == "ok-1"


@pytest.mark.parametrize("invocation_id", ["corrupt-output", "corrupt-step"])
def test_detail_of_an_execution_with_a_corrupt_payload_is_not_500(
    api: Any, invocation_id: str
) -> None:
    tc, _ = api
    resp = tc.get(f"/api/executions/{invocation_id}")
    assert resp.status_code == 200, resp.text  # shown with what is wrong, not refused
    check(resp, {200})
    page = tc.get(f"/executions/{invocation_id}")
    assert page.status_code == 200 and "does not parse" in page.text


def test_detail_of_an_execution_with_an_absurd_timestamp_is_not_500(api: Any) -> None:
    tc, _ = api
    resp = tc.get("/api/executions/far-future")
    assert resp.status_code == 200, resp.text
    assert tc.get("/executions/far-future").status_code == 200


# -- acting ------------------------------------------------------------------------------------


invoke_bodies = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "workflow": st.sampled_from(["hello_workflow", "wf.v2", "_x"]) | nasty | json_values,
            "args": json_values,
            "id": st.from_regex(r"[A-Za-z0-9_-]{1,10}", fullmatch=True) | nasty | json_values,
            "partition_key": nasty | json_values | st.just("k" * 1025),
            "extra": json_values,
        },
    ),
    json_values,
)


@API_SETTINGS
@given(body=invoke_bodies)
@example(body={"workflow": "hello_workflow", "args": {"name": "Ada"}})
@example(body={"workflow": "hello_workflow", "args": float("nan")})
@example(body={"workflow": "hello_workflow", "partition_key": "é" * 513})
@example(body={"workflow": "hello_workflow", "id": "a.b"})
@example(body={"workflow": "9lives"})
@example(body=[])
def test_invoke_answers_202_or_400_for_any_json_body(api: Any, body: Any) -> None:
    tc, client = api
    before = len(client.transport.submitted)
    resp = tc.post("/api/executions", content=json.dumps(body).encode())
    out = check(resp, {202})
    if resp.status_code == 202:
        assert len(client.transport.submitted) == before + 1
        assert client.transport.submitted[-1].invocation_id == out["invocation_id"]
    else:
        assert resp.status_code == 400 and out["error"] == "invalid_input"
        assert len(client.transport.submitted) == before  # refused before anything was sent


@API_SETTINGS
@given(raw=st.binary(max_size=200))
@example(raw=b"\xff\xfe{}")
@example(raw=b"")
@example(raw=b'{"workflow": "hello_workflow"')
def test_invoke_answers_for_any_raw_body(api: Any, raw: bytes) -> None:
    tc, _ = api
    check(tc.post("/api/executions", content=raw), {202})


def test_invoke_over_the_payload_limit_is_400_with_the_limit(api: Any) -> None:
    tc, client = api
    before = len(client.transport.submitted)
    body = {"workflow": "hello_workflow", "args": {"name": "x" * MAX_PAYLOAD}}
    resp = tc.post("/api/executions", json=body)
    out = check(resp, set())
    assert resp.status_code == 400 and str(MAX_PAYLOAD) in out["detail"]
    assert len(client.transport.submitted) == before


LONE_SURROGATE = '"\\ud800"'  # valid JSON text; json.loads gives a str with a lone surrogate


@pytest.mark.parametrize("field", ["args", "partition_key"])
def test_invoke_with_a_lone_surrogate_is_400(api: Any, field: str) -> None:
    tc, _ = api
    raw = '{"workflow": "hello_workflow", "%s": %s}' % (field, LONE_SURROGATE)  # noqa: UP031
    resp = tc.post("/api/executions", content=raw.encode())
    assert resp.status_code == 400, resp.text[:300]


@pytest.mark.parametrize(
    "raw",
    [
        b'{"workflow": "w", "args": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        b'{"workflow": "w", "args": ' + b"1" * 5000 + b"}",
    ],
    ids=["deep", "digits"],
)
def test_invoke_with_a_resource_exhausting_body_is_400(api: Any, raw: bytes) -> None:
    tc, _ = api
    resp = tc.post("/api/executions", content=raw)
    assert resp.status_code == 400, resp.text[:300]


action_bodies = st.one_of(
    st.none(),
    st.binary(max_size=40),
    st.fixed_dictionaries(
        {},
        optional={
            "payload": json_values,
            "reason": json_values,
            "from_step": json_values,
            "other": json_values,
        },
    ).map(lambda d: json.dumps(d).encode()),
    json_values.map(lambda v: json.dumps(v).encode()),
)


@API_SETTINGS
@given(
    route=st.sampled_from(
        [
            "/api/executions/{a}/{b}",
            "/api/executions/{a}/signals/{b}",
            "/api/awakeables/{a}/{b}",
            "/api/executions/{a}/fork",
            "/api/executions/{a}/pause",
            "/api/awakeables/awk.{a}.1/resolve",
            "/api/awakeables/awk.{a}.1/reject",
            "/api/schedules/{a}/{b}",
        ]
    ),
    a=segments,
    b=segments | st.sampled_from(["resolve", "reject", "cancel", "rerun", "retry", "resume"]),
    body=action_bodies,
)
@example(route="/api/awakeables/awk.{a}.1/resolve", a="ok-1", b="", body=b'{"payload": NaN}')
@example(route="/api/executions/{a}/signals/{b}", a="ok-1", b="x" * 300, body=None)
@example(route="/api/executions/{a}/fork", a="ok-1", b="", body=b'{"from_step": -1}')
@example(route="/api/executions/{a}/fork", a="ok-1", b="", body=b'{"from_step": true}')
def test_actions_answer_2xx_or_4xx(api: Any, route: str, a: str, b: str, body: Any) -> None:
    tc, _ = api
    path = route.format(a=quote(a, safe=""), b=quote(b, safe=""))
    check(tc.post(path, content=body), {202})


@API_SETTINGS
@given(
    body=st.fixed_dictionaries(
        {},
        optional={
            "name": nasty | json_values,
            "workflow": nasty | json_values,
            "cron": nasty | json_values,
            "every": json_values,
            "partition_key": nasty | json_values,
            "args": json_values,
            "bogus": json_values,
        },
    )
    | json_values
)
def test_create_schedule_answers_4xx_or_501(api: Any, body: Any) -> None:
    tc, _ = api
    check(tc.post("/api/schedules", content=json.dumps(body).encode()), {201})


@API_SETTINGS
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]),
    path=st.lists(segments, min_size=1, max_size=4).map(
        lambda parts: "/api/" + "/".join(quote(p, safe="") for p in parts)
    ),
)
def test_any_api_path_answers_json(api: Any, method: str, path: str) -> None:
    if path.startswith("/api/events"):
        return  # a never-ending event stream, tested by the inspector's own tests
    tc, _ = api
    resp = tc.request(method, path)
    assert resp.status_code != 500 and "Traceback" not in resp.text, resp.text[:300]
    assert resp.headers["content-type"].startswith("application/json")
    if resp.status_code >= 400:
        assert set(resp.json()) == {"error", "detail"}
