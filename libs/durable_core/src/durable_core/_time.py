"""Stored times (ms since the epoch) as datetimes and back as text: used by the client and the
views, kept apart so that importing the client does not import the views."""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["from_ms", "iso"]


def iso(value: datetime | None) -> str | None:
    """UTC ISO 8601 with milliseconds and a ``Z``."""
    if value is None:
        return None
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def from_ms(ms: int) -> datetime | None:
    """A stored time (ms since the epoch, 0 = unknown) as a UTC datetime."""
    if not ms:
        return None
    try:
        return datetime.fromtimestamp(ms / 1000, tz=UTC)
    except (OverflowError, ValueError, OSError):
        return None  # an absurd stored time: unknown rather than an error
