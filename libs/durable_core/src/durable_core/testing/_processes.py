"""The engine's processes as real children, for integration tests, chaos runs and benchmarks.

A ``ProcessStack`` starts the example gRPC service, processors, schedulers and the CLI on one
engine prefix; each is a ``ChildProcess`` (``python -m <module>``) with its own log file. Only
PIDs started here are ever signalled: each child is stopped by the code that started it, and an
``atexit`` hook kills whatever is left if the run dies half-way.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import grpc

from durable_core.testing._probe import free_port
from durable_core.testing._wait import assert_eventually

_CHILDREN: list[ChildProcess] = []


class ChildProcess:
    """A Python child process (``python ARGS``) whose combined output goes to a log file.

    Args:
        name: Names the log file (``<log_dir>/<name>.log``) and the process in messages.
        args: Arguments after the interpreter, e.g. ``["-m", "durable_processor"]``.
        env: Added to this process's environment.
        log_dir: Where the log file goes.
    """

    def __init__(self, name: str, args: Sequence[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        with open(self.log_path, "ab") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                [sys.executable, *args],
                env={**os.environ, **env},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _CHILDREN.append(self)

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self.proc.pid

    def log(self) -> str:
        """Everything the child has written so far."""
        return self.log_path.read_text(errors="replace")

    def tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines of the log."""
        return "\n".join(self.log().splitlines()[-lines:])

    def wait_log(self, text: str, timeout: float = 20) -> None:
        """Wait (bounded) until the child has logged ``text``.

        Raises:
            AssertionError: The child exited without logging it (the message holds the log), or
                ``timeout`` seconds passed.
        """

        def seen() -> bool:
            if self.proc.poll() is not None and text not in self.log():
                raise AssertionError(f"{self.name} exited ({self.proc.returncode}):\n{self.log()}")
            return text in self.log()

        try:
            assert_eventually(seen, timeout, f"{self.name} to log {text!r}", interval=0.05)
        except AssertionError as e:
            e.add_note(f"{self.name}'s log (its end):\n{self.log()[-4000:]}")
            raise

    def kill(self) -> None:
        """SIGKILL the child (if it still runs) and reap it."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 20) -> int:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        with contextlib.suppress(ValueError):
            _CHILDREN.remove(self)
        return self.proc.returncode


def stop_all_children(timeout: float = 5) -> None:
    """Stop every ``ChildProcess`` of this interpreter still running (SIGTERM, then SIGKILL)."""
    for child in list(_CHILDREN):
        child.stop(timeout)


@atexit.register
def _kill_leftover_children() -> None:
    for child in list(_CHILDREN):
        if child.proc.poll() is None:
            child.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.proc.wait(5)


class ServiceProcess(ChildProcess):
    """A gRPC service (by default the example ``hello_service``) on a port of 127.0.0.1.

    Args:
        log_dir: Where the log file goes.
        env: Added to the environment (e.g. ``HEALTH_PORT``, ``ORDER_SERVICE_RECORD_FILE``).
        port: The port to serve on; a free one if None (a restarted service passes the old one).
        name: The log's name; ``service-<port>`` if None.
        module: The service's module, run as ``python -m <module> --port <port>``.
    """

    def __init__(
        self,
        log_dir: Path,
        env: dict[str, str] | None = None,
        *,
        port: int | None = None,
        name: str | None = None,
        module: str = "hello_service",
    ) -> None:
        self.port = port or free_port()
        self.address = f"127.0.0.1:{self.port}"
        self._channel: grpc.Channel | None = None
        super().__init__(
            name or f"service-{self.port}",
            ["-m", module, "--port", str(self.port)],
            env or {},
            log_dir,
        )

    def wait_ready(self, timeout: float = 20) -> None:
        """Wait (bounded) until the service says it listens."""
        self.wait_log("listening on", timeout)

    @property
    def channel(self) -> grpc.Channel:
        """A channel to the service (opened on first use, closed by ``stop``)."""
        if self._channel is None:
            self._channel = grpc.insecure_channel(self.address)
        return self._channel

    def stop(self, timeout: float = 20) -> int:
        if self._channel is not None:
            self._channel.close()
        return super().stop(timeout)


class ProcessStack:
    """The processes of one test or run, all sharing one engine prefix on one NATS.

    ``stop()`` stops them all, the last started first.

    Args:
        nats_url: The NATS server or cluster (comma-separated URLs).
        prefix: The engine prefix every process uses.
        log_dir: Where each process logs.
        replicas: The replicas of the engine's streams (``DURABLE_REPLICAS``).
    """

    def __init__(self, nats_url: str, prefix: str, log_dir: Path, replicas: int = 3) -> None:
        self.nats_url = nats_url
        self.prefix = prefix
        self.replicas = replicas
        self.log_dir = log_dir
        self.procs: list[ChildProcess] = []
        self.service: ServiceProcess | None = None

    @property
    def env(self) -> dict[str, str]:
        """The environment every engine process of the stack gets."""
        return {
            "NATS_URL": self.nats_url,
            "DURABLE_NATS_URL": self.nats_url,
            "DURABLE_PREFIX": self.prefix,
            "DURABLE_REPLICAS": str(self.replicas),
            "DURABLE_METRICS_PORT": "0",  # many processors per test: no shared metrics port
        }

    def start(
        self,
        name: str,
        args: Sequence[str],
        env: dict[str, str] | None = None,
        *,
        ready: str | None = None,
        timeout: float = 60,
    ) -> ChildProcess:
        """Start ``python ARGS`` with the stack's environment plus ``env``.

        Args:
            name: The process's log name.
            args: Arguments after the interpreter.
            env: Extra environment variables, names upper-cased (``durable_ack_wait`` sets
                ``DURABLE_ACK_WAIT``).
            ready: Text the process logs once it is ready; waited for (bounded) if given.
            timeout: Seconds to wait for ``ready``. A processor binds a consumer per workflow
                and route, registers its types and joins the fleet before it consumes: 4-7 s
                on this 2-core machine during the suite, 17 s in a CI run at load average 20
                (2026-12-06), so 20 s was not enough.
        """
        proc = ChildProcess(name, args, {**self.env, **_upper(env or {})}, self.log_dir)
        self.procs.append(proc)
        if ready is not None:
            proc.wait_log(ready, timeout)
        return proc

    def start_service(self, **env: str) -> ServiceProcess:
        """Start the example gRPC services (HelloService, OrderService); wait until they listen."""
        self.service = ServiceProcess(self.log_dir, _upper(env))
        self.procs.append(self.service)
        self.service.wait_ready()
        return self.service

    def start_processor(self, name: str, *args: str, **env: str) -> ChildProcess:
        """Start a processor calling the stack's service; wait until it consumes commands."""
        assert self.service is not None, "start the service first"
        return self.start(
            name,
            ["-m", "durable_processor", "--processor-id", name, *args],
            {"DURABLE_DEFAULT_SERVICE_ADDRESS": self.service.address, **env},
            ready="consuming",
        )

    def start_scheduler(self, name: str = "scheduler", **env: str) -> ChildProcess:
        """Start a scheduler replica; wait until it consumes ticks."""
        return self.start(name, ["-m", "durable_scheduler"], env, ready="consuming ticks")

    def cli(
        self,
        *args: str,
        timeout: float = 60,
        stdin: str | None = None,
        unset: Sequence[str] = (),
    ) -> subprocess.CompletedProcess[str]:
        """``durable ARGS`` with this stack's environment less the variables in ``unset``."""
        env = {**os.environ, **self.env}
        for name in unset:
            env.pop(name, None)
        return subprocess.run(
            [sys.executable, "-m", "durable_core.cli", *args],
            env=env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def stop(self) -> None:
        """Stop every process of the stack, the last started first."""
        for proc in reversed(self.procs):
            proc.stop()


def _upper(env: dict[str, str]) -> dict[str, str]:
    return {k.upper(): v for k, v in env.items()}
