"""Provisioning: the engine's streams, buckets and consumers, created or verified.

Only a processor creates the streams (with its configured replicas and limits, or checks that
what exists matches them); everyone else binds to what exists. Buckets a service needs later
(schedules, leases, run locks) are created on first use with the stored replicas.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import nats.js.errors
from nats.js.api import (
    ConsumerConfig,
    DiscardPolicy,
    KeyValueConfig,
    RePublish,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.kv import KeyValue

from durable_core._naming import Names
from durable_core._transport.connection import Link
from durable_core._transport.errors import check_created_elsewhere
from durable_core.errors import ConfigError, EngineNotFoundError

__all__ = ["Provisioner", "spread_leaders", "stored_shards"]

# The command stream's metadata key holding the number of shards (of the journal streams and
# the state buckets) the engine was made with (absent on an engine made before shards: one).
_SHARDS_KEY = "durable.shards"

log = logging.getLogger("durable_core.transport")


class Provisioner:
    """Creates, verifies and binds the engine's streams, buckets and consumers."""

    def __init__(self, link: Link) -> None:
        self._link = link

    # -- binding ---------------------------------------------------------------------------

    async def bind(self, *, wait: float = 0.0) -> list[KeyValue]:
        """Wait up to ``wait`` seconds for the engine's streams and state buckets; take the
        replicas, the payload limit and the shards from the stored command stream; the state
        buckets (one per shard).

        Raises:
            EngineNotFoundError: they do not exist.
        """
        link = self._link
        n = link.names
        deadline = time.monotonic() + wait
        announced = False
        while True:
            missing, info = await self._engine_streams()
            if not missing:
                break
            if time.monotonic() >= deadline:
                raise EngineNotFoundError(link.nats_cfg.servers, n.prefix, missing)
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
        changes: dict[str, Any] = {
            "replicas": stored.num_replicas or link.engine.replicas,
            "shards": stored_shards(stored),
        }
        if stored.max_msg_size and stored.max_msg_size > 64 * 1024:
            changes["max_payload"] = max(stored.max_msg_size - 64 * 1024, 1024)
        link.engine = dataclasses.replace(link.engine, **changes)
        buckets = []
        for name in link.names.state_buckets:

            async def bind(name: str = name) -> KeyValue:
                return await link.js.key_value(name)

            buckets.append(await link.retry(f"bind state bucket {name}", bind))
        return buckets

    async def _engine_streams(self) -> tuple[list[str], Any]:
        """The names of the engine's streams that do not exist, and the command stream's info
        (which says how many shards the journal and the state have)."""
        n = self._link.names
        info = await self._info(n.command_stream)
        if info is None:
            return [n.command_stream], None
        sharded = Names(n.prefix, stored_shards(info.config))
        wanted = sharded.journal_streams + [f"KV_{b}" for b in sharded.state_buckets]
        if sharded.shards > 1:
            wanted = sharded.command_streams + wanted
        infos = await asyncio.gather(*(self._info(s) for s in wanted))  # one round trip
        return [s for s, found in zip(wanted, infos, strict=True) if found is None], info

    async def _info(self, stream: str) -> Any:
        """The stream's info; None if there is no such stream."""
        link = self._link

        async def look() -> Any:
            try:
                return await link.js.stream_info(stream)
            except nats.js.errors.NotFoundError:
                return None

        return await link.retry(f"look up stream {stream}", look)

    async def bind_bucket(self, bucket: str, what: str) -> KeyValue:
        """Bind a bucket that a processor creates (never create it here)."""
        js = self._link.js
        return await self._link.retry(f"bind {what}", lambda: js.key_value(bucket))

    # -- creating --------------------------------------------------------------------------

    async def infrastructure(self, *, strict: bool = True) -> tuple[list[KeyValue], KeyValue]:
        """Create the command and journal streams, the state and key buckets, or verify
        them; the state buckets (one per shard) and the key bucket."""

        def commands(name: str, shard: int | None) -> StreamConfig:
            # The names and settings as they are now: the stored number of shards once the
            # command stream has been seen (see adopt).
            n, e = self._link.names, self._link.engine
            what = "durable: start and wake-up commands (work queue)"
            if n.shards > 1:
                what = (
                    "durable: schedule firings; the engine's number of shards"
                    if shard is None
                    else f"{what}, shard {shard} of {n.shards}"
                )
            return StreamConfig(
                name=name,
                description=what,
                subjects=n.command_stream_subjects(shard),
                retention=RetentionPolicy.WORK_QUEUE,
                allow_msg_schedules=True,
                allow_direct=True,
                storage=StorageType.FILE,
                num_replicas=e.replicas,
                duplicate_window=e.duplicate_window.total_seconds(),
                max_msg_size=e.max_payload + 64 * 1024,
                discard=DiscardPolicy.OLD,
                metadata={_SHARDS_KEY: str(e.shards)} if shard is None else {},
            )

        def adopt(have: StreamConfig) -> StreamConfig:
            # The stored number decides the subjects wanted of every stream (strict: any
            # other is refused; else it is taken), checked before anything is changed.
            self._check_shards(strict, have)
            return commands(have.name or "", None)

        n = self._link.names
        await self._ensure_stream(strict, commands(n.command_stream, None), adopt=adopt)
        n, e = self._link.names, self._link.engine  # the stored number (not strict)
        max_msg = e.max_payload + 64 * 1024
        if n.shards > 1:
            for shard, stream in enumerate(n.command_streams):
                await self._ensure_stream(strict, commands(stream, shard))
        for shard, stream in enumerate(n.journal_streams):
            what = "durable: one subject per invocation, one message per journal entry"
            if e.shards > 1:
                what += f" (shard {shard} of {e.shards})"
            await self._ensure_stream(
                strict,
                StreamConfig(
                    name=stream,
                    description=what,
                    subjects=[n.journal_shard_subjects(shard)],
                    retention=RetentionPolicy.LIMITS,
                    storage=StorageType.FILE,
                    num_replicas=e.replicas,
                    duplicate_window=e.duplicate_window.total_seconds(),
                    max_msg_size=max_msg,
                    allow_direct=True,
                    allow_atomic=True,  # a run's last step and its final entry in one batch
                    discard=DiscardPolicy.OLD,
                ),
            )
        states = [await self._ensure_state_bucket(strict, b) for b in n.state_buckets]
        if e.shards > 1 and e.replicas > 1:
            # Each kind's leaders over the nodes (a command shard's, a journal shard's and a
            # state shard's may share a node: each is written once or twice per invocation).
            await spread_leaders(self._link, n.command_streams)
            await spread_leaders(self._link, n.journal_streams)
            await spread_leaders(self._link, [f"KV_{b}" for b in n.state_buckets])
        keys = await self.bucket(
            n.keys_bucket, "durable: holder and waiting list of each partition key"
        )
        return states, keys

    def _check_shards(self, strict: bool, have: StreamConfig) -> None:
        """Refuse (``strict``: a processor) a number of shards other than the one the engine
        was made with (``have``: its command stream), or take the stored one."""
        link = self._link
        stored = stored_shards(have)
        if stored > 1 and link.names.command_subjects in (have.subjects or []):
            raise ConfigError(
                f"engine {link.names.prefix!r} was made with {stored} shards by a version that "
                "kept every command in one stream; this version shards the commands too. "
                "Drain it (no command pending, no invocation running) and start a new engine "
                "under another prefix, or run the earlier version"
            )
        if stored == link.engine.shards:
            return
        if strict:
            raise ConfigError(
                f"engine {link.names.prefix!r} was made with {stored} shard(s); this processor "
                f"is configured with {link.engine.shards}. The number cannot change on a live "
                "engine (each invocation's journal and state stay in the shard its id hashes "
                "to): configure the stored number, or start a new engine under another prefix"
            )
        link.engine = dataclasses.replace(link.engine, shards=stored)

    async def _ensure_stream(
        self,
        strict: bool,
        want: StreamConfig,
        adopt: Callable[[StreamConfig], StreamConfig] | None = None,
    ) -> StreamConfig:
        """Create the stream, or check and update the one there; its configuration.
        ``adopt`` sees the one there before anything is changed, and says what is wanted of
        it (it raises to refuse)."""
        assert want.name is not None
        js = self._link.js

        async def create() -> StreamConfig:
            try:
                info = await js.stream_info(want.name)  # type: ignore[arg-type]
            except nats.js.errors.NotFoundError:
                try:
                    await js.add_stream(want)
                    log.info("created stream %s (replicas=%d)", want.name, want.num_replicas)
                    return want
                except nats.js.errors.BadRequestError as e:
                    check_created_elsewhere(e, f"stream {want.name}")
                info = await js.stream_info(want.name)  # type: ignore[arg-type]
            have = info.config
            wanted = want if adopt is None else adopt(have)
            if strict:
                _check_same(
                    f"stream {want.name}",
                    {
                        "retention": have.retention,
                        "replicas": have.num_replicas,
                        "storage": have.storage,
                    },
                    {
                        "retention": wanted.retention,
                        "replicas": wanted.num_replicas,
                        "storage": wanted.storage,
                    },
                )
            missing = sorted(set(wanted.subjects or []) - set(have.subjects or []))
            if (
                missing
                or (wanted.allow_msg_schedules and not have.allow_msg_schedules)
                or (wanted.allow_direct and not have.allow_direct)
                or (wanted.allow_atomic and not have.allow_atomic)
            ):
                # Additive changes from a newer version: subjects, schedules, direct gets,
                # atomic batches.
                have.subjects = sorted(set(have.subjects or []) | set(wanted.subjects or []))
                have.allow_msg_schedules = have.allow_msg_schedules or wanted.allow_msg_schedules
                have.allow_direct = have.allow_direct or wanted.allow_direct
                have.allow_atomic = have.allow_atomic or wanted.allow_atomic
                await js.update_stream(have)
                log.info(
                    "updated stream %s: subjects %s, schedules, direct gets and atomic "
                    "batches on as wanted",
                    wanted.name,
                    missing,
                )
            return have

        return await self._link.retry(f"set up stream {want.name}", create)

    async def _ensure_state_bucket(self, strict: bool, bucket: str) -> KeyValue:
        link = self._link
        n, e, js = link.names, link.engine, link.js
        want = KeyValueConfig(
            bucket=bucket,
            description="durable: execution state by invocation id",
            history=1,
            replicas=e.replicas,
            storage=StorageType.FILE,
            max_value_size=e.max_payload * 2 + 64 * 1024,
            republish=RePublish(
                src=f"$KV.{bucket}.>", dest=f"{n.prefix}.state.>", headers_only=False
            ),
            # Reads go to the stream leader: a follower answering a direct get may not have
            # the latest write yet, and a stale state would mislead a processor or a client.
            direct=False,
        )

        async def create() -> KeyValue:
            try:
                info = await js.stream_info(f"KV_{bucket}")
            except nats.js.errors.NotFoundError:
                try:
                    await js.create_key_value(want)
                    log.info("created KV bucket %s (replicas=%d)", bucket, e.replicas)
                except nats.js.errors.BadRequestError as err:
                    check_created_elsewhere(err, f"KV bucket {want.bucket}")
                info = await js.stream_info(f"KV_{bucket}")
            if strict:
                _check_same(
                    f"KV bucket {bucket}",
                    {
                        "replicas": info.config.num_replicas,
                        "history": info.config.max_msgs_per_subject,
                    },
                    {"replicas": want.replicas, "history": want.history},
                )
            if info.config.allow_direct or not info.config.allow_msg_ttl:
                info.config.allow_direct = False
                info.config.mirror_direct = False
                # An expired execution's note (a delete marker) carries a TTL and goes by
                # itself: the bucket does not keep one marker per invocation ever run.
                info.config.allow_msg_ttl = True
                await js.update_stream(info.config)
                log.info("updated KV bucket %s: reads from the leader, TTLs", bucket)
            return await js.key_value(bucket)

        return await link.retry(f"set up state bucket {bucket}", create)

    async def bucket(
        self, name: str, description: str, *, ttl: float | None = None, msg_ttl: bool = False
    ) -> KeyValue:
        """Bind bucket ``name``, or create it with the engine's replicas (history 1, reads from
        the leader: its records are decided on); ``msg_ttl``: its records may carry their own
        TTL (``Nats-TTL``)."""
        e, js = self._link.engine, self._link.js
        want = KeyValueConfig(
            bucket=name,
            description=description,
            history=1,
            replicas=e.replicas,
            storage=StorageType.FILE,
            ttl=ttl,
            direct=False,
        )

        async def create() -> KeyValue:
            try:
                kv = await js.key_value(name)
            except nats.js.errors.BucketNotFoundError:
                try:
                    kv = await js.create_key_value(want)
                except nats.js.errors.BadRequestError as err:
                    check_created_elsewhere(err, f"KV bucket {name}")
                    kv = await js.key_value(name)
            if msg_ttl:
                info = await js.stream_info(f"KV_{name}")
                if not info.config.allow_msg_ttl:
                    info.config.allow_msg_ttl = True
                    await js.update_stream(info.config)
            return kv

        return await self._link.retry(f"set up bucket {name}", create)

    async def consumer(
        self, want: ConsumerConfig, what: str, *, stream: str = "", announce: bool = False
    ) -> None:
        """Create the shared durable consumer ``want`` on ``stream`` (the command stream if
        not given), or check the one that exists: its filter and ack policy must match; its
        ack wait and room are updated, never shrinking another holder's ``max_ack_pending``,
        and never shortening the ack wait while anyone holds or pulls commands from it (see
        ``_kept_ack_wait``)."""
        js, stream = self._link.js, stream or self._link.names.command_stream
        name = want.durable_name
        assert name is not None

        async def setup() -> Any:
            try:
                info = await js.consumer_info(stream, name)
            except nats.js.errors.NotFoundError:
                return await js.add_consumer(stream, want)
            c = info.config
            _check_same(
                f"consumer {name}",
                {"filter": c.filter_subject, "ack_policy": c.ack_policy},
                {"filter": want.filter_subject, "ack_policy": want.ack_policy},
            )
            # Tunables may change between deployments; never shrink another holder's room.
            want.max_ack_pending = max(c.max_ack_pending or 0, want.max_ack_pending or 0)
            want.ack_wait = _kept_ack_wait(name, info, want.ack_wait)
            if (c.ack_wait, c.max_ack_pending) != (want.ack_wait, want.max_ack_pending):
                if announce:
                    log.warning(
                        "updating consumer %s: ack_wait %s -> %s, max_ack_pending %s -> %s",
                        name,
                        c.ack_wait,
                        want.ack_wait,
                        c.max_ack_pending,
                        want.max_ack_pending,
                    )
                return await js.add_consumer(stream, want)
            return info

        await self._link.retry(f"set up {what}", setup)


