"""Execution states: one KV key per invocation, written by create or revision-checked update,
read from the bucket's leader, expired to a delete marker that notes how the execution ended."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import nats.js.errors
from google.protobuf.message import DecodeError
from nats.js.kv import KeyValue

from durable_core._pb.durable.v1 import durable_pb2 as pb
from durable_core._transport.connection import Link
from durable_core._transport.errors import (
    NO_MESSAGE_FOUND,
    WRONG_LAST_CODES,
    StateConflict,
    wrong_last,
)
from durable_core._transport.journal import last_journal_seq
from durable_core._transport.records import watch_bucket

__all__ = ["EXPIRED_HEADER", "StateRecord", "States"]

log = logging.getLogger("durable_core.transport")

EXPIRED_HEADER = "Durable-Expired"  # on the KV delete marker of an expired execution


@dataclass(frozen=True, slots=True)
class StateRecord:
    """An execution state and the KV revision it was read or written at."""

    state: pb.ExecutionState
    revision: int


class States:
    """The state buckets (one per shard): one execution state per invocation id, in the
    bucket its id hashes to."""

    def __init__(self, link: Link) -> None:
        self._link = link
        self.kvs: list[KeyValue] = []  # bound by the facade (created or found), one per shard

    def bucket(self) -> KeyValue:
        """The bound state bucket of an engine with one shard."""
        assert self.kvs, "transport not set up"
        if len(self.kvs) > 1:
            raise RuntimeError("the state is sharded: no single bucket (see Names.state_bucket_of)")
        return self.kvs[0]

    async def get(self, invocation_id: str) -> StateRecord | None:
        """The current state of an invocation, or None if there is none."""

        async def get() -> StateRecord | None:
            data, revision = await self._msg(invocation_id)
            if data is None:
                return None
            st = pb.ExecutionState()
            st.ParseFromString(data)
            return StateRecord(st, revision)

        return await self._link.retry(f"read state of {invocation_id}", get)

    async def _msg(self, invocation_id: str) -> tuple[bytes | None, int]:
        """The state's value and revision, read from the bucket's leader as ``kv.get`` does
        (but without parsing headers as e-mail): ``(None, 0)`` if there never was one,
        ``(None, revision)`` if it was deleted (an expired execution)."""
        link = self._link
        bucket = link.names.state_bucket_of(invocation_id)
        req = json.dumps({"last_by_subj": f"$KV.{bucket}.{invocation_id}"}).encode()
        msg = await link.requests.request(f"$JS.API.STREAM.MSG.GET.KV_{bucket}", req)
        resp = json.loads(msg.data)
        error = resp.get("error")
        if error is not None:
            if error.get("err_code") == NO_MESSAGE_FOUND:
                return None, 0
            raise nats.js.errors.APIError.from_error(error)
        found = resp["message"]
        revision = int(found["seq"])
        if _kv_deleted(found.get("hdrs")):
            return None, revision
        return base64.b64decode(found.get("data") or ""), revision

    async def _write(self, invocation_id: str, data: bytes, last: int) -> int:
        """Write a state if its revision is still ``last`` (0: none yet); the new revision.

        Raises nats.js.errors.KeyWrongLastSequenceError when it is not.
        """
        subject = f"$KV.{self._link.names.state_bucket_of(invocation_id)}.{invocation_id}"
        try:
            seq, _ = await self._link.publish(
                subject, data, {"Nats-Expected-Last-Subject-Sequence": str(last)}
            )
        except nats.js.errors.APIError as e:
            if e.err_code in WRONG_LAST_CODES:
                raise nats.js.errors.KeyWrongLastSequenceError(description=e.description) from e
            raise
        return seq

    async def create(self, state: pb.ExecutionState) -> StateRecord | None:
        """Create the state if none exists; return None if it already existed."""
        data = state.SerializeToString()

        async def create() -> StateRecord | None:
            try:
                rev = await self._write(state.invocation_id, data, 0)
            except nats.js.errors.KeyWrongLastSequenceError:
                # A delete marker (an expired execution) is written over, as kv.create does,
                # once what its expiry left of that execution's journal is gone (an expiry cut
                # short leaves it all): a new invocation never replays an earlier one's entries.
                current, _ = await self._msg(state.invocation_id)
                if current is not None:
                    return None
                last = await self.drop_old_journal(state.invocation_id)
                if not last:
                    return None
                try:
                    rev = await self._write(state.invocation_id, data, last)
                except nats.js.errors.KeyWrongLastSequenceError:
                    return None
            return StateRecord(state, rev)

        return await self._link.retry(f"create state of {state.invocation_id}", create)

    async def drop_old_journal(self, invocation_id: str) -> int | None:
        """Purge what is left of the journal of an invocation that has no state (it expired),
        and return the state's revision (0: there never was one); None, with nothing purged,
        if it has a state. Only the entries stored before the state was seen absent go: a new
        invocation under the id appends only once its state exists, so none of its entries
        are among them."""
        link = self._link
        stream = link.names.journal_stream_of(invocation_id)
        subject = link.names.journal_subject(invocation_id)

        async def purge(through: int) -> None:
            await link.js.purge_stream(stream, subject=subject, seq=through + 1)

        through = await last_journal_seq(link, invocation_id)
        current, revision = await link.retry(
            f"read state of {invocation_id}", lambda: self._msg(invocation_id)
        )
        if current is not None:
            return None
        if through:
            await link.retry(f"purge old journal of {invocation_id}", lambda: purge(through))
        return revision

    async def update(self, state: pb.ExecutionState, revision: int) -> StateRecord:
        """Write the state if its revision is still ``revision``; else StateConflict.

        A retried write whose first try landed is recognised by reading the state back.
        """
        data = state.SerializeToString()
        attempts = 0

        async def update() -> StateRecord:
            nonlocal attempts
            attempts += 1
            try:
                rev = await self._write(state.invocation_id, data, revision)
                return StateRecord(state, rev)
            except nats.js.errors.KeyWrongLastSequenceError as e:
                if attempts > 1:
                    cur = await self.get(state.invocation_id)
                    if cur is not None and cur.state.SerializeToString() == data:
                        return cur
                raise StateConflict(
                    f"state of {state.invocation_id} changed since revision {revision}"
                ) from e

        return await self._link.retry(f"update state of {state.invocation_id}", update)

    async def watch(self) -> AsyncIterator[tuple[str, StateRecord | None] | None]:
        """Every execution state now, then ``None`` once caught up, then every change.

        Yields ``(invocation_id, record)``, with ``record`` None when the state was deleted or
        expired. Backed by a KV watch (an ordered consumer), never by a scan of keys.
        """
        assert self.kvs, "transport not set up"
        async for item in _merged([watch_bucket(kv, self._link) for kv in self.kvs]):
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

    async def ids(self) -> list[str]:
        """The ids of every state, from the stream leader's subject list (not from nats-py's
        ``keys()``, whose watcher can report "no keys" early while a new ordered consumer
        catches up)."""
        link = self._link
        out: list[str] = []
        for bucket in link.names.state_buckets:
            prefix = f"$KV.{bucket}."

            async def subjects(bucket: str = bucket, prefix: str = prefix) -> dict[str, int]:
                info = await link.js.stream_info(f"KV_{bucket}", subjects_filter=f"{prefix}>")
                return info.state.subjects or {}

            found = await link.retry("list states", subjects)
            out += [subject.removeprefix(prefix) for subject in found]
        return out

    async def expire(self, rec: StateRecord, now_ms: int, note_ttl_s: int = 0) -> bool:
        """Replace a finished execution's state by a delete marker noting how it ended, if it
        is still at ``rec``'s revision; False if it changed meanwhile. The server removes the
        marker itself after ``note_ttl_s`` seconds (0: never)."""
        link = self._link
        st = rec.state
        note = expiry_note_of(st, now_ms)
        subject = f"$KV.{link.names.state_bucket_of(st.invocation_id)}.{st.invocation_id}"
        headers = {
            "KV-Operation": "DEL",
            "Nats-Expected-Last-Subject-Sequence": str(rec.revision),
            EXPIRED_HEADER: json.dumps(note),
        }
        if note_ttl_s > 0:
            headers["Nats-TTL"] = f"{note_ttl_s}s"

        async def mark() -> bool:
            try:
                await link.js.publish(subject, b"", headers=headers)
            except nats.js.errors.APIError as e:
                if not wrong_last(e):
                    raise
                return False
            return True

        if await link.retry(f"expire {st.invocation_id}", mark):
            return True
        # The state moved on, or a retry of ours found its own first try had landed.
        note_now = await self.expiry_note(st.invocation_id)
        return note_now is not None and note_now.get("expired_at_ms") == now_ms

    async def expiry_note(self, invocation_id: str) -> dict[str, Any] | None:
        """What :meth:`expire` noted about an expired invocation, if it expired."""
        link = self._link
        bucket = link.names.state_bucket_of(invocation_id)
        subject = f"$KV.{bucket}.{invocation_id}"

        async def get() -> dict[str, Any] | None:
            try:
                msg = await link.js.get_last_msg(f"KV_{bucket}", subject)
            except nats.js.errors.NotFoundError:
                return None
            raw = (msg.headers or {}).get(EXPIRED_HEADER)
            if not raw:
                return None
            try:
                note = json.loads(raw)
            except ValueError:
                return None
            return note if isinstance(note, dict) else None

        return await link.retry(f"read expiry of {invocation_id}", get)


def expiry_note_of(st: pb.ExecutionState, expired_at_ms: int) -> dict[str, Any]:
    """What an expiry notes of a finished execution: how and when it ended, and when it went
    (0: not known)."""
    return {
        "status": pb.Status.Name(st.status).removeprefix("STATUS_").lower(),
        "finished_at_ms": st.updated_at_ms,
        "expired_at_ms": expired_at_ms,
        "workflow": st.workflow,
    }


async def _merged(
    watches: list[AsyncIterator[tuple[str, bytes | None, int] | None]],
) -> AsyncIterator[tuple[str, bytes | None, int] | None]:
    """Several bucket watches as one: every entry of each as it comes, and one ``None`` once
    all of them have caught up (each says so once)."""
    if len(watches) == 1:
        async for item in watches[0]:
            yield item
        return
    queue: asyncio.Queue[tuple[BaseException | None, Any]] = asyncio.Queue()

    async def pump(watch: AsyncIterator[Any]) -> None:
        try:
            async for item in watch:
                queue.put_nowait((None, item))
        except Exception as e:  # noqa: BLE001 - handed to the reader, which raises it
            queue.put_nowait((e, None))

    tasks = [asyncio.create_task(pump(w)) for w in watches]
    behind = len(watches)
    try:
        while True:
            error, item = await queue.get()
            if error is not None:
                raise error
            if item is None:
                behind -= 1
                if behind == 0:
                    yield None
                continue
            yield item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _kv_deleted(hdrs: str | None) -> bool:
    """Whether the (base64) headers of a KV message mark a delete or a purge."""
    if not hdrs:
        return False
    for line in base64.b64decode(hdrs).decode(errors="replace").split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "kv-operation" and value.strip() in ("DEL", "PURGE"):
            return True
    return False
