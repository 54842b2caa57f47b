"""The HTML pages over a fake client: list, detail, schedules, docs, fragments, errors, assets."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from html import unescape
from typing import Any

from durable_core import Failure, Status
from durable_core._codec import encode
from durable_core._pb.durable.v1 import durable_pb2 as pb
from durable_core.schedules import Schedule

from ._fakes import T0, FakeClient, result, step, summary


def ms(seconds: float) -> int:
    return int((T0 + timedelta(seconds=seconds)).timestamp() * 1000)


def fake() -> FakeClient:
    f = FakeClient(
        [
            summary("run-1", workflow="order_processing", status=Status.RUNNING, created=1),
            summary("done-1", workflow="hello_workflow", status=Status.COMPLETED, created=2),
            summary(
                "bad-1",
                workflow="hello_workflow",
                status=Status.FAILED,
                created=3,
                trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
            ),
            summary("wait-1", workflow="expense_approval", status=Status.SUSPENDED, created=4),
        ]
    )
    f.results["run-1"] = result(
        "run-1",
        workflow="order_processing",
        status=Status.RUNNING,
        steps=(step(1, "/durable.examples.order.v1.OrderService/Validate", {"valid": True}),),
    )
    f.results["bad-1"] = result(
        "bad-1",
        workflow="hello_workflow",
        status=Status.FAILED,
        steps=(step(1, "greet", None, failure=Failure("TerminalError", "<no> & no", 1)),),
        failure=Failure("TerminalError", "<no> & no", 1),
        trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
    )
    f.results["wait-1"] = result(
        "wait-1",
        workflow="expense_approval",
        status=Status.SUSPENDED,
        steps=(
            step(1, "ask", "awk.wait-1.1"),
            pb.JournalEntry(
                kind=pb.ENTRY_KIND_SLEEP, step=2, name="sleep", timestamp_ms=ms(2),
                wake_at_ms=ms(3600),
            ),
            pb.JournalEntry(
                kind=pb.ENTRY_KIND_AWAKEABLE, step=3, name="awk.wait-1.1", timestamp_ms=ms(2)
            ),
            pb.JournalEntry(
                kind=pb.ENTRY_KIND_SIGNAL_WAIT, step=4, name="approved", timestamp_ms=ms(2)
            ),
            pb.JournalEntry(
                kind=pb.ENTRY_KIND_CHILD, step=5, name="hello_workflow", timestamp_ms=ms(2),
                output=encode("wait-1-5"), detached=True,
            ),
        ),
        journal=(pb.JournalEntry(kind=pb.ENTRY_KIND_SUSPENDED, timestamp_ms=ms(2)),),
        parent_id="parent-9",
        rerun_of="first-0",
        partition_key="k" * 60,
    )  # fmt: skip
    return f


def test_list_page_shows_filters_counts_and_rows(make_client: Any) -> None:
    with make_client(fake()) as (tc, _):
        page = tc.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        html = page.text
        assert '<body data-page="list">' in html
        assert 'id="live-region"' in html and "/static/app.js" in html
        assert 'sse-connect="/api/events"' in html and "/static/vendor/htmx/htmx.min.js" in html
        assert re.search(r'data-count-status="running"[^>]*>running <b>1</b>', html)
        assert re.search(r'class="chip on"[^>]*>all <b>4</b>', html)
        for ident in ("run-1", "done-1", "bad-1"):
            assert f'href="/executions/{ident}"' in html
        assert '<option value="order_processing">' in html  # the workflow filter knows it
        names = re.search(r"data-workflows='([^']*)'", html)
        assert names and "order_processing" in json.loads(unescape(names.group(1)))
        assert "http" not in html.split("<main>")[0].replace("http-equiv", "")  # no CDN assets
        assert 'href="/schedules"' in html and 'href="/docs"' in html


def test_list_page_filters_and_its_fragment(make_client: Any) -> None:
    with make_client(fake()) as (tc, _):
        html = tc.get("/?status=running&workflow=order_processing").text
        assert "/executions/run-1" in html and "/executions/done-1" not in html
        assert '<option value="running" selected>' in html
        fragment = tc.get("/?status=running&fragment=1").text
        assert "<html" not in fragment and "/executions/run-1" in fragment
        empty = tc.get("/?workflow=nothing").text
        assert "No executions match these filters." in empty


def test_list_page_bad_filter_is_an_html_400(make_client: Any) -> None:
    with make_client(fake()) as (tc, _):
        page = tc.get("/?status=sleeping")
        assert page.status_code == 400 and "unknown status" in page.text and "<html" in page.text
        # No live updates on an error page: its header does not say "connecting…" forever.
        assert 'id="live"' not in page.text


def test_detail_page_offers_only_legal_actions(make_client: Any) -> None:
    with make_client(fake()) as (tc, _):
        html = tc.get("/executions/run-1").text
        assert '<body data-page="detail" data-id="run-1">' in html
        offered = set(re.findall(r'data-action="(\w+)"', html))
        assert offered == {"pause", "cancel"}  # a running execution cannot be resumed or retried
        assert "OrderService/Validate" in html and 'class="tag state st-completed"' in html
        assert 'id="action-message"' in html
        assert re.search(r'id="history">\s*<li><span class="badge s-pending"', html)
        bad = tc.get("/executions/bad-1").text
        assert set(re.findall(r'data-action="(\w+)"', bad)) == {"retry", "rerun", "fork"}
        assert 'href="http://jaeger.test:16686/trace/4bf92f3577b34da6a3ce929d0e0e4736"' in bad
        assert "&lt;no&gt; &amp; no" in bad and "<no>" not in bad  # escaped
        assert "Failed at step 1" in bad


def test_detail_page_shows_waits_forms_and_lineage(make_client: Any) -> None:
    with make_client(fake()) as (tc, _):
        html = tc.get("/executions/wait-1").text
        sleep, awk, sig = (
            re.search(rf'<li class="step[^"]*" data-step="{n}".*?</li>', html, re.S).group(0)  # type: ignore[union-attr]
            for n in (2, 3, 4)
        )
        assert 'data-state="waiting"' in sleep and "sleeps 59 min 58 s, wakes" in sleep
        assert 'class="bar wait pending"' in sleep  # drawn as a wait, open-ended
        assert 'data-awakeable="awk.wait-1.1"' in awk and 'value="reject"' in awk
        assert 'class="wait-form signal-form"' in sig and 'data-signal="approved"' in sig
        assert 'id="signal-form"' in html  # any signal, from the side
        assert 'href="/executions/wait-1-5"' in html  # the child is a link
        assert '<dd id="parent-link"><a class="mono" href="/executions/parent-9">' in html
        assert 'href="/executions/first-0"' in html  # rerun of
        assert set(re.findall(r'data-action="(\w+)"', html)) == {"pause", "cancel"}


def test_detail_fragment_and_unknown_execution(make_client: Any) -> None:
    with make_client(fake()) as (tc, _):
        fragment = tc.get("/executions/run-1?fragment=1").text
        assert "<html" not in fragment and 'class="timeline"' in fragment
        assert 'id="actions"' in fragment  # the legal actions change with the status
        missing = tc.get("/executions/nope")
        assert missing.status_code == 404 and "no invocation with id nope" in missing.text


def test_schedules_page(make_client: Any) -> None:
    async def list_schedules() -> list[Schedule]:
        return [
            Schedule("nightly", "hello_workflow", cron="0 8 * * *", timezone="Europe/Amsterdam"),
            Schedule("beat", "hello_workflow", every=timedelta(seconds=90), paused=True),
        ]

    with make_client(FakeClient(list_schedules=list_schedules)) as (tc, _):
        html = tc.get("/schedules").text
        assert '<body data-page="schedules">' in html and 'id="schedule-form"' in html
        nightly = re.search(r'<tr data-schedule="nightly">.*?</tr>', html, re.S).group(0)  # type: ignore[union-attr]
        assert "cron 0 8 * * * (Europe/Amsterdam)" in nightly and "<time datetime=" in nightly
        assert 'data-schedule-action="pause"' in nightly
        beat = re.search(r'<tr data-schedule="beat">.*?</tr>', html, re.S).group(0)  # type: ignore[union-attr]
        assert "every 1m30s" in beat and 'data-schedule-action="resume"' in beat
        fragment = tc.get("/schedules?fragment=1").text
        assert "<html" not in fragment and 'data-schedule="beat"' in fragment


def test_docs_page_serves_swagger_ui_from_here(make_client: Any) -> None:
    with make_client(fake()) as (tc, _):
        html = tc.get("/docs").text
        assert "/static/vendor/swagger-ui/swagger-ui-bundle.js" in html
        assert "/static/docs.js" in html
        assert tc.get("/static/vendor/swagger-ui/swagger-ui-bundle.js").status_code == 200
        assert "validatorUrl: null" in tc.get("/static/docs.js").text


def test_metrics(make_client: Any) -> None:
    with make_client(fake(), token="s3cret") as (tc, _):
        tc.get("/api/executions/run-1", headers={"Authorization": "Bearer s3cret"})
        text = tc.get("/metrics").text  # open, like /healthz: Prometheus scrapes it
        assert 'durable_inspector_executions{status="running"} 1.0' in text
        assert "durable_inspector_index_ready 1.0" in text
        assert re.search(
            r'durable_inspector_http_requests_total\{method="GET",'
            r'route="/api/executions/\{invocation_id\}",status="200"\} 1.0',
            text,
        ), text


def test_static_assets_are_served(make_client: Any) -> None:
    with make_client(fake()) as (tc, _):
        js = tc.get("/static/app.js")
        assert js.status_code == 200 and "htmx:sseOpen" in js.text
        css = tc.get("/static/style.css")
        assert css.status_code == 200 and ".badge" in css.text
        for text in (js.text, css.text):  # nothing fetched from outside: works offline
            assert not re.search(r"https?://|url\(|@import", text)
        for vendored in ("htmx/htmx.min.js", "htmx-ext-sse/sse.min.js", "htmx/LICENSE"):
            assert tc.get(f"/static/vendor/{vendored}").status_code == 200


def test_detail_page_of_a_blocked_execution_says_why_and_offers_cancel_and_fork(
    make_client: Any,
) -> None:
    f = fake()
    f.results["stuck-1"] = result(
        "stuck-1",
        status=Status.BLOCKED,
        steps=(step(1, "charge", "ok"),),
        journal=(
            pb.JournalEntry(
                kind=pb.ENTRY_KIND_CLAIM, timestamp_ms=ms(5), plugin="shop", plugin_version="2.0"
            ),
        ),
        blocked_reason="replay diverged at step 2: <run 'charge'> & more",
        pinned_version="v-0123456789abcdef",
    )
    with make_client(f) as (tc, _):
        html = tc.get("/executions/stuck-1").text
        assert set(re.findall(r'data-action="(\w+)"', html)) == {"cancel", "fork"}
        assert 'class="badge s-blocked"' in html
        assert "replay diverged at step 2: &lt;run &#39;charge&#39;&gt; &amp; more" in html
        assert '<dd class="mono" id="pinned-version">v-0123456789abcdef</dd>' in html
        assert re.search(r'id="started-on"[^>]*>shop 2.0', html)