def _kept_ack_wait(name: str, info: Any, want: float | None) -> float | None:
    """The ack wait to set on an existing consumer: ``want``, unless that is shorter than the
    consumer's while commands are held or pulled from it. A holder started with the longer
    wait believes JetStream keeps its command that long and heartbeats accordingly (every
    sixth of it); shortening the wait under it would let JetStream redeliver a command it still
    runs. A processor whose own wait is shorter than the consumer's is only more careful (it
    stops starting steps sooner and heartbeats more often), so the longer wait stays until a
    processor starts with nothing held or pulled."""
    have = info.config.ack_wait
    if want is None or have is None or want >= have:
        return want
    if info.num_ack_pending or info.num_waiting:
        log.warning(
            "consumer %s keeps its ack_wait of %gs (configured: %gs) while %d commands are "
            "held and %d pull requests wait: processors started with the longer wait may be "
            "running them; it is shortened when a processor starts with none held or pulled",
            name,
            have,
            want,
            info.num_ack_pending or 0,
            info.num_waiting or 0,
        )
        return float(have)
    return want


def _check_same(what: str, have: dict[str, Any], want: dict[str, Any]) -> None:
    diffs = [f"{k}={have[k]!r} (configured: {want[k]!r})" for k in want if have[k] != want[k]]
    if diffs:
        raise ConfigError(
            f"existing {what} does not match the configuration: {'; '.join(diffs)}. "
            "Change the settings to match, or delete it (its data goes with it) to recreate it."
        )


