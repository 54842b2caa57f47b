"""A call's request bytes are the same in every process: the step's input hash (compared on
replay) and the idempotency store's request hash are taken over them."""

from __future__ import annotations

import subprocess
import sys

_BYTES_OF_A_MAP = r"""
from google.protobuf import struct_pb2
from durable_core._grpc import grpc_service


class Stub:
    def __init__(self, channel):
        self.Put = channel.unary_unary(
            "/test.Store/Put",
            request_serializer=struct_pb2.Struct.SerializeToString,
            response_deserializer=struct_pb2.Struct.FromString,
        )


request = struct_pb2.Struct()
for i in range(12):
    request[f"key-{i}"] = i
print(grpc_service(Stub).Put.request_serializer(request).hex())
"""


def test_a_request_with_a_map_serializes_the_same_in_every_process() -> None:
    """The generated serializer writes a map's entries in an order that changes from process
    to process: such a call replayed on another processor diverged from its journal (blocked
    for good), and its retry after a crash was refused by the service as another request."""
    runs = {
        subprocess.run(
            [sys.executable, "-c", _BYTES_OF_A_MAP], capture_output=True, text=True, check=True
        ).stdout.strip()
        for _ in range(4)
    }
    assert len(runs) == 1, runs
