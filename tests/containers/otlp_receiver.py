"""A stand-in for Jaeger in the container tests: an OTLP/gRPC trace receiver (port 4317).

It runs in a container of the durable images (they carry grpcio and opentelemetry-proto) and
prints one JSON line per received span on stdout, where the test reads it with `docker logs`.
No Jaeger image can be had where these tests run; what the services send is the same.
"""

from __future__ import annotations

import json
import sys
from concurrent import futures
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    def Export(self, request: Any, context: Any) -> Any:  # noqa: N802 - the gRPC method's name
        for rs in request.resource_spans:
            service = next(
                (a.value.string_value for a in rs.resource.attributes if a.key == "service.name"),
                "",
            )
            for ss in rs.scope_spans:
                for s in ss.spans:
                    line = {
                        "service": service,
                        "name": s.name,
                        "trace_id": s.trace_id.hex(),
                        "span_id": s.span_id.hex(),
                        "parent_id": s.parent_span_id.hex(),
                    }
                    print("SPAN " + json.dumps(line), flush=True)
        return trace_service_pb2.ExportTraceServiceResponse()


def main() -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Receiver(), server)
    server.add_insecure_port("0.0.0.0:4317")
    server.start()
    print("otlp receiver listening on 4317", flush=True)
    sys.stdout.flush()
    server.wait_for_termination()


if __name__ == "__main__":
    main()
