"""``durable plugins``, ``completion``, ``dev`` and ``demo``: commands that need no NATS of
their own (``plugins --fleet`` reads the fleet registry)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from durable_core.cli._base import (
    Globals,
    connect,
    connection_options,
    echo,
    echo_json,
    globals_of,
    json_option,
    run,
)

__all__ = ["COMMANDS"]


F = TypeVar("F", bound=Callable[..., Any])


def port_option(flag: str, default: int, text: str) -> Callable[[F], F]:
    return click.option(
        flag, type=click.IntRange(1, 65535), default=default, show_default=True, help=text
    )


FSYNC = click.option(
    "--fsync",
    is_flag=True,
    envvar="DURABLE_DEV_FSYNC",
    help="the embedded NATS fsyncs every write before acknowledging it (survives a power cut; "
    "slower). Default: every 2 minutes, as nats-server does",
)


# -- local ---------------------------------------------------------------------------------------


@click.command()
@click.option(
    "--fleet",
    is_flag=True,
    help="list what the live processors serve (the fleet registry in NATS), not what is "
    "installed here",
)
@json_option
@connection_options
@click.pass_context
def plugins(ctx: click.Context, fleet: bool, as_json: bool) -> int:
    """List the installed workflow plugins, their workflows and default service addresses;
    with --fleet, which live processor serves which workflow, on which version."""
    if fleet:
        return int(run(_fleet(globals_of(ctx), as_json)))
    from durable_core.plugins import PLUGIN_GROUP, load_plugins

    found = load_plugins()
    if as_json:
        echo_json(
            {
                "entry_point_group": PLUGIN_GROUP,
                "plugins": found.plugins,
                "workflows": [{"name": w.name, "plugin": w.plugin} for w in found.registry],
                "service_addresses": found.service_addresses,
            }
        )
        return 0
    echo(f"entry-point group: {PLUGIN_GROUP}")
    if not found.plugins:
        echo("no plugins installed")
    for w in sorted(found.registry, key=lambda w: w.name):
        echo(f"  {w.name:<30} from {w.plugin}")
    for service, address in sorted(found.service_addresses.items()):
        echo(f"  service {service} -> {address} (default)")
    return 0


async def _fleet(g: Globals, as_json: bool) -> int:
    async with await connect(g) as client:
        view = await client.fleet()
    if as_json:
        echo_json(view.to_dict())
    else:
        from durable_core.cli import _render

        _render.fleet(view)
    return 0


@click.command()
@click.argument(
    "shell", metavar="SHELL", help="bash, zsh or fish", type=click.Choice(["bash", "zsh", "fish"])
)
def completion(shell: str) -> int:
    """Print the shell completion script: eval "$(durable completion bash)"."""
    from click.shell_completion import get_completion_class

    cls = get_completion_class(shell)
    assert cls is not None  # the choice above lists only shells click supports
    root = click.get_current_context().find_root().command
    echo(cls(root, {}, "durable", "_DURABLE_COMPLETE").source())
    return 0


@click.command()
@click.option("--data-dir", default=".durable", show_default=True, help="where NATS keeps data")
@port_option("--nats-port", 4222, "NATS client port")
@port_option("--grpc-port", 9090, "the hello service's port")
@port_option("--inspector-port", 8080, "the inspector's port")
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65534),
    default=9464,
    show_default=True,
    help="the processor's /metrics port (the scheduler's: the next one; 0: none)",
)
@FSYNC
def dev(
    data_dir: str,
    nats_port: int,
    grpc_port: int,
    inspector_port: int,
    metrics_port: int,
    fsync: bool,
) -> int:
    """Run NATS, the hello service, a processor, the scheduler and the inspector in the
    foreground; Ctrl-C stops them all."""
    from durable_core.cli import _dev

    return _dev.dev(data_dir, nats_port, grpc_port, inspector_port, metrics_port, fsync)


@click.command()
@click.option("--name", default="", help="whom to greet (empty: World)")
@FSYNC
def demo(name: str, fsync: bool) -> int:
    """Start a throwaway stack, run hello_workflow once, print the greeting, stop."""
    from durable_core.cli import _dev

    return _dev.demo(name, fsync)


COMMANDS: list[click.Command] = [plugins, completion, dev, demo]
