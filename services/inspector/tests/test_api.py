"""The JSON API over a fake client: listings, detail, invoke, actions, errors, token, OpenAPI."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import Any
from urllib.parse import quote, unquote

import pytest
from starlette.testclient import TestClient

from durable_core import DurableError, Failure, NotFoundError, Status
from durable_core._pb.durable.v1 import durable_pb2 as pb
from durable_core.schedules import Schedule
from durable_core.testing import assert_eventually
from durable_examples.order.v1.order_pb2 import ChargeResponse
from durable_inspector.api import routes as api_routes
from durable_inspector.app import create_app
from durable_inspector.openapi import document
from durable_inspector.typed import template

from ._fakes import T0, FakeClient, result, settings, step, summary

ACTIONS = ["pause", "resume", "cancel", "retry", "rerun"]


def snapshot() -> list[Any]:
    return [
        summary("a", workflow="orders", status=Status.RUNNING, created=1, updated=9),
        summary("b", workflow="orders", status=Status.COMPLETED, created=2, updated=3),
        summary("c", workflow="hello", status=Status.FAILED, created=3, updated=4, trace_id="t123"),
    ]


def error_of(resp: Any, status: int, error: str) -> str:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["error"] == error and body["detail"], body
    return str(body["detail"])


# -- reading ---------------------------------------------------------------------------------


def test_healthz_waits_for_the_snapshot(make_client: Any) -> None:
    fake = FakeClient(snapshot())
    fake.hold.clear()  # the watch has sent the executions but not "caught up"
    with make_client(fake, ready=False) as (tc, _):
        resp = tc.get("/healthz")
        assert resp.status_code == 503 and resp.json()["status"] == "starting"
        tc.portal.call(fake.hold.set)

        def caught_up() -> Any:
            resp = tc.get("/healthz")
            return resp if resp.status_code == 200 else None

        resp = assert_eventually(caught_up, 5, "the snapshot to be caught up", interval=0.01)
        assert resp.json() == {"status": "ok", "executions": 3}


def test_list_filters_sorts_and_pages(make_client: Any) -> None:
    with make_client(FakeClient(snapshot())) as (tc, _):
        body = tc.get("/api/executions").json()
        assert [i["invocation_id"] for i in body["items"]] == ["c", "b", "a"]
        assert body["total"] == 3 and body["next_cursor"] is None and body["ready"] is True
        item = body["items"][0]
        assert item["status"] == "failed" and item["workflow"] == "hello"
        assert item["created_at"] == "2026-11-28T12:00:03.000Z"
        assert item["trace_url"] == "http://jaeger.test:16686/trace/t123"
        assert item["history"] == [{"status": "failed", "at": "2026-11-28T12:00:04.000Z"}]

        def listed(query: str) -> list[str]:
            resp = tc.get("/api/executions?" + query)
            assert resp.status_code == 200, resp.text
            return [i["invocation_id"] for i in resp.json()["items"]]

        assert listed("status=running") == ["a"]
        assert listed("status=completed,failed") == ["c", "b"]
        assert listed("workflow=orders&order=asc") == ["a", "b"]
        assert listed("partition_key=b") == ["b"]
        assert listed("sort=updated_at") == ["a", "c", "b"]
        assert listed("created_after=2026-11-28T12:00:02Z") == ["c", "b"]
        assert listed("created_before=2026-11-28T12:00:02") == ["a"]  # no zone: UTC
        assert listed(f"created_after={1795867202000}") == ["c", "b"]  # epoch ms
        assert listed("created_after=2026-11-28T13:00:02+01:00") == ["c", "b"]  # "+" unencoded
        assert listed("status=&workflow=&limit=") == ["c", "b", "a"]  # empty = not given
        page = tc.get("/api/executions?limit=2").json()
        assert page["total"] == 3 and len(page["items"]) == 2
        rest = tc.get(f"/api/executions?limit=2&cursor={page['next_cursor']}").json()
        assert [i["invocation_id"] for i in rest["items"]] == ["a"]


@pytest.mark.parametrize(
    ("query", "mentions"),
    [
        ("status=sleeping", "unknown status 'sleeping'"),
        ("sort=name", "sort='name'"),
        ("order=up", "order='up'"),
        ("limit=0", "limit='0'"),
        ("limit=many", "limit='many'"),
        ("limit=501", "limit='501'"),
        ("created_after=yesterday", "created_after='yesterday'"),
        ("created_after=2026-11-29&created_before=2026-11-28", "earlier than"),
        ("cursor=%%%", "cursor"),
    ],
)
def test_bad_filters_are_400_with_a_clear_body(make_client: Any, query: str, mentions: str) -> None:
    with make_client(FakeClient(snapshot())) as (tc, _):
        assert mentions in error_of(tc.get("/api/executions?" + query), 400, "invalid_input")


def test_stats(make_client: Any) -> None:
    with make_client(FakeClient(snapshot())) as (tc, _):
        stats = tc.get("/api/stats").json()
        assert stats["total"] == 3 and stats["ready"] is True
        assert stats["by_status"]["running"] == 1 and stats["by_status"]["failed"] == 1
        assert stats["by_workflow"]["orders"] == {
            "total": 2,
            "by_status": {"completed": 1, "running": 1},
        }


def test_execution_detail_decodes_payloads(make_client: Any) -> None:
    fake = FakeClient(snapshot())
    charge = ChargeResponse(charge_id="ch_1")
    fake.results["a"] = result(
        "a",
        workflow="orders",
        status=Status.FAILED,
        steps=(
            step(1, "validate", {"ok": True}, ms=3.5),
            step(2, "charge", charge),
            step(3, "ship", None, failure=Failure("TerminalError", "no stock", 3)),
        ),
        failure=Failure("StepFailedError", "no stock", 3),
    )
    with make_client(fake) as (tc, _):
        d = tc.get("/api/executions/a").json()
        assert d["status"] == "failed" and d["workflow"] == "orders"
        assert d["failure"] == {
            "type": "StepFailedError",
            "message": "no stock",
            "step": 3,
            "code": "",
        }
        assert [s["name"] for s in d["steps"]] == ["validate", "charge", "ship"]
        first, second, third = d["steps"]
        assert first["output"] == {"ok": True} and first["duration_ms"] == 3.5
        assert first["state"] == "completed" and first["attempts"] == 1
        assert second["output"] == {"charge_id": "ch_1"}  # protobuf rendered as JSON
        assert third["failure"]["message"] == "no stock" and third["state"] == "failed"
        assert d["args"] == {"n": 1}  # it was always null: the API read a field that was not there
        # The history is the journal's: created, then the first step's start.
        assert [h["status"] for h in d["history"]] == ["pending", "running"]
        assert d["history"][0]["at"] == d["created_at"] == "2026-11-28T12:00:00.000Z"
        assert d["history"][1]["at"] == "2026-11-28T12:00:00.997Z"
        assert d["duration_ms"] == 4000.0 and d["actions"] == ["retry", "rerun", "fork"]
        assert d["trace_url"].startswith("http://jaeger.test:16686/search?service=")
        # The fallback searches the tag the spans carry (it searched invocation.id: nothing).
        assert '{"durable.invocation_id":"a"}' in unquote(d["trace_url"])


def test_unknown_and_malformed_ids(make_client: Any) -> None:
    with make_client(FakeClient(snapshot())) as (tc, _):
        assert "nope" in error_of(tc.get("/api/executions/nope"), 404, "not_found")
        error_of(tc.get("/api/executions/bad.id"), 400, "invalid_input")
        error_of(tc.get("/api/nothing-here"), 404, "not_found")


# -- invoking --------------------------------------------------------------------------------


def test_invoke(make_client: Any) -> None:
    with make_client() as (tc, fake):
        resp = tc.post(
            "/api/executions",
            json={"workflow": "orders", "args": {"n": 1}, "id": "my-id", "partition_key": "p"},
        )
        assert resp.status_code == 202
        assert resp.json()["invocation_id"] == "my-id"
        assert resp.headers["location"] == "/api/executions/my-id"
        assert fake.invoked == [("orders", {"n": 1}, "my-id", "p")]


def test_invoke_of_a_workflow_nobody_serves_is_404_unless_queued(make_client: Any) -> None:
    with make_client() as (tc, fake):
        fake.served = {"hello", "orders"}
        resp = tc.post("/api/executions", json={"workflow": "ghost"})
        detail = error_of(resp, 404, "not_found")
        assert "'ghost'" in detail and "hello, orders" in detail
        assert fake.invoked == []
        resp = tc.post("/api/executions", json={"workflow": "ghost", "queue_unserved": True})
        assert resp.status_code == 202, resp.text
        assert fake.invoked == [("ghost", None, None, None)]
        resp = tc.post("/api/executions", json={"workflow": "ghost", "queue_unserved": 1})
        assert "'queue_unserved' must be true or false" in error_of(resp, 400, "invalid_input")


def test_fleet_api_and_page(make_client: Any) -> None:
    from durable_core.fleet import FleetView, ProcessorInfo, ServedWorkflow

    wf = ServedWorkflow("orders", "order_plugin", "order-pkg", "1.2", "ab" * 32, "v-0123")
    view = FleetView.of([ProcessorInfo("p1.x", "p1", "h", 7, "0.1.0", 15.0, workflows=(wf,))])

    async def fleet() -> FleetView:
        return view

    with make_client(FakeClient(fleet=fleet)) as (tc, _):
        resp = tc.get("/api/fleet")
        assert resp.status_code == 200
        assert resp.json() == view.to_dict()
        page = tc.get("/fleet")
        assert page.status_code == 200
        assert "order-pkg" in page.text and "p1" in page.text and "abababababab" in page.text
        assert "orders" in tc.get("/fleet?fragment=1").text
    with make_client() as (tc, _):
        assert "no fleet() method" in error_of(tc.get("/api/fleet"), 501, "not_implemented")


@pytest.mark.parametrize(
    ("body", "mentions"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ("", "needs a JSON object"),
        ('{"args": 1}', "'workflow' is required"),
        ('{"workflow": 7}', "'workflow' must be a non-empty string"),
        ('{"workflow": "w", "colour": "red"}', "unknown field(s): colour"),
        ('{"workflow": "bad name"}', "invalid workflow name"),  # InvalidInputError from the client
    ],
)
def test_invoke_bad_input(make_client: Any, body: str, mentions: str) -> None:
    with make_client() as (tc, _):
        resp = tc.post(
            "/api/executions", content=body, headers={"content-type": "application/json"}
        )
        assert mentions in error_of(resp, 400, "invalid_input")


# -- actions the client may not have yet -----------------------------------------------------


@pytest.mark.parametrize("action", ACTIONS)
def test_lifecycle_actions_are_501_until_the_client_has_them(make_client: Any, action: str) -> None:
    with make_client(FakeClient(snapshot())) as (tc, _):
        detail = error_of(tc.post(f"/api/executions/a/{action}"), 501, "not_implemented")
        assert f"no {action}() method" in detail


def test_fork_validates_its_step_before_anything_else(make_client: Any) -> None:
    with make_client(FakeClient(snapshot())) as (tc, _):
        error_of(tc.post("/api/executions/a/fork", json={"from_step": -1}), 400, "invalid_input")
        error_of(tc.post("/api/executions/a/fork", json={}), 400, "invalid_input")
        error_of(tc.post("/api/executions/a/fork", json={"from_step": 2}), 501, "not_implemented")
        error_of(tc.post("/api/executions/a/pause", json={"x": 1}), 400, "invalid_input")
        error_of(tc.post("/api/executions/a/explode"), 404, "not_found")


def test_lifecycle_actions_call_the_client_when_it_has_them(make_client: Any) -> None:
    calls: list[tuple[Any, ...]] = []

    async def pause(invocation_id: str) -> None:
        calls.append(("pause", invocation_id))

    async def cancel(invocation_id: str) -> None:
        raise NotFoundError(f"no invocation with id {invocation_id}")

    async def resume(invocation_id: str) -> None:
        raise DurableError(f"{invocation_id} is not paused")

    async def fork(invocation_id: str, *, from_step: int, id: str | None = None) -> str:
        calls.append(("fork", invocation_id, from_step, id))
        return id or "forked-1"

    fake = FakeClient(snapshot(), pause=pause, cancel=cancel, resume=resume, fork=fork)
    with make_client(fake) as (tc, _):
        resp = tc.post("/api/executions/a/pause")
        assert resp.status_code == 202 and resp.json() == {"invocation_id": "a", "action": "pause"}
        resp = tc.post("/api/executions/a/fork", json={"from_step": 2})
        assert resp.status_code == 202 and resp.json()["new_invocation_id"] == "forked-1"
        body = {"from_step": 2, "new_invocation_id": "mine"}
        resp = tc.post("/api/executions/a/fork", json=body)
        assert resp.status_code == 202 and resp.json()["new_invocation_id"] == "mine"
        assert calls == [("pause", "a"), ("fork", "a", 2, None), ("fork", "a", 2, "mine")]
        body = {"from_step": 2, "new_invocation_id": 7}
        error_of(tc.post("/api/executions/a/fork", json=body), 400, "invalid_input")
        error_of(
            tc.post("/api/executions/a/fork", json={"from_step": 2, "x": 1}), 400, "invalid_input"
        )
        error_of(tc.post("/api/executions/zz/cancel"), 404, "not_found")
        assert "not paused" in error_of(tc.post("/api/executions/a/resume"), 409, "conflict")


def test_awakeables_signals_and_schedules_are_501(make_client: Any) -> None:
    with make_client() as (tc, _):
        for method, url, body in [
            ("post", "/api/awakeables/aw1/resolve", {"payload": {"ok": True}}),
            ("post", "/api/awakeables/aw1/reject", {"reason": "no"}),
            ("post", "/api/executions/a/signals/go", {"payload": 1}),
            ("get", "/api/schedules", None),
            ("post", "/api/schedules", {"name": "n", "workflow": "w", "cron": "* * * * *"}),
            ("delete", "/api/schedules/n", None),
            ("post", "/api/schedules/n/pause", None),
            ("post", "/api/schedules/n/resume", None),
        ]:
            resp = tc.request(method, url, json=body)
            error_of(resp, 501, "not_implemented")


def test_awakeable_and_schedule_input_is_checked(make_client: Any) -> None:
    with make_client() as (tc, _):
        error_of(tc.post("/api/awakeables/aw1/reject", json={}), 400, "invalid_input")
        error_of(tc.post("/api/awakeables/aw1/explode"), 404, "not_found")
        error_of(tc.post("/api/schedules/n/explode"), 404, "not_found")
        for body in [
            {"workflow": "w", "cron": "* * * * *"},
            {"name": "n", "workflow": "w"},
            {"name": "n", "workflow": "w", "cron": "x", "every": 5},
            {"name": "n", "workflow": "w", "every": -1},
            {"name": "n", "workflow": "w", "every": 5, "when": "now"},
        ]:
            error_of(tc.post("/api/schedules", json=body), 400, "invalid_input")


@pytest.mark.parametrize("every", ["Infinity", "NaN", "1e300", str(10 * 365 * 86400 + 1)])
def test_a_schedule_interval_that_is_not_finite_or_too_long_is_400(
    make_client: Any, every: str
) -> None:
    """Infinity, NaN and 1e300 (which JSON lets through) overflowed timedelta: 500."""
    created: list[Any] = []

    async def create_schedule(name: str, workflow: str, args: Any, **options: Any) -> Schedule:
        created.append(options)
        return Schedule(name, workflow, args, **options, created_at=T0)

    with make_client(FakeClient(create_schedule=create_schedule)) as (tc, _):
        body = '{"name": "n", "workflow": "w", "every": ' + every + "}"
        resp = tc.post("/api/schedules", content=body, headers={"content-type": "application/json"})
        assert "'every'" in error_of(resp, 400, "invalid_input")
    assert created == []


def test_schedules_and_signals_call_the_client_when_it_has_them(make_client: Any) -> None:
    seen: list[tuple[Any, ...]] = []

    async def create_schedule(name: str, workflow: str, args: Any, **options: Any) -> Schedule:
        seen.append(("create", name, workflow, args, options))
        return Schedule(name, workflow, args, **options, created_at=T0)

    async def list_schedules() -> list[Schedule]:
        return [Schedule("n", "w", cron="0 8 * * *")]

    async def signal(invocation_id: str, name: str, payload: Any) -> None:
        seen.append(("signal", invocation_id, name, payload))

    async def resolve_awakeable(awakeable_id: str, payload: Any) -> None:
        seen.append(("resolve", awakeable_id, payload))

    fake = FakeClient(
        create_schedule=create_schedule,
        list_schedules=list_schedules,
        signal=signal,
        resolve_awakeable=resolve_awakeable,
    )
    with make_client(fake) as (tc, _):
        resp = tc.post("/api/schedules", json={"name": "n", "workflow": "w", "every": 90})
        assert resp.status_code == 201 and resp.json()["schedule"]["workflow"] == "w"
        (listed,) = tc.get("/api/schedules").json()["schedules"]
        assert listed["name"] == "n" and listed["paused"] is False
        assert listed["next_fire_at"].endswith("T08:00:00.000Z")
        assert tc.post("/api/executions/a/signals/go", json={"payload": 5}).status_code == 202
        assert tc.post("/api/awakeables/aw/resolve", json={"payload": [1]}).status_code == 202
    create = seen[0]
    assert create[:4] == ("create", "n", "w", None)
    assert create[4]["every"].total_seconds() == 90
    assert seen[1:] == [("signal", "a", "go", 5), ("resolve", "aw", [1])]


@pytest.mark.parametrize(
    "name", ["a/b", ".", "..", "with spaces ", "naïve ✓ 名前", "/x/../y/", "%2F"]
)
def test_any_signal_name_can_be_sent(make_client: Any, name: str) -> None:
    """The engine takes any 1-256 character name; '/' used to split the path (404) and '.' or
    '..' vanish in a client's path, so the body route takes them all (the page's form uses it)."""
    seen: list[tuple[Any, ...]] = []

    async def signal(invocation_id: str, name: str, payload: Any) -> None:
        seen.append((invocation_id, name, payload))

    with make_client(FakeClient(signal=signal)) as (tc, _):
        resp = tc.post("/api/executions/a/signals", json={"name": name, "payload": {"ok": 1}})
        assert resp.status_code == 202, resp.text
        assert resp.json() == {"invocation_id": "a", "signal": name}
        # In the path too, percent-encoded (but '.' and '..' vanish, and a '%' is decoded twice
        # on the way: those go in the body).
        if name not in (".", "..", "%2F"):
            resp = tc.post(f"/api/executions/a/signals/{quote(name, safe='')}", json={"payload": 2})
            assert resp.status_code == 202, resp.text
            assert resp.json()["signal"] == name
    expected = [("a", name, {"ok": 1})] + (
        [("a", name, 2)] if name not in (".", "..", "%2F") else []
    )
    assert seen == expected


def test_a_signal_named_in_the_body_needs_a_name(make_client: Any) -> None:
    async def signal(invocation_id: str, name: str, payload: Any) -> None:
        raise AssertionError("not sent")

    with make_client(FakeClient(signal=signal)) as (tc, _):
        for body, mentions in (
            ({}, "'name' is required"),
            ({"name": ""}, "'name'"),
            ({"name": 5}, "'name'"),
            ({"name": "x", "payloads": 1}, "payloads"),
        ):
            resp = tc.post("/api/executions/a/signals", json=body)
            assert mentions in error_of(resp, 400, "invalid_input")


# -- access ----------------------------------------------------------------------------------


def test_token_guards_every_api_call_and_page(make_client: Any) -> None:
    with make_client(FakeClient(snapshot()), token="s3cret") as (tc, _):
        detail = error_of(tc.get("/api/executions"), 401, "unauthorized")
        assert "Bearer" in detail
        error_of(
            tc.get("/api/executions", headers={"Authorization": "Bearer wrong"}),
            401,
            "unauthorized",
        )
        error_of(tc.post("/api/executions/a/pause"), 401, "unauthorized")
        error_of(tc.get("/openapi.json"), 401, "unauthorized")
        good = {"Authorization": "Bearer s3cret"}
        assert tc.get("/api/executions", headers=good).status_code == 200
        assert tc.get("/healthz").status_code == 200  # probes need no token
        page = tc.get("/executions/a", follow_redirects=False)
        assert page.status_code == 303 and page.headers["location"].startswith("/login?next=")


def test_token_in_the_url_becomes_a_cookie(make_client: Any) -> None:
    with make_client(FakeClient(snapshot()), token="s3cret") as (tc, _):
        resp = tc.get("/?token=s3cret&status=running", follow_redirects=False)
        assert resp.status_code == 303 and resp.headers["location"] == "/?status=running"
        assert "durable_inspector_token=s3cret" in resp.headers["set-cookie"]
        assert "HttpOnly" in resp.headers["set-cookie"]
        assert tc.get("/api/stats").status_code == 200  # the client kept the cookie
        assert tc.get("/?status=running").status_code == 200


def test_login_form(make_client: Any) -> None:
    with make_client(FakeClient(snapshot()), token="s3cret") as (tc, _):
        assert "Log in" in tc.get("/login").text
        form = {"content-type": "application/x-www-form-urlencoded"}
        wrong = tc.post("/login", content="token=nope&next=/", headers=form)
        assert wrong.status_code == 401 and "not right" in wrong.text
        ok = tc.post(
            "/login",
            content="token=s3cret&next=/executions/a",
            headers=form,
            follow_redirects=False,
        )
        assert ok.status_code == 303 and ok.headers["location"] == "/executions/a"
        assert tc.get("/api/executions").status_code == 200
        evil = tc.post(
            "/login", content="token=s3cret&next=//evil.test/", headers=form, follow_redirects=False
        )
        assert evil.headers["location"] == "/"


def test_cross_site_actions_are_refused(make_client: Any) -> None:
    with make_client() as (tc, fake):
        resp = tc.post(
            "/api/executions", json={"workflow": "w"}, headers={"Origin": "http://evil.test"}
        )
        error_of(resp, 403, "forbidden")
        resp = tc.post(
            "/api/executions", json={"workflow": "w"}, headers={"Sec-Fetch-Site": "cross-site"}
        )
        error_of(resp, 403, "forbidden")
        assert fake.invoked == []
        same = tc.post(
            "/api/executions", json={"workflow": "w"}, headers={"Origin": "http://testserver"}
        )
        assert same.status_code == 202


class UnboundEngine:
    """An engine connected to NATS whose streams no processor has created yet."""

    is_connected = True

    async def bind(self, *, wait: float = 0.0) -> None:
        await asyncio.Event().wait()


@pytest.mark.parametrize("path", ["/schedules", "/fleet", "/api/schedules", "/api/fleet"])
def test_pages_before_the_engine_is_bound_are_503_like_the_api(path: str) -> None:
    """/schedules and /fleet answered 501 (as if the client lacked the method) before bind."""
    app = create_app(settings(), engine=UnboundEngine())  # type: ignore[arg-type]
    with TestClient(app, raise_server_exceptions=False) as tc:
        resp = tc.get(path)
        assert resp.status_code == 503, resp.text
        assert "waiting for the engine" in resp.text


REBIND = "rebind.evil.test:8080"


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/api/executions"), ("POST", "/api/executions/a/cancel"), ("GET", "/")],
)
def test_without_a_token_only_known_hosts_are_served(
    make_client: Any, method: str, path: str
) -> None:
    """DNS rebinding: a page on rebind.evil.test, re-pointed at 127.0.0.1, is same-origin with
    the inspector (Origin and Host agree), so the cross-site check let it read and act."""

    async def cancel(invocation_id: str) -> Status:
        return Status.CANCELLED

    with make_client(FakeClient(snapshot(), cancel=cancel)) as (tc, _):
        evil = {"Host": REBIND, "Origin": f"http://{REBIND}"}
        error_of(tc.request(method, path, headers=evil), 403, "forbidden")
        for host in ("127.0.0.1:8080", "localhost", "[::1]:9", "testserver"):
            resp = tc.request(method, path, headers={"Host": host, "Origin": f"http://{host}"})
            assert resp.status_code in (200, 202), (host, resp.text)
        assert tc.get("/readyz", headers=evil).status_code == 200  # probes are open anyway


def test_with_a_token_the_host_is_not_checked(make_client: Any) -> None:
    with make_client(FakeClient(snapshot()), token="s3cret") as (tc, _):
        headers = {"Host": REBIND, "Authorization": "Bearer s3cret"}
        assert tc.get("/api/executions", headers=headers).status_code == 200


def test_allowed_hosts_and_the_listening_host_are_served() -> None:
    s = dataclasses.replace(settings(), host="10.1.2.3", allowed_hosts=("inspector.internal",))
    app = create_app(s, client=FakeClient(snapshot()))
    with TestClient(app, raise_server_exceptions=False) as tc:
        for host in ("inspector.internal:8080", "INSPECTOR.internal", "10.1.2.3:8080"):
            assert tc.get("/api/stats", headers={"Host": host}).status_code in (200, 503), host
        error_of(tc.get("/api/stats", headers={"Host": "testserver"}), 403, "forbidden")


# -- the document ----------------------------------------------------------------------------


def test_openapi_describes_exactly_the_api_routes(make_client: Any) -> None:
    with make_client() as (tc, _):
        doc = tc.get("/openapi.json").json()
    assert doc == json.loads(json.dumps(document()))
    assert doc["openapi"].startswith("3.")
    served = {
        (template(r.path), m.lower()) for r in api_routes for m in (r.methods or ()) if m != "HEAD"
    }
    described = {(p, m) for p, ops in doc["paths"].items() for m in ops}
    assert served == described
    for path, ops in doc["paths"].items():
        for op in ops.values():
            assert op["summary"] and op["responses"], path


def test_the_document_describes_what_the_api_answers(make_client: Any) -> None:
    """The schemas are generated from the types the answers are built as: an answer validates."""
    jsonschema = pytest.importorskip("jsonschema")
    fake = FakeClient(snapshot())
    fake.results["a"] = result("a", steps=(step(1, "one", {"x": 1}),), output=[1])
    with make_client(fake) as (tc, _):
        doc = tc.get("/openapi.json").json()
        answers = {
            ("/api/executions/{invocation_id}", 200): tc.get("/api/executions/a").json(),
            ("/api/executions", 200): tc.get("/api/executions").json(),
            ("/api/stats", 200): tc.get("/api/stats").json(),
            ("/healthz", 200): tc.get("/healthz").json(),
        }
        bad = tc.get("/api/executions/nope")
        answers[("/api/executions/{invocation_id}", 404)] = bad.json()
    for (path, status), body in answers.items():
        content = doc["paths"][path]["get"]["responses"][str(status)]["content"]
        schema = {**content["application/json"]["schema"], "components": doc["components"]}
        jsonschema.validate(body, schema)
    with pytest.raises(jsonschema.ValidationError):  # and it is not a schema that takes anything
        jsonschema.validate({"invocation_id": 5}, {**schema, "components": doc["components"]})


def test_the_view_survives_absurd_stored_values() -> None:
    """A foreign journal entry: a duration reaching before year 1, an output that is not JSON."""
    bad = step(1, "a", 1)
    bad.duration_us = 9_200_000_000_000_000_000
    bad.output.CopyFrom(pb.Payload(encoding=pb.ENCODING_JSON, data=b"{\xff"))
    (view,) = result("x", steps=(bad,)).to_dict()["steps"]
    assert view["started_at"] is None and view["finished_at"]
    assert "does not parse" in view["output"]["$error"]
