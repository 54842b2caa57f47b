"""Entry point: ``durable-scheduler`` / ``python -m durable_scheduler``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import signal
import sys
from collections.abc import Sequence

from durable_core import DurableError
from durable_core.admin import Engine
from durable_core.service.logs import configure_logging
from durable_core.service.metrics_server import MetricsServer, Ready
from durable_core.service.metrics_server import start_metrics_server as serve_metrics
from durable_core.service.signals import cancel_on_signals
from durable_core.service.telemetry import configure_tracing, shutdown_tracing
from durable_scheduler.janitor import Janitor
from durable_scheduler.metrics import SchedulerMetrics
from durable_scheduler.redrive import Redriver
from durable_scheduler.runner import Scheduler
from durable_scheduler.schedule_sweep import ScheduleSweep
from durable_scheduler.settings import SchedulerSettings, load_settings
from durable_scheduler.stranded import StrandedRuns

log = logging.getLogger("durable_scheduler")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line's options (each overrides its setting)."""
    p = argparse.ArgumentParser(
        prog="durable-scheduler",
        description="Start workflow invocations when their schedules fire (any number of "
        "replicas: each tick goes to one).",
    )
    p.add_argument("--nats-url", help="NATS URL(s), comma-separated (env NATS_URL)")
    p.add_argument("--ack-wait", type=float, help="seconds before a held tick moves on (10)")
    p.add_argument("--max-concurrent", type=int, help="ticks handled at once (default 16)")
    p.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR")
    return p.parse_args(argv)


async def start_metrics_server(
    settings: SchedulerSettings,
    metrics: SchedulerMetrics,
    engine: Engine,
    ready: Ready | None = None,
) -> MetricsServer | None:
    """Serve /metrics, /livez, /readyz and /healthz (200 while connected to NATS), unless the
    port is 0."""
    return await serve_metrics(
        metrics.registry,
        lambda: engine.is_connected,
        settings.metrics_host,
        settings.metrics_port,
        ready=ready,
    )


async def serve(settings: SchedulerSettings) -> int:
    """Run the scheduler until SIGTERM or SIGINT; the process's exit code."""
    with cancel_on_signals() as came:  # while it waits for NATS and the streams
        try:
            return await _serve(settings)
        except asyncio.CancelledError:
            if not came.is_set():
                raise
            log.info("scheduler stopped while starting")
            return 0


async def _serve(settings: SchedulerSettings) -> int:
    # NATS first (a wrong URL fails at once), then the probes, then the engine's streams,
    # which only processors create: wait for them, not ready meanwhile.
    engine = await Engine.connect(settings.nats, settings.engine, bind=False)
    metrics = SchedulerMetrics()
    scheduler: Scheduler | None = None

    def not_ready() -> str | None:
        if scheduler is not None:
            return scheduler.not_ready()
        if not engine.is_connected:
            return "not connected to NATS (reconnecting)"
        return (
            f"waiting for the engine's streams (prefix {settings.engine.prefix}): start a processor"
        )

    server = await start_metrics_server(settings, metrics, engine, not_ready)
    try:
        await engine.bind(wait=math.inf)
        scheduler = Scheduler(engine, settings, metrics)
        await _run(engine, settings, metrics, scheduler)
    finally:
        if server is not None:
            await server.stop()
        await engine.close()
    return 0


async def _run(
    engine: Engine,
    settings: SchedulerSettings,
    metrics: SchedulerMetrics,
    scheduler: Scheduler,
) -> None:
    redriver = Redriver(engine, metrics)
    janitor = Janitor(
        engine,
        settings.engine.retention,
        settings.retention_sweep,
        metrics,
        note_for=settings.expired_note_for,
        payload_grace=settings.engine.payload_grace,
    )
    workers: list[Scheduler | Redriver | Janitor | StrandedRuns | ScheduleSweep] = [
        scheduler,
        redriver,
        janitor,
    ]
    sweep = settings.stranded_sweep.total_seconds()
    if sweep:
        workers.append(
            StrandedRuns(
                engine,
                redriver,
                metrics,
                interval=sweep,
                min_age=settings.stranded_after.total_seconds(),
                confirm=sweep,
            )
        )
    schedule_sweep = settings.schedule_sweep.total_seconds()
    if schedule_sweep:
        workers.append(ScheduleSweep(engine, metrics, interval=schedule_sweep))
    loop = asyncio.get_running_loop()

    def stop() -> None:
        for w in workers:
            w.stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    tasks = [asyncio.create_task(w.run()) for w in workers]
    await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    stop()  # one failed (or both stopped): stop the other too
    for task in tasks:
        await task  # raises what failed


def main(argv: Sequence[str] | None = None) -> int:
    """The ``durable-scheduler`` command; its exit code."""
    args = parse_args(argv)
    overrides = {
        "nats_url": args.nats_url,
        "ack_wait": args.ack_wait,
        "max_concurrent": args.max_concurrent,
        "log_level": args.log_level,
    }
    try:
        settings = load_settings(overrides)
    except DurableError as e:
        print(f"durable-scheduler: configuration error: {e}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    try:
        provider = configure_tracing("durable-scheduler")
    except DurableError as e:
        print(f"durable-scheduler: configuration error: {e}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(serve(settings))
    except DurableError as e:
        log.error("%s", e)
        return 1
    finally:
        shutdown_tracing(provider)
