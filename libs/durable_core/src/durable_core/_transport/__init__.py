"""JetStream transport: the only package that imports ``nats``.

It owns stream, bucket and consumer setup, and turns NATS errors into durable_core's own.
Every write the engine makes goes through here and is conditional:
- journal appends carry ``Nats-Expected-Last-Subject-Sequence`` (fencing) and a
  ``Nats-Msg-Id`` (a retried append is recognised, not stored twice);
- state writes are KV creates or revision-checked updates;
- the small records (partition keys, schedules, processor leases, run locks) are one
  compare-and-set store (``records``).

Split the way nats.py splits its JetStream layer: ``connection`` (TLS, connect, the shared
``Link``), ``errors`` (transient or not, the retry loop), ``provision`` (streams, buckets,
consumers), ``journal``, ``state``, ``events`` (state changes and result notices),
``commands``, ``delivery`` and ``routes`` (the processors' consumers), ``ticks``, ``inbox``,
``records``;
``facade.Transport`` is what the rest of durable_core calls.
"""

from durable_core._transport.connection import (
    MIN_SERVER_VERSION,
    connect_nats,
    require_capable_server,
)
from durable_core._transport.delivery import CommandConsumer, Delivery
from durable_core._transport.errors import (
    CorruptJournalError,
    JournalConflict,
    StateConflict,
    is_engine_error,
)
from durable_core._transport.events import StateEvents
from durable_core._transport.facade import Transport
from durable_core._transport.inbox import MsgQueue
from durable_core._transport.journal import JournalRecord
from durable_core._transport.routes import CommandConsumers
from durable_core._transport.state import StateRecord
from durable_core._transport.ticks import TickConsumer, TickDelivery

__all__ = [
    "MIN_SERVER_VERSION",
    "CommandConsumer",
    "CommandConsumers",
    "CorruptJournalError",
    "Delivery",
    "JournalConflict",
    "JournalRecord",
    "MsgQueue",
    "StateConflict",
    "StateEvents",
    "StateRecord",
    "TickConsumer",
    "TickDelivery",
    "Transport",
    "connect_nats",
    "is_engine_error",
    "require_capable_server",
]
