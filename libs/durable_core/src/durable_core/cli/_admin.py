"""``durable admin``: changes to an engine's layout, made by an operator.

Exit codes as for every command: 0 ok, 3 NATS unreachable, 6 refused (something is left to
drain first).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import click

from durable_core.cli._base import (
    connection_options,
    echo,
    echo_json,
    engine_config,
    globals_of,
    json_option,
    reachable_config,
    run,
)

__all__ = ["admin"]

_CONSUMER = click.option(
    "--consumer",
    default="processor",
    show_default=True,
    metavar="NAME",
    help="the processors' configured consumer name (DURABLE_CONSUMER)",
)


async def _on_engine(ctx: click.Context, act: Callable[[Any], Awaitable[Any]]) -> Any:
    """``act`` on a connection to the flags' engine (closed after)."""
    from durable_core.admin import Engine

    g = globals_of(ctx)
    engine = await Engine.connect(await reachable_config(g), engine_config(g))
    try:
        return await act(engine)
    finally:
        await engine.close()


@click.group()
def admin() -> None:
    """Administer an engine: its command consumers and layout changes."""


@admin.command(name="migrate-routing")
@_CONSUMER
@json_option
@connection_options
@click.pass_context
def migrate_routing(ctx: click.Context, consumer: str, as_json: bool) -> int:
    """Move an engine created before commands were routed by workflow to routed commands.

    Refuses while the old shared consumer still has commands pending or unacknowledged (stop
    the old processors once they are idle, then run this). Timers aimed at the old subjects
    are re-aimed; then the shared consumer is deleted, and new processors may start.
    """

    async def go() -> int:
        done: list[str] = await _on_engine(ctx, lambda e: e.migrate_routing(consumer))
        if as_json:
            echo_json({"done": done})
        elif not done:
            echo("nothing to migrate: this engine routes commands by workflow already")
        else:
            for line in done:
                echo(line)
            echo("migrated: start the new processors")
        return 0

    return int(run(go()))


@admin.command(name="consumers")
@_CONSUMER
@json_option
@connection_options
@click.pass_context
def consumers(ctx: click.Context, consumer: str, as_json: bool) -> int:
    """List the processors' command consumers (one per workflow and route, in each command
    shard) and their counts."""

    async def go() -> int:
        found: list[dict[str, Any]] = await _on_engine(ctx, lambda e: e.command_consumers(consumer))
        if as_json:
            echo_json({"consumers": found})
        elif not found:
            echo("no command consumers (no processor has started)", err=True)
        else:
            # One consumer per workflow and route in each command stream (shard).
            sharded = len({c["stream"] for c in found}) > 1
            where = f" {'STREAM':<22}" if sharded else ""
            echo(f"{'WORKFLOW':<24} {'ROUTE':<20}{where} {'PENDING':>8} {'ACK PENDING':>12} NAME")
            for c in found:
                where = f" {c['stream']!s:<22}" if sharded else ""
                echo(
                    f"{c['workflow']!s:<24} {c['route']!s:<20}{where} {c['pending']!s:>8} "
                    f"{c['ack_pending']!s:>12} {c['name']}"
                )
        return 0

    return int(run(go()))
