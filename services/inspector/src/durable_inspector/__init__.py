"""durable_inspector: an HTTP API and a web UI over the executions of the durable engine.

``create_app(settings)`` (in :mod:`durable_inspector.app`) builds the ASGI app; ``main()`` (in
:mod:`durable_inspector.main`) serves it with uvicorn.
"""

__version__ = "0.1.0"
