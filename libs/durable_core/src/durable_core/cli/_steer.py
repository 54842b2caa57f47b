"""``durable pause|resume|cancel|retry|rerun|fork``, ``awakeable`` and ``signal``: steering
invocations. Lifecycle verbs wait (``--wait``) for the transition and report the state it led
to, or say that it was requested and how to follow it."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable

import click

from durable_core.cli._base import (
    Globals,
    connect,
    connection_options,
    echo,
    echo_json,
    globals_of,
    json_option,
    read_json,
    run,
)

__all__ = ["COMMANDS"]

# -- lifecycle -----------------------------------------------------------------------------------

_FINAL = ("completed", "failed", "cancelled")
# verb -> (what it says once done, the statuses that mean it took effect)
_SETTLED: dict[str, tuple[str, Callable[[str], bool]]] = {
    "pause": ("it pauses at its next step boundary", lambda s: s in ("paused", *_FINAL)),
    "resume": ("a processor picks it up", lambda s: s not in ("paused", "pending")),
    "cancel": ("the step in flight is interrupted", lambda s: s in _FINAL),
    "retry": ("a processor picks it up", lambda s: s not in ("failed", "pending")),
}


def _a_number(_: click.Context, __: click.Parameter, value: float) -> float:
    """NaN passes click's FloatRange (it compares False both ways) and ended the wait at once."""
    if math.isnan(value):
        raise click.BadParameter("nan is not a number of seconds from 0 to 600")
    return value


def _lifecycle_command(verb: str, text: str) -> click.Command:
    @click.command(name=verb, help=text)
    @click.argument("invocation_id", metavar="ID", help="the invocation")
    @click.option(
        "--wait",
        "wait_s",
        type=click.FloatRange(0, 600),
        callback=_a_number,
        default=10.0,
        show_default=True,
        help="seconds to wait for the transition (0: only request it)",
    )
    @json_option
    @connection_options
    @click.pass_context
    def command(ctx: click.Context, invocation_id: str, wait_s: float, as_json: bool) -> int:
        return int(run(_transition(globals_of(ctx), verb, invocation_id, wait_s, as_json)))

    return command


async def _transition(g: Globals, verb: str, iid: str, wait_s: float, as_json: bool) -> int:
    how, settled = _SETTLED[verb]
    async with await connect(g) as client:
        current = (await getattr(client, verb)(iid)).value
        deadline = time.monotonic() + wait_s
        while not settled(current) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            # As `durable status` shows it: the journal's where the state trails it.
            current = (await client.describe(iid)).status
    done = settled(current)
    if verb == "cancel" and current != "running":
        # Pending (queued for a processor), paused or suspended: no step is in flight.
        how = "no other step runs: a processor ends it cancelled when it takes it up"
    if as_json:
        echo_json({"invocation_id": iid, "action": verb, "status": current, "settled": done})
    elif done:
        echo(f"{iid}: {current}")
    else:
        echo(
            f"{verb} requested: {iid} is {current} for now; {how} "
            f"(follow it with `durable status {iid}`)"
        )
    return 0


LIFECYCLE = [
    _lifecycle_command(verb, text)
    for verb, text in (
        ("pause", "Pause an invocation at its next step boundary and report when it is paused."),
        ("resume", "Resume a paused invocation from its journal and report its new status."),
        ("cancel", "Cancel an invocation now (it may compensate) and report when it has ended."),
        ("retry", "Run a failed invocation again from its failed step and report its new status."),
    )
]


_new_id_option = click.option(
    "--id",
    "new_id",
    metavar="NEW_ID",
    help="the new invocation's id: the same command again returns it and starts nothing",
)


@click.command()
@click.argument(
    "invocation_id", metavar="ID", help="the invocation whose workflow and arguments to reuse"
)
@_new_id_option
@json_option
@connection_options
@click.pass_context
def rerun(ctx: click.Context, invocation_id: str, new_id: str | None, as_json: bool) -> int:
    """Start a new invocation of the same workflow with the same arguments; print its id."""

    async def go() -> int:
        async with await connect(globals_of(ctx)) as client:
            made = await client.rerun(invocation_id, id=new_id)
        if as_json:
            echo_json({"invocation_id": made, "rerun_of": invocation_id})
        else:
            echo(made)
        return 0

    return int(run(go()))


