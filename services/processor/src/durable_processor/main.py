"""Entry point: ``durable-processor`` / ``python -m durable_processor``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import signal
import sys
from collections.abc import Sequence

from durable_core import Client, DurableError, Worker, load_plugins
from durable_core.admin import Engine
from durable_core.service.metrics_server import MetricsServer
from durable_core.service.metrics_server import start_metrics_server as serve_metrics
from durable_core.service.signals import cancel_on_signals
from durable_core.service.telemetry import shutdown_tracing
from durable_core.tracing import TracingInterceptor
from durable_processor.metrics import MetricsInterceptor, ProcessorMetrics, poll_consumer
from durable_processor.settings import ProcessorSettings, load_settings
from durable_processor.telemetry import (
    LogContextInterceptor,
    configure_logging,
    configure_tracing,
)

log = logging.getLogger("durable_processor")

GC_THRESHOLD = 20_000  # allocations between young-generation collections (Python: 700)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line's options (each overrides its setting)."""
    p = argparse.ArgumentParser(
        prog="durable-processor",
        description="Run durable workflow invocations from NATS JetStream.",
    )
    p.add_argument("--nats-url", help="NATS URL(s), comma-separated (env NATS_URL)")
    p.add_argument("--max-concurrent", type=int, help="executions running at once (default 100)")
    p.add_argument("--ack-wait", type=float, help="seconds before redelivery (default 30)")
    p.add_argument(
        "--heartbeat",
        type=float,
        help="seconds between in-progress acks; 0 = ack-wait/6, -1 = none",
    )
    p.add_argument("--replicas", type=int, help="JetStream replicas (1, 3 or 5)")
    p.add_argument("--processor-id", help="name of this processor in journals and logs")
    p.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR")
    p.add_argument(
        "--load-plugins",
        help="installed plugins to load, comma-separated entry-point names ('*' = all, "
        "'none' = none; env DURABLE_LOAD_PLUGINS)",
    )
    return p.parse_args(argv)


async def submit_test_command(settings: ProcessorSettings) -> None:
    """Submit one hello_workflow, as the seed's SUBMIT_TEST_COMMAND=true did."""
    async with await Client.connect(settings.nats, engine=settings.engine) as client:
        # Before this processor registers: queued for it rather than refused.
        invocation_id = await client.invoke_async(
            "hello_workflow", {"name": ""}, queue_unserved=True
        )
        log.info("submitted test command: invocation_id=%s handler=hello_workflow", invocation_id)


async def serve(settings: ProcessorSettings, *, tracing: bool = False) -> int:
    """Run the processor until SIGTERM or SIGINT; the process's exit code."""
    with cancel_on_signals() as came:  # while it connects and sets the streams up
        try:
            return await _serve(settings, tracing=tracing)
        except asyncio.CancelledError:
            if not came.is_set():
                raise
            log.info("processor stopped while starting")
            return 0


async def _serve(settings: ProcessorSettings, *, tracing: bool) -> int:
    plugins = load_plugins(only=settings.load_plugins)
    log.info(
        "plugins: %s; workflows: %s",
        ", ".join(plugins.plugins) or "none",
        ", ".join(plugins.registry.names()) or "none",
    )
    metrics = ProcessorMetrics()
    # The one place the streams are created: with this processor's replicas and limits.
    worker = await Worker.connect(
        settings.nats,
        settings.engine,
        plugins.registry,
        settings.worker,
        # Outermost first: the run's span is current while the others and the plugins' run.
        # Without tracing configured the interceptor is left out: even as a no-op it costs
        # ~30 us a step.
        interceptors=(
            *([TracingInterceptor()] if tracing else []),
            LogContextInterceptor(),
            MetricsInterceptor(metrics),
            *plugins.interceptors,
        ),
        service_defaults=plugins.service_addresses,
    )
    tune_gc()
    server = await start_metrics_server(settings, metrics, worker.engine, worker)
    poller = asyncio.create_task(poll_consumer(worker.engine, settings.worker.consumer, metrics))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.stop)
    if settings.submit_test_command:
        await submit_test_command(settings)
    try:
        await worker.run()
    finally:
        poller.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await poller
        if server is not None:
            await server.stop()
        await worker.close()
    log.info("processor stopped (completed %d, failed %d)", worker.completed, worker.failed)
    return 0


def tune_gc() -> None:
    """Collect garbage less often: every run allocates thousands of short-lived objects (tasks,
    futures, messages), and with the default threshold (700) the collector took ~15% of the
    processor's CPU under load. The objects alive after start-up (modules, plugins) are frozen
    out of every later collection."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, *gc.get_threshold()[1:])


async def start_metrics_server(
    settings: ProcessorSettings,
    metrics: ProcessorMetrics,
    engine: Engine,
    worker: Worker | None = None,
) -> MetricsServer | None:
    """Serve /metrics, /livez, /readyz (consuming commands) and /healthz (connected to NATS),
    unless the port is 0."""
    return await serve_metrics(
        metrics.registry,
        lambda: engine.is_connected,
        settings.metrics_host,
        settings.metrics_port,
        ready=worker.not_ready if worker is not None else None,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """The ``durable-processor`` command; its exit code."""
    args = parse_args(argv)
    heartbeat = args.heartbeat
    overrides = {
        "nats_url": args.nats_url,
        "max_concurrent": args.max_concurrent,
        "ack_wait": args.ack_wait,
        "heartbeat": None if heartbeat is None else (heartbeat if heartbeat >= 0 else -1),
        "replicas": args.replicas,
        "processor_id": args.processor_id,
        "log_level": args.log_level,
        "load_plugins": args.load_plugins,
    }
    try:
        settings = load_settings(overrides)
    except DurableError as e:
        print(f"durable-processor: configuration error: {e}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    try:
        provider = configure_tracing()
    except DurableError as e:
        print(f"durable-processor: configuration error: {e}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(serve(settings, tracing=provider is not None))
    except DurableError as e:
        log.error("%s", e)
        return 1
    finally:
        shutdown_tracing(provider)  # flushes the spans still batched
