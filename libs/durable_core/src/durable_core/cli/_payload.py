"""``durable payload get``: the bytes of a recorded value (argument, step result, output),
streamed to a file in chunks (issue 18: large values are stored by reference, and
``durable status`` shows them as ``<object 48.2 MB sha256:…>``).

Exit codes as for every command: 0 ok, 1 the stored bytes do not match their digest, 3 NATS
unreachable, 4 no such invocation, step or object.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import sys
from typing import Any

import click

from durable_core.cli._base import (
    connect,
    connection_options,
    echo,
    echo_json,
    globals_of,
    json_option,
    run,
)
from durable_core.errors import InvalidInputError

__all__ = ["payload"]


@click.group()
def payload() -> None:
    """Read recorded values (large ones are stored in the object store by reference)."""


@payload.command(name="get")
@click.argument(
    "ref", metavar="REF", help="INVOCATION:args, INVOCATION:output, INVOCATION:STEP or an object"
)
@click.option(
    "-o",
    "--output",
    "path",
    metavar="FILE",
    required=True,
    help="where to write the bytes (- for stdout); a partial file is removed on error",
)
@json_option
@connection_options
@click.pass_context
def get(ctx: click.Context, ref: str, path: str, as_json: bool) -> int:
    """Write a recorded value's bytes to FILE, chunk by chunk (its digest checked at the end).

    REF is INVOCATION:args, INVOCATION:output, INVOCATION:STEP (a step's result) or an object
    name. A value kept inline is written too (its encoded bytes: JSON or protobuf).
    """
    g = globals_of(ctx)

    def write(out: Any, chunk: bytes | None) -> None:
        """Write a chunk (None: close the file); the file's own errors (disk full, ...) are
        bad input, as an -o that cannot be opened. Stdout's (a closed pipe) stay as they are."""
        try:
            if chunk is None:
                out.close()
            else:
                out.write(chunk)
        except OSError as e:
            if path == "-":
                raise
            raise InvalidInputError(f"-o {path}: {e}") from e

    async def fetch() -> int:
        async with await connect(g) as client:
            blob = await client.payload(ref)
            try:
                out: Any = (
                    sys.stdout.buffer if path == "-" else await asyncio.to_thread(open, path, "wb")
                )
            except OSError as e:  # no such directory, a directory, no permission
                raise InvalidInputError(f"-o {path}: {e}") from e
            # Only a regular file is removed on error (never /dev/stdout or a named pipe).
            partial = path != "-" and stat.S_ISREG(os.fstat(out.fileno()).st_mode)
            try:
                async for chunk in blob.chunks():
                    write(out, chunk)
                if path != "-":
                    write(out, None)  # closes it (flushing its last bytes)
            except BaseException:
                if path != "-":
                    with contextlib.suppress(OSError):
                        out.close()
                if partial:
                    with contextlib.suppress(OSError):
                        os.unlink(path)
                raise
            if as_json:
                echo_json({"ref": ref, "path": path, "size": blob.size, "sha256": blob.sha256})
            else:
                echo(f"{path}: {blob.size} bytes, sha256 {blob.sha256}", err=True)
            return 0

    return int(run(fetch()))
