"""A stand-in for Jaeger in the container tests: an OTLP/gRPC trace receiver (port 4317).

It runs in a container of the dev image (grpcio, opentelemetry-proto and durable_core are in it)
and prints one JSON line per received span on stdout, where the test reads it with `docker logs`.
No Jaeger image can be had where these tests run; what the services send is the same.
"""

from __future__ import annotations

import json
import sys
import threading
from concurrent import futures
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from durable_core.testing._otlp import span_records

# Exports arrive on several server threads. print() writes a line and its newline separately,
# so two threads' lines could run together ("SPAN {...}SPAN {...}": CI once); each batch goes
# out as one write under this lock.
_OUT = threading.Lock()


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    def Export(self, request: Any, context: Any) -> Any:  # noqa: N802 - the gRPC method's name
        lines = "".join(f"SPAN {json.dumps(span)}\n" for span in span_records(request))
        with _OUT:
            sys.stdout.write(lines)
            sys.stdout.flush()
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
