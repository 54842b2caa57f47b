"""What every ``durable`` command shares: the connection
flags (accepted before or after the subcommand), ``--json``, JSON input from text, a file or
stdin, the connection itself, and the exit codes.

Exit codes: 0 ok, 1 the workflow failed, 2 bad input or usage, 3 NATS unreachable, 4 not
found, 5 timed out waiting, 6 conflict (already resolved, already finished, illegal
transition, an ``--id`` reused with other arguments), 130 interrupted, 141 the reader of the
output went away (``| head``).
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import click

if TYPE_CHECKING:
    from durable_core.client import Client
    from durable_core.config import EngineConfig, NatsConfig

EXIT_FAILED, EXIT_USAGE, EXIT_NATS, EXIT_NOT_FOUND, EXIT_TIMEOUT, EXIT_CONFLICT = 1, 2, 3, 4, 5, 6
EXIT_INTERRUPTED, EXIT_PIPE = 130, 141
DEFAULT_URL = "nats://127.0.0.1:4222"
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}

F = TypeVar("F", bound=Callable[..., Any])


# -- connection flags, before or after the subcommand ------------------------------------------


@dataclass
class Globals:
    """The connection flags; a value given after the subcommand wins over one before it."""

    nats_url: str | None = None
    nats_creds: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    prefix: str | None = None


def _store(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    if value is not None and param.name is not None:
        setattr(ctx.find_root().ensure_object(Globals), param.name, value)


_GLOBAL_OPTIONS: list[tuple[str, dict[str, Any]]] = [
    (
        "--nats-url",
        {"metavar": "URL", "help": f"NATS URL(s), comma-separated (env NATS_URL; {DEFAULT_URL})"},
    ),
    ("--nats-creds", {"metavar": "FILE", "help": "NATS .creds file (env DURABLE_NATS_CREDS_FILE)"}),
    ("--tls-ca", {"metavar": "FILE", "help": "CA file to verify NATS (env DURABLE_NATS_TLS_CA)"}),
    (
        "--tls-cert",
        {"metavar": "FILE", "help": "client certificate for NATS (env DURABLE_NATS_TLS_CERT)"},
    ),
    ("--tls-key", {"metavar": "FILE", "help": "client key for NATS (env DURABLE_NATS_TLS_KEY)"}),
    (
        "--prefix",
        {
            "metavar": "PREFIX",
            "help": "engine prefix of subjects, streams and buckets (env DURABLE_PREFIX)",
        },
    ),
]


def connection_options(f: F) -> F:
    """Add the connection flags (stored in the root context's :class:`Globals`)."""
    for flag, extra in reversed(_GLOBAL_OPTIONS):
        f = click.option(flag, expose_value=False, callback=_store, **extra)(f)
    return f


def json_option(f: F) -> F:
    """``--json``: machine-readable output on stdout."""
    return click.option("--json", "as_json", is_flag=True, help="print the result as JSON")(f)


def globals_of(ctx: click.Context) -> Globals:
    return ctx.find_root().ensure_object(Globals)


def nats_config(g: Globals) -> NatsConfig:
    """NATS settings from flags, falling back to the environment the services use."""
    from durable_core.config import NatsConfig

    env = os.environ

    def pick(flag: str | None, *names: str) -> str | None:
        if flag:
            return flag
        return next((env[n] for n in names if env.get(n)), None)

    url = pick(g.nats_url, "NATS_URL", "DURABLE_NATS_URL") or DEFAULT_URL
    return NatsConfig.from_url(
        url,
        user=pick(None, "DURABLE_NATS_USER"),
        password=pick(None, "DURABLE_NATS_PASSWORD"),
        token=pick(None, "DURABLE_NATS_TOKEN"),
        creds_file=pick(g.nats_creds, "DURABLE_NATS_CREDS_FILE"),
        nkey_seed_file=pick(None, "DURABLE_NATS_NKEY_SEED_FILE"),
        tls_ca=pick(g.tls_ca, "DURABLE_NATS_TLS_CA"),
        tls_cert=pick(g.tls_cert, "DURABLE_NATS_TLS_CERT"),
        tls_key=pick(g.tls_key, "DURABLE_NATS_TLS_KEY"),
        name="durable-cli",
    )


def engine_config(g: Globals) -> EngineConfig:
    """The engine's prefix from the flag or the DURABLE_ environment. The CLI never creates the
    streams: replicas and limits are what the processors created them with."""
    from durable_core.config import EngineConfig

    return EngineConfig(prefix=g.prefix or os.environ.get("DURABLE_PREFIX") or "durable")


async def _all_refused(servers: tuple[str, ...]) -> bool:
    """True when every server refuses a TCP connection right away: nothing listens there, so
    there is no point in waiting out the connect timeout."""

    async def refused(url: str) -> bool:
        try:
            parts = urlsplit(url if "://" in url else f"nats://{url}")
            host, port = parts.hostname, parts.port or 4222
        except ValueError:
            return False
        if not host:
            return False
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 1.0)
        except ConnectionRefusedError:
            return True
        except (OSError, TimeoutError):
            return False
        writer.close()
        return False

    return all(await asyncio.gather(*(refused(u) for u in servers)))


