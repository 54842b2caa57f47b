"""Provisioning: the engine's streams, buckets and consumers, created or verified.

Only a processor creates the streams (with its configured replicas and limits, or checks that
what exists matches them); everyone else binds to what exists. Buckets a service needs later
(schedules, leases, run locks) are created on first use with the stored replicas.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
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

from durable_core._transport.connection import Link
from durable_core._transport.errors import check_created_elsewhere
from durable_core.errors import ConfigError, EngineNotFoundError

__all__ = ["Provisioner"]

log = logging.getLogger("durable_core.transport")


class Provisioner:
    """Creates, verifies and binds the engine's streams, buckets and consumers."""

    def __init__(self, link: Link) -> None:
        self._link = link

    # -- binding ---------------------------------------------------------------------------

    async def bind(self, *, wait: float = 0.0) -> KeyValue:
        """Wait up to ``wait`` seconds for the engine's streams and state bucket; take the
        replicas and the payload limit from the stored command stream; the state bucket.

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
        changes: dict[str, Any] = {"replicas": stored.num_replicas or link.engine.replicas}
        if stored.max_msg_size and stored.max_msg_size > 64 * 1024:
            changes["max_payload"] = max(stored.max_msg_size - 64 * 1024, 1024)
        link.engine = dataclasses.replace(link.engine, **changes)
        return await link.retry("bind state bucket", lambda: link.js.key_value(n.state_bucket))

    async def _engine_streams(self) -> tuple[list[str], Any]:
        """The names of the engine's streams that do not exist, and the command stream's info."""
        link = self._link
        n = link.names
        missing: list[str] = []
        info = None
        for name in (n.command_stream, n.journal_stream, f"KV_{n.state_bucket}"):

            async def look(name: str = name) -> Any:
                try:
                    return await link.js.stream_info(name)
                except nats.js.errors.NotFoundError:
                    return None

            found = await link.retry(f"look up stream {name}", look)
            if found is None:
                missing.append(name)
            elif name == n.command_stream:
                info = found
        return missing, info

    async def bind_bucket(self, bucket: str, what: str) -> KeyValue:
        """Bind a bucket that a processor creates (never create it here)."""
        js = self._link.js
        return await self._link.retry(f"bind {what}", lambda: js.key_value(bucket))

    # -- creating --------------------------------------------------------------------------

    async def infrastructure(self, *, strict: bool = True) -> tuple[KeyValue, KeyValue]:
        """Create the command and journal streams, the state and key buckets, or verify
        them; the state and key buckets."""
        n, e = self._link.names, self._link.engine
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
                allow_atomic=True,  # a run's last step and its final entry in one batch
                discard=DiscardPolicy.OLD,
            ),
        )
        state = await self._ensure_state_bucket(strict)
        keys = await self.bucket(
            n.keys_bucket, "durable: holder and waiting list of each partition key"
        )
        return state, keys

    async def _ensure_stream(self, strict: bool, want: StreamConfig) -> None:
        assert want.name is not None
        js = self._link.js

        async def create() -> None:
            try:
                info = await js.stream_info(want.name)  # type: ignore[arg-type]
            except nats.js.errors.NotFoundError:
                try:
                    await js.add_stream(want)
                    log.info("created stream %s (replicas=%d)", want.name, want.num_replicas)
                    return
                except nats.js.errors.BadRequestError as e:
                    check_created_elsewhere(e, f"stream {want.name}")
                info = await js.stream_info(want.name)  # type: ignore[arg-type]
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
                or (want.allow_atomic and not have.allow_atomic)
            ):
                # Additive changes from a newer version: subjects, schedules, direct gets,
                # atomic batches.
                have.subjects = sorted(set(have.subjects or []) | set(want.subjects or []))
                have.allow_msg_schedules = have.allow_msg_schedules or want.allow_msg_schedules
                have.allow_direct = have.allow_direct or want.allow_direct
                have.allow_atomic = have.allow_atomic or want.allow_atomic
                await js.update_stream(have)
                log.info(
                    "updated stream %s: subjects %s, schedules, direct gets and atomic "
                    "batches on as wanted",
                    want.name,
                    missing,
                )

        await self._link.retry(f"set up stream {want.name}", create)

    async def _ensure_state_bucket(self, strict: bool) -> KeyValue:
        link = self._link
        n, e, js = link.names, link.engine, link.js
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

        async def create() -> KeyValue:
            try:
                info = await js.stream_info(f"KV_{n.state_bucket}")
            except nats.js.errors.NotFoundError:
                try:
                    await js.create_key_value(want)
                    log.info("created KV bucket %s (replicas=%d)", n.state_bucket, e.replicas)
                except nats.js.errors.BadRequestError as err:
                    check_created_elsewhere(err, f"KV bucket {want.bucket}")
                info = await js.stream_info(f"KV_{n.state_bucket}")
            if strict:
                _check_same(
                    f"KV bucket {n.state_bucket}",
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
                log.info("updated KV bucket %s: reads from the leader, TTLs", n.state_bucket)
            return await js.key_value(n.state_bucket)

        return await link.retry("set up state bucket", create)

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

    async def consumer(self, want: ConsumerConfig, what: str, *, announce: bool = False) -> None:
        """Create the shared durable consumer ``want``, or check the one that exists: its
        filter and ack policy must match; its ack wait and room are updated (never shrinking
        another holder's ``max_ack_pending``)."""
        js, stream = self._link.js, self._link.names.command_stream
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


def _check_same(what: str, have: dict[str, Any], want: dict[str, Any]) -> None:
    diffs = [f"{k}={have[k]!r} (configured: {want[k]!r})" for k in want if have[k] != want[k]]
    if diffs:
        raise ConfigError(
            f"existing {what} does not match the configuration: {'; '.join(diffs)}. "
            "Change the settings to match, or delete it (its data goes with it) to recreate it."
        )
