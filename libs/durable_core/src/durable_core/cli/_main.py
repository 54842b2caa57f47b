"""``durable``: run the stack locally, invoke workflows, inspect them.

Exit codes: 0 success, 1 the workflow failed, 2 bad input or usage, 3 NATS unreachable,
4 not found, 5 timed out waiting, 6 conflict (already resolved, already finished).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from durable_core import _codec
from durable_core.cli import _schedule
from durable_core.client import Client, InvocationResult, Status, vars_of
from durable_core.config import EngineConfig, NatsConfig
from durable_core.context import MAX_SLEEP
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
    WorkflowFailedError,
)

EXIT_FAILED, EXIT_USAGE, EXIT_NATS, EXIT_NOT_FOUND, EXIT_TIMEOUT, EXIT_CONFLICT = 1, 2, 3, 4, 5, 6
DEFAULT_URL = "nats://127.0.0.1:4222"


def nats_config(args: argparse.Namespace) -> NatsConfig:
    """NATS settings from flags, falling back to the environment the services use."""
    env = os.environ

    def pick(flag: str | None, *names: str) -> str | None:
        if flag:
            return flag
        for name in names:
            if env.get(name):
                return env[name]
        return None

    url = pick(args.nats_url, "NATS_URL", "DURABLE_NATS_URL") or DEFAULT_URL
    return NatsConfig.from_url(
        url,
        user=pick(None, "DURABLE_NATS_USER"),
        password=pick(None, "DURABLE_NATS_PASSWORD"),
        token=pick(None, "DURABLE_NATS_TOKEN"),
        creds_file=pick(args.nats_creds, "DURABLE_NATS_CREDS_FILE"),
        nkey_seed_file=pick(None, "DURABLE_NATS_NKEY_SEED_FILE"),
        tls_ca=pick(args.tls_ca, "DURABLE_NATS_TLS_CA"),
        tls_cert=pick(args.tls_cert, "DURABLE_NATS_TLS_CERT"),
        tls_key=pick(args.tls_key, "DURABLE_NATS_TLS_KEY"),
        name="durable-cli",
    )


def engine_config(args: argparse.Namespace) -> EngineConfig:
    """The engine's prefix from the flag or the DURABLE_ environment (the CLI never creates
    the streams: replicas and limits are what the processors created them with)."""
    return EngineConfig(prefix=args.prefix or os.environ.get("DURABLE_PREFIX") or "durable")


async def connect(args: argparse.Namespace) -> Client:
    return await Client.connect(nats_config(args), engine=engine_config(args))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="durable", description="Durable execution on NATS JetStream.")
    p.add_argument("--nats-url", help=f"NATS URL(s), comma-separated (env NATS_URL; {DEFAULT_URL})")
    p.add_argument("--nats-creds", help="NATS .creds file (env DURABLE_NATS_CREDS_FILE)")
    p.add_argument("--tls-ca", help="CA file to verify NATS (env DURABLE_NATS_TLS_CA)")
    p.add_argument("--tls-cert", help="client certificate (env DURABLE_NATS_TLS_CERT)")
    p.add_argument("--tls-key", help="client key (env DURABLE_NATS_TLS_KEY)")
    p.add_argument("--prefix", help="engine prefix of subjects and streams (env DURABLE_PREFIX)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = sub.add_parser(
        "dev",
        help="run NATS, the hello service, a processor, the scheduler and the inspector in the "
        "foreground",
    )
    d.add_argument("--data-dir", default=".durable", help="where NATS keeps its data")
    d.add_argument("--nats-port", type=int, default=4222)
    d.add_argument("--grpc-port", type=int, default=9090)
    d.add_argument("--inspector-port", type=int, default=8080)

    demo = sub.add_parser("demo", help="start a throwaway stack, run hello_workflow, stop")
    demo.add_argument("--name", default="", help="whom to greet (empty: World)")

    inv = sub.add_parser("invoke", help="start a workflow invocation")
    inv.add_argument("workflow", metavar="NAME")
    inv.add_argument("--args", default=None, help='arguments as JSON, e.g. \'{"name": "Ada"}\'')
    inv.add_argument("--id", default=None, help="invocation id (default: random)")
    inv.add_argument("--partition-key", default=None)
    inv.add_argument("--no-wait", action="store_true", help="print the id and return")
    inv.add_argument("--json", action="store_true", help="print the result as JSON")
    inv.add_argument("--timeout", type=float, default=60.0, help="seconds to wait (default 60)")
    inv.add_argument(
        "--delay",
        type=float,
        default=None,
        help="start after this many seconds (implies --no-wait)",
    )

    aw = sub.add_parser("awakeable", help="resolve or reject an awakeable")
    aw_sub = aw.add_subparsers(dest="action", required=True, metavar="ACTION")
    res = aw_sub.add_parser("resolve", help="complete it with a JSON payload")
    res.add_argument("awakeable_id", metavar="ID")
    res.add_argument("--payload", default=None, help="JSON payload (default: null)")
    rej = aw_sub.add_parser("reject", help="fail it with a reason")
    rej.add_argument("awakeable_id", metavar="ID")
    rej.add_argument("--reason", default="rejected", help="why (default: rejected)")

    for verb, text in (
        ("pause", "pause an invocation at its next step boundary"),
        ("resume", "resume a paused invocation"),
        ("cancel", "cancel an invocation now (it may compensate)"),
        ("retry", "run a failed invocation again from its failed step"),
        ("rerun", "start a new invocation with the same arguments"),
    ):
        lc = sub.add_parser(verb, help=text)
        lc.add_argument("invocation_id", metavar="ID")

    fork = sub.add_parser("fork", help="new invocation replaying steps before N, running N on")
    fork.add_argument("invocation_id", metavar="ID")
    fork.add_argument("--from-step", type=int, required=True, metavar="N")

    ls = sub.add_parser("list", help="list executions")
    ls.add_argument("--status", choices=[s.value for s in Status if s != Status.UNKNOWN])
    ls.add_argument("--workflow", metavar="NAME")
    ls.add_argument("--json", action="store_true")

    sig = sub.add_parser("signal", help="send a named signal to an invocation")
    sig.add_argument("invocation_id", metavar="ID")
    sig.add_argument("name", metavar="NAME")
    sig.add_argument("--payload", default=None, help="JSON payload (default: null)")

    st = sub.add_parser("status", help="show an invocation's status, output and steps")
    st.add_argument("invocation_id", metavar="ID")
    st.add_argument("--json", action="store_true")

    pl = sub.add_parser("plugins", help="list installed workflow plugins")
    pl.add_argument("--json", action="store_true")
    _schedule.add_parser(sub)
    return p


def _shown(payload: Any) -> str:
    try:
        return json.dumps(_codec.to_json_compatible(payload), ensure_ascii=False)
    except InvalidInputError as e:
        return f"<undecodable: {e}>"


def print_result(result: InvocationResult, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result.to_dict(), indent=2, ensure_ascii=False))
        return
    print(f"invocation {result.invocation_id}")
    print(f"  workflow  {result.workflow}")
    print(f"  status    {result.status.value}")
    if result.failure is not None:
        f = result.failure
        where = f" at step {f.step}" if f.step else ""
        print(f"  failure   {f.type}{where}: {f.message}")
    for s in result.steps:
        outcome = f"failed: {s.failure.message}" if s.failure else _shown(s.output)
        print(
            f"  step {s.step:<3} {s.kind:<4} {s.name}  ({s.duration_ms:.1f} ms, "
            f"{s.attempts} attempt{'s' if s.attempts != 1 else ''}) -> {outcome}"
        )
    if result.output is not None:
        out = result.to_dict()["output"]
        print(f"  output    {json.dumps(out, ensure_ascii=False)}")


def seconds(flag: str, value: float, *, allow_zero: bool, at_most: float) -> timedelta:
    """A --timeout/--delay value as a timedelta; InvalidInputError unless it is a finite number
    of seconds from 0 (excluded unless ``allow_zero``) to ``at_most``."""
    in_range = 0 <= value <= at_most if allow_zero else 0 < value <= at_most
    if not (math.isfinite(value) and in_range):  # nan compares False: refused too
        span = f"from 0 to {at_most:.0f}" if allow_zero else f"above 0 and at most {at_most:.0f}"
        raise InvalidInputError(f"{flag} must be a number of seconds {span}, not {value}")
    return timedelta(seconds=value)


async def cmd_invoke(args: argparse.Namespace) -> int:
    payload: Any = _codec.parse_json_args(args.args) if args.args is not None else None
    # Checked before connecting: nan, inf or 1e300 would otherwise fail in timedelta().
    limit = MAX_SLEEP.total_seconds()
    timeout = seconds("--timeout", args.timeout, allow_zero=False, at_most=limit)
    delay = (
        seconds("--delay", args.delay, allow_zero=True, at_most=limit)
        if args.delay is not None
        else None
    )
    async with await connect(args) as client:
        if args.no_wait or delay is not None:
            invocation_id = await client.invoke_async(
                args.workflow,
                payload,
                id=args.id,
                partition_key=args.partition_key,
                delay=delay,
            )
            print(json.dumps({"invocation_id": invocation_id}) if args.json else invocation_id)
            return 0
        try:
            result = await client.invoke(
                args.workflow,
                payload,
                id=args.id,
                partition_key=args.partition_key,
                timeout=timeout,
            )
        except WorkflowFailedError as e:
            if args.json:
                print_result(await client.get_result(e.invocation_id), True)
            print(f"durable: {e}", file=sys.stderr)
            return EXIT_FAILED
        print_result(result, args.json)
        return 0


async def cmd_awakeable(args: argparse.Namespace) -> int:
    payload: Any = None
    if args.action == "resolve" and args.payload is not None:
        payload = _codec.parse_json_args(args.payload, flag="--payload")
    async with await connect(args) as client:
        if args.action == "resolve":
            await client.resolve_awakeable(args.awakeable_id, payload)
            print(f"resolved {args.awakeable_id}")
        else:
            await client.reject_awakeable(args.awakeable_id, args.reason)
            print(f"rejected {args.awakeable_id}")
    return 0


async def cmd_signal(args: argparse.Namespace) -> int:
    payload = (
        _codec.parse_json_args(args.payload, flag="--payload") if args.payload is not None else None
    )
    async with await connect(args) as client:
        await client.signal(args.invocation_id, args.name, payload)
    print(f"signal {args.name} sent to {args.invocation_id}")
    return 0


async def cmd_lifecycle(args: argparse.Namespace) -> int:
    async with await connect(args) as client:
        if args.command == "fork":
            result = await client.fork(args.invocation_id, from_step=args.from_step)
        else:
            result = await getattr(client, args.command)(args.invocation_id)
    if args.command in ("rerun", "fork"):
        print(result)  # the new invocation's id
    else:
        print(f"{args.invocation_id}: {Status(result).value}")
    return 0


async def cmd_schedule(args: argparse.Namespace) -> int:
    return await _schedule.run(args, connect)


async def cmd_list(args: argparse.Namespace) -> int:
    async with await connect(args) as client:
        found = await client.list_executions(status=args.status, workflow=args.workflow)
    if args.json:
        rows = [
            {
                "invocation_id": e.invocation_id,
                "workflow": e.workflow,
                "status": e.status.value,
                "created_at": e.created_at.isoformat() if e.created_at else None,
                "updated_at": e.updated_at.isoformat() if e.updated_at else None,
                "failure": None if e.failure is None else vars_of(e.failure),
            }
            for e in found
        ]
        print(json.dumps(rows, indent=2))
        return 0
    for e in found:
        failure = f"  {e.failure.type}: {e.failure.message}" if e.failure else ""
        created = e.created_at.isoformat(timespec="seconds") if e.created_at else "-"
        print(f"{e.invocation_id:<36} {e.workflow:<24} {e.status.value:<10} {created}{failure}")
    if not found:
        print("no executions match", file=sys.stderr)
    return 0


async def cmd_status(args: argparse.Namespace) -> int:
    async with await connect(args) as client:
        print_result(await client.get_result(args.invocation_id), args.json)
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    from durable_core.plugins import PLUGIN_GROUP, load_plugins

    found = load_plugins()
    if args.json:
        print(
            json.dumps(
                {
                    "entry_point_group": PLUGIN_GROUP,
                    "plugins": found.plugins,
                    "workflows": [{"name": w.name, "plugin": w.plugin} for w in found.registry],
                    "service_addresses": found.service_addresses,
                },
                indent=2,
            )
        )
        return 0
    print(f"entry-point group: {PLUGIN_GROUP}")
    if not found.plugins:
        print("no plugins installed")
    for w in sorted(found.registry, key=lambda w: w.name):
        print(f"  {w.name:<30} from {w.plugin}")
    for service, address in sorted(found.service_addresses.items()):
        print(f"  service {service} -> {address} (default)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "plugins":
            return cmd_plugins(args)
        if args.command in ("dev", "demo"):
            from durable_core.cli import _dev

            return _dev.dev(args) if args.command == "dev" else _dev.demo(args)
        handler = {
            "invoke": cmd_invoke,
            "status": cmd_status,
            "awakeable": cmd_awakeable,
            "signal": cmd_signal,
            "pause": cmd_lifecycle,
            "resume": cmd_lifecycle,
            "cancel": cmd_lifecycle,
            "retry": cmd_lifecycle,
            "rerun": cmd_lifecycle,
            "fork": cmd_lifecycle,
            "list": cmd_list,
            "schedule": cmd_schedule,
        }[args.command]
        return asyncio.run(handler(args))
    except EngineNotFoundError as e:  # NATS answers, but no processor created the streams
        print(f"durable: {e}", file=sys.stderr)
        return EXIT_NATS
    except (InvalidInputError, ConfigError) as e:
        print(f"durable: invalid input: {e}", file=sys.stderr)
        return EXIT_USAGE
    except ConflictError as e:
        print(f"durable: {e}", file=sys.stderr)
        return EXIT_CONFLICT
    except NatsUnavailableError as e:
        print(f"durable: {e}", file=sys.stderr)
        return EXIT_NATS
    except ExpiredError as e:
        print(f"durable: {e}", file=sys.stderr)  # "invocation X has expired: ..."
        return EXIT_NOT_FOUND
    except NotFoundError as e:
        print(f"durable: not found: {e}", file=sys.stderr)
        return EXIT_NOT_FOUND
    except InvocationTimeoutError as e:
        print(f"durable: {e}", file=sys.stderr)
        return EXIT_TIMEOUT
    except DurableError as e:
        print(f"durable: {e}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130