def stored_shards(config: StreamConfig) -> int:
    """The number of shards a command stream's metadata records (one if none)."""
    raw = (config.metadata or {}).get(_SHARDS_KEY, "1")
    try:
        shards = int(raw)
    except ValueError:
        raise ConfigError(
            f"stream {config.name} says {_SHARDS_KEY}={raw!r}: not a number of shards"
        ) from None
    return max(shards, 1)


async def spread_leaders(link: Link, streams: list[str]) -> dict[str, str]:
    """Move stream leaders so that no node leads two of ``streams`` while another leads none
    (best effort: a leader change asked for with a preferred node, nats-server >= 2.11);
    the leader of each stream as it ends up."""
    js = link.js

    async def leaders() -> tuple[dict[str, str], set[str]]:
        out: dict[str, str] = {}
        nodes: set[str] = set()
        for stream in streams:
            info = await js.stream_info(stream)
            cluster = info.cluster
            if cluster is None or not cluster.leader:
                continue
            out[stream] = cluster.leader
            nodes.add(cluster.leader)
            nodes.update(r.name for r in cluster.replicas or [] if r.name)
        return out, nodes

    for _ in range(len(streams)):
        led, nodes = await link.retry("look up stream leaders", leaders)
        counts = {node: 0 for node in nodes}
        for node in led.values():
            counts[node] += 1
        idle = sorted(node for node, c in counts.items() if c == 0)
        busy = sorted((s for s in led if counts[led[s]] > 1), key=lambda s: s)
        if not idle or not busy:
            return led
        stream, to = busy[-1], idle[0]
        req = json.dumps({"placement": {"preferred": to}}).encode()
        try:
            msg = await link.nc.request(
                f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}", req, timeout=5.0
            )
            error = json.loads(msg.data).get("error")
        except Exception as e:  # noqa: BLE001 - spreading is an optimisation, never a failure
            error = f"{type(e).__name__}: {e}"
        if error:
            log.info("could not move the leader of %s to %s: %s", stream, to, error)
            return led
        deadline = time.monotonic() + 10
        now = led
        while time.monotonic() < deadline and now.get(stream) in (None, led[stream]):
            await asyncio.sleep(0.2)
            now, _ = await link.retry("look up stream leaders", leaders)
        log.info(
            "leader of %s: %s, now %s (asked for %s)", stream, led[stream], now.get(stream), to
        )
    led, _ = await link.retry("look up stream leaders", leaders)
    return led
