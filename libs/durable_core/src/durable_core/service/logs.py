"""Log set-up shared by the services: stderr, one line per record, nats-py kept quiet."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

__all__ = ["LOG_FORMAT", "OTEL_EXPORT_LOGGERS", "RateLimitFilter", "configure_logging"]

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# The OpenTelemetry SDK's batch processors log "Queue full, dropping span." once for every span
# they drop (opentelemetry-sdk >= 1.34: ``opentelemetry.sdk._shared_internal``; before that
# ``opentelemetry.sdk.trace.export``), on the thread that ends the span: the event loop's.
# With the OTLP collector unreachable that is a line per span on stderr.
OTEL_EXPORT_LOGGERS = ("opentelemetry.sdk._shared_internal", "opentelemetry.sdk.trace.export")


class RateLimitFilter(logging.Filter):
    """Lets one record of each message (its format string) through per ``interval`` seconds;
    the next one that passes says how many were held back meanwhile. ERROR and above always
    pass."""

    def __init__(self, interval: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.interval = interval
        self._clock = clock
        self._lock = threading.Lock()  # the SDK's export thread logs too
        self._next: dict[str, float] = {}  # message -> when the next one may pass
        self._held: dict[str, int] = {}  # message -> how many were dropped since the last

    def filter(self, record: logging.LogRecord) -> bool:
        """Whether ``record`` is logged (it may get the count of those held back)."""
        if record.levelno >= logging.ERROR:
            return True
        key = str(record.msg)
        with self._lock:
            now = self._clock()
            if now < self._next.get(key, float("-inf")):
                self._held[key] = self._held.get(key, 0) + 1
                return False
            self._next[key] = now + self.interval
            held = self._held.pop(key, 0)
        if held:
            record.msg = f"{key} ({held} more like it in the last {self.interval:.0f}s not logged)"
        return True


def configure_logging(level: str, handler: logging.Handler | None = None) -> None:
    """Log to stderr (through ``handler`` when given), quieten nats-py's chatter, and let the
    OpenTelemetry SDK's "Queue full, dropping span" through once a minute, with a count."""
    if handler is None:
        logging.basicConfig(level=level, format=LOG_FORMAT)
    else:
        logging.basicConfig(level=level, handlers=[handler])
    logging.getLogger("nats").setLevel(logging.WARNING)
    for name in OTEL_EXPORT_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RateLimitFilter) for f in logger.filters):
            # First: the SDK's own DuplicateFilter (added when it is imported) would drop
            # records before this one counted them.
            logger.filters.insert(0, RateLimitFilter())
