"""Bounded waits for tests: poll a condition until it holds, never a bare sleep."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar, overload

T = TypeVar("T")


def assert_eventually(
    check: Callable[[], T],
    timeout: float,
    what: str,
    *,
    interval: float = 0.2,
    retry_on: type[Exception] | tuple[type[Exception], ...] = (),
) -> T:
    """Call ``check`` until it returns something truthy, and return that.

    Args:
        check: Returns the awaited value, or something falsy while the condition does not hold.
        timeout: Seconds; ``check`` runs at least once, and once more after the deadline.
        what: What is awaited, for the failure message.
        interval: Seconds between two calls.
        retry_on: Exceptions of these types from ``check`` mean "not yet" (the last one is
            chained to the failure); any other exception ends the wait at once.

    Raises:
        AssertionError: it never did within ``timeout`` seconds; the message says ``what``.
    """
    deadline = time.monotonic() + timeout
    while True:
        last: Exception | None = None
        try:
            value = check()
        except retry_on as e:
            last = e
        else:
            if value:
                return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}") from last
        time.sleep(interval)


@overload
async def assert_eventually_async(
    check: Callable[[], Awaitable[T]],
    timeout: float,
    what: str,
    *,
    interval: float = ...,
    retry_on: type[Exception] | tuple[type[Exception], ...] = ...,
) -> T: ...


@overload
async def assert_eventually_async(
    check: Callable[[], T],
    timeout: float,
    what: str,
    *,
    interval: float = ...,
    retry_on: type[Exception] | tuple[type[Exception], ...] = ...,
) -> T: ...


async def assert_eventually_async(
    check: Callable[[], Awaitable[T]] | Callable[[], T],
    timeout: float,
    what: str,
    *,
    interval: float = 0.1,
    retry_on: type[Exception] | tuple[type[Exception], ...] = (),
) -> T:
    """As ``assert_eventually``, in a coroutine: the event loop runs on between two checks.

    ``check`` may be a coroutine function or a plain one (then it must not block).
    """
    deadline = time.monotonic() + timeout
    while True:
        last: Exception | None = None
        try:
            value = check()
            if inspect.isawaitable(value):
                value = await value
        except retry_on as e:
            last = e
        else:
            if value:
                return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}") from last
        await asyncio.sleep(interval)
