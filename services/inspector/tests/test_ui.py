"""The HTML pages over a fake client: list, detail, fragments, errors, static assets."""

from __future__ import annotations

import re
from typing import Any

from durable_core import Failure, Status

from ._fakes import FakeClient, result, step, summary


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
    )
    return f


def test_list_page_shows_filters_counts_and_rows(make_client: Any) -> None:
    with make_client(fake()) as (tc, _):
        page = tc.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        html = page.text
        assert '<body data-page="list">' in html
        assert 'id="live-region"' in html and "/static/app.js" in html
        assert re.search(r'data-count-status="running"[^>]*>running <b>1</b>', html)
        assert re.search(r'class="chip on"[^>]*>all <b>3</b>', html)
        for ident in ("run-1", "done-1", "bad-1"):
            assert f'href="/executions/{ident}"' in html
        assert '<option value="order_processing">' in html  # the workflow filter knows it
        assert "http" not in html.split("<main>")[0].replace("http-equiv", "")  # no CDN assets


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


def test_detail_page_shows_steps_buttons_history_and_trace(make_client: Any) -> None:
    with make_client(fake()) as (tc, _):
        html = tc.get("/executions/run-1").text
        assert '<body data-page="detail" data-id="run-1">' in html
        for action in ("pause", "resume", "cancel", "retry", "rerun", "fork"):
            assert f'data-action="{action}"' in html
        assert "OrderService/Validate" in html and 'class="tag executed"' in html
        assert 'id="action-message"' in html
        assert 'href="http://jaeger.test:16686/search?tags=' in html
        assert re.search(r'id="history"><li><span class="badge s-running"', html)
        bad = tc.get("/executions/bad-1").text
        assert 'href="http://jaeger.test:16686/trace/4bf92f3577b34da6a3ce929d0e0e4736"' in bad
        assert "&lt;no&gt; &amp; no" in bad and "<no>" not in bad  # escaped
        assert "Failed at step 1" in bad


def test_detail_fragment_and_unknown_execution(make_client: Any) -> None:
    with make_client(fake()) as (tc, _):
        fragment = tc.get("/executions/run-1?fragment=1").text
        assert "<html" not in fragment and 'class="timeline"' in fragment
        missing = tc.get("/executions/nope")
        assert missing.status_code == 404 and "no invocation with id nope" in missing.text


def test_static_assets_are_served(make_client: Any) -> None:
    with make_client(fake()) as (tc, _):
        js = tc.get("/static/app.js")
        assert js.status_code == 200 and "EventSource" in js.text
        css = tc.get("/static/style.css")
        assert css.status_code == 200 and ".badge" in css.text
        for text in (js.text, css.text):  # nothing fetched from outside: works offline
            assert not re.search(r"https?://|url\(|@import", text)
