"""Plumbing shared by the engine's own services (processor, scheduler, inspector).

Not part of the client API, and imported module by module so that each service needs only
what it uses (``pip install durable-core[service]`` brings all of it):

- ``durable_core.service.settings``: settings from dynaconf (defaults file, settings file,
  ``DURABLE_*`` variables, flags) and the checks every service shares;
- ``durable_core.service.logs``: log set-up;
- ``durable_core.service.telemetry``: tracing from the ``OTEL_*`` variables (opentelemetry-sdk);
- ``durable_core.service.metrics_server``: ``/metrics`` and ``/healthz`` (prometheus-client).
"""
