"""Bounded waits for tests: poll a condition until it holds, never a bare sleep."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


def assert_eventually(
    check: Callable[[], T], timeout: float, what: str, *, interval: float = 0.2
) -> T:
    """Call ``check`` until it returns something truthy, and return that.

    Raises:
        AssertionError: it never did within ``timeout`` seconds; the message says ``what``.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


async def assert_eventually_async(
    check: Callable[[], Awaitable[T]], timeout: float, what: str, *, interval: float = 0.1
) -> T:
    """Await ``check`` until it returns something truthy, and return that (as above)."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(interval)
