"""Stopping a service that is still starting."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Iterator

__all__ = ["cancel_on_signals"]

SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextlib.contextmanager
def cancel_on_signals() -> Iterator[asyncio.Event]:
    """Until the service installs its own handlers, SIGTERM or SIGINT cancels the calling
    task; the event says one came. A service runs as PID 1 in its container, where a signal
    nobody handles is ignored: one still waiting for NATS or the engine's streams took the
    whole grace period to stop (and was then killed)."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    came = asyncio.Event()

    def cancel() -> None:
        came.set()
        if task is not None:
            task.cancel()

    for sig in SIGNALS:
        loop.add_signal_handler(sig, cancel)
    try:
        yield came
    finally:
        for sig in SIGNALS:
            loop.remove_signal_handler(sig)