@click.command()
@click.argument("invocation_id", metavar="ID", help="the invocation to fork")
@click.option("--from-step", type=int, required=True, metavar="N", help="first step to run anew")
@_new_id_option
@json_option
@connection_options
@click.pass_context
def fork(
    ctx: click.Context, invocation_id: str, from_step: int, new_id: str | None, as_json: bool
) -> int:
    """Start a new invocation that copies steps before N from this one's journal and runs N
    on; print its id."""

    async def go() -> int:
        async with await connect(globals_of(ctx)) as client:
            made = await client.fork(invocation_id, from_step=from_step, id=new_id)
        if as_json:
            echo_json({"invocation_id": made, "forked_from": invocation_id, "from_step": from_step})
        else:
            echo(made)
        return 0

    return int(run(go()))


# -- completing waits ----------------------------------------------------------------------------


@click.group()
def awakeable() -> None:
    """Resolve or reject an awakeable (ids look like awk.<invocation>.<n>)."""


@awakeable.command()
@click.argument("awakeable_id", metavar="ID", help="the awakeable's id")
@click.option("--payload", metavar="JSON|@FILE|-", help="payload as JSON (default: null)")
@json_option
@connection_options
@click.pass_context
def resolve(ctx: click.Context, awakeable_id: str, payload: str | None, as_json: bool) -> int:
    """Complete an awakeable with a payload; the waiting workflow goes on with it."""
    value = read_json(payload, "--payload")

    async def go() -> int:
        async with await connect(globals_of(ctx)) as client:
            await client.resolve_awakeable(awakeable_id, value)
        if as_json:
            echo_json({"awakeable_id": awakeable_id, "resolved": True})
        else:
            echo(f"resolved {awakeable_id}")
        return 0

    return int(run(go()))


@awakeable.command()
@click.argument("awakeable_id", metavar="ID", help="the awakeable's id")
@click.option("--reason", default="rejected", show_default=True, help="why")
@json_option
@connection_options
@click.pass_context
def reject(ctx: click.Context, awakeable_id: str, reason: str, as_json: bool) -> int:
    """Fail an awakeable; the waiting workflow gets AwakeableRejectedError(reason)."""

    async def go() -> int:
        async with await connect(globals_of(ctx)) as client:
            await client.reject_awakeable(awakeable_id, reason)
        if as_json:
            echo_json({"awakeable_id": awakeable_id, "rejected": True, "reason": reason})
        else:
            echo(f"rejected {awakeable_id}")
        return 0

    return int(run(go()))


@click.command()
@click.argument("invocation_id", metavar="ID", help="the invocation")
@click.argument("name", metavar="NAME", help="the signal's name (what the workflow waits for)")
@click.option("--payload", metavar="JSON|@FILE|-", help="payload as JSON (default: null)")
@click.option(
    "--id",
    "signal_id",
    metavar="SIGNAL_ID",
    help="the signal's own id: sending again with it never delivers it twice",
)
@json_option
@connection_options
@click.pass_context
def signal(
    ctx: click.Context,
    invocation_id: str,
    name: str,
    payload: str | None,
    signal_id: str | None,
    as_json: bool,
) -> int:
    """Send a named signal to an invocation (kept until the workflow waits for it)."""
    value = read_json(payload, "--payload")

    async def go() -> int:
        async with await connect(globals_of(ctx)) as client:
            await client.signal(invocation_id, name, value, signal_id=signal_id)
        if as_json:
            echo_json({"invocation_id": invocation_id, "signal": name, "sent": True})
        else:
            echo(f"signal {name} sent to {invocation_id}")
        return 0

    return int(run(go()))


COMMANDS: list[click.Command] = [*LIFECYCLE, rerun, fork, awakeable, signal]
