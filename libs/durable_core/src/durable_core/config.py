"""Typed, frozen configuration handed to the library by services and the CLI.

The library never reads the environment: services read settings (dynaconf), validate them,
and build these objects.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from durable_core._naming import SHARD_SLOTS
from durable_core.errors import ConfigError

__all__ = ["EngineConfig", "NatsConfig", "WorkerConfig"]

# A stream (a Raft group) per shard and kind: more is cost without a use here (and a command's
# number holds its shard in SHARD_SLOTS).
MAX_SHARDS = SHARD_SLOTS
_PREFIX = re.compile(r"[a-z][a-z0-9_]{0,31}")  # always fullmatch: `$` lets a "\n" through
_FILE_SETTINGS = ("creds_file", "nkey_seed_file", "tls_ca", "tls_cert", "tls_key")


@dataclass(frozen=True, slots=True)
class NatsConfig:
    """How to reach NATS, and under which names the engine keeps its data.

    Attributes:
        servers: NATS URLs, e.g. ``("nats://127.0.0.1:4222",)``.
        user, password, token: plain-text credentials, if the server wants them.
        creds_file: a ``.creds`` file (JWT + nkey seed).
        nkey_seed_file: a file holding an nkey seed.
        tls_ca, tls_cert, tls_key: TLS files (CA alone for server verification; cert and key
            for client certificates).
        name: the client connection name shown by the server.
        connect_timeout: seconds to wait for the first connection.
        ping_interval: seconds between the connection's round trips through its server;
            after two unanswered ones the socket is dropped and the client moves to another
            server (a frozen server keeps its TCP connection open, so only this notices it).
    """

    servers: tuple[str, ...] = ("nats://127.0.0.1:4222",)
    user: str | None = None
    password: str | None = None
    token: str | None = None
    creds_file: str | None = None
    nkey_seed_file: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    name: str = "durable"
    connect_timeout: float = 5.0
    ping_interval: float = 5.0

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], *, name: str) -> NatsConfig:
        """Build from a service's flat settings (``nats_url``, ``nats_user``, ``nats_password``,
        ``nats_token``, ``nats_creds_file``, ``nats_nkey_seed_file``, ``nats_tls_ca``,
        ``nats_tls_cert``, ``nats_tls_key``); empty values mean "not set"."""

        def text(key: str) -> str | None:
            value = settings.get(key)
            return str(value) if value not in (None, "") else None

        return cls.from_url(
            str(settings.get("nats_url") or ""),
            user=text("nats_user"),
            password=text("nats_password"),
            token=text("nats_token"),
            creds_file=text("nats_creds_file"),
            nkey_seed_file=text("nats_nkey_seed_file"),
            tls_ca=text("nats_tls_ca"),
            tls_cert=text("nats_tls_cert"),
            tls_key=text("nats_tls_key"),
            name=name,
        )

    @classmethod
    def from_url(cls, url: str, **kwargs: object) -> NatsConfig:
        """Build from a comma-separated URL list (the form of NATS_URL)."""
        servers = tuple(u.strip() for u in url.split(",") if u.strip())
        if not servers:
            raise ConfigError("NATS URL is empty")
        return cls(servers=servers, **kwargs)  # type: ignore[arg-type]

    @classmethod
    def of(cls, servers: str | Sequence[str] | NatsConfig, *, name: str) -> NatsConfig:
        """The configuration a ``connect(servers)`` means: ``servers`` itself, or one built
        from a URL list (comma-separated) or a sequence of URLs, its connection named
        ``name``."""
        if isinstance(servers, NatsConfig):
            return servers
        if isinstance(servers, str):
            return cls.from_url(servers, name=name)
        return cls(servers=tuple(servers), name=name)

    def check_files(self) -> None:
        """Refuse a credentials or TLS file that is not there, before connecting.

        Not done at construction: settings are built (and tested) where the files are not.

        Raises:
            ConfigError: a file setting names no readable file (the message names the setting
                and the path).
        """
        for setting in _FILE_SETTINGS:
            path = getattr(self, setting)
            if not path:
                continue
            if not os.path.isfile(path):
                raise ConfigError(f"NATS {setting} {path!r} does not exist or is not a file")
            if not os.access(path, os.R_OK):
                raise ConfigError(f"NATS {setting} {path!r} is not readable")


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """Names, sizes and replication of the engine's streams and buckets.

    Attributes:
        prefix: lower-case prefix of every subject, stream and bucket (``durable``).
        replicas: JetStream replicas for every stream and bucket (1 embedded, 3 on a cluster).
        max_payload: largest accepted argument or step result in bytes. The state holds the
            arguments and the output, so with NATS' default 1 MiB max_payload the effective
            limit is also at most half of the server's, less room for the envelope.
        payload_threshold: values whose encoding is larger than this (bytes) are stored in the
            object store bucket ``<prefix>_payloads`` and travel as a reference (claim check).
            A threshold above the payload limit (``max_payload``, and what the NATS server's
            max_payload leaves) acts as that limit: nothing inline is ever refused for size.
        max_object_size: largest value stored by reference (bytes); larger ones are refused
            with PayloadTooLargeError.
        payload_grace: how old an object no journal or state references must be before the
            scheduler's sweep deletes it (an upload in flight is never swept).
        duplicate_window: how long the command stream remembers message ids.
        retention: how long finished executions are kept (state and journal).
        append_deadline: how long a journal or state write keeps retrying while NATS elects a
            new leader or reconnects, before it gives up.
        shards: how many command streams, journal streams and state buckets the engine has:
            each invocation's journal and state live in the shard its id hashes to, each
            command in the shard its partition key (or, without one, its invocation id) hashes
            to (each shard's stream with its own leader; on a cluster each kind's leaders are
            spread over the nodes when the engine is made). Fixed when a processor first
            creates the engine: a processor configured with another number is refused,
            everyone else takes the stored one.
    """

    prefix: str = "durable"
    replicas: int = 1
    max_payload: int = 500_000
    payload_threshold: int = 256 * 1024
    max_object_size: int = 1024 * 1024 * 1024
    payload_grace: timedelta = timedelta(hours=1)
    duplicate_window: timedelta = timedelta(minutes=10)
    retention: timedelta = timedelta(days=7)
    append_deadline: timedelta = timedelta(seconds=30)
    shards: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.prefix, str) or not _PREFIX.fullmatch(self.prefix):
            raise ConfigError(
                f"prefix {self.prefix!r} must be lower-case letters, digits or _ "
                "(at most 32, starting with a letter)"
            )
        if self.replicas not in (1, 3, 5):
            raise ConfigError(f"replicas must be 1, 3 or 5, not {self.replicas}")
        if (
            not isinstance(self.shards, int)
            or isinstance(self.shards, bool)
            or not 1 <= self.shards <= MAX_SHARDS
        ):
            raise ConfigError(
                f"shards must be a whole number from 1 to {MAX_SHARDS}, not {self.shards!r}"
            )
        if not 1024 <= self.max_payload <= 64 * 1024 * 1024:
            raise ConfigError(
                f"max_payload must be between 1 KiB and 64 MiB, not {self.max_payload}"
            )
        if not 1024 <= self.payload_threshold <= 64 * 1024 * 1024:
            raise ConfigError(
                f"payload_threshold must be between 1 KiB and 64 MiB, not {self.payload_threshold}"
            )
        if not self.payload_threshold <= self.max_object_size <= 64 * 1024**3:
            raise ConfigError(
                f"max_object_size must be between payload_threshold and 64 GiB, "
                f"not {self.max_object_size}"
            )


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    """How a processor consumes commands.

    Attributes:
        max_concurrent: executions that really run at once in this processor.
        ack_wait: how long JetStream waits for progress before redelivering a command.
        heartbeat: how often a held command is reported in progress to JetStream, from the
            moment it is delivered; ``None`` means ack_wait / 6. A run starts a step only while
            an answered report shows the command cannot have been redelivered yet, so a few
            reports may go unanswered in a row. ``timedelta(0)`` disables them (tests of
            redelivery only: a run then stops starting steps ``ack_wait`` after delivery).
        consumer: the base name of the processors' command consumers, one per workflow and
            route (``<consumer>-<hash>``), shared by every processor serving that workflow.
        services: gRPC service name (full or short, ``*`` for any) -> ``host:port``.
        processor_id: this processor's name in the journal and logs.
        shutdown_grace: how long SIGTERM waits for in-flight executions before releasing them.
        lease_ttl: how long this processor's lease outlives its last renewal. The processor
            renews it every ``lease_ttl / 3`` (and when it takes or finishes a command) with the
            commands it holds; when a lease lapses the scheduler hands those commands back at
            once instead of waiting out ``ack_wait``. ``timedelta(0)`` turns leases off.
    """

    max_concurrent: int = 100
    ack_wait: timedelta = timedelta(seconds=30)
    heartbeat: timedelta | None = None
    consumer: str = "processor"
    services: Mapping[str, str] = field(default_factory=dict)
    processor_id: str = ""
    shutdown_grace: timedelta = timedelta(seconds=10)
    lease_ttl: timedelta = timedelta(seconds=15)

    def __post_init__(self) -> None:
        if not 1 <= self.max_concurrent <= 100_000:
            raise ConfigError(f"max_concurrent must be 1..100000, not {self.max_concurrent}")
        if self.ack_wait < timedelta(seconds=1):
            raise ConfigError(f"ack_wait must be at least 1 s, not {self.ack_wait}")
        if self.lease_ttl and not timedelta(seconds=1) <= self.lease_ttl <= timedelta(hours=1):
            raise ConfigError(f"lease_ttl must be 0 (off) or 1 s to 1 h, not {self.lease_ttl}")
        if self.heartbeat is not None and self.heartbeat > self.ack_wait / 2:
            raise ConfigError(
                f"heartbeat ({self.heartbeat}) must be at most half of ack_wait "
                f"({self.ack_wait}): a run stops starting steps when its command may have been "
                "redelivered"
            )

    @property
    def heartbeat_interval(self) -> float:
        """Seconds between in-progress acks (0 = none)."""
        if self.heartbeat is None:
            return self.ack_wait.total_seconds() / 6
        return self.heartbeat.total_seconds()