async def connect(g: Globals) -> Client:
    """A client on the flags' NATS and engine (see :func:`reachable_config`)."""
    from durable_core.client import Client

    return await Client.connect(await reachable_config(g), engine=engine_config(g))


async def reachable_config(g: Globals) -> NatsConfig:
    """The flags' NATS settings, connecting with NatsUnavailableError within a second when
    every server refuses the connection (instead of after the connect timeout)."""
    import dataclasses

    cfg = nats_config(g)
    if await _all_refused(cfg.servers):
        # Still connect (it checks TLS and credential files first, with their own messages),
        # but do not wait for a server that is not there.
        cfg = dataclasses.replace(cfg, connect_timeout=0.5)
    return cfg


# -- JSON input --------------------------------------------------------------------------------


def read_json(text: str | None, flag: str) -> Any:
    """A JSON value from ``--flag``: inline JSON, ``@path`` (a file) or ``-`` (stdin).

    Raises:
        InvalidInputError: unreadable file, or not valid JSON (the message names the flag).
    """
    from durable_core import _codec
    from durable_core.errors import InvalidInputError

    if text is None:
        return None
    source = flag
    if text == "-":
        source = f"{flag} (stdin)"
        # Bytes, decoded here: the locale's text stream raised a bare UnicodeDecodeError.
        if sys.stdin is None:  # started with no stdin at all
            raise InvalidInputError(f"{flag} -: there is no stdin to read")
        stdin = getattr(sys.stdin, "buffer", None)
        try:
            raw = stdin.read() if stdin is not None else sys.stdin.read()
            text = raw.decode("utf-8") if isinstance(raw, bytes | bytearray) else raw
        except (OSError, UnicodeDecodeError) as e:
            raise InvalidInputError(f"{flag} -: cannot read stdin as UTF-8: {e}") from e
    elif text.startswith("@"):
        path = text[1:]
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise InvalidInputError(f"{flag} @{path}: cannot read it: {e}") from e
        source = f"{flag} @{path}"
    return _codec.parse_json_args(text, flag=source)


# -- output ------------------------------------------------------------------------------------


def echo(text: str = "", *, err: bool = False) -> None:
    click.echo(text, err=err)


def echo_json(value: Any) -> None:
    import json

    click.echo(json.dumps(value, indent=2, ensure_ascii=False))


def run(coro: Any) -> Any:
    """Run a command's coroutine in a span named after the command (``durable.cli invoke``):
    with tracing on, an invocation started here is a child of it."""
    from opentelemetry import trace

    ctx = click.get_current_context(silent=True)
    path = ctx.command_path.split()[1:] if ctx is not None else []
    tracer = trace.get_tracer("durable_core.cli")
    with tracer.start_as_current_span(" ".join(["durable.cli", *path]), kind=trace.SpanKind.CLIENT):
        return asyncio.run(coro)


def start_tracing() -> Any:
    """An SDK tracer provider when the OTEL_* variables turn tracing on (as the services read
    them; service name durable-cli), else None. Needs durable-core[service] installed."""
    env = os.environ
    wanted = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    if not any(env.get(n) for n in wanted) and not env.get("OTEL_TRACES_EXPORTER"):
        return None  # the common case: no SDK import, no start-up cost
    try:
        from durable_core.service.telemetry import configure_tracing
    except ImportError:
        echo(
            "durable: tracing needs the OpenTelemetry SDK: pip install 'durable-core[service]'",
            err=True,
        )
        return None
    return configure_tracing("durable-cli")


def installed_workflows() -> Any:
    """The workflows of the plugins installed here (None if they do not load). Loading them
    also imports the protobuf messages of their services, so such payloads print as JSON."""
    from durable_core.plugins import load_plugins

    try:
        return load_plugins().registry
    except Exception:  # noqa: BLE001 - a broken plugin here must not stop the command
        return None


def check_input(workflow: str, payload: Any) -> None:
    """Refuse arguments that do not match the workflow's declared input type when the workflow
    is installed here (the processor would refuse them too, after a round trip)."""
    from durable_core import _codec
    from durable_core.errors import InvalidInputError

    registry = installed_workflows()
    if registry is None or workflow not in registry:
        return
    wf = registry.get(workflow)
    if wf.takes_input and wf.input_type is not None:
        try:
            _codec.convert(_codec.to_jsonable(payload), wf.input_type)
        except InvalidInputError as e:
            raise InvalidInputError(
                f"input of {workflow} does not match its declared type: {e}"
            ) from e
