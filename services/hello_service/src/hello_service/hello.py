"""HelloService: the smallest possible step target."""

from __future__ import annotations

from typing import Any

import grpc

from durable_examples.hello.v1 import hello_pb2, hello_pb2_grpc


def greeting(name: str) -> str:
    """Returns the greeting SayHello answers with.

    Args:
        name: Who to greet; empty means ``World``.

    Returns:
        ``Hello, <name>! Welcome to Durable Execution on NATS JetStream.``
    """
    return f"Hello, {name or 'World'}! Welcome to Durable Execution on NATS JetStream."


class HelloServicer(hello_pb2_grpc.HelloServiceServicer):
    """Implements ``durable_examples.hello.v1.HelloService``."""

    async def SayHello(  # noqa: N802 - name fixed by the proto
        self, request: hello_pb2.HelloRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> hello_pb2.HelloResponse:
        """Greets ``request.name``."""
        return hello_pb2.HelloResponse(message=greeting(request.name))
