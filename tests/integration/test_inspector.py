"""The inspector against a real 3-node cluster: its API, its event stream, and its UI in Chromium.

The inspector runs as its own process (``python -m durable_inspector --port 0``) on the test's
engine prefix, next to the example service and a processor.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

from durable_core import Client, EngineConfig, NatsConfig, Status
from durable_core._pb.durable.v1 import durable_pb2 as pb
from durable_core._transport import Transport
from durable_core.testing import (
    NatsCluster,
    NatsServer,
    ProcessStack,
    assert_eventually_async,
    free_port,
)
from order_processing.testing import OrderServiceControl

pytestmark = pytest.mark.integration

TOKEN = "inspector-test-token"
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
LIFECYCLE = ["pause", "resume", "cancel", "retry", "rerun"]


class Inspector:
    """The inspector process and its base URL."""

    def __init__(self, stack: ProcessStack, token: str | None = None) -> None:
        env = {"DURABLE_JAEGER_URL": "http://jaeger.invalid:16686"}
        if token:
            env["DURABLE_INSPECTOR_TOKEN"] = token
        args = ["-m", "durable_inspector", "--port", "0"]
        # stopped (SIGTERM) with the rest of the stack
        self.proc = stack.start("inspector", args, env, ready="inspector listening on", timeout=30)
        match = re.search(r"inspector listening on (http://\S+)", self.proc.log())
        assert match, self.proc.log()
        self.url = match.group(1)
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    def http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, headers=self.headers, timeout=20)


def error_of(resp: httpx.Response, status: int, error: str) -> str:
    assert resp.status_code == status, f"{resp.status_code} {resp.text}"
    body = resp.json()
    assert body["error"] == error and body["detail"], body
    return str(body["detail"])


async def test_api_on_a_real_cluster(stack: ProcessStack, client: Client) -> None:
    stack.start_service()
    stack.start_processor("p-inspect")
    inspector = Inspector(stack, token=TOKEN)
    async with inspector.http() as http:

        async def healthy() -> bool:
            return (await http.get("/healthz")).status_code == 200

        await assert_eventually_async(healthy, 30, "the index snapshot")

        # No token: 401 with a clear body, on the API and the document.
        async with httpx.AsyncClient(base_url=inspector.url) as anon:
            assert "Bearer" in error_of(await anon.get("/api/executions"), 401, "unauthorized")
            resp = await anon.post("/api/executions", json={"workflow": "x"})
            error_of(resp, 401, "unauthorized")
            assert (await anon.get("/healthz")).status_code == 200

        # Start one through the API and one through the client; both appear in the index.
        resp = await http.post(
            "/api/executions", json={"workflow": "hello_workflow", "args": {"name": "Ada"}}
        )
        assert resp.status_code == 202, resp.text
        hello_id = resp.json()["invocation_id"]
        order_id = await client.invoke_async(
            "order_processing", {"order_id": "o-1", "amount_cents": 1200}, partition_key="shop-1"
        )
        await client.wait(hello_id, timeout=60)
        await client.wait(order_id, timeout=60)

        async def listed_completed() -> list[str]:
            body = (await http.get("/api/executions?status=completed")).json()
            return sorted(i["invocation_id"] for i in body["items"])

        await assert_eventually_async(
            lambda: _eq(listed_completed(), sorted([hello_id, order_id])), 30, "both completed"
        )
        body = (await http.get("/api/executions?workflow=order_processing")).json()
        assert [i["invocation_id"] for i in body["items"]] == [order_id]
        assert body["items"][0]["history"][-1]["status"] == "completed"
        body = (await http.get("/api/executions?partition_key=shop-1")).json()
        assert [i["invocation_id"] for i in body["items"]] == [order_id]
        body = (await http.get("/api/executions?sort=updated_at&order=asc&limit=1")).json()
        assert body["total"] == 2 and len(body["items"]) == 1 and body["next_cursor"]
        stats = (await http.get("/api/stats")).json()
        assert stats["by_status"]["completed"] == 2
        assert stats["by_workflow"]["hello_workflow"]["total"] == 1

        # One execution: state and its journal, payloads decoded (protobuf to JSON).
        d = (await http.get(f"/api/executions/{order_id}")).json()
        assert d["status"] == "completed" and d["partition_key"] == "shop-1"
        assert [s["name"].rsplit("/", 1)[-1] for s in d["steps"]] == ["Validate", "Charge", "Ship"]
        assert d["steps"][0]["output"] == {"valid": True}
        assert d["steps"][1]["output"]["charge_id"]
        assert all(s["state"] == "completed" and s["duration_ms"] >= 0 for s in d["steps"])
        assert d["args"] == {"order_id": "o-1", "amount_cents": 1200}
        assert d["output"]["tracking_number"]
        assert d["trace_url"].startswith("http://jaeger.invalid:16686/")
        hello = (await http.get(f"/api/executions/{hello_id}")).json()
        assert hello["output"]["message"].startswith("Hello, Ada!")

        # Bad input.
        assert "no invocation" in error_of(
            await http.get("/api/executions/no-such-id"), 404, "not_found"
        )
        error_of(await http.get("/api/executions/bad.id"), 400, "invalid_input")
        assert "unknown status" in error_of(
            await http.get("/api/executions?status=sleeping"), 400, "invalid_input"
        )
        error_of(await http.get("/api/executions?limit=0"), 400, "invalid_input")
        error_of(
            await http.post("/api/executions", content=b"{oops", headers={"content-type": "x"}),
            400,
            "invalid_input",
        )
        error_of(
            await http.post("/api/executions", json={"workflow": "not a name"}),
            400,
            "invalid_input",
        )

        # Lifecycle actions: 501 until durable_core's Client has them.
        for action in LIFECYCLE:
            resp = await http.post(f"/api/executions/{order_id}/{action}")
            if not hasattr(Client, action):
                assert f"no {action}()" in error_of(resp, 501, "not_implemented")
        resp = await http.post(f"/api/executions/{order_id}/fork", json={"from_step": 1})
        if not hasattr(Client, "fork"):
            error_of(resp, 501, "not_implemented")

        # Awakeables, signals, schedules: 501 while missing; real answers once they exist.
        checks = [
            ("resolve_awakeable", "post", "/api/awakeables/awk.no-such-id.1/resolve", {}),
            (
                "reject_awakeable",
                "post",
                "/api/awakeables/awk.no-such-id.1/reject",
                {"reason": "n"},
            ),
            ("signal", "post", "/api/executions/no-such-id/signals/go", {"payload": 1}),
            ("list_schedules", "get", "/api/schedules", None),
            ("delete_schedule", "delete", "/api/schedules/nightly", None),
            ("pause_schedule", "post", "/api/schedules/nightly/pause", None),
        ]
        for method, verb, url, payload in checks:
            resp = await http.request(verb, url, json=payload)
            if hasattr(Client, method):
                assert resp.status_code != 501 and resp.status_code < 500, (url, resp.text)
                if resp.status_code >= 400:
                    assert resp.json()["error"] and resp.json()["detail"]
            else:
                error_of(resp, 501, "not_implemented")

        doc = (await http.get("/openapi.json")).json()
        assert "/api/executions/{invocation_id}" in doc["paths"]


async def _eq(value: Any, expected: Any) -> bool:
    return bool(await value == expected)


async def _events(resp: httpx.Response) -> AsyncIterator[tuple[str, Any]]:
    name = None
    async for line in resp.aiter_lines():
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: ") and name:
            yield name, json.loads(line[6:])
            name = None


async def test_event_stream_delivers_a_change(
    stack: ProcessStack, client: Client, transport: Transport
) -> None:
    inspector = Inspector(stack)
    async with inspector.http() as http:

        async def ready() -> bool:
            return (await http.get("/healthz")).status_code == 200

        await assert_eventually_async(ready, 30, "the index snapshot")
        async with http.stream("GET", "/api/events") as resp:
            assert resp.headers["content-type"].startswith("text/event-stream")
            stream = _events(resp)

            async def first(kind: str, where: Any = lambda d: True) -> Any:
                async for name, data in stream:
                    if name == kind and where(data):
                        return data
                raise AssertionError("stream ended")

            assert (await asyncio.wait_for(first("hello"), 20))["ready"] is True
            # No processor runs: the new execution stays pending, and its creation is the change.
            invocation_id = await client.invoke_async(
                "hello_workflow", {"name": "SSE"}, queue_unserved=True
            )
            data = await asyncio.wait_for(
                first("execution", lambda d: d["invocation_id"] == invocation_id), 20
            )
            assert data["status"] == Status.PENDING.value and data["workflow"] == "hello_workflow"

            # A deleted state (retention, or by hand) leaves the index and the stream says so.
            await transport.kv.delete(invocation_id)
            gone = await asyncio.wait_for(
                first("deleted", lambda d: d["invocation_id"] == invocation_id), 20
            )
            assert gone == {"invocation_id": invocation_id}
            body = (await http.get("/api/executions")).json()
            assert invocation_id not in [i["invocation_id"] for i in body["items"]]


async def test_create_app_connects_by_itself(
    cluster: NatsCluster, engine: EngineConfig, client: Client
) -> None:
    """``create_app(settings)`` alone (as ``durable dev`` embeds it): the app's lifespan connects,
    watches and closes; here in this process, under uvicorn."""
    import uvicorn

    from durable_inspector.app import create_app
    from durable_inspector.settings import InspectorSettings

    port = free_port()
    settings = InspectorSettings(
        nats=NatsConfig.from_url(cluster.url), engine=engine, port=port, load_plugins=False
    )
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings), port=port, log_level="warning", timeout_graceful_shutdown=1
        )
    )
    task = asyncio.create_task(server.serve())
    try:
        invocation_id = await client.invoke_async(  # no processor runs: queued
            "hello_workflow", {"name": "embedded"}, queue_unserved=True
        )
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:

            async def listed() -> bool:
                try:
                    resp = await http.get("/api/executions")
                except httpx.TransportError:
                    return False
                items = resp.json().get("items", []) if resp.status_code == 200 else []
                return [i["invocation_id"] for i in items] == [invocation_id]

            await assert_eventually_async(listed, 30, "the execution in the embedded app's index")
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 20)


@contextlib.asynccontextmanager
async def serve(settings: Any) -> AsyncIterator[httpx.AsyncClient]:
    """``create_app(settings)`` under uvicorn in this process, and a client of it."""
    import uvicorn

    from durable_inspector.app import create_app

    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings), port=settings.port, log_level="warning",
            timeout_graceful_shutdown=1,
        )
    )  # fmt: skip
    task = asyncio.create_task(server.serve())
    try:
        url = f"http://127.0.0.1:{settings.port}"
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            yield http
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 20)


async def _readyz(http: httpx.AsyncClient) -> tuple[int, str]:
    try:
        resp = await http.get("/readyz")
    except httpx.TransportError as e:
        return 0, str(e)
    return resp.status_code, resp.text


async def test_the_inspector_binds_after_an_outage_longer_than_the_append_deadline(
    tmp_path: Path,
) -> None:
    """The inspector waits for the engine's streams with bind(wait=inf); bind's NATS calls
    gave up after the append deadline, the watch task died silently, and /readyz said
    "waiting for the engine's streams" for good once NATS came back and a processor made them.
    """
    from durable_inspector.settings import InspectorSettings

    deadline = timedelta(seconds=2)
    engine = EngineConfig(prefix="touter", replicas=1, append_deadline=deadline)
    server = NatsServer(store_dir=tmp_path / "store", name="outage")
    await asyncio.to_thread(server.start)
    try:
        settings = InspectorSettings(
            nats=NatsConfig.from_url(server.url), engine=engine, port=free_port(),
            load_plugins=False,
        )  # fmt: skip
        async with serve(settings) as http:

            async def waiting() -> bool:
                return "waiting for the engine's streams" in (await _readyz(http))[1]

            await assert_eventually_async(waiting, 30, "the inspector waiting for the streams")
            server.kill()
            # Longer than a JetStream request's 5 s timeout plus the append deadline: bind
            # gives up while NATS is away.
            await asyncio.sleep(5 + 2 * deadline.total_seconds())
            await asyncio.to_thread(server.start)
            await assert_eventually_async(waiting, 30, "the inspector reconnected")
            why = (await _readyz(http))[1]
            t = await Transport.connect(NatsConfig.from_url(server.url), engine, create=True)
            await t.close()

            async def ready() -> bool:
                return (await _readyz(http))[0] == 200

            await assert_eventually_async(ready, 30, "/readyz 200 once the streams exist")
        assert "last bind error: NatsUnavailableError" in why  # what /readyz said meanwhile
    finally:
        await asyncio.to_thread(server.stop)


async def test_a_state_with_a_status_from_a_newer_version_is_shown_as_unknown(
    stack: ProcessStack, transport: Transport
) -> None:
    """A status value this version does not know (99) raised ValueError in Status.from_pb: the
    watch ended and restarted at the same record forever, the index never got ready, and the
    detail page answered 500."""
    now = int(time.time() * 1000)

    async def put(invocation_id: str, status: int) -> None:
        state = pb.ExecutionState(
            invocation_id=invocation_id, workflow="hello_workflow", status=status,
            partition_key=invocation_id, created_at_ms=now, updated_at_ms=now,
        )  # fmt: skip
        assert await transport.create_state(state) is not None

    await put("before-1", pb.STATUS_COMPLETED)
    await put("newer-1", 99)
    await put("after-1", pb.STATUS_PENDING)
    inspector = Inspector(stack)
    async with inspector.http() as http:

        async def ready() -> bool:
            return (await http.get("/readyz")).status_code == 200

        await assert_eventually_async(ready, 30, "the index past the unknown status")
        body = (await http.get("/api/executions")).json()
        statuses = {i["invocation_id"]: i["status"] for i in body["items"]}
        assert statuses == {"before-1": "completed", "newer-1": "unknown", "after-1": "pending"}

        await put("later-1", pb.STATUS_PENDING)

        async def listed() -> bool:
            body = (await http.get("/api/executions")).json()
            return "later-1" in [i["invocation_id"] for i in body["items"]]

        await assert_eventually_async(listed, 30, "an execution made later listed")
        detail = await http.get("/api/executions/newer-1")
        assert detail.status_code == 200, detail.text
        assert detail.json()["status"] == "unknown"
        page = await http.get("/executions/newer-1")
        assert page.status_code == 200, page.text[-500:]


async def test_bad_input_to_awakeables_and_payloads_is_a_typed_4xx(
    stack: ProcessStack, transport: Transport
) -> None:
    """A lone surrogate as a rejection reason (protobuf cannot encode it) and a step number in
    non-ASCII digits (str.isdigit() takes "²", int() does not) answered 500."""
    now = int(time.time() * 1000)
    state = pb.ExecutionState(
        invocation_id="done-1", workflow="hello_workflow", status=pb.STATUS_COMPLETED,
        partition_key="done-1", created_at_ms=now, updated_at_ms=now,
    )  # fmt: skip
    await transport.create_state(state)
    inspector = Inspector(stack)
    requests = [
        # JSON's escape: the server decodes it to a lone surrogate
        ("POST", "/api/awakeables/awk.done-1.1/reject", b'{"reason": "\\ud800"}'),
        ("GET", "/api/executions/done-1/payloads/\u00b2", None),  # superscript two
        ("GET", "/api/executions/done-1/payloads/\u0663", None),  # Arabic-Indic three
        ("POST", "/api/awakeables/awk.done-1.\u00b2/resolve", b'{"payload": 1}'),
    ]
    answers = []
    async with inspector.http() as http:
        for method, path, body in requests:
            try:
                resp = await http.request(
                    method, path, content=body, headers={"content-type": "application/json"}
                )
            except httpx.TransportError as e:  # the server dropped the connection
                answers.append((path, 0, type(e).__name__))
                continue
            answers.append((path, resp.status_code, resp.json()["error"]))
    assert answers == [
        (requests[0][1], 400, "invalid_input"),
        (requests[1][1], 400, "invalid_input"),
        (requests[2][1], 400, "invalid_input"),
        (requests[3][1], 404, "not_found"),
    ], answers


# -- the UI in a real browser ----------------------------------------------------------------


@pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason=f"{CHROMIUM} is missing: `make browser` installs Debian's chromium for this UI test",
)
async def test_ui_in_chromium(stack: ProcessStack, client: Client) -> None:
    playwright = pytest.importorskip("playwright.async_api", reason="playwright is not installed")
    expect = playwright.expect
    expect.set_options(timeout=30_000)  # the steps take ~7 s; leader elections can add more

    service = OrderServiceControl(stack.start_service().channel)
    # Slow steps, so that the test sees the execution running and its steps arrive one by one.
    service.set_delay("Validate", 1000)
    service.set_delay("Charge", 5000)
    service.set_delay("Ship", 1000)
    stack.start_processor("p-ui")
    inspector = Inspector(stack, token=TOKEN)
    ARTIFACTS.mkdir(exist_ok=True)

    async with playwright.async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--no-first-run",
            ],
        )
        try:
            page = await browser.new_page(viewport={"width": 1360, "height": 1000})
            page.set_default_timeout(30_000)
            # The token once in the URL; the inspector trades it for a cookie and drops it.
            await page.goto(f"{inspector.url}/?token={TOKEN}")
            assert "token=" not in page.url
            await expect(page.locator("#live")).to_have_class(re.compile(r"\bon\b"))
            await page.evaluate("window.__samePage = 'list'")

            # A new execution appears on the open list without a reload.
            hello_id = await client.invoke_async("hello_workflow", {"name": "UI"})
            order_id = await client.invoke_async(
                "order_processing", {"order_id": "o-ui", "amount_cents": 4200}, id="order-ui-1"
            )
            await expect(page.locator(f'tr[data-id="{order_id}"]')).to_be_visible()
            assert await page.evaluate("window.__samePage") == "list"

            # Filter to running order_processing executions.
            await expect(page.locator(f'tr[data-id="{order_id}"] .badge')).to_have_text("running")
            await page.select_option("#f-status", "running")
            await page.select_option("#f-workflow", "order_processing")
            await page.click("#apply")
            await expect(page.locator(f'tr[data-id="{order_id}"]')).to_be_visible()
            await expect(page.locator(f'tr[data-id="{hello_id}"]')).to_have_count(0)
            await expect(page.locator(".chip.on")).to_contain_text("running")
            await page.screenshot(path=str(ARTIFACTS / "inspector-list.png"))

            # Open it: the steps arrive live while it runs.
            await page.click(f'tr[data-id="{order_id}"] a')
            await page.wait_for_url(f"**/executions/{order_id}")
            await expect(page.locator("#live")).to_have_class(re.compile(r"\bon\b"))
            await page.evaluate("window.__samePage = 'detail'")
            steps = page.locator("li.step")
            assert await steps.count() < 3  # Charge takes 5 s: the journal is still growing
            await expect(page.locator("#status-badge .badge")).to_have_text("running")

            # Pause it at the next step boundary, see the status change live, resume it.
            await page.click("#action-pause")
            await expect(page.locator("#action-message")).to_contain_text("pause accepted")
            await expect(page.locator("#status-badge .badge")).to_have_text("paused")
            await page.click("#action-resume")
            await expect(page.locator("#action-message")).to_contain_text("resume accepted")

            await expect(steps).to_have_count(3)
            await expect(page.locator("#status-badge .badge")).to_have_text("completed")
            # The history is the journal's (not what this inspector happened to see).
            history = await page.locator("#history .badge").all_text_contents()
            assert history[0] == "pending" and history[-1] == "completed", history
            assert "paused" in history, history
            await expect(page.locator("#history")).to_contain_text("resume requested")
            # Only what is legal is offered: a completed run can be rerun or forked.
            await expect(page.locator("#actions [data-action]")).to_have_count(2)
            await expect(page.locator("#output")).to_contain_text("tracking_number")
            assert await page.evaluate("window.__samePage") == "detail"  # never reloaded
            href = await page.get_attribute("#trace-link", "href")
            assert href and href.startswith("http://jaeger.invalid:16686/")
            await page.locator("li.step details").first.evaluate("d => d.open = true")
            await page.screenshot(path=str(ARTIFACTS / "inspector.png"), full_page=True)
        finally:
            await browser.close()
    assert (ARTIFACTS / "inspector.png").stat().st_size > 10_000


CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


@pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason=f"{CHROMIUM} is missing: `make browser` installs Debian's chromium for this UI test",
)
async def test_ui_waits_signals_and_schedules_in_chromium(
    stack: ProcessStack, client: Client
) -> None:
    """Issue 17: a pending sleep and awakeable shown as waits, resolved from the page; a signal
    sent from the page; a schedule created, paused, resumed and deleted from the page. Saves the
    screenshots docs/ shows (test-artifacts/inspector-*.png)."""
    playwright = pytest.importorskip("playwright.async_api", reason="playwright is not installed")
    expect = playwright.expect
    expect.set_options(timeout=30_000)
    stack.start_service()
    stack.start_processor("p-ui2")
    inspector = Inspector(stack)
    ARTIFACTS.mkdir(exist_ok=True)
    held = await client.invoke_async(
        "expense_approval",
        {"expense_id": "e-ui", "amount_cents": 4200, "hold_seconds": 3600},
        id="expense-ui-1",
    )
    await client.invoke("hello_workflow", {"name": "UI"}, timeout=30)
    await client.invoke_async("greet_many", {"names": ["Ada", "Grace"]})
    signalled = await client.invoke_async("expense_by_signal", {}, id="signal-ui-1")

    async with playwright.async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            page = await browser.new_page(viewport={"width": 1440, "height": 1000})
            page.set_default_timeout(30_000)
            page.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))

            # The detail page: the hold (a sleep) and the approval (an awakeable) both wait.
            await page.goto(f"{inspector.url}/executions/{held}")
            await expect(page.locator("#live")).to_have_class(re.compile(r"\bon\b"))
            sleep = page.locator('li.step[data-kind="sleep"]')
            awakeable = page.locator('li.step[data-kind="awakeable"]')
            await expect(sleep).to_have_attribute("data-state", "waiting")
            await expect(sleep.locator(".what")).to_contain_text("sleeps 1 h 0 min, wakes")
            await expect(sleep.locator(".bar")).to_have_class(re.compile(r"\bwait\b.*\bpending\b"))
            await expect(awakeable).to_have_attribute("data-state", "waiting")
            await expect(page.locator("#actions [data-action]")).to_have_count(2)  # pause, cancel
            await page.evaluate("window.__samePage = 'held'")
            await page.screenshot(
                path=str(ARTIFACTS / "inspector-detail-waiting.png"), full_page=True
            )

            # Resolve the awakeable from its form: the step shows the payload, live.
            await awakeable.locator("textarea").fill('{"approver": "ann"}')
            await awakeable.get_by_role("button", name="Resolve").click()
            await expect(awakeable).to_have_attribute("data-state", "completed")
            await awakeable.locator("details").evaluate("d => d.open = true")
            await expect(awakeable.locator("pre")).to_contain_text('"approver": "ann"')
            await expect(sleep).to_have_attribute("data-state", "waiting")  # the hold goes on
            assert await page.evaluate("window.__samePage") == "held"  # never reloaded

            # A signal from the page: the waiting "approved" has its own form.
            await page.goto(f"{inspector.url}/executions/{signalled}")
            wait = page.locator('li.step[data-kind="signal"]')
            await expect(wait).to_have_attribute("data-state", "waiting")
            await wait.locator("textarea").fill('{"by": "carol"}')
            await wait.get_by_role("button", name="Send approved").click()
            await expect(page.locator("#status-badge .badge")).to_have_text("completed")
            await expect(page.locator("#output")).to_contain_text('"by": "carol"')

            # Schedules: create one from the page, see its next fire time, pause, resume, delete.
            await page.goto(f"{inspector.url}/schedules")
            form = page.locator("#schedule-form")
            await form.locator('input[name="name"]').fill("ui-beat")
            await form.locator('input[name="workflow"]').fill("hello_workflow")
            await form.locator('input[name="every"]').fill("3600")
            await form.locator('textarea[name="args"]').fill('{"name": "schedule"}')
            await form.get_by_role("button", name="Create").click()
            row = page.locator('tr[data-schedule="ui-beat"]')
            await expect(row).to_contain_text("every 1h")
            await expect(row.locator(".next-fire time")).to_have_count(1)
            await row.get_by_role("button", name="Pause").click()
            await expect(row).to_contain_text("paused")
            assert (await client.get_schedule("ui-beat")).paused
            await row.get_by_role("button", name="Resume").click()
            await expect(row).to_contain_text("active")
            await client.create_schedule(
                "nightly", "hello_workflow", {"name": "night"}, cron="0 30 2 * * *",
                timezone="Europe/Amsterdam",
            )  # fmt: skip
            await page.locator("#live-region").evaluate("r => htmx.trigger(r, 'refresh')")
            await expect(page.locator('tr[data-schedule="nightly"]')).to_be_visible()
            await page.screenshot(path=str(ARTIFACTS / "inspector-schedules.png"), full_page=True)
            await row.get_by_role("button", name="Delete").click()
            await expect(row).to_have_count(0)
            assert [s.name for s in await client.list_schedules()] == ["nightly"]

            # Issue 16: the fleet page names the live processor and what it serves, both ways.
            await page.goto(f"{inspector.url}/fleet")
            hello = page.locator('table.fleet-workflows tr[data-workflow="hello_workflow"]')
            await expect(hello).to_contain_text("p-ui2")
            await expect(hello).to_contain_text("durable-hello-workflow")
            proc = page.locator('table.fleet-processors tr[data-processor="p-ui2"]')
            await expect(proc).to_contain_text("expense_approval")

            # The list, for the record.
            await page.goto(f"{inspector.url}/")
            await expect(page.locator(f'tr[data-id="{held}"] .badge')).to_have_text("suspended")
            await page.screenshot(path=str(ARTIFACTS / "inspector-list.png"), full_page=True)
        finally:
            await browser.close()
