"""NATS errors, as the rest of the engine sees them.

Which refusals are transient (a leader election, a reconnect: try again), which mean that a
conditional write found another revision, and the retry loop every call to NATS runs in. What
leaves the transport is durable_core's own exceptions (``raise X from e``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import nats.errors
import nats.js.errors

from durable_core.errors import (
    ConfigError,
    DurableError,
    InvalidInputError,
    NatsUnavailableError,
)

__all__ = [
    "CorruptJournalError",
    "JournalConflict",
    "JournalGone",
    "StateConflict",
    "is_engine_error",
    "is_transient",
    "retrying",
    "wrong_last",
]

log = logging.getLogger("durable_core.transport")

T = TypeVar("T")

# Errors that mean "the cluster is busy electing a leader or we are reconnecting": retry.
_TRANSIENT: tuple[type[BaseException], ...] = (
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.StaleConnectionError,
    nats.js.errors.ServiceUnavailableError,
    nats.js.errors.NoStreamResponseError,
    asyncio.TimeoutError,
)
# 10071: wrong last (subject) sequence; 10164: the same, as nats-server 2.12+ also words it.
WRONG_LAST_CODES = frozenset({10071, 10164})
INVALID_SCHEDULE = 10189  # message schedules pattern is invalid
STREAM_NAME_IN_USE = 10058  # a stream of that name exists with another configuration
NO_MESSAGE_FOUND = 10037  # a stream message get found nothing
ATOMIC_DISABLED = 10174  # an atomic batch sent to a stream without allow_atomic
BATCH_DUPLICATE = 10201  # an atomic batch holds a message id the stream has seen
_CLUSTER_BUSY_CODES = {
    10005,
    10008,
    10074,
    10075,
    10158,
    10167,
    10049,
}  # no peers / JS not ready / no quorum / resources / this message id still being proposed
# (a clustered leader answers 10158 to a retry while the first try is in flight: the retry
# then gets the duplicate ack, or "wrong last sequence" over our own entry) / too many requests
# / "error creating store for stream" (two services creating one stream at once in a cluster:
# the one that loses may get this rather than "name in use"; looking again finds the stream)


class JournalConflict(DurableError):  # noqa: N818 - a conflict, caught by type, never shown
    """An append found the journal moved on: another writer appended first."""

    def __init__(self, invocation_id: str, expected_seq: int) -> None:
        super().__init__(
            f"journal of {invocation_id} moved past sequence {expected_seq}: another writer won"
        )
        self.invocation_id = invocation_id
        self.expected_seq = expected_seq


class JournalGone(DurableError):  # noqa: N818 - caught by type (the facade), never shown
    """A journal read for a state found that state removed (the execution expired) or
    replaced (a new invocation took its id) while the journal was short of it."""

    def __init__(self, invocation_id: str) -> None:
        super().__init__(f"the state of {invocation_id} went while its journal was read")
        self.invocation_id = invocation_id


class CorruptJournalError(DurableError):
    """A journal holds a message that is not a journal entry."""


class StateConflict(DurableError):  # noqa: N818 - a conflict, caught by type, never shown
    """A conditional write (a state, a record) found a newer revision than it was based on."""


def is_engine_error(e: BaseException) -> bool:
    """Whether ``e`` is NATS failing the engine (not anything a workflow did)."""
    return isinstance(e, NatsUnavailableError | nats.errors.Error)


def is_transient(e: BaseException) -> bool:
    """Whether ``e`` goes away by itself (a leader election, a reconnect)."""
    if isinstance(e, _TRANSIENT):
        return True
    if isinstance(e, nats.js.errors.APIError):
        return e.code == 503 or e.err_code in _CLUSTER_BUSY_CODES
    return False


def wrong_last(e: nats.js.errors.APIError) -> bool:
    """A conditional KV write or delete found another revision."""
    return isinstance(e, nats.js.errors.KeyWrongLastSequenceError) or e.err_code in WRONG_LAST_CODES


async def retrying(
    what: str, fn: Callable[[], Awaitable[T]], deadline: float, servers: tuple[str, ...]
) -> T:
    """Run fn until it succeeds, retrying transient NATS errors until the deadline."""
    delay = 0.05
    while True:
        try:
            return await fn()
        except Exception as e:
            if isinstance(e, nats.errors.MaxPayloadError):
                raise InvalidInputError(
                    f"{what}: the message is larger than the NATS server's max_payload "
                    f"({getattr(e, 'args', ())})"
                ) from e
            if not is_transient(e):
                raise
            if time.monotonic() + delay > deadline:
                raise NatsUnavailableError(servers, f"{what}: {type(e).__name__} {e}") from e
            log.debug("%s: transient %s, retrying in %.2fs", what, type(e).__name__, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)


def check_created_elsewhere(err: nats.js.errors.BadRequestError, what: str) -> None:
    """Return if ``err`` says another service created ``what`` a moment ago.

    Its limits may differ, but it is there to use. A transient refusal is raised again; any
    other is a ConfigError.
    """
    if err.err_code == STREAM_NAME_IN_USE:
        return
    if is_transient(err):
        raise err
    raise ConfigError(f"cannot create {what}: {err}") from err
