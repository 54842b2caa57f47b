"""Example gRPC server for durable workflow demos and tests.

Serves ``durable_examples.hello.v1.HelloService``,
``durable_examples.order.v1.OrderService`` and the standard gRPC health service
on one ``grpc.aio`` server. Run it with ``hello-service`` or
``python -m hello_service``; embed it with :func:`hello_service.server.build_server`.
"""
