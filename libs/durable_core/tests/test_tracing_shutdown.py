"""A service's exit waits a bounded time for its last spans: the SDK's own shutdown waited up
to 30 s for a collector that did not answer, longer than a processor's grace period."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from durable_core.service.telemetry import shutdown_tracing


class _Stuck(SpanExporter):
    """An exporter whose collector never answers (until released)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.exported = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.release.wait(60)
        self.exported += len(spans)
        return SpanExportResult.SUCCESS


def _provider(exporter: SpanExporter) -> TracerProvider:
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    for _ in range(3):
        with provider.get_tracer("t").start_as_current_span("s"):
            pass
    return provider


def test_a_collector_that_does_not_answer_holds_the_exit_for_the_timeout_only() -> None:
    exporter = _Stuck()
    provider = _provider(exporter)
    started = time.monotonic()
    try:
        assert shutdown_tracing(provider, timeout=0.5) is False
        assert time.monotonic() - started < 5
    finally:
        exporter.release.set()


def test_a_collector_that_answers_takes_the_last_spans() -> None:
    exporter = _Stuck()
    exporter.release.set()
    assert shutdown_tracing(_provider(exporter), timeout=10) is True
    assert exporter.exported == 3
    assert shutdown_tracing(None) is True
