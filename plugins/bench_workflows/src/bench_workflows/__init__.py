"""Workflows that only the benchmarks run (``make bench``, ``bench/run.py``).

- ``many_steps``: ``n`` cheap ``ctx.run`` steps, to measure what one step costs the engine
  (journal append and bookkeeping) when the step itself costs nothing.
- ``sleeper``: one durable ``ctx.sleep``, to hold thousands of suspended invocations while the
  benchmark measures the processor's memory.
- ``sleep_over_large``: large step results, then a durable sleep (what a replay reads).
- ``large_parent`` / ``large_child``: a parent using a child's large output after a sleep.
- ``swallow_blob``: a step that swallows a failed Blob read.
- ``echo_blob``: returns its Blob argument (the benchmark's large value round trip).
- ``large_payload``: three steps over large values (issue 18): the argument (a Blob) is read in
  chunks, the middle step returns a file-like stream four times its size, the last step reads
  that back; the output gives both digests, to check the bytes went through unchanged.
"""

from __future__ import annotations

import hashlib
import io
from datetime import timedelta
from typing import Any

from durable_core import Blob, Context, WorkflowRegistry, hookimpl

MAX_STEPS = 100_000


def _one() -> int:
    return 1


async def _one_async() -> int:
    return 1


def _int_arg(args: dict[str, Any] | None, key: str, default: int, low: int, high: int) -> int:
    value = (args or {}).get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{key!r} must be an integer in [{low}, {high}], not {value!r}")
    return value


async def many_steps(ctx: Context, args: dict[str, Any] | None = None) -> dict[str, int]:
    """Run ``args["steps"]`` (default 1000) trivial ``ctx.run`` steps, one after another.

    Each step returns 1; the output ``{"steps": n, "sum": n}`` proves that every step ran or
    was replayed. ``args["sync"] = true`` makes the steps plain functions (which ``ctx.run``
    runs in a thread) instead of coroutines.
    """
    steps = _int_arg(args, "steps", 1000, 0, MAX_STEPS)
    fn = _one if (args or {}).get("sync") else _one_async
    total = 0
    for _ in range(steps):
        total += await ctx.run("step", fn)
    return {"steps": steps, "sum": total}


async def sleeper(ctx: Context, args: dict[str, Any] | None = None) -> dict[str, int]:
    """Sleep durably for ``args["seconds"]`` (default 3600), then return ``{"slept": s}``.

    Needs ``Context.sleep``; on an engine without it the invocation fails with AttributeError.
    """
    seconds = _int_arg(args, "seconds", 3600, 0, 366 * 24 * 3600)
    await ctx.sleep(timedelta(seconds=seconds))  # type: ignore[attr-defined,unused-ignore]
    return {"slept": seconds}


class Generated:
    """``size`` deterministic bytes, made as they are read (never all in memory): block ``i``
    (1 MiB) repeats ``sha256(seed:i)``. ``read`` is what the engine streams from."""

    BLOCK = 1024 * 1024

    def __init__(self, size: int, seed: str = "durable") -> None:
        self.size, self.seed, self.pos = size, seed, 0
        self._block, self._index = b"", -1

    def _block_at(self, index: int) -> bytes:
        if index != self._index:
            digest = hashlib.sha256(f"{self.seed}:{index}".encode()).digest()
            self._block, self._index = digest * (self.BLOCK // len(digest)), index
        return self._block

    def read(self, n: int = -1) -> bytes:
        """The next ``n`` bytes (all that is left if ``n`` < 0)."""
        end = self.size if n < 0 else min(self.size, self.pos + n)
        out = bytearray()
        while self.pos < end:
            index, offset = divmod(self.pos, self.BLOCK)
            piece = self._block_at(index)[offset : offset + end - self.pos]
            out += piece
            self.pos += len(piece)
        return bytes(out)


async def _digest(blob: Blob) -> dict[str, Any]:
    h = hashlib.sha256()
    async for chunk in blob.chunks():
        h.update(chunk)
    return {"sha256": h.hexdigest(), "size": blob.size}


async def echo_blob(ctx: Context, data: Blob) -> Blob:
    """Return the argument: the stored object is shared, never copied (the benchmark's large
    value round trip: the client's upload and download through the engine)."""
    return data


async def sleep_over_large(ctx: Context, args: dict[str, Any] | None = None) -> dict[str, Any]:
    """Two large step results (a stream, read back as a Blob, and a 300 KB string stored by
    reference), a durable sleep, then the output from both: the replay after the wake-up
    returns the string (read again) but never reads the Blob (only its size is used)."""
    seconds = _int_arg(args, "seconds", 2, 0, 3600)
    blob = await ctx.run("stream", io.BytesIO, b"b" * 300_000)
    text = await ctx.run("text", str.__mul__, "t", 300_000)
    await ctx.sleep(timedelta(seconds=seconds))
    return {"blob": blob.size, "text": len(text)}


async def large_child(ctx: Context) -> str:
    """A 300 KB output: stored by reference, under this (child) invocation's id."""
    return "c" * 300_000


async def large_parent(ctx: Context, args: dict[str, Any] | None = None) -> int:
    """Invoke ``large_child``, sleep, then use its output: the replay after the wake-up reads
    the child's stored output, which the child's retention must have left in place."""
    text = await ctx.invoke("large_child")
    await ctx.sleep(timedelta(seconds=_int_arg(args, "seconds", 2, 0, 3600)))
    return len(text)


async def _careless_digest(blob: Blob) -> Any:
    try:
        return await _digest(blob)
    except Exception:  # noqa: BLE001 - on purpose: a step that swallows a read error
        return "swallowed"


async def swallow_blob(ctx: Context, data: Blob) -> Any:
    """A step that catches every error while reading its Blob: a corrupt object must still
    stop the run, never journal what the step made of it."""
    return await ctx.run("careless", _careless_digest, data)


async def large_payload(ctx: Context, data: Blob) -> dict[str, Any]:
    """Read the argument in chunks (step 1), return a stream of four times its size (step 2,
    never in memory: streamed to the object store), read that back in chunks (step 3)."""
    arg = await ctx.run("digest argument", _digest, data)
    big = await ctx.run("generate", Generated, 4 * data.size)
    out = await ctx.run("digest result", _digest, big)
    return {"argument": arg, "result": out}


@hookimpl
def durable_register_workflows(registry: WorkflowRegistry) -> None:
    """Register this plugin's workflows."""
    registry.register(many_steps)
    registry.register(sleeper)
    registry.register(large_payload)
    registry.register(echo_blob)
    registry.register(sleep_over_large)
    registry.register(large_child)
    registry.register(swallow_blob)
    registry.register(large_parent)
