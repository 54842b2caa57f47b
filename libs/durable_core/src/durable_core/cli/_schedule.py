"""``durable schedule``: create, list, pause, resume and delete schedules.

Exit codes as for every command: 0 ok, 2 bad input (an invalid cron expression, interval, time
zone or option), 3 NATS unreachable, 4 no such schedule, 6 the name is taken.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import click

from durable_core.cli._base import (
    check_input,
    connect,
    connection_options,
    echo,
    echo_json,
    globals_of,
    json_option,
    read_json,
    run,
)

__all__ = ["next_fire", "schedule"]


@click.group()
def schedule() -> None:
    """Run a workflow on a cron expression or at a fixed interval."""


def next_fire(s: Any) -> datetime | None:
    """When a schedule fires next (None while paused)."""
    return s.next_fire(datetime.now(UTC))  # type: ignore[no-any-return]


def _doc(s: Any) -> dict[str, Any]:
    from durable_core.views import iso

    return {**s.to_dict(), "next_fire_at": iso(next_fire(s))}


@schedule.command()
@click.argument("name", metavar="NAME", help="1-64 characters from A-Z a-z 0-9 _ -")
@click.option("--workflow", required=True, metavar="NAME", help="the workflow to start")
@click.option(
    "--cron", help="cron expression: 5 fields ('*/5 * * * *'), 6 with seconds first, or @daily"
)
@click.option("--every", metavar="INTERVAL", help="fixed interval: 30s, 5m, 1h30m, 2d (>= 1s)")
@click.option(
    "--args", "args_text", metavar="JSON|@FILE|-", help="workflow input as JSON, @file or -"
)
@click.option("--timezone", metavar="ZONE", help="IANA zone of the cron fields (default UTC)")
@click.option(
    "--overlap",
    type=click.Choice(["skip", "allow"]),
    default="skip",
    show_default=True,
    help="while the previous run is going: skip the tick or start another",
)
@click.option(
    "--catch-up",
    type=click.IntRange(0, 1000),
    default=1,
    show_default=True,
    metavar="N",
    help="late ticks (after downtime) that may still run (0: none)",
)
@click.option("--partition-key", metavar="KEY", help="partition key of the invocations")
@click.option("--paused", is_flag=True, help="create it paused")
@click.option(
    "--queue",
    "queue_unserved",
    is_flag=True,
    help="create it although no live processor serves the workflow (default: refuse, exit 2)",
)
@json_option
@connection_options
@click.pass_context
def create(
    ctx: click.Context,
    name: str,
    workflow: str,
    cron: str | None,
    every: str | None,
    args_text: str | None,
    timezone: str | None,
    overlap: str,
    catch_up: int,
    partition_key: str | None,
    paused: bool,
    queue_unserved: bool,
    as_json: bool,
) -> int:
    """Create a schedule (it starts firing at once unless --paused)."""
    from durable_core import schedules

    if (cron is None) == (every is None):
        raise click.UsageError("give exactly one of --cron and --every")
    # Everything that can be checked without NATS is checked before connecting.
    options: dict[str, Any] = {
        "cron": cron,
        "every": schedules.parse_duration(every) if every is not None else None,
        "timezone": timezone,
        "overlap": overlap,
        "catch_up": catch_up,
        "partition_key": partition_key,
        "paused": paused,
    }
    payload = read_json(args_text, "--args")
    schedules.Schedule(name=name, workflow=workflow, args=payload, **options)
    check_input(workflow, payload)  # each tick would fail on them

    async def go() -> int:
        async with await connect(globals_of(ctx)) as client:
            s = await client.create_schedule(
                name, workflow, payload, queue_unserved=queue_unserved, **options
            )
        if as_json:
            echo_json(_doc(s))
        else:
            state = "paused" if s.paused else f"next fire {_when(next_fire(s))}"
            echo(f"schedule {s.name} created ({state}): {s.when} -> {s.workflow}")
        return 0

    return int(run(go()))


def _when(at: datetime | None) -> str:
    from durable_core.views import format_time

    return format_time(at)


@schedule.command(name="list")
@json_option
@connection_options
@click.pass_context
def list_(ctx: click.Context, as_json: bool) -> int:
    """List the schedules with their next fire time."""

    async def go() -> int:
        async with await connect(globals_of(ctx)) as client:
            found = await client.list_schedules()
        if as_json:
            echo_json({"schedules": [_doc(s) for s in found]})
        elif not found:
            echo("no schedules", err=True)
        else:
            from durable_core.cli import _render

            _render.schedules(found, [_when(next_fire(s)) for s in found])
        return 0

    return int(run(go()))


def _action(verb: str, text: str) -> None:
    @schedule.command(name=verb, help=text)
    @click.argument("name", metavar="NAME", help="the schedule")
    @json_option
    @connection_options
    @click.pass_context
    def command(ctx: click.Context, name: str, as_json: bool) -> int:
        from durable_core import schedules

        schedules.check_schedule_name(name)

        async def go() -> int:
            async with await connect(globals_of(ctx)) as client:
                if verb == "delete":
                    await client.delete_schedule(name)
                    s = None
                else:
                    s = await getattr(client, f"{verb}_schedule")(name)
            if as_json:
                echo_json({"name": name, "action": verb, "schedule": s and _doc(s)})
            elif s is None:
                echo(f"schedule {name} deleted")
            else:
                nxt = "" if s.paused else f"; next fire {_when(next_fire(s))}"
                echo(f"schedule {name} {'paused' if s.paused else 'active'}{nxt}")
            return 0

        return int(run(go()))


for _verb, _text in (
    ("pause", "Stop firing (the schedule is kept)."),
    ("resume", "Fire again from the next fire time."),
    ("delete", "Stop and remove (its invocations are kept)."),
):
    _action(_verb, _text)
