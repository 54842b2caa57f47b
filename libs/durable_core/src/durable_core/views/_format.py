"""Times and durations for people, shared by the CLI and the inspector's templates."""

from __future__ import annotations

from datetime import datetime

from durable_core._time import from_ms, iso

__all__ = ["format_duration", "format_time", "from_ms", "iso"]


def format_duration(ms: float | None) -> str:
    """``850 ms``, ``3.20 s``, ``4 min 5 s``, ``2 h 10 min``, ``3 d 4 h``; ``–`` if unknown."""
    if ms is None:
        return "–"
    if ms < 1000:
        return f"{ms:.0f} ms" if ms >= 10 else f"{ms:.1f} ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.2f} s" if seconds < 10 else f"{seconds:.1f} s"
    minutes, sec = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {sec} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


def format_time(value: str | datetime | None) -> str:
    """``2026-11-28 16:03:12.345Z`` from an ISO time or a datetime; ``–`` if unknown."""
    if isinstance(value, datetime):
        value = iso(value)
    if not value:
        return "–"
    return value.replace("T", " ")
