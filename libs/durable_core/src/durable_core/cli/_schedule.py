"""``durable schedule``: create, list, pause, resume and delete schedules.

Exit codes as for every command: 0 ok, 2 bad input (an invalid cron expression, interval, time
zone or option), 3 NATS unreachable, 4 no such schedule, 6 the name is taken.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from durable_core import _codec, schedules
from durable_core.client import Client
from durable_core.errors import ConflictError, InvalidInputError, NotFoundError

__all__ = ["add_parser", "run"]

_EXIT_USAGE, _EXIT_NOT_FOUND, _EXIT_CONFLICT = 2, 4, 6


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``schedule`` and its actions to the ``durable`` command's subparsers."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "schedule", help="run a workflow on a cron expression or at a fixed interval"
    )
    actions = p.add_subparsers(dest="schedule_action", required=True, metavar="ACTION")

    c = actions.add_parser("create", help="create a schedule (it starts firing at once)")
    c.add_argument("name", metavar="NAME", help="1-64 characters from A-Z a-z 0-9 _ -")
    c.add_argument("--workflow", required=True, help="the workflow to start")
    when = c.add_mutually_exclusive_group(required=True)
    when.add_argument(
        "--cron",
        help="cron expression: 5 fields ('*/5 * * * *'), 6 with seconds first, or @daily etc.",
    )
    when.add_argument("--every", help="fixed interval: 30s, 5m, 1h30m, 2d (at least 1s)")
    c.add_argument("--args", default=None, help='workflow input as JSON, e.g. \'{"name": "Ada"}\'')
    c.add_argument("--timezone", default=None, help="IANA zone of the cron fields (default UTC)")
    c.add_argument(
        "--overlap",
        choices=("skip", "allow"),
        default="skip",
        help="while the previous run is going: skip the tick (default) or start another",
    )
    c.add_argument(
        "--catch-up",
        type=int,
        default=1,
        metavar="N",
        help="late ticks (after downtime) that may still run (default 1; 0: none)",
    )
    c.add_argument("--partition-key", default=None, help="partition key of the invocations")
    c.add_argument("--paused", action="store_true", help="create it paused")
    c.add_argument("--json", action="store_true", help="print the schedule as JSON")

    ls = actions.add_parser("list", help="list the schedules")
    ls.add_argument("--json", action="store_true")

    for action, text in (
        ("pause", "stop firing (the schedule is kept)"),
        ("resume", "fire again from the next fire time"),
        ("delete", "stop and remove (its invocations are kept)"),
    ):
        a = actions.add_parser(action, help=text)
        a.add_argument("name", metavar="NAME")
    return p


async def run(
    args: argparse.Namespace, connect: Callable[[argparse.Namespace], Awaitable[Client]]
) -> int:
    """Run ``durable schedule ACTION``; ``connect`` opens the client from the global flags."""
    try:
        return await _run(args, connect)
    except InvalidInputError as e:
        print(f"durable: invalid input: {e}", file=sys.stderr)
        return _EXIT_USAGE
    except NotFoundError as e:
        print(f"durable: not found: {e}", file=sys.stderr)
        return _EXIT_NOT_FOUND
    except ConflictError as e:
        print(f"durable: {e}", file=sys.stderr)
        return _EXIT_CONFLICT


async def _run(
    args: argparse.Namespace, connect: Callable[[argparse.Namespace], Awaitable[Client]]
) -> int:
    action = args.schedule_action
    create_options: dict[str, Any] = {}
    if action == "create":
        # Everything that can be checked without NATS is checked before connecting.
        create_options = {
            "cron": args.cron,
            "every": schedules.parse_duration(args.every) if args.every is not None else None,
            "timezone": args.timezone,
            "overlap": args.overlap,
            "catch_up": args.catch_up,
            "partition_key": args.partition_key,
            "paused": args.paused,
        }
        payload = _codec.parse_json_args(args.args) if args.args is not None else None
        schedules.Schedule(name=args.name, workflow=args.workflow, args=payload, **create_options)
    else:
        payload = None
        if action != "list":
            schedules.check_schedule_name(args.name)
    async with await connect(args) as client:
        t = client._t  # until Client has schedule methods of its own
        if action == "create":
            s = await schedules.create_schedule(
                t, args.name, args.workflow, payload, **create_options
            )
            if args.json:
                print(json.dumps(s.to_dict(), indent=2, ensure_ascii=False))
            else:
                state = "paused" if s.paused else "firing"
                print(f"schedule {s.name} created ({state}): {s.when} -> {s.workflow}")
        elif action == "list":
            found = await schedules.list_schedules(t)
            if args.json:
                doc = {"schedules": [s.to_dict() for s in found]}
                print(json.dumps(doc, indent=2, ensure_ascii=False))
            else:
                _print_table(found)
        elif action == "pause":
            await schedules.pause_schedule(t, args.name)
            print(f"schedule {args.name} paused")
        elif action == "resume":
            await schedules.resume_schedule(t, args.name)
            print(f"schedule {args.name} resumed")
        elif action == "delete":
            await schedules.delete_schedule(t, args.name)
            print(f"schedule {args.name} deleted")
        else:  # pragma: no cover - argparse allows only the actions above
            raise InvalidInputError(f"unknown schedule action {action!r}")
    return 0


def _print_table(found: list[schedules.Schedule]) -> None:
    if not found:
        print("no schedules")
        return
    rows = [("NAME", "WORKFLOW", "WHEN", "OVERLAP", "STATE", "LAST RUN")]
    for s in found:
        last = s.last_invocation_id or "-"
        rows.append(
            (s.name, s.workflow, s.when, s.overlap, "paused" if s.paused else "active", last)
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())
