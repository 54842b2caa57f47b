"""``durable``: run the stack locally, invoke workflows, inspect and steer them.

Built on click (commands, flags anywhere, help, completion) and rich (tables, colour, the live
status line). Exit codes are listed in :mod:`durable_core.cli._base`.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import sys
import time
import uuid
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import click

from durable_core.cli import _admin, _local, _payload, _schedule, _steer
from durable_core.cli._base import (
    CONTEXT,
    EXIT_CONFLICT,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_NATS,
    EXIT_NOT_FOUND,
    EXIT_PIPE,
    EXIT_TIMEOUT,
    EXIT_USAGE,
    Globals,
    check_input,
    connect,
    connection_options,
    echo,
    echo_json,
    globals_of,
    installed_workflows,
    json_option,
    read_json,
    run,
    start_tracing,
)
from durable_core.client import Status
from durable_core.errors import (
    ConfigError,
    ConflictError,
    DurableError,
    EngineNotFoundError,
    ExpiredError,
    InvalidInputError,
    InvocationTimeoutError,
    NatsUnavailableError,
    NotFoundError,
    PayloadUnavailableError,
    UnknownWorkflowError,
    UnsupportedServerError,
)

__all__ = ["cli", "main"]

MAX_SECONDS = 10 * 366 * 24 * 3600.0  # ten years, the longest sleep or delay
_REFUSED_INPUT = ("InvalidInputError", "UnknownWorkflow")
STATUSES = tuple(s.value for s in Status if s != Status.UNKNOWN)


def _version() -> str:
    from durable_core import __version__

    return __version__


@click.group(context_settings=CONTEXT, no_args_is_help=True)
@click.version_option(_version(), "--version", "-V", prog_name="durable")
@connection_options
def cli() -> None:
    """Durable execution on NATS JetStream.

    Start the local stack with `durable dev`, then `durable invoke hello_workflow --args
    '{"name": "Ada"}'`. The connection flags may come before or after the command. Shell
    completion: `eval "$(durable completion bash)"` (or zsh, fish).
    """


def seconds(flag: str, value: float, *, allow_zero: bool) -> timedelta:
    """A --timeout/--delay value as a timedelta; InvalidInputError unless it is a finite number
    of seconds from 0 (excluded unless ``allow_zero``) to ten years."""
    in_range = 0 <= value <= MAX_SECONDS if allow_zero else 0 < value <= MAX_SECONDS
    span = "from 0 to" if allow_zero else "above 0 and at most"
    if not (math.isfinite(value) and in_range):  # nan compares False: refused too
        raise InvalidInputError(f"{flag} must be a number of seconds {span} {MAX_SECONDS:.0f}")
    as_delta = timedelta(seconds=value)
    if not allow_zero and not as_delta:  # below a microsecond: rounds to 0
        raise InvalidInputError(
            f"{flag} must be a number of seconds {span} {MAX_SECONDS:.0f}: {value:g} rounds to "
            "0 (the smallest is 0.000001)"
        )
    return as_delta


# -- invoke and status ---------------------------------------------------------------------------


@cli.command()
@click.argument(
    "workflow", metavar="NAME", help="the workflow to start (`durable plugins` lists them)"
)
@click.option(
    "--args",
    "args_text",
    metavar="JSON|@FILE|-",
    help='arguments as JSON (\'{"name": "Ada"}\'), @path to read a file, - to read stdin',
)
@click.option(
    "--id",
    "invocation_id",
    metavar="ID",
    help="invocation id (default: random); the same id with the same arguments is the same "
    "invocation, with other arguments a conflict (exit 6)",
)
@click.option("--partition-key", metavar="KEY", help="run one at a time per key, in order")
@click.option(
    "--blob",
    is_flag=True,
    help="with --args @FILE: send the file's bytes, streamed in chunks to the object store, "
    "as a durable_core.Blob (the default for a workflow installed here whose input is a Blob)",
)
@click.option("--no-wait", is_flag=True, help="print the id and return at once")
@click.option("--timeout", type=float, default=60.0, show_default=True, help="seconds to wait")
@click.option("--delay", type=float, help="start after this many seconds (implies --no-wait)")
@click.option(
    "--queue",
    "queue_unserved",
    is_flag=True,
    help="accept a workflow that no live processor serves: it waits for one that will "
    "(default: refuse it, exit 2)",
)
@json_option
@connection_options
@click.pass_context
def invoke(
    ctx: click.Context,
    workflow: str,
    args_text: str | None,
    invocation_id: str | None,
    partition_key: str | None,
    blob: bool,
    no_wait: bool,
    timeout: float,
    delay: float | None,
    queue_unserved: bool,
    as_json: bool,
) -> int:
    """Start a workflow invocation and (by default) wait for its result.

    The invocation id is printed on stderr as soon as it is submitted, so an interrupted wait
    loses nothing: `durable status ID` picks it up. Exit 1 if the workflow fails.
    """
    # Checked first: a bad --timeout or --delay is refused before anything is opened or sent.
    wait_for = seconds("--timeout", timeout, allow_zero=False)
    after = seconds("--delay", delay, allow_zero=True) if delay is not None else None
    streamed = bool(args_text and args_text.startswith("@")) and (blob or _takes_blob(workflow))
    if blob and not streamed:
        raise InvalidInputError("--blob needs --args @FILE (the file whose bytes to send)")
    if streamed:
        # The file's bytes, read in chunks as they are uploaded: never whole in memory.
        path = str(args_text)[1:]
        try:
            payload: Any = open(path, "rb")  # noqa: SIM115 - closed once submitted
        except OSError as e:
            raise InvalidInputError(f"--args @{path}: cannot read it: {e}") from e
    else:
        payload = read_json(args_text, "--args")
    from durable_core._naming import check_invocation_id, check_workflow_name

    check_workflow_name(workflow)
    iid = check_invocation_id(invocation_id) if invocation_id is not None else uuid.uuid4().hex
    if not streamed:
        check_input(workflow, payload)
    g = globals_of(ctx)
    try:
        return int(
            run(
                _invoke(
                    g,
                    workflow,
                    payload,
                    iid,
                    partition_key,
                    no_wait,
                    wait_for,
                    after,
                    as_json,
                    queue_unserved,
                )
            )
        )
    finally:
        if streamed:
            payload.close()


def _takes_blob(workflow: str) -> bool:
    """Whether the workflow, installed here, takes a Blob (its --args @FILE is streamed)."""
    from durable_core._payloads import Blob

    registry = installed_workflows()
    if registry is None or workflow not in registry:
        return False
    return registry.get(workflow).input_type is Blob


async def _invoke(
    g: Globals,
    workflow: str,
    payload: Any,
    iid: str,
    partition_key: str | None,
    no_wait: bool,
    timeout: timedelta,
    delay: timedelta | None,
    as_json: bool,
    queue_unserved: bool = False,
) -> int:
    async with await connect(g) as client:
        await client.invoke_async(
            workflow,
            payload,
            id=iid,
            partition_key=partition_key,
            delay=delay,
            queue_unserved=queue_unserved,
        )
        if no_wait or delay is not None:
            if as_json:
                echo_json({"invocation_id": iid, "workflow": workflow, "status": "submitted"})
            else:
                echo(iid)
            return 0
        echo(f"invocation {iid} started ({workflow}); waiting for its result", err=True)
        result = await _wait_with_status_line(client, iid, timeout)
        view = await client.describe(iid)
        if as_json:
            echo_json(view.to_dict())
        else:
            from durable_core.cli import _render

            _render.view(view)
        if result.status.value != "failed":
            return 0
        f = result.failure
        if f is not None and f.type in _REFUSED_INPUT and not f.step:
            # The processor refused what it was given (the arguments' type, the workflow's
            # name) before any step: bad input, whoever noticed it.
            echo(f"durable: invalid input: {f.message}", err=True)
            return EXIT_USAGE
        where = f" at step {f.step}" if f and f.step else ""
        echo(
            f"durable: invocation {iid} failed{where}: {f.type if f else 'Error'}: "
            f"{f.message if f else 'unknown failure'}",
            err=True,
        )
        return EXIT_FAILED


async def _wait_with_status_line(client: Any, iid: str, timeout: timedelta) -> Any:
    """Wait for the result; on a terminal, a live line shows the status and the time waited."""
    if not sys.stderr.isatty():
        return await client.wait(iid, timeout=timeout)
    from durable_core.cli import _render

    started = time.monotonic()
    waiting = asyncio.ensure_future(client.wait(iid, timeout=timeout))
    with _render.console(err=True).status(f"waiting for {iid}") as line:
        current = "pending"
        while not waiting.done():
            line.update(
                f"{iid}: {_render.status(current)} · {time.monotonic() - started:.1f} s"
                " (Ctrl-C stops waiting, not the invocation)"
            )
            await asyncio.wait({waiting}, timeout=0.5)
            with contextlib.suppress(DurableError):
                current = (await client.get_summary(iid)).status.value
    return waiting.result()


@cli.command()
@click.argument("invocation_id", metavar="ID", help="the invocation")
@json_option
@connection_options
@click.pass_context
def status(ctx: click.Context, invocation_id: str, as_json: bool) -> int:
    """Show an invocation: arguments, status, each step with its waits and retries, lineage and
    the status history from its journal."""

    installed_workflows()

    async def go() -> int:
        async with await connect(globals_of(ctx)) as client:
            view = await client.describe(invocation_id)
        if as_json:
            echo_json(view.to_dict())
        else:
            from durable_core.cli import _render

            _render.view(view)
        return 0

    return int(run(go()))


@cli.command(name="list")
@click.option("--status", "status_", type=click.Choice(STATUSES), help="only this status")
@click.option("--workflow", metavar="NAME", help="only this workflow")
@click.option(
    "--limit", type=click.IntRange(1, 100_000), default=50, show_default=True, help="at most N"
)
@json_option
@connection_options
@click.pass_context
def list_(
    ctx: click.Context, status_: str | None, workflow: str | None, limit: int, as_json: bool
) -> int:
    """List executions, newest first."""

    async def go() -> int:
        async with await connect(globals_of(ctx)) as client:
            found = await client.list_executions(status=status_, workflow=workflow)
        found = list(reversed(found))[:limit]
        if as_json:
            from durable_core.views import iso

            echo_json(
                [
                    {
                        "invocation_id": e.invocation_id,
                        "workflow": e.workflow,
                        "status": e.status.value,
                        "created_at": iso(e.created_at),
                        "updated_at": iso(e.updated_at),
                        "parent_id": e.parent_id or None,
                        "failure": None
                        if e.failure is None
                        else {"type": e.failure.type, "message": e.failure.message},
                    }
                    for e in found
                ]
            )
        elif found:
            from durable_core.cli import _render

            _render.executions(found)
        else:
            echo("no executions match", err=True)
        return 0

    return int(run(go()))


for _command in (
    *_steer.COMMANDS,
    *_local.COMMANDS,
    _schedule.schedule,
    _admin.admin,
    _payload.payload,
):
    cli.add_command(_command)


# -- the entry point -----------------------------------------------------------------------------

_ERRORS: list[tuple[type[BaseException], int, str]] = [
    # NATS answers, but no processor created the streams, or the server is too old: like an
    # unreachable NATS, not bad input.
    (EngineNotFoundError, EXIT_NATS, ""),
    (UnsupportedServerError, EXIT_NATS, ""),
    # A workflow nobody serves is bad input (exit 2), as the processor's refusal of a
    # workflow it lacks always was, though NotFoundError's exit would be 4.
    (UnknownWorkflowError, EXIT_USAGE, ""),
    (InvalidInputError, EXIT_USAGE, "invalid input: "),
    (ConfigError, EXIT_USAGE, "invalid input: "),
    (ConflictError, EXIT_CONFLICT, ""),
    (NatsUnavailableError, EXIT_NATS, ""),
    (ExpiredError, EXIT_NOT_FOUND, ""),  # "invocation X has expired: ..."
    (NotFoundError, EXIT_NOT_FOUND, "not found: "),
    (InvocationTimeoutError, EXIT_TIMEOUT, ""),
    (PayloadUnavailableError, EXIT_FAILED, ""),
    (DurableError, EXIT_FAILED, ""),
]


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``durable`` with ``argv`` (default: the command line); returns the exit code."""
    provider = start_tracing()
    try:
        return _main(argv)
    finally:
        if provider is not None:
            from durable_core.service.telemetry import shutdown_tracing

            shutdown_tracing(provider)  # exports the spans still buffered


def _main(argv: Sequence[str] | None) -> int:
    try:
        try:
            code = cli.main(
                args=list(argv) if argv is not None else None,
                prog_name="durable",
                standalone_mode=False,
                obj=Globals(),
            )
        except click.ClickException as e:  # usage errors: exit 2
            e.show()
            return e.exit_code
        except click.Abort:
            return EXIT_INTERRUPTED
        except SystemExit as e:
            # Outside standalone mode click exits only when stdout is a closed pipe (`| head`),
            # quietly and with 1, which would read as "the workflow failed".
            return EXIT_PIPE if e.code == 1 else e.code if isinstance(e.code, int) else EXIT_USAGE
        except KeyboardInterrupt:
            return EXIT_INTERRUPTED
        except BaseException as e:
            for kind, exit_code, label in _ERRORS:
                if isinstance(e, kind):
                    echo(f"durable: {label}{e}", err=True)
                    return exit_code
            raise
        sys.stdout.flush()
        return int(code or 0)
    except BrokenPipeError:
        # The reader went away (`durable list | head`): no traceback, and nothing more to say.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_PIPE
