"""Asking NATS until it answers: every operator of the workload retries its call so."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Answer(Generic[T]):
    """How ``persist`` ended after ``attempts`` calls: a value, an error it ends at
    (``refused``), or the last error when it gave up (``error``)."""

    attempts: int
    value: T | None = None
    refused: Exception | None = None
    error: Exception | None = None


async def persist(
    act: Callable[[], Awaitable[T]],
    give_up: float,
    *,
    final: tuple[type[Exception], ...] = (),
    on_error: Callable[[int, Exception], None] | None = None,
) -> Answer[T]:
    """Call ``act`` (40 s each) until it answers, retrying errors of every kind (NATS's, under
    faults) with a growing pause for ``give_up`` seconds; one of ``final`` ends it at once.
    ``on_error(attempt, error)`` hears of each error retried."""
    deadline = time.monotonic() + give_up
    attempt = 0
    while True:
        attempt += 1
        try:
            return Answer(attempt, value=await asyncio.wait_for(act(), timeout=40))
        except final as e:
            return Answer(attempt, refused=e)
        except Exception as e:  # noqa: BLE001 - NATS errors of every kind: retry
            if time.monotonic() > deadline:
                return Answer(attempt, error=e)
            if on_error is not None:
                on_error(attempt, e)
            await asyncio.sleep(min(0.2 * attempt, 2.0))
