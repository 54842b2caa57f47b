"""Log set-up shared by the services: stderr, one line per record, nats-py kept quiet."""

from __future__ import annotations

import logging

__all__ = ["LOG_FORMAT", "configure_logging"]

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: str, handler: logging.Handler | None = None) -> None:
    """Log to stderr (through ``handler`` when given) and quieten nats-py's chatter."""
    if handler is None:
        logging.basicConfig(level=level, format=LOG_FORMAT)
    else:
        logging.basicConfig(level=level, handlers=[handler])
    logging.getLogger("nats").setLevel(logging.WARNING)
