"""An OTLP/HTTP trace receiver for tests: what a collector's port 4318 does, in a thread.

It needs ``opentelemetry-proto`` (the services' OTLP exporters bring it), imported on first use.
"""

from __future__ import annotations

import http.server
import threading
from types import TracebackType
from typing import Any, Self


def span_records(request: Any) -> list[dict[str, str]]:
    """The spans of an ``ExportTraceServiceRequest``: service, name, trace, span and parent ids."""
    found = []
    for rs in request.resource_spans:
        service = next(
            (a.value.string_value for a in rs.resource.attributes if a.key == "service.name"), ""
        )
        for ss in rs.scope_spans:
            for s in ss.spans:
                found.append(
                    {
                        "service": service,
                        "name": s.name,
                        "trace_id": s.trace_id.hex(),
                        "span_id": s.span_id.hex(),
                        "parent_id": s.parent_span_id.hex(),
                    }
                )
    return found


class OtlpHttpReceiver:
    """Accepts ``POST /v1/traces`` (protobuf) on 127.0.0.1 and keeps each span's service, name,
    trace id and parent span id.

    Example:
        >>> with OtlpHttpReceiver() as receiver:  # doctest: +SKIP
        ...     os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = receiver.endpoint
    """

    def __init__(self) -> None:
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

        self.spans: list[dict[str, str]] = []
        self.paths: list[str] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                receiver.paths.append(self.path)
                request = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
                receiver._keep(request)
                reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        """The value for ``OTEL_EXPORTER_OTLP_ENDPOINT`` (the exporter adds ``/v1/traces``)."""
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def _keep(self, request: Any) -> None:
        self.spans += span_records(request)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
